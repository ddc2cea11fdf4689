"""``chromanet serve --workers N``: one supervisor, N worker processes.

Each worker is a whole ``PaletteNode`` on its own event loop, accepting on
the same port(s). The supervisor makes the listening sockets and hands one
to each worker (``multiprocessing`` passes the descriptor to the spawned
process):

- where the OS has ``SO_REUSEPORT`` (Linux), one socket per worker, all
  bound to the same address: the kernel spreads new connections over them
  by a hash of the peer's address and port, so no worker is woken for a
  connection another takes. The supervisor keeps its copy of each, so that
  a restarted worker takes over its predecessor's socket and what waits in
  its accept queue;
- elsewhere, one socket that every worker accepts on.

Why spawn, not fork: the supervisor runs the metrics server in a thread,
and a forked child would inherit its locks in whatever state they were.

The supervisor does no DICOM itself. Before starting workers it opens the
archive exclusively (recovery of an interrupted store, seeding, schema
migration), then downgrades its lock to a shared one that the workers join
(``PaletteArchive.share``), see ``archive/store.py``.

- **Association limit across workers**: a shared array of one counter per
  worker (``multiprocessing`` shared memory, no lock). A worker writes only
  its own slot (+1 when an association is established, -1 when it ends) and
  refuses an A-ASSOCIATE-RQ when the sum of all slots has reached
  ``max_associations``. Lock-free so that a worker killed at any instant
  cannot leave a lock held; the supervisor zeroes a dead worker's slot.
  The price: two workers admitting at the same instant may each see one
  slot free, so the limit can be passed by at most N-1 for a moment.
- **Shutdown**: SIGTERM or SIGINT to the supervisor closes its copies of
  the listening sockets and sends SIGTERM to each worker, which stops
  accepting, lets its associations end within ``drain_timeout`` and aborts
  the rest. A second SIGTERM/SIGINT aborts them at once. Workers still
  running ``drain_timeout`` + 10 s later are killed. Exit status 0 when
  every worker exited 0.
- **A crashed worker** (killed, or exit status other than 0 while not
  stopping) is logged with a WARNING naming its pid and how it ended, and
  started again after a back-off that doubles (0.5 s up to 30 s) while
  workers keep dying within 10 s of their start.
- **SIGHUP** is passed on to every worker (each reopens its audit file).
- **The supervisor dies**: every worker holds the read end of a pipe whose
  only writer is the supervisor; end of file there means the supervisor
  is gone, and the worker closes (aborting its associations) rather than
  serve on, orphaned.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chromanet import loopthread
from chromanet.apps import metrics as metrics_module
from chromanet.apps.node import NodeConfig, WorkerPlace, serve
from chromanet.archive import PaletteArchive
from chromanet.archive.postgres import is_postgresql_url
from chromanet.archive.shared_commit import CommitService

LOGGER = logging.getLogger("chromanet.workers")

#: A worker that dies within this many seconds of its start counts as
#: failing at start: the next one waits longer.
STABLE_AFTER = 10.0
RESTART_DELAY_MIN = 0.5
RESTART_DELAY_MAX = 30.0
#: Workers still running this long after the drain timeout are killed.
KILL_GRACE = 10.0
#: The log format of the supervisor and its workers: which process said it.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(processName)s %(process)d]: %(message)s"

HAS_REUSEPORT = hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")


class SharedAssociationCount:
    """``server.AssociationCounter`` over a shared array of per-worker
    counts (see the module docstring)."""

    def __init__(self, slots: Any, index: int) -> None:
        self.slots = slots
        self.index = index

    def held(self) -> int:
        return sum(self.slots)

    def opened(self) -> None:
        self.slots[self.index] += 1

    def closed(self) -> None:
        self.slots[self.index] -= 1


# ------------------------------------------------------------------ sockets
def listening_sockets(host: str, port: int, count: int, reuse_port: bool = HAS_REUSEPORT) -> list[socket.socket]:
    """``count`` sockets listening on (host, port) with SO_REUSEPORT, or
    one socket listed ``count`` times without it. Port 0: the kernel picks
    one for the first and the others join it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count if reuse_port else 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(1024)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets if reuse_port else sockets * count


