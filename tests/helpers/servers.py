"""SCPs for the loopback tests, what they record, and server processes.

Every server listens on 127.0.0.1 port 0 (a free port the kernel picks);
the starters here return it running, and the fixture (conftest.py) or the
``async with`` that asked for it shuts it down in its ``finally``, whatever
the test did. Servers that run as subprocesses need a port number up front
(``free_port``) and are killed by ``subprocess_server`` on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

from chromanet import evt, uids
from chromanet.ae import AE
from helpers.waits import NETWORK_TIMEOUT, WAIT_TIMEOUT

NOTIFICATION_EVENTS = [
    evt.EVT_CONN_OPEN,
    evt.EVT_REQUESTED,
    evt.EVT_ACCEPTED,
    evt.EVT_ESTABLISHED,
    evt.EVT_REJECTED,
    evt.EVT_RELEASED,
    evt.EVT_ABORTED,
    evt.EVT_CONN_CLOSE,
]


# ---------------------------------------------------------------- recording
@dataclass
class Stored:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    encoded: bytes  # the data set as received, without file meta
    extra: Any = None  # chromanet: the association; pynetdicom: the decoded Dataset


@dataclass
class Recorder:
    """What a server saw: notification events and stored data sets.

    Handlers run on the loop thread; tests read from their own thread (sync)
    or from the loop (async), hence the condition and the two waits.
    """

    events: list[tuple[str, Any]] = field(default_factory=list)
    stored: list[Stored] = field(default_factory=list)
    echoes: int = 0
    store_status: Any = 0x0000
    cond: threading.Condition = field(default_factory=threading.Condition)

    def on_event(self, event: Any) -> None:
        with self.cond:
            self.events.append((event.event.name, event.assoc))
            self.cond.notify_all()

    def on_echo(self, event: Any) -> int:
        with self.cond:
            self.echoes += 1
            self.cond.notify_all()
        return 0x0000

    def on_store(self, event: Any) -> Any:
        command = event.request.command
        item = Stored(
            str(command.affected_sop_class_uid),
            str(command.affected_sop_instance_uid),
            str(event.context.transfer_syntax),
            event.encoded_dataset(include_meta=False),
            event.assoc,
        )
        with self.cond:
            self.stored.append(item)
            self.cond.notify_all()
        return self.store_status

    def handlers(self, store: bool = True) -> list[Any]:
        bound: list[Any] = [(e, self.on_event) for e in NOTIFICATION_EVENTS]
        bound.append((evt.EVT_C_ECHO, self.on_echo))
        if store:
            bound.append((evt.EVT_C_STORE, self.on_store))
        return bound

    def names(self) -> list[str]:
        with self.cond:
            return [name for name, _ in self.events]

    def count(self, name: str) -> int:
        return self.names().count(name)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT_TIMEOUT) -> bool:
        """Block (not on the loop thread) until ``predicate()`` or timeout.
        Woken by each recorded event, and re-checked every few ms for
        predicates on state the recorder does not see change."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(min(remaining, 0.01))
            return True

    def wait_event(self, name: str, count: int = 1, timeout: float = WAIT_TIMEOUT) -> bool:
        return self.wait_for(lambda: [n for n, _ in self.events].count(name) >= count, timeout)

    async def wait_until_async(self, predicate: Callable[[], bool], timeout: float = WAIT_TIMEOUT) -> bool:
        """For a server on the running loop: yield to it until ``predicate()``."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def wait_event_async(self, name: str, count: int = 1, timeout: float = WAIT_TIMEOUT) -> bool:
        return await self.wait_until_async(lambda: self.count(name) >= count, timeout)


# ---------------------------------------------------------------- chromanet AEs
def configure_scp_ae(
    ae_title: str = "SRV",
    transfer_syntaxes: list[str] | None = None,
    **settings: Any,
) -> AE:
    """An AE supporting Verification and Color Palette Storage, with short
    timeouts; ``settings`` are AE attributes (require_calling_aet...)."""
    ae = AE(ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT
    ae.add_supported_context(uids.Verification)
    if transfer_syntaxes is None:
        ae.add_supported_context(uids.ColorPaletteStorage)
    else:
        ae.add_supported_context(uids.ColorPaletteStorage, transfer_syntaxes)
    for name, value in settings.items():
        if not hasattr(ae, name):
            raise AttributeError(f"AE has no setting {name!r}")
        setattr(ae, name, value)
    return ae


def scu_ae(ae_title: str = "CLI", palette_syntaxes: list[str] | None = None) -> AE:
    """A chromanet requestor for Verification and Color Palette Storage."""
    ae = AE(ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = NETWORK_TIMEOUT
    ae.add_requested_context(uids.Verification)
    if palette_syntaxes is None:
        ae.add_requested_context(uids.ColorPaletteStorage)
    else:
        ae.add_requested_context(uids.ColorPaletteStorage, palette_syntaxes)
    return ae


# ---------------------------------------------------------------- chromanet SCPs
@dataclass
class ScpHandle:
    ae: AE
    server: Any  # ThreadedServer or AsyncServer
    recorder: Recorder

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def stored(self) -> list[Stored]:
        return self.recorder.stored


def start_scp(
    started: list[Any], ae: AE, handlers: list[Any] | None, store: bool, ssl_context: Any = None
) -> ScpHandle:
    """Start ``ae`` (blocking API, on the background loop) on a free port
    with a Recorder's handlers (plus ``handlers``), over TLS with
    ``ssl_context``; ``started`` collects the server for the fixture to shut
    down."""
    recorder = Recorder()
    bound = recorder.handlers(store=store) + list(handlers or [])
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=bound, ssl_context=ssl_context)
    assert server is not None
    started.append(server)
    return ScpHandle(ae, server, recorder)


@contextlib.asynccontextmanager
async def async_scp(
    ae_title: str = "SRV",
    transfer_syntaxes: list[str] | None = None,
    handlers: list[Any] | None = None,
    store: bool = True,
    **settings: Any,
) -> AsyncIterator[ScpHandle]:
    """The async flavour: an AsyncServer on the running loop, closed on exit
    (``async with async_scp(...) as scp``)."""
    ae = configure_scp_ae(ae_title, transfer_syntaxes, **settings)
    recorder = Recorder()
    bound = recorder.handlers(store=store) + list(handlers or [])
    server = await ae.start_server_async(("127.0.0.1", 0), evt_handlers=bound)
    try:
        yield ScpHandle(ae, server, recorder)
    finally:
        await asyncio.wait_for(server.close(), WAIT_TIMEOUT)


# ---------------------------------------------------------------- pynetdicom SCP
@dataclass
class PynetdicomScp:
    ae: Any
    server: Any
    stored: list[Stored]
    events: list[str]
    cond: threading.Condition

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def wait_event(self, name: str, timeout: float = WAIT_TIMEOUT) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: name in self.events, timeout)


def start_pynetdicom_scp(
    pynetdicom: Any, ae_title: str = "PYSCP", require_called_aet: bool = False, ssl_context: Any = None
) -> PynetdicomScp:
    """A pynetdicom SCP (Verification + Color Palette Storage) on a free
    port (over TLS with ``ssl_context``), recording stored data sets (as
    pynetdicom's ``event.dataset``) and notification events. The caller
    shuts ``handle.server`` down."""
    pevt = pynetdicom.evt
    ae = pynetdicom.AE(ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT
    ae.require_called_aet = require_called_aet
    ae.add_supported_context(uids.Verification)
    ae.add_supported_context(uids.ColorPaletteStorage)
    handle = PynetdicomScp(ae, None, [], [], threading.Condition())

    def on_store(event: Any) -> int:
        request = event.request
        item = Stored(
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
            str(event.context.transfer_syntax),
            request.DataSet.getvalue(),  # as received, not decoded
            event.dataset,
        )
        with handle.cond:
            handle.stored.append(item)
            handle.cond.notify_all()
        return 0

    def on_event(event: Any) -> None:
        with handle.cond:
            handle.events.append(event.event.name)
            handle.cond.notify_all()

    bound = [(pevt.EVT_C_STORE, on_store)] + [
        (getattr(pevt, name), on_event) for name in ("EVT_ABORTED", "EVT_RELEASED", "EVT_CONN_CLOSE", "EVT_REJECTED")
    ]
    handle.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=bound, ssl_context=ssl_context)
    return handle


# ---------------------------------------------------------------- server processes
def free_port() -> int:
    """A port free right now (for subprocess servers that need a number)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen[Any] | None = None, timeout: float = WAIT_TIMEOUT) -> None:
    """Until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port} after {timeout} s") from None
            time.sleep(0.05)


@contextlib.contextmanager
def subprocess_server(args: list[str], port: int, cwd: Path | None = None) -> Iterator[subprocess.Popen[str]]:
    """Start ``args`` (a server on ``port``), wait until it listens, always
    kill it afterwards."""
    process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_listening(port, process)
        yield process
    finally:
        process.kill()
        try:
            process.communicate(timeout=WAIT_TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
