"""One test module, two libraries: pynetdicom and chromanet.

Every test is written once, the way a pynetdicom program is written
(handlers bound with ``evt_handlers``, ``ae.start_server(..., block=False)``,
``assoc.send_c_find(...)`` generators), and runs against both libraries
through the ``lib`` fixture. No test body branches on the library: where the
two behave differently the difference is in docs/compatibility.md, not
hidden here.
"""

from __future__ import annotations

import copy
import importlib
import socket
from io import BytesIO
import threading
import time
from datetime import datetime
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from pydicom import Dataset, dcmread
from pydicom.filereader import read_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from helpers.data import palette_paths

LIBRARIES = ["pynetdicom", "chromanet"]
TIMEOUT = 10
PALETTE_PATHS = palette_paths()


@pytest.fixture(scope="module", params=LIBRARIES)
def lib(request: pytest.FixtureRequest) -> SimpleNamespace:
    name = request.param
    try:
        module = importlib.import_module(name)
    except ImportError:
        pytest.skip(f"{name} is not installed")
    return SimpleNamespace(
        name=name,
        AE=module.AE,
        evt=module.evt,
        build_context=module.build_context,
        build_role=module.build_role,
        sop_class=importlib.import_module(name + ".sop_class"),
        status=importlib.import_module(name + ".status"),
        pdu_primitives=importlib.import_module(name + ".pdu_primitives"),
        VerificationPresentationContexts=module.VerificationPresentationContexts,
        ColorPalettePresentationContexts=module.ColorPalettePresentationContexts,
        StoragePresentationContexts=module.StoragePresentationContexts,
    )


@pytest.fixture
def servers() -> Iterator[list[Any]]:
    """Servers a test starts; all shut down afterwards, whatever happened."""
    started: list[Any] = []
    yield started
    for server in started:
        server.shutdown()


@pytest.fixture(scope="module")
def palettes() -> list[Dataset]:
    assert len(PALETTE_PATHS) == 8
    return [dcmread(path) for path in PALETTE_PATHS]


def make_ae(lib: SimpleNamespace, title: str) -> Any:
    ae = lib.AE(ae_title=title)
    ae.acse_timeout = TIMEOUT
    ae.dimse_timeout = TIMEOUT
    ae.network_timeout = TIMEOUT
    return ae


def serve(lib: SimpleNamespace, servers: list[Any], ae: Any, handlers: list[Any]) -> tuple[Any, int]:
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    servers.append(server)
    return server, server.server_address[1]


def echo_scp(lib: SimpleNamespace, servers: list[Any], handlers: list[Any]) -> tuple[Any, int]:
    """A Verification SCP titled ECHOSCP with ``handlers``: (server, port)."""
    scp = make_ae(lib, "ECHOSCP")
    scp.add_supported_context(lib.sop_class.Verification)
    return serve(lib, servers, scp, handlers)


def echo_scu(lib: SimpleNamespace) -> Any:
    """An AE titled ECHOSCU that requests Verification."""
    scu = make_ae(lib, "ECHOSCU")
    scu.add_requested_context(lib.sop_class.Verification)
    return scu


def event_recorder() -> tuple[list[str], Any]:
    """A notification handler and the event names it recorded, in order."""
    names: list[str] = []
    lock = threading.Lock()

    def record(event: Any) -> None:
        with lock:
            names.append(event.event.name)

    return names, record


def palette_identifier(ds: Dataset) -> Dataset:
    identifier = Dataset()
    identifier.SOPInstanceUID = ds.SOPInstanceUID
    identifier.ContentLabel = ds.ContentLabel
    return identifier


def query_all() -> Dataset:
    query = Dataset()
    query.SOPInstanceUID = ""
    query.ContentLabel = ""
    return query


