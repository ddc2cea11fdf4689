"""Shared fixtures for the loopback integration tests.

Every server a fixture starts listens on 127.0.0.1 port 0 (a free port the
kernel picks) and is shut down in the fixture's ``finally``, whatever the
test did. Every wait is bounded: the AEs get short ACSE/DIMSE/network
timeouts, waits for events take a timeout, subprocesses run with one, and
pytest-timeout (pyproject) is the last resort.

External peers (pynetdicom, DCMTK tools) are found at test time; when one is
missing the test is skipped with the reason, except under CI (``CI`` set in
the environment), where a missing peer fails the test: CI must run them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import pytest

from chromanet import evt, uids
from chromanet.ae import AE

# Seconds. Generous for a loaded CI machine, short enough that a hang shows.
NETWORK_TIMEOUT = 10.0
WAIT_TIMEOUT = 10.0

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

DCMTK_HINT = "apt-get install dcmtk"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "peer: needs an external DICOM peer (pynetdicom or DCMTK tools)")
    config.addinivalue_line("markers", "load: many concurrent associations against one server")


# ---------------------------------------------------------------- peers
def missing_peer(reason: str) -> None:
    """Skip, or fail under CI: a CI run must exercise every peer."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: peers are required)", pytrace=False)
    pytest.skip(reason)


def require_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        missing_peer(f"{name} not installed: pip install {name}")


def _is_dcmtk(path: str) -> bool:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "dcmtk" in (out.stdout + out.stderr).lower()


_DCMTK_CACHE: dict[str, str | None] = {}


def find_dcmtk_tool(name: str) -> str | None:
    """The first ``name`` on PATH that is DCMTK's. pynetdicom installs
    console scripts with the same names (storescp, echoscu...) that may come
    first on PATH, so ``shutil.which`` alone is not enough."""
    if name not in _DCMTK_CACHE:
        found = None
        for directory in os.environ.get("PATH", "").split(os.pathsep):
            candidate = shutil.which(name, path=directory)
            if candidate and _is_dcmtk(candidate):
                found = candidate
                break
        _DCMTK_CACHE[name] = found
    return _DCMTK_CACHE[name]


def require_dcmtk(name: str) -> str:
    path = find_dcmtk_tool(name)
    if path is None:
        missing_peer(f"DCMTK's {name} not installed: {DCMTK_HINT}")
    assert path is not None
    return path


@pytest.fixture
def dcmtk() -> Callable[[str], str]:
    """``dcmtk("storescu")`` -> path of DCMTK's tool (skip/fail if missing)."""
    return require_dcmtk


@pytest.fixture
def pynetdicom() -> Any:
    return require_module("pynetdicom")


# ---------------------------------------------------------------- data
@pytest.fixture(scope="session")
def palette_files() -> list[Path]:
    from pydicom.data import get_palette_files

    files = sorted(Path(f) for f in get_palette_files("*.dcm"))
    assert len(files) == 8, files
    return files


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file (everything after group 0002),
    read with pydicom's own file meta reader (not chromanet's)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with open(path, "rb") as fp:
        read_preamble(fp, False)
        _read_file_meta_info(fp)
        return fp.read()


def pydicom_decode(data: bytes, transfer_syntax: str) -> Any:
    """pydicom's decode of a data set in Implicit or Explicit VR LE."""
    import io

    from pydicom.filereader import read_dataset

    if transfer_syntax not in (uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian):
        raise ValueError(transfer_syntax)
    return read_dataset(io.BytesIO(data), transfer_syntax == uids.ImplicitVRLittleEndian, True)


