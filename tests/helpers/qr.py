"""Color Palette Query/Retrieve (PS3.4 Annex X) set-up: the SCP and SCU
AEs, associations for the Q/R models from chromanet and from pynetdicom,
and store handlers that log what C-GET and C-MOVE sub-operations
delivered."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Iterator

from pydicom import Dataset

from chromanet import evt, uids
from chromanet.ae import AE
from helpers.servers import configure_scp_ae
from helpers.waits import NETWORK_TIMEOUT

FIND = uids.ColorPaletteInformationModelFind
GET = uids.ColorPaletteInformationModelGet
MOVE = uids.ColorPaletteInformationModelMove
QR_MODELS = (FIND, GET, MOVE)

# SOP Instance UIDs of the eight well-known palettes (PS3.6 Annex A).
UIDS = [f"1.2.840.10008.1.5.{i}" for i in range(1, 9)]


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


def qr_scu_ae(ae_title: str = "QRSCU", models: tuple[str, ...] = QR_MODELS) -> AE:
    """A chromanet requestor for the Color Palette Q/R models (the C-GET
    model brings Color Palette Storage with the SCP role along)."""
    ae = AE(ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = NETWORK_TIMEOUT
    for model in models:
        ae.add_requested_context(model)
    return ae


@contextlib.contextmanager
def qr_association(port: int, called: str = "QRSCP", store: Any = None, calling: str = "QRSCU") -> Iterator[Any]:
    """A blocking chromanet association for the Q/R models (``qr_scu_ae``)
    to 127.0.0.1:``port``, ``store`` handling C-GET's C-STOREs; released
    afterwards if still established."""
    handlers = [(evt.EVT_C_STORE, store)] if store is not None else None
    assoc = qr_scu_ae(calling).associate("127.0.0.1", port, ae_title=called, evt_handlers=handlers)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


@contextlib.contextmanager
def pynetdicom_qr_association(pynetdicom: Any, port: int, called: str = "QRSCP", store: Any = None) -> Iterator[Any]:
    """A pynetdicom association (AE PYQRSCU) for the Q/R models to
    127.0.0.1:``port``, proposing the SCP role for Color Palette Storage
    (for C-GET, ``store`` handling the C-STOREs); released afterwards."""
    ae = pynetdicom.AE("PYQRSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT
    for model in QR_MODELS:
        ae.add_requested_context(model)
    ae.add_requested_context(uids.ColorPaletteStorage)
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title=called,
        ext_neg=[pynetdicom.build_role(uids.ColorPaletteStorage, scp_role=True)],
        evt_handlers=[(pynetdicom.evt.EVT_C_STORE, store)] if store is not None else [],
    )
    assert assoc.is_established
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def statuses(responses: list[tuple[Dataset, Any]]) -> list[int]:
    """The Status of each (status, identifier) response."""
    return [int(status.Status) for status, _ in responses]


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


def start_pynetdicom_destination(
    pynetdicom: Any, ae_title: str = "PYDEST", answers: dict[str, int] | None = None
) -> PynetdicomDestination:
    """A pynetdicom Color Palette Storage SCP (a C-MOVE destination) on a
    free port, answering each C-STORE from a StoreLog. The caller shuts
    ``destination.server`` down."""
    ae = pynetdicom.AE(ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT
    ae.add_supported_context(uids.ColorPaletteStorage)
    log = StoreLog(answers)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(pynetdicom.evt.EVT_C_STORE, log)])
    return PynetdicomDestination(ae, server, log)