def wait_for(predicate: Any, timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# ------------------------------------------------------------------ C-ECHO
def test_echo(lib: SimpleNamespace, servers: list[Any]) -> None:
    seen: dict[str, Any] = {}

    def handle_echo(event: Any) -> int:
        seen["event"] = event.event
        seen["message_id"] = event.message_id
        seen["timestamp"] = event.timestamp
        seen["abstract_syntax"] = event.context.abstract_syntax
        seen["calling"] = event.assoc.requestor.ae_title
        seen["called"] = event.assoc.acceptor.ae_title
        return 0x0000

    scp = make_ae(lib, "ECHOSCP")
    scp.supported_contexts = lib.VerificationPresentationContexts
    _server, port = serve(lib, servers, scp, [(lib.evt.EVT_C_ECHO, handle_echo)])

    scu = echo_scu(lib)
    assoc = scu.associate("127.0.0.1", port, ae_title="ECHOSCP")
    assert assoc.is_established
    assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [lib.sop_class.Verification]
    assert assoc.rejected_contexts == []
    assert assoc.acceptor.ae_title == "ECHOSCP"
    assert assoc.acceptor.port == port
    assert assoc.requestor.ae_title == "ECHOSCU"
    status = assoc.send_c_echo(msg_id=7)
    assert isinstance(status, Dataset)
    assert status.Status == 0x0000
    assoc.release()
    assert assoc.is_released
    assert not assoc.is_established

    assert seen["event"] == lib.evt.EVT_C_ECHO
    assert seen["message_id"] == 7
    assert isinstance(seen["timestamp"], datetime)
    assert seen["abstract_syntax"] == lib.sop_class.Verification
    assert (seen["calling"], seen["called"]) == ("ECHOSCU", "ECHOSCP")


def test_echo_failure_status_from_handler(lib: SimpleNamespace, servers: list[Any]) -> None:
    def handle_echo(event: Any) -> Dataset:
        status = Dataset()
        status.Status = 0x0122
        status.ErrorComment = "not today"
        return status

    _server, port = echo_scp(lib, servers, [(lib.evt.EVT_C_ECHO, handle_echo)])
    scu = echo_scu(lib)
    assoc = scu.associate("127.0.0.1", port)
    assert assoc.is_established
    status = assoc.send_c_echo()
    assert status.Status == 0x0122
    assert status.ErrorComment == "not today"
    assert lib.status.code_to_category(status.Status) == "Failure"
    assoc.release()


def test_echo_handler_raises(lib: SimpleNamespace, servers: list[Any]) -> None:
    def handle_echo(event: Any) -> int:
        raise RuntimeError("deliberate")

    _server, port = echo_scp(lib, servers, [(lib.evt.EVT_C_ECHO, handle_echo)])
    scu = echo_scu(lib)
    assoc = scu.associate("127.0.0.1", port)
    # Both libraries answer a C-ECHO whose handler raised with Success.
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_echo_handler_without_usable_status(lib: SimpleNamespace, servers: list[Any]) -> None:
    """A C-ECHO handler returning None, a Dataset without Status or a value
    of another type: both libraries answer Success."""
    answers: list[Any] = [None, Dataset(), "not a status"]
    errors: list[type] = []

    def handle_echo(event: Any) -> Any:
        try:
            event.file_meta  # a C-ECHO carries no data set
        except Exception as exc:
            errors.append(type(exc))
        return answers.pop(0)

    _server, port = echo_scp(lib, servers, [(lib.evt.EVT_C_ECHO, handle_echo)])
    scu = echo_scu(lib)
    assoc = scu.associate("127.0.0.1", port)
    assert [assoc.send_c_echo().Status for _ in range(3)] == [0x0000, 0x0000, 0x0000]
    assert answers == []
    assert errors == [AttributeError] * 3
    assoc.release()


# ------------------------------------------------------------ association
def test_rejected_association(lib: SimpleNamespace, servers: list[Any]) -> None:
    scp = make_ae(lib, "STRICT")
    scp.require_called_aet = True
    scp.add_supported_context(lib.sop_class.Verification)
    _server, port = serve(lib, servers, scp, [])
    scu = echo_scu(lib)
    assoc = scu.associate("127.0.0.1", port, ae_title="SOMEONEELSE")
    assert assoc.is_rejected
    assert not assoc.is_established
    assert not assoc.is_aborted


def test_settings_changed_while_running_apply(lib: SimpleNamespace, servers: list[Any]) -> None:
    """``require_calling_aet`` / ``require_called_aet`` changed while the
    server runs apply to the next request; timeouts set on the AE apply to
    its associations already established."""
    scp = make_ae(lib, "STRICT")
    scp.add_supported_context(lib.sop_class.Verification)
    _server, port = serve(lib, servers, scp, [])
    scu = echo_scu(lib)

    assoc = scu.associate("127.0.0.1", port, ae_title="ANYONE")
    assert assoc.is_established
    assoc.release()
    scp.require_calling_aet = ["SOMEONE"]
    assert scu.associate("127.0.0.1", port, ae_title="ANYONE").is_rejected
    scp.require_calling_aet = ["ECHOSCU"]
    scp.require_called_aet = True
    assert scu.associate("127.0.0.1", port, ae_title="ANYONE").is_rejected
    assoc = scu.associate("127.0.0.1", port, ae_title="STRICT")
    assert assoc.is_established

    # The SCP sends nothing unasked: with the network timeout now short,
    # the idle association is aborted by the requestor.
    scu.acse_timeout = 7
    scu.dimse_timeout = 8
    scu.network_timeout = 0.5
    assert (assoc.acse_timeout, assoc.dimse_timeout, assoc.network_timeout) == (7, 8, 0.5)
    assert wait_for(lambda: assoc.is_aborted, timeout=5)


def test_extended_negotiation_items_from_pdu_primitives(lib: SimpleNamespace, servers: list[Any]) -> None:
    """A requestor passes pynetdicom's ``pdu_primitives`` items in
    ``ext_neg``: user identity (verified, or the association rejected),
    SOP class extended negotiation, role selection, the operations window."""
    identities: list[tuple[int, bytes, Any]] = []
    app_infos: list[dict[Any, bytes]] = []

    def handle_identity(event: Any) -> tuple[bool, bytes | None]:
        identities.append((event.user_id_type, event.primary_field, event.secondary_field))
        return event.primary_field == b"alice", b"welcome"

    def handle_extended(event: Any) -> dict[Any, bytes]:
        app_infos.append({str(uid): bytes(info) for uid, info in event.app_info.items()})
        return {}

    scp = make_ae(lib, "STRICT")
    scp.add_supported_context(lib.sop_class.Verification)
    scp.add_supported_context(lib.sop_class.ColorPaletteStorage, scu_role=True, scp_role=True)
    _server, port = serve(
        lib, servers, scp, [(lib.evt.EVT_USER_ID, handle_identity), (lib.evt.EVT_SOP_EXTENDED, handle_extended)]
    )

    def items(user: bytes) -> list[Any]:
        identity = lib.pdu_primitives.UserIdentityNegotiation()
        identity.user_identity_type = 2
        identity.primary_field = user
        identity.secondary_field = b"secret"
        identity.positive_response_requested = True
        extended = lib.pdu_primitives.SOPClassExtendedNegotiation()
        extended.sop_class_uid = lib.sop_class.Verification
        extended.service_class_application_information = b"\x01\x00"
        role = lib.pdu_primitives.SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = lib.sop_class.ColorPaletteStorage
        role.scu_role = True
        role.scp_role = True
        window = lib.pdu_primitives.AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 1
        window.maximum_number_operations_performed = 1
        return [identity, extended, role, window]

    scu = echo_scu(lib)
    scu.add_requested_context(lib.sop_class.ColorPaletteStorage)
    assoc = scu.associate("127.0.0.1", port, ext_neg=items(b"alice"))
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assoc = scu.associate("127.0.0.1", port, ext_neg=items(b"mallory"))
    assert assoc.is_rejected
    assert identities == [(2, b"alice", b"secret"), (2, b"mallory", b"secret")]
    assert app_infos[0] == {lib.sop_class.Verification: b"\x01\x00"}

    bad = lib.pdu_primitives.UserIdentityNegotiation()
    with pytest.raises(ValueError):
        bad.user_identity_type = 7
    with pytest.raises(TypeError):
        bad.primary_field = "not bytes"


def test_calling_aet_not_allowed(lib: SimpleNamespace, servers: list[Any]) -> None:
    scp = make_ae(lib, "STRICT")
    scp.require_calling_aet = ["FRIEND"]
    scp.add_supported_context(lib.sop_class.Verification)
    _server, port = serve(lib, servers, scp, [])
    scu = make_ae(lib, "STRANGER")
    scu.add_requested_context(lib.sop_class.Verification)
    assert scu.associate("127.0.0.1", port).is_rejected
    friend = make_ae(lib, "FRIEND")
    friend.add_requested_context(lib.sop_class.Verification)
    assoc = friend.associate("127.0.0.1", port)
    assert assoc.is_established
    assoc.release()


def test_notification_events(lib: SimpleNamespace, servers: list[Any]) -> None:
    names, record = event_recorder()
    events = [
        lib.evt.EVT_CONN_OPEN,
        lib.evt.EVT_REQUESTED,
        lib.evt.EVT_ACCEPTED,
        lib.evt.EVT_ESTABLISHED,
        lib.evt.EVT_RELEASED,
        lib.evt.EVT_CONN_CLOSE,
    ]
    _server, port = echo_scp(lib, servers, [(event, record) for event in events])
    scu = echo_scu(lib)
    assoc = scu.associate("127.0.0.1", port)
    assoc.release()
    assert wait_for(lambda: "EVT_CONN_CLOSE" in names)
    assert names == [event.name for event in events]


def test_notification_events_of_the_requestor(lib: SimpleNamespace, servers: list[Any]) -> None:
    """The requesting side gets its own notifications, EVT_REQUESTED (the
    A-ASSOCIATE-RQ sent) among them, in order: the requestor's order differs
    from the acceptor's (EVT_REQUESTED comes before EVT_CONN_OPEN)."""
    names, record = event_recorder()
    events = [
        lib.evt.EVT_REQUESTED,
        lib.evt.EVT_CONN_OPEN,
        lib.evt.EVT_ACCEPTED,
        lib.evt.EVT_ESTABLISHED,
        lib.evt.EVT_RELEASED,
        lib.evt.EVT_CONN_CLOSE,
    ]
    _server, port = echo_scp(lib, servers, [])
    scu = echo_scu(lib)
    assoc = scu.associate("127.0.0.1", port, evt_handlers=[(event, record) for event in events])
    assert assoc.is_established
    assoc.release()
    assert wait_for(lambda: len(names) == len(events))
    # pynetdicom's own requestor notifies the release and the closed
    # connection from two threads, in either order.
    assert names[:4] == [event.name for event in events[:4]]
    assert sorted(names[4:]) == ["EVT_CONN_CLOSE", "EVT_RELEASED"]


def test_aborted_by_peer_mid_find(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    """When the association ends before the final response, the generator
    yields one (empty Dataset, None) and stops."""

    def handle_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xFF00, palette_identifier(palettes[0])
        event.assoc.abort()
        yield 0xFF00, palette_identifier(palettes[1])

    scp = make_ae(lib, "FINDSCP")
    scp.add_supported_context(lib.sop_class.ColorPaletteInformationModelFind)
    _server, port = serve(lib, servers, scp, [(lib.evt.EVT_C_FIND, handle_find)])
    scu = make_ae(lib, "FINDSCU")
    scu.add_requested_context(lib.sop_class.ColorPaletteInformationModelFind)
    assoc = scu.associate("127.0.0.1", port)
    results = list(assoc.send_c_find(query_all(), lib.sop_class.ColorPaletteInformationModelFind))
    last_status, last_identifier = results[-1]
    assert last_status == Dataset()
    assert "Status" not in last_status
    assert last_identifier is None
    assert all(status.Status == 0xFF00 for status, _ in results[:-1])
    assert wait_for(lambda: assoc.is_aborted)
    assert not assoc.is_established


# ----------------------------------------------------------------- C-STORE
def test_store_palettes(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    received: list[tuple[str, str, str, str]] = []

    def handle_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(
            (
                str(ds.SOPInstanceUID),
                str(ds.ContentLabel),
                str(event.file_meta.MediaStorageSOPClassUID),
                str(event.request.AffectedSOPInstanceUID),
            )
        )
        return 0x0000

    scp = make_ae(lib, "STORESCP")
    scp.add_supported_context(lib.sop_class.ColorPaletteStorage)
    _server, port = serve(lib, servers, scp, [(lib.evt.EVT_C_STORE, handle_store)])

    scu = make_ae(lib, "STORESCU")
    scu.add_requested_context(lib.sop_class.ColorPaletteStorage)
    assoc = scu.associate("127.0.0.1", port)
    assert assoc.is_established
    for ds in palettes[:7]:
        status = assoc.send_c_store(ds)
        assert status.Status == 0x0000
    # A path to a Part 10 file is accepted as well.
    assert assoc.send_c_store(str(PALETTE_PATHS[7])).Status == 0x0000
    assoc.release()

    expected = [
        (str(ds.SOPInstanceUID), str(ds.ContentLabel), str(lib.sop_class.ColorPaletteStorage), str(ds.SOPInstanceUID))
        for ds in palettes
    ]
    assert received == expected


def test_store_handler_raises_and_failure_status(
    lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]
) -> None:
    def handle_store(event: Any) -> int:
        if event.dataset.ContentLabel == palettes[0].ContentLabel:
            raise ValueError("deliberate")
        return 0xA700

    scp = make_ae(lib, "STORESCP")
    scp.add_supported_context(lib.sop_class.ColorPaletteStorage)
    _server, port = serve(lib, servers, scp, [(lib.evt.EVT_C_STORE, handle_store)])
    scu = make_ae(lib, "STORESCU")
    scu.add_requested_context(lib.sop_class.ColorPaletteStorage)
    assoc = scu.associate("127.0.0.1", port)
    assert assoc.send_c_store(palettes[0]).Status == 0xC211
    status = assoc.send_c_store(palettes[1])
    assert status.Status == 0xA700
    assert lib.status.code_to_category(status.Status) == "Failure"
    assoc.release()


def test_store_without_handler(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    """No EVT_C_STORE handler bound: 0xC211 from both."""
    scp = make_ae(lib, "STORESCP")
    scp.add_supported_context(lib.sop_class.ColorPaletteStorage)
    _server, port = serve(lib, servers, scp, [])
    scu = make_ae(lib, "STORESCU")
    scu.add_requested_context(lib.sop_class.ColorPaletteStorage)
    assoc = scu.associate("127.0.0.1", port)
    assert assoc.send_c_store(palettes[0]).Status == 0xC211
    assoc.release()


def test_store_event_context_and_encoded_dataset(
    lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]
) -> None:
    """``event.context`` is (context_id, abstract_syntax, transfer_syntax)
    with the one accepted transfer syntax as a str, and
    ``event.request.DataSet`` a BytesIO of the data set as received."""
    seen: dict[str, Any] = {}

    def handle_store(event: Any) -> int:
        context = event.context
        seen["context"] = (context.context_id, context.abstract_syntax, context.transfer_syntax)
        seen["tuple"] = tuple(context)
        seen["encoded"] = event.request.DataSet.getvalue()
        return 0x0000

    scp = make_ae(lib, "STORESCP")
    scp.add_supported_context(lib.sop_class.ColorPaletteStorage, [ExplicitVRLittleEndian])
    _server, port = serve(lib, servers, scp, [(lib.evt.EVT_C_STORE, handle_store)])
    scu = make_ae(lib, "STORESCU")
    scu.add_requested_context(lib.sop_class.ColorPaletteStorage, [ExplicitVRLittleEndian])
    assoc = scu.associate("127.0.0.1", port)
    assert assoc.send_c_store(palettes[0]).Status == 0x0000
    assoc.release()

    context_id, abstract_syntax, transfer_syntax = seen["context"]
    assert seen["tuple"] == seen["context"]
    assert context_id == 1
    assert abstract_syntax == lib.sop_class.ColorPaletteStorage
    assert isinstance(transfer_syntax, str) and transfer_syntax == ExplicitVRLittleEndian
    received = read_dataset(BytesIO(seen["encoded"]), is_implicit_VR=False, is_little_endian=True)
    assert received.SOPInstanceUID == palettes[0].SOPInstanceUID
    assert received.ContentLabel == palettes[0].ContentLabel


def test_store_on_an_association_that_also_requests_get(
    lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]
) -> None:
    """Requesting the C-GET model and Color Palette Storage, without a role
    item: the requestor can still send C-STOREs (it keeps the SCU role)."""
    scp = make_ae(lib, "STORESCP")
    scp.add_supported_context(lib.sop_class.ColorPaletteInformationModelGet)
    scp.add_supported_context(lib.sop_class.ColorPaletteStorage, scu_role=True, scp_role=True)
    _server, port = serve(lib, servers, scp, [(lib.evt.EVT_C_STORE, lambda event: 0x0000)])
    scu = make_ae(lib, "STORESCU")
    scu.add_requested_context(lib.sop_class.ColorPaletteInformationModelGet)
    scu.add_requested_context(lib.sop_class.ColorPaletteStorage)
    assoc = scu.associate("127.0.0.1", port)
    assert assoc.send_c_store(palettes[0]).Status == 0x0000
    assoc.release()


def test_store_bad_priority(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    """A priority other than 0, 1 or 2 is a ValueError; nothing is sent."""
    scp = make_ae(lib, "STORESCP")
    scp.add_supported_context(lib.sop_class.ColorPaletteStorage)
    _server, port = serve(lib, servers, scp, [(lib.evt.EVT_C_STORE, lambda event: 0x0000)])
    scu = make_ae(lib, "STORESCU")
    scu.add_requested_context(lib.sop_class.ColorPaletteStorage)
    assoc = scu.associate("127.0.0.1", port)
    with pytest.raises(ValueError):
        assoc.send_c_store(palettes[0], priority=3)
    assert assoc.send_c_store(palettes[0], priority=1).Status == 0x0000
    assoc.release()


def test_store_without_accepted_context(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    scp = make_ae(lib, "STORESCP")
    scp.add_supported_context(lib.sop_class.Verification)
    _server, port = serve(lib, servers, scp, [])
    scu = make_ae(lib, "STORESCU")
    scu.add_requested_context(lib.sop_class.Verification)
    scu.add_requested_context(lib.sop_class.ColorPaletteStorage)
    assoc = scu.associate("127.0.0.1", port)
    assert assoc.is_established
    assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [lib.sop_class.ColorPaletteStorage]
    with pytest.raises(ValueError):
        assoc.send_c_store(palettes[0])
    assoc.release()


def test_store_compressed_data_set_needs_its_own_syntax(
    lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset], tmp_path: Any
) -> None:
    """A data set in an encapsulated syntax (JPEG 2000 here) never goes out
    on a context that accepted only a native one: relabelling it would make
    the receiver store compressed fragments as native values. A native data
    set is converted to the accepted native syntax."""
    implicit, explicit, jpeg2000 = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90"
    received: list[str] = []

    def handle_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    compressed = copy.deepcopy(palettes[2])  # the module's palettes stay as read
    compressed.file_meta.TransferSyntaxUID = jpeg2000
    compressed_path = tmp_path / "jpeg2000.dcm"
    compressed.save_as(compressed_path)

    scp = make_ae(lib, "STORESCP")
    scp.add_supported_context(lib.sop_class.ColorPaletteStorage, [implicit])
    _server, port = serve(lib, servers, scp, [(lib.evt.EVT_C_STORE, handle_store)])
    scu = make_ae(lib, "STORESCU")
    scu.add_requested_context(lib.sop_class.ColorPaletteStorage, [implicit, jpeg2000])
    assoc = scu.associate("127.0.0.1", port)
    assert assoc.is_established
    assert [cx.transfer_syntax[0] for cx in assoc.accepted_contexts] == [implicit]
    with pytest.raises(ValueError):
        assoc.send_c_store(compressed)
    with pytest.raises(ValueError):
        assoc.send_c_store(str(compressed_path))
    assert assoc.is_established
    native = palettes[3]
    assert str(native.file_meta.TransferSyntaxUID) == explicit
    assert assoc.send_c_store(native).Status == 0x0000
    assoc.release()
    assert received == [str(native.SOPInstanceUID)]

    # Where the peer accepts the data set's own syntax it goes out as it is.
    scp2 = make_ae(lib, "STORESCP")
    scp2.add_supported_context(lib.sop_class.ColorPaletteStorage, [jpeg2000])
    _server2, port2 = serve(lib, servers, scp2, [(lib.evt.EVT_C_STORE, handle_store)])
    scu2 = make_ae(lib, "STORESCU")
    scu2.add_requested_context(lib.sop_class.ColorPaletteStorage, [implicit, jpeg2000])
    assoc = scu2.associate("127.0.0.1", port2)
    assert assoc.send_c_store(compressed).Status == 0x0000
    assoc.release()
    assert received[-1] == str(compressed.SOPInstanceUID)


# ------------------------------------------------------------------ C-FIND
def find_scp(lib: SimpleNamespace, servers: list[Any], handler: Any) -> int:
    scp = make_ae(lib, "FINDSCP")
    for cx in lib.ColorPalettePresentationContexts:
        scp.add_supported_context(cx.abstract_syntax)
    _server, port = serve(lib, servers, scp, [(lib.evt.EVT_C_FIND, handler)])
    return port


def find_scu(lib: SimpleNamespace, port: int) -> Any:
    scu = make_ae(lib, "FINDSCU")
    scu.add_requested_context(lib.sop_class.ColorPaletteInformationModelFind)
    assoc = scu.associate("127.0.0.1", port)
    assert assoc.is_established
    return assoc


def test_find(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    queries: list[Any] = []

    def handle_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        queries.append((event.identifier.ContentLabel, event.request.AffectedSOPClassUID, event.message_id))
        wanted = event.identifier.ContentLabel
        for ds in palettes:
            if wanted in ("", "*") or ds.ContentLabel == wanted:
                yield 0xFF00, palette_identifier(ds)

    assoc = find_scu(lib, find_scp(lib, servers, handle_find))
    results = list(assoc.send_c_find(query_all(), lib.sop_class.ColorPaletteInformationModelFind, msg_id=3))
    assert [status.Status for status, _ in results] == [0xFF00] * 8 + [0x0000]
    assert [ident.SOPInstanceUID for _, ident in results[:-1]] == [ds.SOPInstanceUID for ds in palettes]
    assert results[-1][1] is None

    query = query_all()
    query.ContentLabel = palettes[2].ContentLabel
    results = list(assoc.send_c_find(query, lib.sop_class.ColorPaletteInformationModelFind, msg_id=4))
    assert [status.Status for status, _ in results] == [0xFF00, 0x0000]
    assert results[0][1].ContentLabel == palettes[2].ContentLabel
    assoc.release()
    assert queries == [
        ("", lib.sop_class.ColorPaletteInformationModelFind, 3),
        (palettes[2].ContentLabel, lib.sop_class.ColorPaletteInformationModelFind, 4),
    ]


def test_find_handler_returns_none(lib: SimpleNamespace, servers: list[Any]) -> None:
    """A C-FIND handler that returns None (no generator) found nothing: Success."""

    def handle_find(event: Any) -> None:
        return None

    assoc = find_scu(lib, find_scp(lib, servers, handle_find))
    results = list(assoc.send_c_find(query_all(), lib.sop_class.ColorPaletteInformationModelFind))
    assert [(status.Status, identifier) for status, identifier in results] == [(0x0000, None)]
    assoc.release()


def test_find_handler_raises(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    def handle_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xFF00, palette_identifier(palettes[0])
        raise RuntimeError("deliberate")

    assoc = find_scu(lib, find_scp(lib, servers, handle_find))
    results = list(assoc.send_c_find(query_all(), lib.sop_class.ColorPaletteInformationModelFind))
    assert [status.Status for status, _ in results] == [0xFF00, 0xC311]
    assert results[-1][1] is None
    assert assoc.is_established
    assoc.release()


def test_find_failure_status_from_handler(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    def handle_find(event: Any) -> Iterator[tuple[Any, Dataset | None]]:
        status = Dataset()
        status.Status = 0xA900
        status.ErrorComment = "unsupported key"
        yield status, None

    assoc = find_scu(lib, find_scp(lib, servers, handle_find))
    results = list(assoc.send_c_find(query_all(), lib.sop_class.ColorPaletteInformationModelFind))
    assert len(results) == 1
    status, identifier = results[0]
    assert (status.Status, status.ErrorComment, identifier) == (0xA900, "unsupported key", None)
    assoc.release()


def test_find_cancel(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    total = 400
    produced: list[int] = []
    stopped = threading.Event()

    def handle_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        try:
            for index in range(total):
                if event.is_cancelled:
                    yield 0xFE00, None
                    return
                time.sleep(0.005)
                produced.append(index)
                yield 0xFF00, palette_identifier(palettes[index % 8])
        finally:
            stopped.set()

    assoc = find_scu(lib, find_scp(lib, servers, handle_find))
    statuses = []
    for status, _identifier in assoc.send_c_find(query_all(), lib.sop_class.ColorPaletteInformationModelFind, msg_id=9):
        statuses.append(status.Status)
        if len(statuses) == 1:
            assoc.send_c_cancel(9, query_model=lib.sop_class.ColorPaletteInformationModelFind)
    assert statuses[-1] == 0xFE00
    assert set(statuses[:-1]) == {0xFF00}
    assert len(statuses) < total
    # The handler stopped early. pynetdicom lets it see event.is_cancelled
    # and yield the Cancel status itself; chromanet stops asking it for
    # results once the C-CANCEL arrived (docs/compatibility.md).
    assert stopped.wait(TIMEOUT)
    assert len(produced) < total
    assert assoc.is_established
    assoc.release()


def slow_find_handler(palettes: list[Dataset], total: int, arrived: threading.Event, produced: list[int]) -> Any:
    """A C-FIND handler that sets ``arrived``, then yields ``total`` matches
    5 ms apart (noting each in ``produced``) until it sees the cancel."""

    def handle_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        arrived.set()
        for index in range(total):
            if event.is_cancelled:
                yield 0xFE00, None
                return
            time.sleep(0.005)
            produced.append(index)
            yield 0xFF00, palette_identifier(palettes[index % 8])

    return handle_find


def test_find_sent_at_the_call_and_cancelled_before_reading(
    lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]
) -> None:
    """``send_c_find`` sends the request when it is called, so a C-CANCEL
    sent before the first response is read finds the request at the SCP."""
    total = 200
    produced: list[int] = []
    arrived = threading.Event()
    handle_find = slow_find_handler(palettes, total, arrived, produced)
    assoc = find_scu(lib, find_scp(lib, servers, handle_find))
    model = lib.sop_class.ColorPaletteInformationModelFind
    responses = assoc.send_c_find(query_all(), model, msg_id=5)
    assert arrived.wait(TIMEOUT)  # nothing read yet, and the request is at the SCP
    assoc.send_c_cancel(5, query_model=model)
    statuses = [status.Status for status, _identifier in responses]
    assert statuses[-1] == 0xFE00
    assert len(statuses) < total
    assert len(produced) < total
    assert assoc.is_established
    assoc.release()


def test_cancel_on_a_context_that_was_not_accepted(
    lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]
) -> None:
    """A C-CANCEL names its operation by Message ID: one sent on a context ID
    the association never accepted does not abort it, and the right one
    still cancels."""
    total = 200
    arrived = threading.Event()
    assoc = find_scu(lib, find_scp(lib, servers, slow_find_handler(palettes, total, arrived, [])))
    model = lib.sop_class.ColorPaletteInformationModelFind
    responses = assoc.send_c_find(query_all(), model, msg_id=21)
    assert arrived.wait(TIMEOUT)
    assoc.send_c_cancel(1, 99)  # no operation 1, and context 99 was never proposed
    time.sleep(0.1)
    assert assoc.is_established
    assoc.send_c_cancel(21, query_model=model)
    statuses = [status.Status for status, _identifier in responses]
    assert statuses[-1] == 0xFE00
    assert len(statuses) < total
    assert assoc.is_established
    assoc.release()


# ------------------------------------------------------------------- C-GET
def get_scp(lib: SimpleNamespace, servers: list[Any], handler: Any) -> int:
    scp = make_ae(lib, "GETSCP")
    scp.add_supported_context(lib.sop_class.ColorPaletteInformationModelGet)
    scp.add_supported_context(lib.sop_class.ColorPaletteStorage, scu_role=True, scp_role=True)
    _server, port = serve(lib, servers, scp, [(lib.evt.EVT_C_GET, handler)])
    return port


def get_scu(lib: SimpleNamespace, port: int, store_handler: Any) -> Any:
    scu = make_ae(lib, "GETSCU")
    scu.add_requested_context(lib.sop_class.ColorPaletteInformationModelGet)
    scu.add_requested_context(lib.sop_class.ColorPaletteStorage)
    role = lib.build_role(lib.sop_class.ColorPaletteStorage, scp_role=True)
    assoc = scu.associate("127.0.0.1", port, ext_neg=[role], evt_handlers=[(lib.evt.EVT_C_STORE, store_handler)])
    assert assoc.is_established
    return assoc


def serve_palettes(palettes: list[Dataset]) -> Any:
    def handle_get(event: Any) -> Iterator[Any]:
        wanted = event.identifier.ContentLabel
        matches = [ds for ds in palettes if wanted in ("", "*") or ds.ContentLabel == wanted]
        yield len(matches)
        for ds in matches:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, ds

    return handle_get


def test_get(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    stored: list[str] = []

    def handle_store(event: Any) -> int:
        stored.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    assoc = get_scu(lib, get_scp(lib, servers, serve_palettes(palettes)), handle_store)
    results = list(assoc.send_c_get(query_all(), lib.sop_class.ColorPaletteInformationModelGet))
    final, identifier = results[-1]
    assert final.Status == 0x0000
    assert identifier is None
    assert (
        final.NumberOfCompletedSuboperations,
        final.NumberOfFailedSuboperations,
        final.NumberOfWarningSuboperations,
    ) == (8, 0, 0)
    pending = [status for status, _ in results[:-1]]
    assert {status.Status for status in pending} == {0xFF00}
    # A pending response after every sub-operation, counting down, the last
    # one (Remaining 0) included, then the final response.
    assert [status.NumberOfRemainingSuboperations for status in pending] == list(range(7, -1, -1))
    assert [status.NumberOfCompletedSuboperations for status in pending] == list(range(1, 9))
    assert stored == [str(ds.SOPInstanceUID) for ds in palettes]
    assoc.release()


def test_get_with_bound_handler_and_failed_store(
    lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]
) -> None:
    """The EVT_C_STORE handler bound with ``assoc.bind`` after associate();
    a sub-operation whose C-STORE fails is counted and listed."""

    def refuse(event: Any) -> int:
        raise AssertionError("unbound handler called")

    def handle_store(event: Any) -> int:
        return 0xA700 if event.dataset.SOPInstanceUID == palettes[0].SOPInstanceUID else 0x0000

    assoc = get_scu(lib, get_scp(lib, servers, serve_palettes(palettes[:3])), refuse)
    assoc.unbind(lib.evt.EVT_C_STORE, refuse)
    assoc.bind(lib.evt.EVT_C_STORE, handle_store)
    results = list(assoc.send_c_get(query_all(), lib.sop_class.ColorPaletteInformationModelGet))
    final, identifier = results[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)
    assert identifier.FailedSOPInstanceUIDList == palettes[0].SOPInstanceUID
    assoc.release()


def test_get_handler_raises(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    def handle_get_call(event: Any) -> Iterator[Any]:
        raise RuntimeError("deliberate")  # raised when called: not a generator

    def handle_get_count(event: Any) -> Iterator[Any]:
        raise RuntimeError("deliberate")  # raised where the number is due
        yield 1  # pragma: no cover - makes this a generator

    for handler, expected in ((handle_get_call, 0xC411), (handle_get_count, 0xC413)):
        assoc = get_scu(lib, get_scp(lib, servers, handler), lambda event: 0x0000)
        results = list(assoc.send_c_get(query_all(), lib.sop_class.ColorPaletteInformationModelGet))
        assert [status.Status for status, _ in results] == [expected]
        assoc.release()


def test_get_failure_status_from_handler(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    def handle_get(event: Any) -> Iterator[Any]:
        yield 2
        yield 0xFF00, palettes[0]
        yield 0xC000, None

    stored: list[str] = []

    def handle_store(event: Any) -> int:
        stored.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    assoc = get_scu(lib, get_scp(lib, servers, handle_get), handle_store)
    results = list(assoc.send_c_get(query_all(), lib.sop_class.ColorPaletteInformationModelGet))
    final, _ = results[-1]
    assert final.Status == 0xC000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 1)
    assert stored == [palettes[0].SOPInstanceUID]
    assoc.release()


def test_get_announced_but_not_yielded(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    """Sub-operations the handler announced but never yielded were not
    attempted: not counted as failed, Success when the rest succeeded; a
    failure among the ones done gives 0xB000 (0xA702 only when every
    announced one failed)."""

    def handle_get(event: Any) -> Iterator[Any]:
        yield 3
        yield 0xFF00, palettes[0]

    assoc = get_scu(lib, get_scp(lib, servers, handle_get), lambda event: 0x0000)
    results = list(assoc.send_c_get(query_all(), lib.sop_class.ColorPaletteInformationModelGet))
    assert [status.Status for status, _ in results] == [0xFF00, 0x0000]
    final, identifier = results[-1]
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 0)
    assert identifier is None
    assoc.release()

    assoc = get_scu(lib, get_scp(lib, servers, handle_get), lambda event: 0xA700)
    results = list(assoc.send_c_get(query_all(), lib.sop_class.ColorPaletteInformationModelGet))
    assert [status.Status for status, _ in results] == [0xFF00, 0xB000]
    final, identifier = results[-1]
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (0, 1)
    assert identifier.FailedSOPInstanceUIDList == palettes[0].SOPInstanceUID
    assoc.release()


@pytest.mark.parametrize("final_status", [0xFE00, 0xC000, 0xB000])
def test_get_identifier_from_handler(
    lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset], final_status: int
) -> None:
    """A Cancel, Failure or Warning status the handler yields with its own
    Failed SOP Instance UID List: that identifier is sent, not replaced."""

    def handle_get(event: Any) -> Iterator[Any]:
        yield 2
        yield 0xFF00, palettes[0]
        identifier = Dataset()
        identifier.FailedSOPInstanceUIDList = ["1.2.3.4", "1.2.3.5"]
        yield final_status, identifier

    assoc = get_scu(lib, get_scp(lib, servers, handle_get), lambda event: 0x0000)
    results = list(assoc.send_c_get(query_all(), lib.sop_class.ColorPaletteInformationModelGet))
    assert [status.Status for status, _ in results] == [0xFF00, final_status]
    final, identifier = results[-1]
    assert identifier.FailedSOPInstanceUIDList == ["1.2.3.4", "1.2.3.5"]
    assert final.NumberOfCompletedSuboperations == 1
    assoc.release()


def test_get_final_failure_without_identifier(lib: SimpleNamespace, servers: list[Any]) -> None:
    """A final Failure response that carries no identifier reaches the
    C-GET caller as an empty Dataset (None only for Success)."""

    def handle_get(event: Any) -> Iterator[Any]:
        status = Dataset()
        status.Status = 0xA900  # identifier does not match SOP class: a final status in place of the number
        yield status

    assoc = get_scu(lib, get_scp(lib, servers, handle_get), lambda event: 0x0000)
    results = list(assoc.send_c_get(query_all(), lib.sop_class.ColorPaletteInformationModelGet))
    assert len(results) == 1
    final, identifier = results[0]
    assert lib.status.code_to_category(final.Status) == "Failure"
    assert isinstance(identifier, Dataset) and len(identifier) == 0
    assoc.release()


# ------------------------------------------------------------------ C-MOVE
def test_move(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    stored: list[tuple[str, str, int]] = []

    def handle_store(event: Any) -> int:
        stored.append(
            (
                str(event.dataset.SOPInstanceUID),
                event.request.MoveOriginatorApplicationEntityTitle,
                event.request.MoveOriginatorMessageID,
            )
        )
        return 0x0000

    destination = make_ae(lib, "DEST")
    destination.add_supported_context(lib.sop_class.ColorPaletteStorage)
    _dest_server, dest_port = serve(lib, servers, destination, [(lib.evt.EVT_C_STORE, handle_store)])

    destinations = {"DEST": ("127.0.0.1", dest_port)}
    requested_destinations: list[str] = []

    def handle_move(event: Any) -> Iterator[Any]:
        requested_destinations.append(event.move_destination)
        yield destinations.get(event.move_destination, (None, None))
        yield len(palettes)
        for ds in palettes:
            yield 0xFF00, ds

    scp = make_ae(lib, "MOVESCP")
    scp.add_supported_context(lib.sop_class.ColorPaletteInformationModelMove)
    scp.add_requested_context(lib.sop_class.ColorPaletteStorage)
    _server, port = serve(lib, servers, scp, [(lib.evt.EVT_C_MOVE, handle_move)])

    scu = make_ae(lib, "MOVESCU")
    scu.add_requested_context(lib.sop_class.ColorPaletteInformationModelMove)
    assoc = scu.associate("127.0.0.1", port)
    results = list(assoc.send_c_move(query_all(), "DEST", lib.sop_class.ColorPaletteInformationModelMove, msg_id=5))
    final, identifier = results[-1]
    assert final.Status == 0x0000
    assert identifier is None
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (8, 0)
    assert {status.Status for status, _ in results[:-1]} == {0xFF00}

    # An unknown destination: the handler yields (None, None).
    results = list(assoc.send_c_move(query_all(), "NOWHERE", lib.sop_class.ColorPaletteInformationModelMove))
    assert [status.Status for status, _ in results] == [0xA801]
    # A final Failure without an identifier: an empty Dataset, not None.
    assert isinstance(results[0][1], Dataset) and len(results[0][1]) == 0
    assoc.release()

    assert requested_destinations == ["DEST", "NOWHERE"]
    assert [(uid, msg_id) for uid, _aet, msg_id in stored] == [(str(ds.SOPInstanceUID), 5) for ds in palettes]
    # Move Originator AE Title: chromanet sends the C-MOVE requestor's title
    # (PS3.7 9.3.1.1), pynetdicom its own (the move SCP's); see
    # docs/compatibility.md.
    assert {aet for _uid, aet, _msg_id in stored} <= {"MOVESCU", "MOVESCP"}
    assert len({aet for _uid, aet, _msg_id in stored}) == 1


def test_move_into_destination_refusing_the_sop_class(
    lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]
) -> None:
    """The destination accepts the association but not Color Palette
    Storage: every sub-operation fails (PS3.4 C.4.2.3.1), and the final
    response carries the counts and the Failed SOP Instance UID List."""
    destination = make_ae(lib, "DEST")
    destination.add_supported_context(lib.sop_class.Verification)
    _dest_server, dest_port = serve(lib, servers, destination, [])

    def handle_move(event: Any) -> Iterator[Any]:
        yield "127.0.0.1", dest_port
        yield 3
        for ds in palettes[:3]:
            yield 0xFF00, ds

    scp = make_ae(lib, "MOVESCP")
    scp.add_supported_context(lib.sop_class.ColorPaletteInformationModelMove)
    scp.add_requested_context(lib.sop_class.Verification)
    scp.add_requested_context(lib.sop_class.ColorPaletteStorage)
    _server, port = serve(lib, servers, scp, [(lib.evt.EVT_C_MOVE, handle_move)])

    scu = make_ae(lib, "MOVESCU")
    scu.add_requested_context(lib.sop_class.ColorPaletteInformationModelMove)
    assoc = scu.associate("127.0.0.1", port)
    results = list(assoc.send_c_move(query_all(), "DEST", lib.sop_class.ColorPaletteInformationModelMove))
    final, identifier = results[-1]
    assert final.Status == 0xA702
    assert (
        final.NumberOfCompletedSuboperations,
        final.NumberOfFailedSuboperations,
        final.NumberOfWarningSuboperations,
    ) == (0, 3, 0)
    assert sorted(identifier.FailedSOPInstanceUIDList) == sorted(str(ds.SOPInstanceUID) for ds in palettes[:3])
    assert assoc.is_established
    assoc.release()


def test_move_handler_raises(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    destination = make_ae(lib, "DEST")
    destination.add_supported_context(lib.sop_class.ColorPaletteStorage)
    _dest_server, dest_port = serve(lib, servers, destination, [(lib.evt.EVT_C_STORE, lambda event: 0x0000)])

    def handle_move_call(event: Any) -> Iterator[Any]:
        raise RuntimeError("deliberate")  # raised when called: not a generator

    def handle_move_midway(event: Any) -> Iterator[Any]:
        yield "127.0.0.1", dest_port
        yield 3
        yield 0xFF00, palettes[0]
        raise RuntimeError("deliberate")

    scp = make_ae(lib, "MOVESCP")
    scp.add_supported_context(lib.sop_class.ColorPaletteInformationModelMove)
    scp.add_requested_context(lib.sop_class.ColorPaletteStorage)
    scu = make_ae(lib, "MOVESCU")
    scu.add_requested_context(lib.sop_class.ColorPaletteInformationModelMove)

    _server, port = serve(lib, servers, scp, [(lib.evt.EVT_C_MOVE, handle_move_call)])
    assoc = scu.associate("127.0.0.1", port)
    results = list(assoc.send_c_move(query_all(), "DEST", lib.sop_class.ColorPaletteInformationModelMove))
    assert [status.Status for status, _ in results] == [0xC511]
    assoc.release()

    _server, port = serve(lib, servers, scp, [(lib.evt.EVT_C_MOVE, handle_move_midway)])
    assoc = scu.associate("127.0.0.1", port)
    results = list(assoc.send_c_move(query_all(), "DEST", lib.sop_class.ColorPaletteInformationModelMove))
    final, _identifier = results[-1]
    assert final.Status == 0xC511
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 2)
    assoc.release()


# ----------------------------------------------- sync handlers that block
# Plain ``def`` handlers may block (pynetdicom runs them in the association's
# thread, chromanet in a worker thread of the association's lane): sleeping,
# waiting, or calling the blocking ``event.assoc`` from the handler.
def test_sleeping_sync_handler_sees_cancel(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    seen: list[bool] = []

    def handle_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xFF00, palette_identifier(palettes[0])
        deadline = time.monotonic() + TIMEOUT
        cancelled = False
        while not cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
            # pynetdicom answers True once (the read consumes the C-CANCEL).
            cancelled = event.is_cancelled
        seen.append(cancelled)
        yield 0xFE00, None

    assoc = find_scu(lib, find_scp(lib, servers, handle_find))
    statuses = []
    for status, _identifier in assoc.send_c_find(query_all(), lib.sop_class.ColorPaletteInformationModelFind, msg_id=11):
        statuses.append(status.Status)
        if len(statuses) == 1:
            assoc.send_c_cancel(11, query_model=lib.sop_class.ColorPaletteInformationModelFind)
    assert statuses == [0xFF00, 0xFE00]
    assert seen == [True]
    assert assoc.is_established
    assoc.release()


def test_handler_aborts_the_association(lib: SimpleNamespace, servers: list[Any]) -> None:
    returned = threading.Event()

    def handle_echo(event: Any) -> int:
        event.assoc.abort()
        returned.set()
        return 0x0000

    _server, port = echo_scp(lib, servers, [(lib.evt.EVT_C_ECHO, handle_echo)])
    scu = echo_scu(lib)
    assoc = scu.associate("127.0.0.1", port)
    status = assoc.send_c_echo()
    assert "Status" not in status  # no response: the association ended first
    assert returned.wait(TIMEOUT)  # abort() returned inside the handler
    assert wait_for(lambda: assoc.is_aborted)
    assert not assoc.is_established
    # The server goes on serving.
    again = scu.associate("127.0.0.1", port)
    assert again.is_established
    again.abort()


def test_find_handler_aborts_after_yielding(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    """A C-FIND generator yields 5 matches, then aborts its association:
    the SCU reads the 5 pending responses, then the association is aborted
    (the abort comes after the matches yielded before it were sent)."""
    returned = threading.Event()

    def handle_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        for ds in palettes[:5]:
            yield 0xFF00, palette_identifier(ds)
        event.assoc.abort()
        returned.set()

    assoc = find_scu(lib, find_scp(lib, servers, handle_find))
    results = list(assoc.send_c_find(query_all(), lib.sop_class.ColorPaletteInformationModelFind))
    pending = [(status, ident) for status, ident in results if status.get("Status") == 0xFF00]
    assert [ident.SOPInstanceUID for _, ident in pending] == [ds.SOPInstanceUID for ds in palettes[:5]]
    assert len(results) == 6  # the pending ones, then an empty status: aborted
    assert "Status" not in results[-1][0]
    assert returned.wait(TIMEOUT)
    assert wait_for(lambda: assoc.is_aborted)


def test_get_handler_aborts_after_yielding(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    """A C-GET generator announces 8 and yields 3, then aborts: the SCU
    receives the 3 C-STOREs and their 3 pending responses, then the
    association is aborted."""
    stored: list[str] = []
    returned = threading.Event()

    def handle_get(event: Any) -> Iterator[Any]:
        yield len(palettes)
        for ds in palettes[:3]:
            yield 0xFF00, ds
        event.assoc.abort()
        returned.set()

    def handle_store(event: Any) -> int:
        stored.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    assoc = get_scu(lib, get_scp(lib, servers, handle_get), handle_store)
    results = list(assoc.send_c_get(query_all(), lib.sop_class.ColorPaletteInformationModelGet))
    pending = [status for status, _ in results if status.get("Status") == 0xFF00]
    assert [status.NumberOfCompletedSuboperations for status in pending] == [1, 2, 3]
    assert stored == [str(ds.SOPInstanceUID) for ds in palettes[:3]]
    assert len(results) == 4
    assert "Status" not in results[-1][0]
    assert returned.wait(TIMEOUT)
    assert wait_for(lambda: assoc.is_aborted)


def test_handler_stores_back_to_the_peer(lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]) -> None:
    """A C-GET handler sends one instance itself with
    ``event.assoc.send_c_store`` (and waits for its response) before
    yielding the other as a sub-operation."""
    log: list[tuple[str, Any]] = []

    def handle_get(event: Any) -> Iterator[Any]:
        status = event.assoc.send_c_store(palettes[0])
        log.append(("handler's store", status.Status))
        yield 1
        yield 0xFF00, palettes[1]

    def handle_store(event: Any) -> int:
        log.append(("received", str(event.request.AffectedSOPInstanceUID)))
        return 0x0000

    assoc = get_scu(lib, get_scp(lib, servers, handle_get), handle_store)
    results = list(assoc.send_c_get(query_all(), lib.sop_class.ColorPaletteInformationModelGet))
    assert results[-1][0].Status == 0x0000
    assert results[-1][0].NumberOfCompletedSuboperations == 1
    assert log == [
        ("received", str(palettes[0].SOPInstanceUID)),
        ("handler's store", 0x0000),
        ("received", str(palettes[1].SOPInstanceUID)),
    ]
    assoc.release()


def test_event_assoc_is_the_requestors_association(
    lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]
) -> None:
    seen: list[Any] = []

    def handle_store(event: Any) -> int:
        seen.append(event.assoc)
        return 0x0000

    assoc = get_scu(lib, get_scp(lib, servers, serve_palettes(palettes[:2])), handle_store)
    results = list(assoc.send_c_get(query_all(), lib.sop_class.ColorPaletteInformationModelGet))
    assert results[-1][0].Status == 0x0000
    assert len(seen) == 2 and all(held is assoc for held in seen)
    assoc.release()


def test_blocked_handler_leaves_other_associations_served(lib: SimpleNamespace, servers: list[Any]) -> None:
    entered = threading.Event()
    unblock = threading.Event()

    def handle_echo(event: Any) -> int:
        if event.assoc.requestor.ae_title == "SLOW":
            entered.set()
            unblock.wait(TIMEOUT)
        return 0x0000

    _server, port = echo_scp(lib, servers, [(lib.evt.EVT_C_ECHO, handle_echo)])
    slow, fast = make_ae(lib, "SLOW"), make_ae(lib, "FAST")
    for ae in (slow, fast):
        ae.add_requested_context(lib.sop_class.Verification)
    slow_assoc = slow.associate("127.0.0.1", port)
    answered: dict[str, int] = {}
    waiting = threading.Thread(target=lambda: answered.update(slow=slow_assoc.send_c_echo().Status))
    waiting.start()
    try:
        assert entered.wait(TIMEOUT)
        fast_assoc = fast.associate("127.0.0.1", port)
        assert fast_assoc.is_established
        assert fast_assoc.send_c_echo().Status == 0x0000
        fast_assoc.release()
        assert answered == {}  # the slow one is still in its handler
    finally:
        unblock.set()
        waiting.join(TIMEOUT)
    assert answered == {"slow": 0x0000}
    slow_assoc.release()


def test_handlers_run_in_order_per_association(
    lib: SimpleNamespace, servers: list[Any], palettes: list[Dataset]
) -> None:
    """A slow notification handler, then C-STOREs whose handlers take
    different times: each association's handlers run one after another, in
    the order of its events."""
    log: list[str] = []

    def slow_established(event: Any) -> None:
        time.sleep(0.2)
        log.append("EVT_ESTABLISHED")

    def handle_store(event: Any) -> int:
        time.sleep(0.01 * (len(log) % 3))
        log.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def released(event: Any) -> None:
        log.append("EVT_RELEASED")

    scp = make_ae(lib, "STORESCP")
    scp.add_supported_context(lib.sop_class.ColorPaletteStorage)
    handlers = [
        (lib.evt.EVT_ESTABLISHED, slow_established),
        (lib.evt.EVT_C_STORE, handle_store),
        (lib.evt.EVT_RELEASED, released),
    ]
    _server, port = serve(lib, servers, scp, handlers)
    scu = make_ae(lib, "STORESCU")
    scu.add_requested_context(lib.sop_class.ColorPaletteStorage)
    assoc = scu.associate("127.0.0.1", port)
    for ds in palettes:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    assert wait_for(lambda: "EVT_RELEASED" in log)
    assert log == ["EVT_ESTABLISHED"] + [str(ds.SOPInstanceUID) for ds in palettes] + ["EVT_RELEASED"]


def test_move_handler_without_destination_or_number(lib: SimpleNamespace, servers: list[Any]) -> None:
    """No destination (the handler returns None, or its generator raises or
    ends first): 0xC514; a destination and no number: 0xC513; unknown
    associate() keywords for the destination: 0xC515."""

    def returns_none(event: Any) -> None:
        return None

    def raises_first(event: Any) -> Iterator[Any]:
        raise RuntimeError("deliberate")
        yield "127.0.0.1", 104  # pragma: no cover - makes this a generator

    def ends_after_destination(event: Any) -> Iterator[Any]:
        yield "127.0.0.1", 104

    def bad_keywords(event: Any) -> Iterator[Any]:
        yield "127.0.0.1", 104, {"no_such_keyword": 1}
        yield 1

    scp = make_ae(lib, "MOVESCP")
    scp.add_supported_context(lib.sop_class.ColorPaletteInformationModelMove)
    scu = make_ae(lib, "MOVESCU")
    scu.add_requested_context(lib.sop_class.ColorPaletteInformationModelMove)
    cases = ((returns_none, 0xC514), (raises_first, 0xC514), (ends_after_destination, 0xC513), (bad_keywords, 0xC515))
    for handler, expected in cases:
        _server, port = serve(lib, servers, scp, [(lib.evt.EVT_C_MOVE, handler)])
        assoc = scu.associate("127.0.0.1", port)
        results = list(assoc.send_c_move(query_all(), "DEST", lib.sop_class.ColorPaletteInformationModelMove))
        assert [status.Status for status, _ in results] == [expected], handler.__name__
        assoc.release()


def test_server_get_handlers(lib: SimpleNamespace, servers: list[Any]) -> None:
    """``server.get_handlers``: the list of (handler, args) of a notification
    event, the (handler, args) of an intervention event, [] when none."""

    def on_open(event: Any) -> None:
        pass

    def on_echo(event: Any) -> int:
        return 0x0000

    server, _port = echo_scp(lib, servers, [(lib.evt.EVT_CONN_OPEN, on_open), (lib.evt.EVT_C_ECHO, on_echo, ["x"])])
    assert server.get_handlers(lib.evt.EVT_CONN_OPEN) == [(on_open, None)]
    assert server.get_handlers(lib.evt.EVT_C_ECHO) == (on_echo, ["x"])
    assert server.get_handlers(lib.evt.EVT_CONN_CLOSE) == []
    server.unbind(lib.evt.EVT_CONN_OPEN, on_open)
    assert server.get_handlers(lib.evt.EVT_CONN_OPEN) == []
    server.bind(lib.evt.EVT_CONN_CLOSE, on_open)
    assert server.get_handlers(lib.evt.EVT_CONN_CLOSE) == [(on_open, None)]


def test_association_events_include_the_answered_interventions(lib: SimpleNamespace, servers: list[Any]) -> None:
    """``assoc.get_events()`` lists the intervention events answered without
    a bound handler (C-STORE, user identity...) next to those bound."""

    def on_close(event: Any) -> None:
        pass

    _server, port = echo_scp(lib, servers, [])
    scu = echo_scu(lib)
    assoc = scu.associate("127.0.0.1", port, evt_handlers=[(lib.evt.EVT_CONN_CLOSE, on_close)])
    assert assoc.is_established
    events = assoc.get_events()
    for event in (lib.evt.EVT_C_STORE, lib.evt.EVT_C_ECHO, lib.evt.EVT_USER_ID, lib.evt.EVT_CONN_CLOSE):
        assert event in events
    assert lib.evt.EVT_CONN_OPEN not in events
    assert events == sorted(events, key=lambda event: event.name)
    assoc.release()


# --------------------------------------------------------------- the AE
def test_ae_configuration_round_trip(lib: SimpleNamespace) -> None:
    ae = lib.AE(ae_title="CONFIG")
    assert ae.ae_title == "CONFIG"
    ae.maximum_associations = 3
    ae.maximum_pdu_size = 32768
    ae.acse_timeout = 5
    ae.dimse_timeout = 6
    ae.network_timeout = 7
    ae.connection_timeout = 8
    assert (ae.maximum_associations, ae.maximum_pdu_size) == (3, 32768)
    assert (ae.acse_timeout, ae.dimse_timeout, ae.network_timeout, ae.connection_timeout) == (5, 6, 7, 8)
    assert isinstance(ae.implementation_class_uid, str) and ae.implementation_class_uid
    assert isinstance(ae.implementation_version_name, str)

    ae.add_supported_context(lib.sop_class.ColorPaletteStorage, scu_role=True, scp_role=True)
    (cx,) = ae.supported_contexts
    assert (cx.abstract_syntax, cx.scu_role, cx.scp_role) == (lib.sop_class.ColorPaletteStorage, True, True)
    ae.remove_supported_context(lib.sop_class.ColorPaletteStorage)
    assert ae.supported_contexts == []

    ae.requested_contexts = lib.ColorPalettePresentationContexts
    assert [cx.abstract_syntax for cx in ae.requested_contexts] == [
        lib.sop_class.ColorPaletteInformationModelFind,
        lib.sop_class.ColorPaletteInformationModelMove,
        lib.sop_class.ColorPaletteInformationModelGet,
    ]
    ae.remove_requested_context(lib.sop_class.ColorPaletteInformationModelMove)
    assert len(ae.requested_contexts) == 2
    ae.remove_requested_context(lib.sop_class.ColorPaletteInformationModelFind, "1.2.840.10008.1.2")
    assert "1.2.840.10008.1.2" not in ae.requested_contexts[0].transfer_syntax
    assert len(lib.StoragePresentationContexts) <= 128

    context = lib.build_context(lib.sop_class.Verification)
    assert context.abstract_syntax == lib.sop_class.Verification
    assert context.context_id is None
    assert context.transfer_syntax == [
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.2",
    ]


def test_ae_validation(lib: SimpleNamespace) -> None:
    """What AE setters and context calls accept, refuse or ignore."""
    ae = lib.AE(ae_title="CONFIG")
    ae.add_requested_context("1.2.3", ["1.2.840.10008.1.2", "1.2.840.10008.1.2"])
    assert ae.requested_contexts[0].transfer_syntax == ["1.2.840.10008.1.2"]
    for uid in ("1.2.3.5", "0.1.2.3", "1.2.3.4"):
        ae.add_supported_context(uid)
    assert [cx.abstract_syntax for cx in ae.supported_contexts] == ["0.1.2.3", "1.2.3.4", "1.2.3.5"]
    with pytest.raises(ValueError):
        ae.supported_contexts = ["1.2.3"]
    with pytest.raises(ValueError):
        ae.requested_contexts = ["1.2.3"]
    with pytest.raises(TypeError):
        ae.add_supported_context("1.2.3", scu_role="yes")
    for bad in (["a"], "10", 0, -10):
        ae.maximum_associations = 4
        ae.maximum_associations = bad
        assert ae.maximum_associations == 1
    ae.maximum_pdu_size = 20000
    ae.maximum_pdu_size = -10
    assert ae.maximum_pdu_size == 20000
    ae.maximum_pdu_size = 0
    assert ae.maximum_pdu_size == 0
    ae.implementation_class_uid = "1.2.3.4"
    assert isinstance(ae.implementation_class_uid, UID) and ae.implementation_class_uid == "1.2.3.4"
    with pytest.raises(TypeError):
        ae.implementation_class_uid = None
    ae.implementation_version_name = None
    assert ae.implementation_version_name is None
    with pytest.raises(TypeError):
        ae.implementation_version_name = 1234
    with pytest.raises(ValueError):
        ae.implementation_version_name = ""
    ae.implementation_version_name = "VERSION_1"
    assert ae.implementation_version_name == "VERSION_1"
    with pytest.raises(TypeError):
        ae.associate(1112, 104)
    with pytest.raises(TypeError):
        ae.associate("127.0.0.1", "104")


def test_server_refuses_a_context_with_one_role_set(lib: SimpleNamespace, servers: list[Any]) -> None:
    """An acceptor answers role selection only with both roles set, so a
    supported context with one of them set is refused at start, not served."""
    ae = make_ae(lib, "HALFROLE")
    ae.add_supported_context(lib.sop_class.ColorPaletteStorage, scp_role=False)
    with pytest.raises(ValueError):
        servers.append(ae.start_server(("127.0.0.1", 0), block=False))
    ae.add_supported_context(lib.sop_class.ColorPaletteStorage, scu_role=True, scp_role=False)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    servers.append(server)
    assert server.address_info.is_ipv4
    assert server.address_info.as_tuple == ("127.0.0.1", 0)  # as started; server_address has the port


def test_server_on_ipv6_with_flowinfo_and_scope(lib: SimpleNamespace, servers: list[Any]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    ae = make_ae(lib, "ECHOSCP6")
    ae.add_supported_context(lib.sop_class.Verification)
    try:
        server = ae.start_server(("::1", 0, 1, 2), block=False)
    except OSError as exc:
        pytest.skip(f"cannot bind ::1 here: {exc}")
    servers.append(server)
    info = server.address_info
    assert info.is_ipv6 and not info.is_ipv4
    assert (info.flowinfo, info.scope_id) == (1, 2)
    scu = echo_scu(lib)
    assoc = scu.associate("::1", server.server_address[1])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_ae_shutdown_stops_servers(lib: SimpleNamespace) -> None:
    scp = make_ae(lib, "ECHOSCP")
    scp.add_supported_context(lib.sop_class.Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False)
    port = server.server_address[1]
    scu = echo_scu(lib)
    assoc = scu.associate("127.0.0.1", port)
    assert assoc.is_established
    assoc.release()
    scp.shutdown()
    assoc = scu.associate("127.0.0.1", port)
    assert not assoc.is_established


# ------------------------------------------------------------ wire events
def test_wire_events_on_the_requestor(lib: SimpleNamespace, servers: list[Any]) -> None:
    """EVT_DATA_SENT / EVT_DATA_RECV carry the raw PDUs (the first one sent
    is the A-ASSOCIATE-RQ, type 0x01; the first received the -AC, 0x02);
    EVT_DIMSE_SENT / EVT_DIMSE_RECV the C-ECHO request and its response."""
    seen: list[tuple[str, Any]] = []

    def on_data(event: Any) -> None:
        assert isinstance(event.data, bytes)
        seen.append((event.event.name, event.data[:1]))

    def on_dimse(event: Any) -> None:
        seen.append((event.event.name, int(event.message.command_set.CommandField)))

    _server, port = echo_scp(lib, servers, [])
    scu = echo_scu(lib)
    handlers = [
        (lib.evt.EVT_DATA_SENT, on_data),
        (lib.evt.EVT_DATA_RECV, on_data),
        (lib.evt.EVT_DIMSE_SENT, on_dimse),
        (lib.evt.EVT_DIMSE_RECV, on_dimse),
    ]
    assoc = scu.associate("127.0.0.1", port, ae_title="ECHOSCP", evt_handlers=handlers)
    assert assoc.is_established
    assert assoc.get_handlers(lib.evt.EVT_DATA_SENT) == [(on_data, None)]
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert wait_for(lambda: ("EVT_DATA_RECV", b"\x06") in seen)
    sent = [data for name, data in seen if name == "EVT_DATA_SENT"]
    received = [data for name, data in seen if name == "EVT_DATA_RECV"]
    assert sent == [b"\x01", b"\x04", b"\x05"]  # RQ, P-DATA (C-ECHO-RQ), A-RELEASE-RQ
    assert received == [b"\x02", b"\x04", b"\x06"]  # AC, P-DATA (C-ECHO-RSP), A-RELEASE-RP
    assert ("EVT_DIMSE_SENT", 0x0030) in seen
    assert ("EVT_DIMSE_RECV", 0x8030) in seen


def test_data_events_bound_on_the_acceptor(lib: SimpleNamespace, servers: list[Any]) -> None:
    """Bound on the server after the association opened: the acceptor sees
    the A-RELEASE-RQ arrive and its A-RELEASE-RP go out."""
    seen: list[tuple[str, bytes]] = []

    def on_data(event: Any) -> None:
        seen.append((event.event.name, event.data[:1]))

    server, port = echo_scp(lib, servers, [])
    scu = echo_scu(lib)
    assoc = scu.associate("127.0.0.1", port, ae_title="ECHOSCP")
    assert assoc.is_established
    server.bind(lib.evt.EVT_DATA_RECV, on_data)
    server.bind(lib.evt.EVT_DATA_SENT, on_data)
    assoc.release()
    # pynetdicom's acceptor may report its A-ASSOCIATE-AC (0x02) sent only
    # after the requestor has it and the handlers are bound (its event
    # follows the write, in its own thread): that one is not the release's.
    release = lambda: [entry for entry in seen if entry[1] != b"\x02"]  # noqa: E731
    assert wait_for(lambda: len(release()) >= 2)
    assert release()[:2] == [("EVT_DATA_RECV", b"\x05"), ("EVT_DATA_SENT", b"\x06")]


# ------------------------------------------------------------ small API items
def test_association_negotiation_attributes(lib: SimpleNamespace, servers: list[Any]) -> None:
    """``connection_timeout`` follows the AE; ``requestor.requested_contexts``
    lists what the A-ASSOCIATE-RQ proposed; ``acceptor.sop_class_extended``
    what the acceptor's EVT_SOP_EXTENDED handler answered."""

    def on_sop_extended(event: Any) -> Any:
        return event.app_info

    def on_echo(event: Any) -> int:
        seen["assoc"] = event.assoc
        return 0x0000

    seen: dict[str, Any] = {}
    _server, port = echo_scp(lib, servers, [(lib.evt.EVT_SOP_EXTENDED, on_sop_extended), (lib.evt.EVT_C_ECHO, on_echo)])
    scu = echo_scu(lib)
    item = lib.pdu_primitives.SOPClassExtendedNegotiation()
    item.sop_class_uid = "1.2.3"
    item.service_class_application_information = b"\x00\x01"
    assoc = scu.associate("127.0.0.1", port, ae_title="ECHOSCP", ext_neg=[item])
    assert assoc.is_established
    assert assoc.connection_timeout is None
    scu.connection_timeout = 5
    assert assoc.connection_timeout == 5
    requested = assoc.requestor.requested_contexts
    assert [(ctx.context_id, ctx.abstract_syntax) for ctx in requested] == [(1, lib.sop_class.Verification)]
    assert assoc.requestor.sop_class_extended == {"1.2.3": b"\x00\x01"}
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert seen["assoc"].acceptor.sop_class_extended == {"1.2.3": b"\x00\x01"}


def test_associate_bind_address(lib: SimpleNamespace, servers: list[Any]) -> None:
    """``bind_address``: the requestor connects from that local address."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local_port = probe.getsockname()[1]
    server, port = echo_scp(lib, servers, [])
    scu = echo_scu(lib)
    assoc = scu.associate("127.0.0.1", port, ae_title="ECHOSCP", bind_address=("127.0.0.1", local_port))
    assert assoc.is_established
    assert wait_for(lambda: len(server.active_associations) == 1)
    assert server.active_associations[0].requestor.port == local_port
    assoc.release()


def test_ae_str(lib: SimpleNamespace) -> None:
    """``str(ae)``: a summary naming the contexts and settings."""
    ae = make_ae(lib, "SUMMARY")
    ae.add_requested_context(lib.sop_class.Verification)
    ae.require_calling_aet = ["SOMEONE"]
    ae.require_called_aet = True
    text = str(ae)
    for part in ("SUMMARY", "Verification", "Explicit VR", "0/10", "SOMEONE", "Require called AE title: True"):
        assert part in text


def test_ae_str_lists_peers(lib: SimpleNamespace, servers: list[Any]) -> None:
    """``str(ae)`` with an association open names its peer."""
    _server, port = echo_scp(lib, servers, [])
    scu = echo_scu(lib)
    assoc = scu.associate("127.0.0.1", port, ae_title="ECHOSCP")
    assert assoc.is_established
    text = str(scu)
    assoc.release()
    assert "Peer" in text and "ECHOSCP" in text


def test_sop_common_handler_sees_the_proposed_items(lib: SimpleNamespace, servers: list[Any]) -> None:
    """EVT_SOP_COMMON: the acceptor's handler gets ``event.items``, the
    requestor's SOP Class Common Extended Negotiation items by SOP class."""
    seen: dict[str, Any] = {}

    def on_common(event: Any) -> Any:
        seen.update(event.items)
        return event.items

    _server, port = echo_scp(lib, servers, [(lib.evt.EVT_SOP_COMMON, on_common)])
    scu = echo_scu(lib)
    item = lib.pdu_primitives.SOPClassCommonExtendedNegotiation()
    item.sop_class_uid = "1.2.3"
    item.service_class_uid = "1.2.840.10008.4.2"
    item.related_general_sop_class_identification = ["1.1.1"]
    assoc = scu.associate("127.0.0.1", port, ae_title="ECHOSCP", ext_neg=[item])
    assert assoc.is_established
    assoc.release()
    assert list(seen) == ["1.2.3"]
    assert seen["1.2.3"].service_class_uid == "1.2.840.10008.4.2"
