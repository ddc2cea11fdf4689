"""End-to-end benchmarks: chromanet, pynetdicom and DCMTK, same run.

    python benches/e2e.py            # default sizes, ~6 minutes on 2 cores
    python benches/e2e.py --quick    # smoke run, ~1 minute
    python benches/e2e.py --help

Every cell is one pairing (client implementation -> SCP implementation) and
one workload. For each cell the harness starts a fresh SCP process (its own
session, on a free port, waited for with a connect probe; for W6 also the
move destination, a third process), starts the client process(es), triggers
the timed run ``--repeats`` times, samples the SCP's peak RSS (``VmHWM``) and
stops everything. Clients and SCPs are separate processes
(``benches/e2e_peers.py``), so no two of them share a GIL.

Workloads:
- ``W1 echo``: N C-ECHO round trips on one association (messages/s).
- ``W2 find``: one C-FIND with N (10,000) matches (matches/s).
- ``W3 find1``: N (2000) one-match C-FINDs on one association (finds/s).
- ``W4 get``: one C-GET of N (1000) ~4.4 KB palettes (instances/s).
- ``W5 get-large``: one C-GET of N (100) ~400 KB palettes (instances/s).
- ``W6 move``: one C-MOVE of N (1000) palettes to a store SCP (instances/s).
- ``W7 assoc x1``: M x (associate, C-ECHO, release), one client
  (associations/s); ``W7 assoc xP``: the same over P client processes.
- ``W8 store``: the 8 pydicom palettes x K on one association (stores/s).

The Q/R data sets (W2-W6) are built once per run, untimed, in a temporary
directory: chromanet palette archives (``PaletteArchive``), which the
chromanet node (``chromanet.apps.node.PaletteNode``) serves and the pynetdicom SCP
reads into memory, and dcmqrscp storage areas of same-size images.

Pairings (client -> SCP):
- chromanet async (``await ae.associate_async``, uvloop) -> chromanet
- chromanet blocking (``ae.associate``, pynetdicom-style) -> chromanet
- chromanet async / blocking -> chromanet library mode (``cn-lib``,
  ``cn-blocking-lib``, and ``cn-lib-inline`` with the SCP's sync handlers
  run inline on its loop, ``AE.sync_handlers_inline``, instead of in its
  worker threads; W2-W6): the SCP is a chromanet AE running the same
  pynetdicom-style handlers as the pynetdicom Q/R SCP (``e2e_peers.py``),
  which yield pydicom Datasets, as a pynetdicom program does after swapping
  the import; the ``cn-async`` rows are the node's archive, which sends
  encoded bytes
- chromanet async -> chromanet with an asynchronous operations window of 8
  (``cn-async:win8``; W1, W3-W6, W8): the client proposes (8, 8), the
  chromanet SCP and the move destination offer it (the node always does),
  and the client keeps 8 requests in flight (8 tasks on one association,
  each sending its share of C-ECHOs, C-FINDs or C-STOREs in turn); a C-GET
  or C-MOVE then has up to 8 C-STORE sub-operations outstanding. Its
  ``x twin`` is the ratio to ``cn-async`` (one operation at a time); and
  ``cn-async:win8-inline`` (W6, W8): the same with the store SCP's and the
  move destination's C-STORE handler run inline on their loop instead of
  in a worker thread; and library mode with the window (``cn-lib:win8``,
  ``cn-lib-inline:win8``; W4-W6): the library-mode SCP (and the move
  destination) offer (8, 8) too (``AE.async_ops_window``), so the C-STORE
  sub-operations of the handler's Datasets go 8 at a time; ``x twin`` is
  the ratio to ``cn-lib`` / ``cn-lib-inline``
- chromanet async -> chromanet with an asyncio program at the other end
  too (``cn-async:aio``; W6, W8): the store SCP and the move destination
  are started with ``start_server_async`` and answer with an ``async def``
  C-STORE handler, on their loop; ``cn-async``'s store SCP and destination
  are pynetdicom-style, a ``def`` handler in a worker thread (a thread
  hand-off there and back per store). ``x twin`` is the ratio to ``cn-async``
- pynetdicom + TCP_NODELAY -> pynetdicom + TCP_NODELAY: the baseline for
  the ratios (see ``e2e_peers.py`` for how TCP_NODELAY is set: an
  ``EVT_CONN_OPEN`` handler, no patching)
- pynetdicom default -> pynetdicom default: as users run it. Its C-STORE
  stalls on Nagle + delayed ACK (~40 ms a store), so this pairing runs at
  sizes scaled by ``--stall-scale`` (the table shows the n used), W1/W7/W8 only.
- DCMTK's command-line tools -> storescp (W1, W7, W8) / dcmqrscp (W2-W6, on
  the Patient Root model: DCMTK has no Color Palette Q/R SCP), all with
  ``TCP_NODELAY=1`` in their environment; skipped with a message when DCMTK
  is not installed.
- with ``--nagle``: peers as they are usually run, with Nagle's algorithm on
  (pynetdicom default; DCMTK without ``TCP_NODELAY=1``), against chromanet
  in both roles, each next to the same pairing with a TCP_NODELAY peer (the
  ``x twin`` column: median / the NODELAY twin's median) and next to chromanet
  with ``tcp_quickack`` off (``noQA``: the stall the setting removes; run at
  ``--stall-scale`` sizes). Peer -> chromanet: pynetdicom for W8 store, W2/W3
  find and W6 move (the node moving to a pynetdicom store SCP of the same
  kind), DCMTK storescu for W8. chromanet -> peer: pynetdicom SCPs for the
  same four (the peer's C-MOVE sub-association into a chromanet store SCP),
  DCMTK storescp for W8, and for W6 the node moving into a DCMTK storescp
  (the C-MOVE sub-association is chromanet's). DCMTK's findscu and movescu
  know only the Patient Root and Study Root models, so they do not query
  the palette node. And chromanet async -> chromanet with ``tcp_quickack``
  off at both ends (``cn-async:noQA``, W1, W3, W8): ``x twin`` of
  ``cn-async`` is then what the re-arming costs where nothing stalls.
- with ``--cross``: chromanet async -> pynetdicom + TCP_NODELAY, and
  pynetdicom + TCP_NODELAY -> chromanet.
- with ``--tls``: chromanet async -> chromanet over TLS (the node's TLS
  listener for W2-W6; BCP 195 profile, server certificate only), and DCMTK
  ``+tla`` -> storescp ``+tls -ic`` for W1, W7 and W8 (DCMTK 3.6.7's
  getscu, movescu and dcmqrscp have no TLS). The certificates are made
  with openssl at start (``tests/helpers/tls.py``); the ``x plain`` column
  is the ratio to the same pairing over plain TCP in the same run.

Output: a table on stdout (median, min-max over the repeats, ratio of
medians to the pynetdicom and DCMTK baselines, SCP peak RSS, CPU time per
operation of the SCP and of the client), JSON in
``bench-results/e2e.json``, a PNG chart (``bench-results/e2e.png``, when
matplotlib is installed; otherwise the harness says so); peers' stderr goes
to ``bench-results/e2e-logs/``. Timings vary with machine load: compare
ratios from one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS = HERE / "e2e_peers.py"
HOST = "127.0.0.1"


# ------------------------------------------------------------------ processes
class Peer:
    """A child process in its own session (so we can kill its group), with
    a line reader on its stdout that honours a timeout."""

    def __init__(self, argv: list[str], log_path: Path, registry: list["Peer"],
                 env: dict[str, str] | None = None, eof_exits: bool = True) -> None:
        self.argv = argv
        self.log_path = log_path
        self.eof_exits = eof_exits  # False for DCMTK's SCPs, which do not read stdin
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if eof_exits else self._log,
            stderr=self._log,
            start_new_session=True,
            cwd=str(REPO),
            env=env,
        )

        self._buf = b""
        registry.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def readline(self, timeout: float) -> str:
        """The next stdout line; raises TimeoutError or RuntimeError (exit)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from {self.describe()} within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.describe()} exited (code {self.proc.wait()}); see {self.log_path}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def vmhwm_kb(self) -> int | None:
        """Peak resident set size of the process so far (Linux)."""
        return vmhwm_kb(self.pid)

    def family_vmhwm_kb(self) -> int | None:
        """The largest peak RSS of the process and its current children
        (DCMTK's dcmqrscp forks one child per association)."""
        peaks = [vmhwm_kb(self.pid)]
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                peaks += [vmhwm_kb(int(child)) for child in f.read().split()]
        except OSError:
            pass
        known = [p for p in peaks if p is not None]
        return max(known) if known else None

    def describe(self) -> str:
        return " ".join(self.argv[2:6]) + f" (pid {self.pid})"

    def stop(self) -> None:
        """Close stdin (peers exit on EOF), then TERM, then KILL the group."""
        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except OSError:
            pass
        if self.eof_exits:
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.pid, sig)  # the whole session/group we created
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far, and
    of its children it waited for; 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    # utime, stime, cutime, cstime: fields 14-17 of proc(5), counted from 1.
    return sum(int(x) for x in fields[11:15]) / _CLOCK_TICKS