def pydicom_encode(dataset: Any, transfer_syntax: str) -> bytes:
    """pydicom's own encoding of ``dataset`` (no file meta) in Implicit or
    Explicit VR Little Endian: the reference chromanet's bytes are held to."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    if transfer_syntax not in (uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian):
        raise ValueError(transfer_syntax)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = transfer_syntax == uids.ImplicitVRLittleEndian
    buffer.is_little_endian = True
    write_dataset(buffer, dataset)
    return buffer.getvalue()


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
            str(event.context.transfer_syntax[0]),
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


# ---------------------------------------------------------------- chromanet SCPs
@pytest.fixture
def make_scp() -> Iterator[Callable[..., ScpHandle]]:
    """Factory for blocking-API chromanet SCPs (on the background loop):
    ``make_scp(ae_title=..., transfer_syntaxes=..., handlers=[...],
    store=True, **ae_settings)``. All are shut down after the test."""
    started: list[Any] = []

    def make(
        ae_title: str = "SRV",
        transfer_syntaxes: list[str] | None = None,
        handlers: list[Any] | None = None,
        store: bool = True,
        **settings: Any,
    ) -> ScpHandle:
        return _start_scp(started, configure_scp_ae(ae_title, transfer_syntaxes, **settings), handlers, store)

    try:
        yield make
    finally:
        for server in started:
            server.shutdown()


def _start_scp(started: list[Any], ae: AE, handlers: list[Any] | None, store: bool) -> ScpHandle:
    """Start ``ae`` on a free port with a Recorder's handlers (plus
    ``handlers``); ``started`` collects it for the fixture to shut down."""
    recorder = Recorder()
    bound = recorder.handlers(store=store) + list(handlers or [])
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=bound)
    assert server is not None
    started.append(server)
    return ScpHandle(ae, server, recorder)


@pytest.fixture
def chromanet_scp(make_scp: Callable[..., ScpHandle]) -> ScpHandle:
    """A blocking-API chromanet SCP "SRV": Verification + Color Palette
    Storage (all four default transfer syntaxes), recording what it stored."""
    return make_scp()


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


@pytest.fixture
def async_chromanet_scp() -> Callable[..., Any]:
    """``async with async_chromanet_scp(**options) as scp:`` inside a test
    coroutine run by ``run_async`` (the server lives on that loop)."""
    return async_scp


def run_async(coro: Any, timeout: float = 60.0) -> Any:
    """Run a test coroutine on a fresh uvloop loop, bounded."""
    import uvloop

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return uvloop.run(bounded())


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


@pytest.fixture
def make_pynetdicom_scp(pynetdicom: Any) -> Iterator[Callable[..., PynetdicomScp]]:
    """Factory for pynetdicom SCPs (Verification + Color Palette Storage)
    recording stored data sets (as pynetdicom's ``event.dataset``) and
    notification events; shut down after the test."""
    started: list[Any] = []
    pevt = pynetdicom.evt

    def make(ae_title: str = "PYSCP", require_called_aet: bool = False) -> PynetdicomScp:
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
        handle.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=bound)
        started.append(handle.server)
        return handle

    try:
        yield make
    finally:
        for server in started:
            server.shutdown()


@pytest.fixture
def pynetdicom_scp(make_pynetdicom_scp: Callable[..., PynetdicomScp]) -> PynetdicomScp:
    return make_pynetdicom_scp()


# ---------------------------------------------------------------- helpers
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


# ---------------------------------------------------------------- Q/R: Color Palette (PS3.4 Annex X)
QR_MODELS = (
    uids.ColorPaletteInformationModelFind,
    uids.ColorPaletteInformationModelGet,
    uids.ColorPaletteInformationModelMove,
)


def configure_qr_scp_ae(ae_title: str = "QRSCP", **settings: Any) -> AE:
    """An AE serving Color Palette FIND/GET/MOVE: the storage context takes
    either role (the SCP role proposed by a C-GET SCU is accepted), and
    Color Palette Storage is requested for C-MOVE sub-associations."""
    ae = configure_scp_ae(ae_title, **settings)
    for model in QR_MODELS:
        ae.add_supported_context(model)
    ae.add_supported_context(uids.ColorPaletteStorage, scu_role=True, scp_role=True)
    ae.add_requested_context(uids.ColorPaletteStorage)
    return ae


@pytest.fixture
def make_qr_scp() -> Iterator[Callable[..., ScpHandle]]:
    """Factory for blocking-API chromanet Q/R SCPs on free ports:
    ``make_qr_scp(handlers=[(evt.EVT_C_FIND, on_find)], **ae_settings)``.
    All are shut down after the test."""
    started: list[Any] = []

    def make(handlers: list[Any] | None = None, ae_title: str = "QRSCP", **settings: Any) -> ScpHandle:
        return _start_scp(started, configure_qr_scp_ae(ae_title, **settings), handlers, store=False)

    try:
        yield make
    finally:
        for server in started:
            server.shutdown()


def qr_scu_ae(ae_title: str = "QRSCU", models: tuple[str, ...] = QR_MODELS) -> AE:
    """A chromanet requestor for the Color Palette Q/R models (the C-GET
    model brings Color Palette Storage with the SCP role along)."""
    ae = AE(ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = NETWORK_TIMEOUT
    for model in models:
        ae.add_requested_context(model)
    return ae


@pytest.fixture(scope="session")
def palettes(palette_files: list[Path]) -> dict[str, Any]:
    """SOP Instance UID -> the palette as read by pydicom (8 entries;
    ``ds.filename`` is its file)."""
    import pydicom

    read = {}
    for path in palette_files:
        ds = pydicom.dcmread(path)
        read[str(ds.SOPInstanceUID)] = ds
    assert sorted(read) == [f"1.2.840.10008.1.5.{i}" for i in range(1, 9)]
    return read


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_TIMEOUT) -> bool:
    """Poll ``predicate`` from a test thread (never the loop) until true or timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class StoreLog:
    """An EVT_C_STORE handler for chromanet or pynetdicom: records
    (SOP Instance UID, Move Originator AE Title, Move Originator Message ID)
    and answers ``answers.get(uid, 0x0000)``."""

    def __init__(self, answers: dict[str, int] | None = None) -> None:
        self.answers = dict(answers or {})
        self.received: list[tuple[str, str | None, int | None]] = []
        self.cond = threading.Condition()

    def __call__(self, event: Any) -> int:
        request = event.request
        uid = str(request.AffectedSOPInstanceUID)
        aet = getattr(request, "MoveOriginatorApplicationEntityTitle", None)
        if isinstance(aet, bytes):
            aet = aet.decode("ascii")
        msg_id = getattr(request, "MoveOriginatorMessageID", None)
        with self.cond:
            self.received.append((uid, aet.strip() if aet else aet, msg_id))
            self.cond.notify_all()
        return self.answers.get(uid, 0x0000)

    @property
    def uids(self) -> list[str]:
        with self.cond:
            return [uid for uid, _, _ in self.received]


@dataclass
class PynetdicomDestination:
    ae: Any
    server: Any
    log: StoreLog

    @property
    def port(self) -> int:
        return self.server.server_address[1]


@pytest.fixture
def make_pynetdicom_destination(pynetdicom: Any) -> Iterator[Callable[..., PynetdicomDestination]]:
    """Factory for pynetdicom Color Palette Storage SCPs (C-MOVE
    destinations) answering each C-STORE from a StoreLog; shut down after
    the test."""
    started: list[Any] = []

    def make(ae_title: str = "PYDEST", answers: dict[str, int] | None = None) -> PynetdicomDestination:
        ae = pynetdicom.AE(ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT
        ae.add_supported_context(uids.ColorPaletteStorage)
        log = StoreLog(answers)
        server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(pynetdicom.evt.EVT_C_STORE, log)])
        started.append(server)
        return PynetdicomDestination(ae, server, log)

    try:
        yield make
    finally:
        for server in started:
            server.shutdown()