# ------------------------------------------------------------------- worker
def worker_main(config: NodeConfig, place: WorkerPlace, slots: Any, parent_alive: Any) -> None:
    """A worker process: a node on its own loop until SIGTERM/SIGINT
    (drain) or its supervisor's end (close at once)."""
    logging.basicConfig(level=config.log_level, format=LOG_FORMAT)
    place.counter = SharedAssociationCount(slots, place.index - 1)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the audit trail's reopen replaces it, if any
    loop = loopthread.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    task = loop.create_task(serve(config, stop=stop, worker=place))
    def on_signal() -> None:
        if stop.is_set():  # a second one: no more waiting
            task.cancel()
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)

    def orphaned() -> None:
        loop.remove_reader(parent_alive.fileno())
        LOGGER.warning("the supervisor is gone: closing")
        task.cancel()

    loop.add_reader(parent_alive.fileno(), orphaned)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    finally:
        loop.close()
        # Done: a late second signal (the supervisor's "abort now") must not
        # turn a clean exit into "killed by SIGTERM".
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)


# --------------------------------------------------------------- supervisor
@dataclass
class _Slot:
    index: int
    plain: socket.socket | None
    tls: socket.socket | None
    process: Any = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None


class Supervisor:
    """Starts, watches, restarts and stops the workers."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.count = config.worker_count
        self.context = multiprocessing.get_context("spawn")
        self.slots_array = self.context.RawArray("q", self.count)
        self.slots: list[_Slot] = []
        self.archive: PaletteArchive | None = None
        #: Commits the stores every worker keeps in the index (``archive/shared_commit.py``).
        self.commit_service: CommitService | None = None
        self.metrics_dir: Path | None = None
        self.metrics_server: Any = None
        self.stopping = False
        self._alive_read, self._alive_write = self.context.Pipe(duplex=False)
        self._wake_read, self._wake_write = socket.socketpair()

    # -- set-up ------------------------------------------------------------
    def prepare(self) -> None:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        # Recovery and seeding once, alone; then the workers may join. (On
        # PostgreSQL each worker opens the database itself: its migrations
        # and seeding run under the database's own lock.)
        if not is_postgresql_url(config.index):
            self.archive = PaletteArchive.open(
                config.data_dir, seed=True, durability=config.store_durability, inline_max=config.store_inline_max
            )
            self.archive.share()
            if config.shared_committer:
                self.commit_service = CommitService(self.archive)
                self.commit_service.start()
        spool = config.data_dir / "incoming"
        spool.mkdir(exist_ok=True)
        plain = listening_sockets(config.bind_address, config.port, self.count) if config.listen_plain else None
        tls = None
        if config.tls.listening:
            config.tls.server_context()  # a bad certificate fails here, once, not in every worker
            tls = listening_sockets(config.bind_address, config.tls.port, self.count)
        for index in range(1, self.count + 1):
            self.slots.append(_Slot(index, plain[index - 1] if plain else None, tls[index - 1] if tls else None))
        if config.metrics_port is not None:
            self.metrics_dir = Path(tempfile.mkdtemp(prefix="chromanet-metrics-"))
            # Read by prometheus_client when a worker imports it.
            os.environ[metrics_module.MULTIPROC_ENV] = str(self.metrics_dir)
            address = config.metrics_bind if config.metrics_bind is not None else config.bind_address
            self.metrics_server = metrics_module.serve_multiprocess_metrics(
                self.metrics_dir, config.metrics_port, address, spool, self.commit_service
            )
        where = [f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in (plain or [])[:1] + (tls or [])[:1]]
        LOGGER.info(
            "%d workers on %s (%s)", self.count, ", ".join(where),
            "SO_REUSEPORT, a socket each" if HAS_REUSEPORT else "one shared socket",
        )  # fmt: skip

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return self.metrics_server.server_address[:2] if self.metrics_server is not None else None

    def _start(self, slot: _Slot) -> None:
        link = self.commit_service.connect(f"worker {slot.index}") if self.commit_service is not None else None
        place = WorkerPlace(slot.index, slot.plain, slot.tls, None, link)
        process = self.context.Process(
            target=worker_main,
            args=(self.config, place, self.slots_array, self._alive_read),
            name=f"worker-{slot.index}",
        )
        try:
            process.start()
        finally:
            if link is not None:
                link.close()  # the worker has its own copy (sent as the process started)
        slot.process, slot.started, slot.restart_at = process, time.monotonic(), None
        LOGGER.info("worker %d started (pid %d)", slot.index, process.pid)

    # -- running -----------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit status."""
        self._wake_write.setblocking(False)
        self._wake_read.setblocking(False)
        signal.set_wakeup_fd(self._wake_write.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._forward_sighup)
        try:
            for slot in self.slots:
                self._start(slot)
            while not self.stopping:
                self._watch()
            return self._stop()
        finally:
            self._cleanup()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            LOGGER.info("%s: stopping the workers (drain up to %g s)", signal.Signals(signum).name,
                        self.config.drain_timeout)
            self.stopping = True
            return
        # A second signal while draining: the workers abort what is left now.
        LOGGER.info("%s again: aborting the associations left", signal.Signals(signum).name)
        for slot in self.slots:
            if slot.process is not None and slot.process.pid is not None and slot.process.exitcode is None:
                try:
                    os.kill(slot.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def _forward_sighup(self, _signum: int, _frame: Any) -> None:
        """SIGHUP (logrotate): every worker reopens its audit file."""
        for slot in self.slots:
            if slot.process is not None and slot.process.pid is not None:
                try:
                    os.kill(slot.process.pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass

    def _watch(self) -> None:
        """Wait for a worker to end, a signal or the next restart; act on it."""
        now = time.monotonic()
        restarts = [s.restart_at for s in self.slots if s.restart_at is not None]
        timeout = max(0.0, min(restarts) - now) if restarts else None
        running = {s.process.sentinel: s for s in self.slots if s.process is not None}
        ready = multiprocessing.connection.wait([*running, self._wake_read], timeout)
        if self._wake_read in ready:
            try:
                self._wake_read.recv(512)
            except BlockingIOError:  # pragma: no cover
                pass
        if self.stopping:
            return
        for sentinel in ready:
            slot = running.get(sentinel)
            if slot is not None:
                self._ended(slot)
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now:
                self._start(slot)

    def _ended(self, slot: _Slot) -> None:
        process = slot.process
        process.join()
        self._forget(slot, process.pid)
        lived = time.monotonic() - slot.started
        slot.failures = slot.failures + 1 if lived < STABLE_AFTER else 0
        delay = min(RESTART_DELAY_MAX, RESTART_DELAY_MIN * 2 ** max(0, slot.failures - 1)) if slot.failures else 0.0
        LOGGER.warning(
            "worker %d (pid %d) %s after %.1f s: restarting%s", slot.index, process.pid,
            describe_exit(process.exitcode), lived, f" in {delay:.1f} s" if delay else "",
        )  # fmt: skip
        slot.restart_at = time.monotonic() + delay

    def _forget(self, slot: _Slot, pid: int) -> None:
        """A worker is gone: its associations no longer count, nor do its
        live gauges."""
        slot.process = None
        self.slots_array[slot.index - 1] = 0
        if self.metrics_dir is not None:
            metrics_module.worker_gone(self.metrics_dir, pid)

    def _stop(self) -> int:
        """Stop accepting, drain the workers, kill the ones that overstay."""
        closed: set[int] = set()
        for slot in self.slots:
            for sock in (slot.plain, slot.tls):
                if sock is not None and id(sock) not in closed:
                    closed.add(id(sock))
                    sock.close()
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                slot.process.terminate()
        deadline = time.monotonic() + self.config.drain_timeout + KILL_GRACE
        status = 0
        for slot in self.slots:
            process = slot.process
            if process is None:
                continue
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                LOGGER.warning("worker %d (pid %d) still running: killed", slot.index, process.pid)
                process.kill()
                process.join()
                status = 1
            elif process.exitcode != 0:
                LOGGER.warning("worker %d (pid %d) %s", slot.index, process.pid, describe_exit(process.exitcode))
                status = 1
            self._forget(slot, process.pid)
        LOGGER.info("stopped")
        return status

    def _cleanup(self) -> None:
        signal.set_wakeup_fd(-1)
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
        self._alive_write.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        if self.metrics_dir is not None:
            os.environ.pop(metrics_module.MULTIPROC_ENV, None)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        if self.commit_service is not None:
            self.commit_service.stop(timeout=KILL_GRACE)
            LOGGER.info(
                "shared committer: %d stores in %d batches", self.commit_service.stores, self.commit_service.batches
            )
        if self.archive is not None:
            self.archive.close()
        self._wake_read.close()
        self._wake_write.close()


def describe_exit(exitcode: int | None) -> str:
    """'exited with status 3', 'killed by SIGKILL'."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def run_supervisor(config: NodeConfig) -> int:
    supervisor = Supervisor(config)
    try:
        supervisor.prepare()
    except BaseException:
        supervisor._cleanup()
        raise
    return supervisor.run()


__all__ = ["HAS_REUSEPORT", "SharedAssociationCount", "Supervisor", "describe_exit", "listening_sockets", "run_supervisor"]