def family_cpu_seconds(pid: int) -> float:
    """``cpu_seconds`` of a process and its living children (dcmqrscp forks
    one per association)."""
    total = cpu_seconds(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(cpu_seconds(int(child)) for child in children)


def vmhwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class RssSampler:
    """Samples a peer's family peak RSS every 50 ms while a cell runs (a
    forked DCMTK child is gone by the time the cell ends)."""

    def __init__(self, peer: Peer) -> None:
        import threading

        self.peer = peer
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        got = self.peer.family_vmhwm_kb()
        if got is not None and (self.peak is None or got > self.peak):
            self.peak = got

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def stop(self) -> int | None:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.peak


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_listening(peer: Peer, port: int, timeout: float = 30.0) -> None:
    """Connect-probe until the SCP accepts; fail early if it died."""
    deadline = time.monotonic() + timeout
    while True:
        if peer.proc.poll() is not None:
            raise RuntimeError(f"SCP exited (code {peer.proc.returncode}); see {peer.log_path}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"SCP not listening on {HOST}:{port} after {timeout:.0f} s")
            time.sleep(0.02)


# -------------------------------------------------------------------- the grid
DCMTK_BIN = "/usr/bin"  # explicit: pynetdicom's same-named console scripts shadow DCMTK's on PATH
DCMTK_TOOLS = ("echoscu", "storescu", "findscu", "getscu", "movescu", "storescp", "dcmqrscp", "dcmqridx")
PALETTE_PROFILE = REPO / "tests" / "data" / "storescp-palettes.cfg"
MOVE_AET = "BENCH-STORE"
DCMTK_MAX_IMAGES = 4000  # dcmqrscp's index holds ~4100 images (see e2e_peers.py): W2 runs at most this on DCMTK


def dcmtk_env(nodelay: bool) -> dict[str, str]:
    """A DCMTK tool's environment: DCMTK sets TCP_NODELAY on its sockets
    when ``TCP_NODELAY=1`` is in it; without it, Nagle's algorithm is on."""
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def dcmtk_missing() -> str | None:
    """None when DCMTK's tools are in /usr/bin, else what is missing."""
    missing = [t for t in DCMTK_TOOLS if not os.access(f"{DCMTK_BIN}/{t}", os.X_OK)]
    if missing:
        return f"DCMTK tools missing in {DCMTK_BIN}: {', '.join(missing)} (apt-get install dcmtk, or scripts/bootstrap --peers)"
    try:
        out = subprocess.run([f"{DCMTK_BIN}/echoscu", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{DCMTK_BIN}/echoscu does not run: {exc}"
    if "dcmtk" not in (out.stdout + out.stderr).lower():
        return f"{DCMTK_BIN}/echoscu is not DCMTK's"
    return None


@dataclass
class Side:
    impl: str  # chromanet | pynetdicom | dcmtk (SCP); client: chromanet-async | chromanet-blocking | pynetdicom | dcmtk
    nodelay: bool = False
    tls: bool = False
    quickack: bool = True  # chromanet: AE.tcp_quickack
    inline: bool = False  # chromanet SCP: AE.sync_handlers_inline (sync handlers on the loop)
    window: int = 1  # chromanet: asynchronous operations window (client: proposed, and requests in flight)


@dataclass
class Pairing:
    key: str
    label: str
    client: Side
    scp: Side
    scale: float = 1.0  # size multiplier (for the stalling pynetdicom default)
    qr: bool = True  # runs the Q/R workloads W2-W6
    dest: Side | None = None  # W6: the move destination (default: a store SCP of the SCP's kind)
    only: tuple[str, ...] | None = None  # runs only these workloads


@dataclass
class Workload:
    key: str
    label: str
    peer_workload: str
    unit: str
    size: int
    clients: int = 1
    warmup: int = 0
    dataset: str | None = None  # Q/R: the data set it runs on ("find", "small", "large")


@dataclass
class Cell:
    workload: Workload
    pairing: Pairing
    size: int
    rates: list[float] = field(default_factory=list)
    errors: int = 0
    # CPU seconds per timed run: the client process(es); the SCP (W6: and
    # the move destination), from /proc.
    client_cpu: list[float] = field(default_factory=list)
    scp_cpu: list[float] = field(default_factory=list)
    scp_vmhwm_kb: int | None = None
    client_maxrss_kb: int | None = None
    failure: str | None = None
    incidents: list[str] = field(default_factory=list)


def pairings(args: argparse.Namespace) -> list[Pairing]:
    out = [
        Pairing("cn-async", "chromanet async -> chromanet", Side("chromanet-async"), Side("chromanet")),
        Pairing("cn-blocking", "chromanet blocking -> chromanet", Side("chromanet-blocking"), Side("chromanet")),
        Pairing("pyn-nodelay", "pynetdicom+NODELAY -> pynetdicom+NODELAY",
                Side("pynetdicom", True), Side("pynetdicom", True)),
    ]
    # Library mode: a pynetdicom program's Q/R handlers (pydicom Datasets
    # yielded) on chromanet, next to the node's archive fast path.
    out.append(Pairing("cn-lib", "chromanet async -> chromanet library mode", Side("chromanet-async"),
                       Side("chromanet-lib"), dest=Side("chromanet"),
                       only=("w2-find", "w3-find1", "w4-get", "w5-get-large", "w6-move")))
    out.append(Pairing("cn-blocking-lib", "chromanet blocking -> chromanet library mode", Side("chromanet-blocking"),
                       Side("chromanet-lib"), dest=Side("chromanet"),
                       only=("w2-find", "w3-find1", "w4-get", "w5-get-large", "w6-move")))
    # An asynchronous operations window of 8, proposed by the async client
    # (and offered by the SCP and the move destination; the node always
    # offers (8, 8)): several requests in flight (W1, W3, W8), several
    # C-STORE sub-operations in flight (W4, W6). Next to cn-async, which
    # proposes none and runs one operation at a time.
    out.append(Pairing("cn-async:win8", "chromanet async -> chromanet, window 8",
                       Side("chromanet-async", window=8), Side("chromanet", window=8),
                       dest=Side("chromanet", window=8),
                       only=("w1-echo", "w3-find1", "w4-get", "w5-get-large", "w6-move", "w8-store")))
    TWINS["cn-async:win8"] = "cn-async"
    # The same with the store SCP's (W8) and the move destination's (W6)
    # C-STORE handler run inline on their loop: with 8 C-STOREs in flight,
    # a handler in a worker thread contends with the busy loop thread for
    # the GIL (hand-offs wait for the switch interval).
    out.append(Pairing("cn-async:win8-inline", "chromanet async -> chromanet, window 8, inline",
                       Side("chromanet-async", window=8), Side("chromanet", window=8, inline=True),
                       dest=Side("chromanet", window=8, inline=True), only=("w6-move", "w8-store")))
    TWINS["cn-async:win8-inline"] = "cn-async"
    # An asyncio program at the other end too: the store SCP (W8) and the
    # move destination (W6) started with ``start_server_async`` and an
    # ``async def`` C-STORE handler, run on their loop. Next to cn-async,
    # whose store SCP and destination are pynetdicom-style (``def``
    # handler in a worker thread: two thread hand-offs per store).
    out.append(Pairing("cn-async:aio", "chromanet async -> chromanet, async def handler",
                       Side("chromanet-async"), Side("chromanet-aio"), dest=Side("chromanet-aio"),
                       only=("w6-move", "w8-store")))
    TWINS["cn-async:aio"] = "cn-async"
    # The same handlers run inline on the SCP's loop (AE.sync_handlers_inline)
    # instead of in its worker threads: what the thread hand-off costs.
    out.append(Pairing("cn-lib-inline", "chromanet async -> chromanet library mode, handlers inline",
                       Side("chromanet-async"), Side("chromanet-lib", inline=True), dest=Side("chromanet"),
                       only=("w2-find", "w3-find1", "w4-get", "w5-get-large", "w6-move")))
    # Library mode with the window: the same pynetdicom-style handlers on an
    # AE that also offers (8, 8) (``ae.async_ops_window``, a chromanet
    # extra), the async client proposing it; W4: up to 8 C-STORE
    # sub-operations of the handler's Datasets outstanding. Next to cn-lib.
    out.append(Pairing("cn-lib:win8", "chromanet async -> chromanet library mode, window 8",
                       Side("chromanet-async", window=8), Side("chromanet-lib", window=8),
                       dest=Side("chromanet", window=8), only=("w4-get", "w5-get-large", "w6-move")))
    TWINS["cn-lib:win8"] = "cn-lib"
    out.append(Pairing("cn-lib-inline:win8", "chromanet async -> chromanet library mode, window 8, inline",
                       Side("chromanet-async", window=8), Side("chromanet-lib", window=8, inline=True),
                       dest=Side("chromanet", window=8, inline=True), only=("w4-get", "w5-get-large", "w6-move")))
    TWINS["cn-lib-inline:win8"] = "cn-lib-inline"
    if not args.no_default_baseline:
        # Its Q/R would stall ~40 ms a response: W1, W7 and W8 only.
        out.append(Pairing("pyn-default", "pynetdicom default -> pynetdicom default",
                           Side("pynetdicom"), Side("pynetdicom"), scale=args.stall_scale, qr=False))
    if not args.no_dcmtk and args.dcmtk_missing is None:
        out.append(Pairing("dcmtk", "DCMTK tools -> storescp/dcmqrscp (ND=1)", Side("dcmtk", True), Side("dcmtk", True)))
    if args.cross:
        out += [
            Pairing("cn-async>pyn", "chromanet async -> pynetdicom+NODELAY",
                    Side("chromanet-async"), Side("pynetdicom", True)),
            Pairing("pyn>cn", "pynetdicom+NODELAY -> chromanet", Side("pynetdicom", True), Side("chromanet")),
        ]
    if args.tls:
        out.append(Pairing("cn-async-tls", "chromanet async -> chromanet, TLS",
                           Side("chromanet-async", tls=True), Side("chromanet", tls=True)))
        if not args.no_dcmtk and args.dcmtk_missing is None:
            out.append(Pairing("dcmtk-tls", "DCMTK tools -> storescp, TLS (ND=1)",
                               Side("dcmtk", True, tls=True), Side("dcmtk", True, tls=True), qr=False))
    if args.nagle:
        out += nagle_pairings(args)
    if args.only:
        keys = set(args.only.split(","))
        out = [p for p in out if p.key in keys]
    return out


# --nagle: a pairing with a peer that runs Nagle's algorithm -> the same with
# the peer on TCP_NODELAY; chromanet <-> chromanet -> the same with
# tcp_quickack off (its cost). The "x twin" column.
TWINS: dict[str, str] = {}


def nagle_pairings(args: argparse.Namespace) -> list[Pairing]:
    """Peers with and without TCP_NODELAY against chromanet, both roles, with
    chromanet's tcp_quickack on and off (see the module docstring)."""
    node_ops = ("w8-store", "w2-find", "w3-find1", "w6-move")
    out: list[Pairing] = []

    def trio(key: str, label: str, ops: tuple[str, ...], make: Any) -> None:
        """The ND pairing, the default-peer pairing, and the latter with
        quickack off; ``make(nodelay, quickack)`` -> (client, SCP, dest)."""
        for suffix, note, nodelay, quickack, scale in (
            ("nd", "peer ND", True, True, 1.0),
            ("def", "peer default", False, True, 1.0),
            ("def-noQA", "default, noQA", False, False, args.stall_scale),
        ):
            client, scp, dest = make(nodelay, quickack)
            out.append(Pairing(f"{key}:{suffix}", f"{label} ({note})", client, scp, scale=scale, dest=dest, only=ops))
        TWINS[f"{key}:def"] = TWINS[f"{key}:def-noQA"] = f"{key}:nd"

    # The price of the re-arming where nothing stalls: chromanet both ends.
    out.append(Pairing("cn-async:noQA", "chromanet async -> chromanet, noQA",
                       Side("chromanet-async", quickack=False), Side("chromanet", quickack=False),
                       only=("w1-echo", "w3-find1", "w8-store")))
    TWINS["cn-async"] = "cn-async:noQA"
    def chromanet(quickack: bool, impl: str = "chromanet") -> Side:
        return Side(impl, quickack=quickack)

    # peer -> chromanet (chromanet is the SCP; W6: the node's sub-association into the peer)
    trio("pyn>cn", "pynetdicom -> chromanet", node_ops,
         lambda nd, qa: (Side("pynetdicom", nd), chromanet(qa), Side("pynetdicom", nd)))
    # chromanet -> peer (chromanet is the SCU; W6: the peer's sub-association into chromanet)
    trio("cn>pyn", "chromanet -> pynetdicom", node_ops,
         lambda nd, qa: (chromanet(qa, "chromanet-async"), Side("pynetdicom", nd), chromanet(qa)))
    if not args.no_dcmtk and args.dcmtk_missing is None:
        trio("dcmtk>cn", "storescu -> chromanet", ("w8-store",),
             lambda nd, qa: (Side("dcmtk", nd), chromanet(qa), None))
        trio("cn>dcmtk", "chromanet -> storescp", ("w8-store",),
             lambda nd, qa: (chromanet(qa, "chromanet-async"), Side("dcmtk", nd), None))
        trio("cn=>dcmtk", "chromanet -> node => storescp", ("w6-move",),
             lambda nd, qa: (chromanet(qa, "chromanet-async"), chromanet(qa), Side("dcmtk", nd)))
    return out


def workloads(args: argparse.Namespace) -> list[Workload]:
    out = [
        Workload("w1-echo", "W1 C-ECHO x N, 1 assoc", "echo", "msg/s", args.echo_n, warmup=50),
        Workload("w2-find", "W2 one C-FIND, N matches", "find-many", "match/s", args.find_n, warmup=20,
                 dataset="find"),
        Workload("w3-find1", "W3 N one-match C-FINDs, 1 assoc", "find-one", "find/s", args.find1_n, warmup=20,
                 dataset="small"),
        Workload("w4-get", "W4 C-GET of N ~4.4 KB palettes", "get", "inst/s", args.retrieve_n, warmup=20,
                 dataset="small"),
        Workload("w5-get-large", "W5 C-GET of N ~400 KB palettes", "get", "inst/s", args.large_n, warmup=2,
                 dataset="large"),
        Workload("w6-move", "W6 C-MOVE of N ~4.4 KB palettes to a store SCP", "move", "inst/s", args.retrieve_n,
                 warmup=20, dataset="small"),
        Workload("w7-assoc", "W7 assoc+echo+release x M", "assoc", "assoc/s", args.assoc_m, warmup=5),
        Workload("w7-assoc-par", f"W7 same, {args.parallel} clients", "assoc", "assoc/s", args.assoc_m,
                 clients=args.parallel, warmup=2),
        Workload("w8-store", "W8 C-STORE 8 palettes x K, 1 assoc", "store", "store/s", args.store_k, warmup=1),
    ]
    if args.workloads:
        keys = set(args.workloads.split(","))
        out = [w for w in out if w.key in keys]
    return out


def data_sets(args: argparse.Namespace, chosen: list[Workload]) -> list[str]:
    """``e2e_peers.py data --set`` specs of the sets the chosen workloads use."""
    sizes = {"find": ("small", args.find_n), "small": ("small", args.retrieve_n), "large": ("large", args.large_n)}
    used = dict.fromkeys(w.dataset for w in chosen if w.dataset)
    return [f"{name}:{sizes[name][0]}:{sizes[name][1]}" for name in used]


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


DCMQRSCP_CONFIG = """\
# dcmqrscp configuration written by benches/e2e.py (one storage area per data set)
NetworkTCPPort  = {port}
MaxPDUSize      = 16384
MaxAssociations = 64
HostTable BEGIN
bench_store = ({move_aet}, 127.0.0.1, {store_port})
HostTable END
VendorTable BEGIN
VendorTable END
AETable BEGIN
BENCH-SCP  {area}  R  (10, 1024mb)  ANY
AETable END
"""


def scp_argv(side: Side, w: Workload, port: int, args: argparse.Namespace, log_dir: Path,
             store_port: int | None) -> tuple[list[str], bool]:
    """The command line of the SCP of a cell, and whether it exits on stdin EOF."""
    py = sys.executable
    dests = ["--move-dest", f"{MOVE_AET}={store_port}"] if store_port else []
    if side.impl == "dcmtk":
        if w.dataset is None:  # W1, W7, W8: storescp, receiving without storing
            tls = []
            if side.tls:  # server certificate only, as chromanet's: -ic asks for none from the client
                tls = ["+tls", str(args.tls_dir / "server.key"), str(args.tls_dir / "server.pem"), "-ic"]
            return [f"{DCMTK_BIN}/storescp", *tls, "--ignore", "-xf", str(PALETTE_PROFILE), "Palettes",
                    str(port)], False
        config = log_dir / f"dcmqrscp-{w.key}.cfg"
        config.write_text(DCMQRSCP_CONFIG.format(port=port, move_aet=MOVE_AET, store_port=store_port or 1,
                                                 area=args.data_root / "dcmtk" / w.dataset))
        return [f"{DCMTK_BIN}/dcmqrscp", "-c", str(config), str(port)], False  # forks one child per association
    impl = side.impl
    argv = [py, str(PEERS), "scp", "--port", str(port)]
    if w.dataset is not None:
        # Q/R: the node (an asyncio program itself) for chromanet-aio too.
        impl = {"chromanet": "chromanet-node", "chromanet-aio": "chromanet-node", "chromanet-lib": "chromanet-qr",
                "pynetdicom": "pynetdicom-qr"}[impl]
        argv += ["--data-dir", str(args.data_root / "cn" / w.dataset), *dests]
    elif impl == "chromanet-lib":
        impl = "chromanet"
    argv += ["--impl", impl]
    if side.nodelay and side.impl == "pynetdicom":
        argv.append("--nodelay")
    if not side.quickack:
        argv.append("--no-quickack")
    if side.inline:
        argv.append("--inline-handlers")
    if side.window > 1 and impl in ("chromanet", "chromanet-qr"):  # the node offers (8, 8) itself
        argv += ["--window", str(side.window)]
    if side.tls:
        argv += ["--tls-dir", str(args.tls_dir)]
    return argv, True


def start_scp(argv_for_port: Any, log: Path, registry: list[Peer], env: dict[str, str] | None,
              eof_exits: bool) -> tuple[Peer, int]:
    for attempt in range(3):  # a free port can be taken before the SCP binds it
        port = free_port()
        argv = argv_for_port(port)
        peer = Peer(argv, log, registry, env=env, eof_exits=eof_exits)
        try:
            wait_listening(peer, port)
            return peer, port
        except (RuntimeError, TimeoutError):
            peer.stop()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def run_cell(cell: Cell, args: argparse.Namespace, registry: list[Peer], log_dir: Path) -> None:
    w, p = cell.workload, cell.pairing
    py = sys.executable
    log = log_dir / f"{w.key}.{p.key}.log"
    log.write_bytes(b"")
    scp = store_scp = None
    sampler = None
    clients: list[Peer] = []
    env = dcmtk_env(p.scp.nodelay) if p.scp.impl == "dcmtk" else None
    try:
        store_port = None
        if w.peer_workload == "move":  # the third process: the move destination
            dest = p.dest or p.scp
            if dest.impl == "dcmtk":
                # Palettes from the chromanet node: the profile that accepts them.
                profile = [] if p.scp.impl == "dcmtk" else ["-xf", str(PALETTE_PROFILE), "Palettes"]

                def store_argv(port: int) -> list[str]:
                    return [f"{DCMTK_BIN}/storescp", "--ignore", *profile, "-aet", MOVE_AET, str(port)]
                store_scp, store_port = start_scp(store_argv, log, registry, dcmtk_env(dest.nodelay), False)
            else:
                def store_argv(port: int) -> list[str]:
                    argv = [py, str(PEERS), "scp", "--impl", dest.impl, "--port", str(port)]
                    argv += ["--nodelay"] if dest.nodelay and dest.impl == "pynetdicom" else []
                    argv += ["--window", str(dest.window)] if dest.window > 1 else []
                    argv += ["--inline-handlers"] if dest.inline else []
                    return argv + ([] if dest.quickack else ["--no-quickack"])
                store_scp, store_port = start_scp(store_argv, log, registry, None, True)
        side = p.scp
        eof_exits = side.impl != "dcmtk"
        scp, port = start_scp(lambda port: scp_argv(side, w, port, args, log_dir, store_port)[0], log, registry,
                              env, eof_exits)
        sampler = RssSampler(scp)
        sizes = [s for s in split(cell.size, w.clients) if s > 0]
        for size in sizes:
            argv = [py, str(PEERS), "client", "--impl", p.client.impl, "--port", str(port),
                    "--workload", w.peer_workload, "--n", str(size), "--warmup", str(w.warmup),
                    "--move-aet", MOVE_AET, "--scratch", str(args.data_root)]
            if w.dataset is not None:
                argv += ["--uids", str(args.data_root / "uids" / f"{w.dataset}.txt")]
                if p.client.impl == "dcmtk":
                    argv += ["--dcmtk-keys", str(args.data_root / "dcmtk" / f"{w.dataset}.json")]
            if p.client.nodelay and p.client.impl in ("pynetdicom", "dcmtk"):
                argv.append("--nodelay")
            if not p.client.quickack:
                argv.append("--no-quickack")
            if p.client.tls:
                argv += ["--tls-dir", str(args.tls_dir)]
            if p.client.window > 1:
                argv += ["--window", str(p.client.window)]
            clients.append(Peer(argv, log, registry))
        for c in clients:  # all set up (imports, warm-up) before any timing
            line = c.readline(args.timeout)
            if line != "ready":
                raise RuntimeError(f"client said {line!r}, expected 'ready'")
        servers = [peer for peer in (scp, store_scp) if peer is not None]
        while len(cell.rates) < args.repeats:
            cpu0 = sum(family_cpu_seconds(peer.pid) for peer in servers)
            for c in clients:
                c.send("go")
            answers = [json.loads(c.readline(args.timeout)) for c in clients]
            scp_cpu = sum(family_cpu_seconds(peer.pid) for peer in servers) - cpu0
            bad = [a["error"] for a in answers if "error" in a]
            if bad:
                # A run that failed (e.g. pynetdicom's requestor aborting on
                # its reply race, see README) is recorded and run again.
                cell.incidents.append(bad[0])
                if len(cell.incidents) > args.retries:
                    raise RuntimeError(f"client error: {bad[0]}")
                continue
            count = sum(a["n"] for a in answers)
            span = max(a["t1"] for a in answers) - min(a["t0"] for a in answers)
            cell.rates.append(count / span)
            cell.scp_cpu.append(scp_cpu)
            if all("cpu_s" in a for a in answers):
                cell.client_cpu.append(sum(a["cpu_s"] for a in answers))
            cell.errors += sum(a["errors"] for a in answers)
            cell.client_maxrss_kb = max(a["maxrss_kb"] for a in answers)
    except (RuntimeError, TimeoutError, OSError, ValueError, KeyError) as exc:
        cell.failure = f"{type(exc).__name__}: {exc}"
    finally:
        if sampler is not None:
            cell.scp_vmhwm_kb = sampler.stop()
        for c in clients:
            c.stop()
        for peer in (scp, store_scp):
            if peer is not None:
                peer.stop()


# ------------------------------------------------------------------ reporting
def summary(cell: Cell) -> dict[str, Any]:
    r = cell.rates
    return {
        "workload": cell.workload.key,
        "workload_label": cell.workload.label,
        "pairing": cell.pairing.key,
        "pairing_label": cell.pairing.label,
        "client": cell.pairing.client.__dict__,
        "scp": cell.pairing.scp.__dict__,
        "unit": cell.workload.unit,
        "size": cell.size,
        "ops_per_run": cell.size * 8 if cell.workload.key == "w8-store" else cell.size,
        "clients": cell.workload.clients,
        "dataset": cell.workload.dataset,
        "rates": r,
        "median": statistics.median(r) if r else None,
        "min": min(r) if r else None,
        "max": max(r) if r else None,
        "dimse_errors": cell.errors,
        # Median CPU microseconds per operation over the timed runs.
        "scp_cpu_us_per_op": per_op_us(cell.scp_cpu, cell),
        "client_cpu_us_per_op": per_op_us(cell.client_cpu, cell),
        "scp_peak_rss_kb": cell.scp_vmhwm_kb,
        "client_peak_rss_kb": cell.client_maxrss_kb,
        "failure": cell.failure,
        "incidents": cell.incidents,
    }


def fmt_us(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def per_op_us(cpu: list[float], cell: Cell) -> float | None:
    ops = cell.size * 8 if cell.workload.key == "w8-store" else cell.size
    return round(statistics.median(cpu) / ops * 1e6, 1) if cpu and ops else None


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def fmt_pct(x: float | None) -> str:
    return f"{100 * x:.0f}%" if x else ""


def fmt_ratio(x: float | None) -> str:
    if not x:
        return ""
    if x >= 10:
        return f"{x:.0f}x"
    return f"{x:.1f}x" if x >= 0.95 else f"{x:.2f}x" if x >= 0.095 else f"{x:.3f}x"


BASELINES = ("pyn-nodelay", "pyn-default", "dcmtk")
# A TLS pairing -> the same pairing over plain TCP (the "x plain" column).
PLAIN_TWINS = {"cn-async-tls": "cn-async", "dcmtk-tls": "dcmtk"}


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """median(pairing) / median(baseline) per workload, and TLS / plain."""
    out: dict[str, dict[str, float]] = {}
    for w in dict.fromkeys(r["workload"] for r in rows):
        by = {r["pairing"]: r["median"] for r in rows if r["workload"] == w}
        for base in BASELINES:
            if by.get(base):
                for k, v in by.items():
                    if v and k != base:
                        out.setdefault(w, {})[f"{k}/{base}"] = v / by[base]
        for tls, plain in PLAIN_TWINS.items():
            if by.get(tls) and by.get(plain):
                out.setdefault(w, {})[f"{tls}/{plain}"] = by[tls] / by[plain]
        for nagle, nodelay in TWINS.items():
            if by.get(nagle) and by.get(nodelay):
                out.setdefault(w, {})[f"{nagle}/{nodelay}"] = by[nagle] / by[nodelay]
    return out


def ops_per_run(row: dict[str, Any]) -> int:
    """Operations in one timed run (the store size counts palette rounds)."""
    return row["size"] * 8 if row["workload"] == "w8-store" else row["size"]


def print_table(rows: list[dict[str, Any]], rat: dict[str, dict[str, float]]) -> None:
    head = (f"  {'pairing (client -> SCP)':42} {'n/run':>6} {'median':>9} {'min-max':>17} "
            f"{'x pyn+ND':>9} {'x pyn':>6} {'x DCMTK':>8} {'x plain':>8} {'x twin':>6} {'SCP RSS':>8} "
            f"{'CPU us/op SCP':>13} {'client':>6}")
    print(head)
    print("-" * len(head))
    last = None
    for r in rows:
        if r["workload"] != last:
            if last is not None:
                print()
            print(f"{r['workload_label']} ({r['unit']})")
            last = r["workload"]
        n = ops_per_run(r)
        if r["failure"]:
            print(f"  {r['pairing_label']:42} {n:>6} FAILED: {r['failure']}")
            continue
        rr = rat.get(r["workload"], {})
        x_nd = rr.get(f"{r['pairing']}/pyn-nodelay")
        x_def = rr.get(f"{r['pairing']}/pyn-default")
        x_dcm = rr.get(f"{r['pairing']}/dcmtk")
        twin = PLAIN_TWINS.get(r["pairing"])
        x_plain = rr.get(f"{r['pairing']}/{twin}") if twin else None
        nd_twin = TWINS.get(r["pairing"])
        x_nd_twin = rr.get(f"{r['pairing']}/{nd_twin}") if nd_twin else None
        rng = f"{fmt_rate(r['min'])}-{fmt_rate(r['max'])}"
        rss = f"{r['scp_peak_rss_kb'] / 1024:.0f} MB" if r["scp_peak_rss_kb"] else "-"
        err = f"  ({r['dimse_errors']} DIMSE errors)" if r["dimse_errors"] else ""
        err += f"  ({len(r['incidents'])} failed run(s) re-run, see JSON)" if r["incidents"] else ""
        print(f"  {r['pairing_label']:42} {n:>6} {fmt_rate(r['median']):>9} {rng:>17} "
              f"{fmt_ratio(x_nd):>9} {fmt_ratio(x_def):>6} {fmt_ratio(x_dcm):>8} {fmt_ratio(x_plain):>8} "
              f"{fmt_pct(x_nd_twin):>6} {rss:>8} {fmt_us(r.get('scp_cpu_us_per_op')):>13} "
              f"{fmt_us(r.get('client_cpu_us_per_op')):>6}{err}")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("chromanet", "pynetdicom", "pydicom", "uvloop"):
        try:
            from importlib.metadata import version

            out[name] = version(name)
        except Exception:
            out[name] = "?"
    return out


# ----------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--echo-n", type=int, default=2000, help="W1: C-ECHOs per run (default 2000)")
    p.add_argument("--assoc-m", type=int, default=300, help="W7: associations per run (default 300)")
    p.add_argument("--parallel", type=int, default=4, help="W7: client processes for the parallel run (default 4)")
    p.add_argument("--store-k", type=int, default=125, help="W8: rounds of the 8 palettes (default 125 = 1000 stores)")
    p.add_argument("--find-n", type=int, default=10000, help="W2: matches of the one C-FIND (default 10000)")
    p.add_argument("--find1-n", type=int, default=2000, help="W3: one-match C-FINDs per run (default 2000)")
    p.add_argument("--retrieve-n", type=int, default=1000,
                   help="W4 C-GET, W6 C-MOVE: ~4.4 KB instances per retrieve (default 1000)")
    p.add_argument("--large-n", type=int, default=100, help="W5: ~400 KB instances per C-GET (default 100)")
    p.add_argument("--no-dcmtk", action="store_true", help="skip the DCMTK pairing")
    p.add_argument("--data-dir", type=Path,
                   help="build the Q/R data sets here and keep them (default: a temporary directory, removed)")
    p.add_argument("--chart", type=Path, default=REPO / "bench-results" / "e2e.png",
                   help="PNG chart (needs matplotlib: pip install matplotlib, or the 'bench' extra)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per cell (default 3)")
    p.add_argument("--stall-scale", type=float, default=0.05,
                   help="size multiplier for the pynetdicom-default pairing (default 0.05)")
    p.add_argument("--no-default-baseline", action="store_true", help="skip the pynetdicom default pairing")
    p.add_argument("--cross", action="store_true", help="also run the cross pairings (adds 1.5 to 4 min: see README on pynetdicom's reply race)")
    p.add_argument("--nagle", action="store_true",
                   help="also run peers with Nagle's algorithm on (pynetdicom default, DCMTK without "
                        "TCP_NODELAY=1) against chromanet, both roles, next to their TCP_NODELAY twins and "
                        "to chromanet with tcp_quickack off (pairings pyn>cn:*, cn>pyn:*, dcmtk>cn:*, "
                        "cn>dcmtk:*, cn=>dcmtk:*)")
    p.add_argument("--tls", action="store_true",
                   help="also run chromanet and DCMTK over TLS (pairings cn-async-tls, dcmtk-tls)")
    p.add_argument("--only", help="comma-separated pairing keys: cn-async,cn-async:win8,cn-async:win8-inline,cn-async:aio,cn-blocking,cn-lib,cn-blocking-lib,"
                                  "cn-lib-inline,cn-lib:win8,cn-lib-inline:win8,pyn-nodelay,pyn-default,"
                                  "dcmtk,cn-async>pyn,pyn>cn,cn-async-tls,dcmtk-tls")
    p.add_argument("--workloads", help="comma-separated: w1-echo,w2-find,w3-find1,w4-get,w5-get-large,w6-move,"
                                       "w7-assoc,w7-assoc-par,w8-store")
    p.add_argument("--retries", type=int, default=2,
                   help="failed runs re-run per cell before the cell fails (default 2)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for any one client answer")
    p.add_argument("--out", type=Path, default=REPO / "bench-results" / "e2e.json")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny sizes (echo 200, find 500, finds 100, retrieve 50, large 10, assoc 30, store 3)")
    args = p.parse_args(argv)
    if args.quick:
        args.echo_n, args.assoc_m, args.store_k = 200, 30, 3
        args.find_n, args.find1_n, args.retrieve_n, args.large_n = 500, 100, 50, 10
        args.stall_scale = max(args.stall_scale, 0.2)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def chart_note(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    """Draw the PNG chart if matplotlib is there; say what happened."""
    sys.path.insert(0, str(HERE))
    try:
        import chart
    except ImportError as exc:
        return f"chart: not drawn ({exc})"
    return chart.draw_or_explain(rows, args.chart)


def cell_size(w: Workload, p: Pairing) -> int:
    # W2 expects every match of its data set: never scaled down.
    size = w.size if w.peer_workload == "find-many" else scaled(w.size, p.scale, w.clients)
    if p.key == "dcmtk" and w.dataset is not None and w.peer_workload != "find-one":
        size = min(size, DCMTK_MAX_IMAGES)  # its data set holds at most this many
    return size


def scaled(size: int, scale: float, clients: int) -> int:
    return size if scale >= 1 else max(clients, round(size * scale))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_dir = args.out.parent / "e2e-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    registry: list[Peer] = []

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Explicit, because a shell starting us in the background ignores SIGINT.
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    args.dcmtk_missing = None if args.no_dcmtk else dcmtk_missing()
    if args.dcmtk_missing:
        print(f"e2e: no DCMTK pairing: {args.dcmtk_missing}", flush=True)
    chosen = workloads(args)
    cells = [Cell(w, p, cell_size(w, p)) for w in chosen for p in pairings(args)
             if (p.qr or w.dataset is None) and (p.only is None or w.key in p.only)]
    tls_root = None
    if args.tls:
        import tempfile

        sys.path.insert(0, str(REPO / "tests"))
        from helpers.tls import make_pki

        tls_root = tempfile.mkdtemp(prefix="chromanet-e2e-pki-")
        args.tls_dir = make_pki(Path(tls_root)).ca.parent
    meta = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pynetdicom_nodelay": "EVT_CONN_OPEN handler sets TCP_NODELAY on event.assoc.dul.socket.socket "
                              "(requestor and acceptor); verified with getsockopt in the client",
        "dcmtk": args.dcmtk_missing or "DCMTK tools from /usr/bin with TCP_NODELAY=1 in their environment; "
                                      "W2-W6 on dcmqrscp's Patient Root model (Secondary Capture images of the "
                                      "palettes' file size, one series), W1/W7/W8 on storescp --ignore",
    }
    print(f"e2e: {len(cells)} cells x {args.repeats} repeats; load average {meta['loadavg_start'][0]:.2f} "
          f"on {meta['cpus']} CPUs", flush=True)
    t_start = time.monotonic()
    interrupted = False
    temp_root = None
    try:
        sets = data_sets(args, chosen)
        if sets:
            if args.data_dir is None:
                import tempfile

                temp_root = tempfile.mkdtemp(prefix="chromanet-e2e-")
                args.data_root = Path(temp_root)
            else:
                args.data_root = args.data_dir.resolve()
            marker = args.data_root / "sets.json"
            # "layout" 2: the sets' Part 10 files exported to cn/<set>/part10 (small
            # palettes are kept in the archive's index since its schema version 4).
            wanted = {"sets": sets, "dcmtk": not args.dcmtk_missing and not args.no_dcmtk, "layout": 2}
            if marker.exists() and json.loads(marker.read_text()) == wanted:
                print(f"e2e: reusing the data sets in {args.data_root}", flush=True)
            else:
                import shutil

                if args.data_dir is not None and args.data_root.exists():
                    for sub in ("cn", "dcmtk", "uids"):
                        shutil.rmtree(args.data_root / sub, ignore_errors=True)
                t = time.monotonic()
                argv = [sys.executable, str(PEERS), "data", "--root", str(args.data_root)]
                argv += [x for spec in sets for x in ("--set", spec)] + (["--dcmtk"] if wanted["dcmtk"] else [])
                subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=str(REPO))
                marker.write_text(json.dumps(wanted))
                print(f"e2e: built the Q/R data sets {', '.join(sets)}{' (+ DCMTK)' if wanted['dcmtk'] else ''} "
                      f"in {time.monotonic() - t:.1f} s (untimed)", flush=True)
            meta["data_sets"] = sets
        else:
            args.data_root = Path("/tmp")
        for i, cell in enumerate(cells, 1):
            t = time.monotonic()
            run_cell(cell, args, registry, log_dir)
            state = cell.failure or "  ".join(fmt_rate(x) for x in cell.rates) + f" {cell.workload.unit}"
            if cell.incidents and not cell.failure:
                state += f"  [{len(cell.incidents)} failed run(s) re-run: {cell.incidents[0][:120]}]"
            n = cell.size * 8 if cell.workload.key == "w8-store" else cell.size
            print(f"  [{i:>2}/{len(cells)}] {cell.workload.key:13} {cell.pairing.label:42} n={n:<5} "
                  f"{state}  ({time.monotonic() - t:.1f} s)", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping peers", file=sys.stderr)
    except subprocess.CalledProcessError as exc:
        print(f"e2e: building the data sets failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for peer in registry:
            if peer.proc.poll() is None:
                peer.stop()
        for root in (temp_root, tls_root):
            if root is not None:
                import shutil

                shutil.rmtree(root, ignore_errors=True)
    rows = [summary(c) for c in cells if c.rates or c.failure]
    rat = ratios(rows)
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    meta["loadavg_end"] = os.getloadavg()
    meta["interrupted"] = interrupted
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows, "ratios": rat}, indent=2) + "\n")
    print()
    print_table(rows, rat)
    print(f"\nmedian of {args.repeats}; 'x pyn+ND' = median / pynetdicom+TCP_NODELAY median, "
          f"'x pyn' = / pynetdicom default, 'x DCMTK' = / DCMTK median;\nSCP RSS = peak RSS (VmHWM) of the SCP "
          f"process (DCMTK dcmqrscp: the largest of the parent and its per-association children).\n"
          f"DCMTK runs W2-W6 on the Patient Root model (dcmqrscp, Secondary Capture images of the same file "
          f"size, series-level retrieve); its clients are timed as whole processes (start, association, release).\n"
          f"'x plain' = a TLS pairing's median / the same pairing's over plain TCP.\n"
          f"'x twin' (--nagle) = a pairing with a Nagle peer: median / the same pairing's with the peer on "
          f"TCP_NODELAY (peer ND);\ncn-async: median / cn-async:noQA's (the cost of quick ACKs); "
          f"noQA = chromanet with tcp_quickack off;\ncn-async:win8 and :win8-inline: median / cn-async's (8 operations in "
          f"flight against one at a time); cn-lib:win8, cn-lib-inline:win8: / cn-lib's, cn-lib-inline's;\n"
          f"cn-async:aio: median / cn-async's (async def store handler at the store SCP / move destination "
          f"against a def handler in a worker thread).\n"
          f"CPU us/op = median CPU time per operation of the SCP process (W6: plus the move destination) "
          f"and of the client process(es), over the timed runs.")
    print(f"{meta['elapsed_s']} s; JSON: {args.out}")
    print(chart_note(args, rows))
    failed = any(c.failure for c in cells) or any(c.errors for c in cells)
    return 130 if interrupted else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
