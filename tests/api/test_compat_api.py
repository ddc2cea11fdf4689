"""Name-by-name checks of chromanet's pynetdicom-compatible surface for the
Verification, Storage and Color Palette services (docs/compatibility.md).

pynetdicom is the reference where it is installed; the checks that do not
need it run regardless.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import pytest
from pydicom import Dataset
from pydicom._uid_dict import UID_dictionary

import chromanet
from chromanet import evt, sop_class, status
from chromanet.ae import AE, Association, ThreadedServer
from chromanet.association import AsyncAssociation

pynetdicom = pytest.importorskip("pynetdicom")
import pynetdicom.sop_class as pn_sop_class  # noqa: E402
import pynetdicom.status as pn_status  # noqa: E402

TOP_LEVEL = [
    "AE",
    "Association",
    "evt",
    "build_context",
    "build_role",
    "debug_logger",
    "sop_class",
    "status",
    "DEFAULT_TRANSFER_SYNTAXES",
    "VerificationPresentationContexts",
    "StoragePresentationContexts",
    "ColorPalettePresentationContexts",
]

AE_ATTRIBUTES = [
    "ae_title",
    "maximum_associations",
    "maximum_pdu_size",
    "acse_timeout",
    "dimse_timeout",
    "network_timeout",
    "connection_timeout",
    "require_called_aet",
    "require_calling_aet",
    "implementation_class_uid",
    "implementation_version_name",
    "supported_contexts",
    "requested_contexts",
]

AE_METHODS = [
    "add_supported_context",
    "add_requested_context",
    "remove_supported_context",
    "remove_requested_context",
    "associate",
    "start_server",
    "shutdown",
    "active_associations",
]

ASSOCIATION_NAMES = [
    "is_established",
    "is_rejected",
    "is_aborted",
    "is_released",
    "accepted_contexts",
    "rejected_contexts",
    "send_c_echo",
    "send_c_store",
    "send_c_find",
    "send_c_get",
    "send_c_move",
    "send_c_cancel",
    "release",
    "abort",
    "bind",
    "unbind",
    "get_events",
    "get_handlers",
    "requestor",
    "acceptor",
    "is_requestor",
    "is_acceptor",
    "mode",
    "ae",
    "acse_timeout",
    "dimse_timeout",
    "network_timeout",
    "local",
    "remote",
    "is_alive",
]

EVENTS = [
    "EVT_ABORTED",
    "EVT_ACCEPTED",
    "EVT_CONN_CLOSE",
    "EVT_CONN_OPEN",
    "EVT_ESTABLISHED",
    "EVT_REJECTED",
    "EVT_RELEASED",
    "EVT_REQUESTED",
    "EVT_C_ECHO",
    "EVT_C_FIND",
    "EVT_C_GET",
    "EVT_C_MOVE",
    "EVT_C_STORE",
    "EVT_USER_ID",
    "EVT_SOP_EXTENDED",
]

NOT_TRIGGERED_EVENTS = [
    "EVT_ACSE_RECV",
    "EVT_ACSE_SENT",
    "EVT_FSM_TRANSITION",
    "EVT_PDU_RECV",
    "EVT_PDU_SENT",
    "EVT_ASYNC_OPS",
    "EVT_N_ACTION",
    "EVT_N_CREATE",
    "EVT_N_DELETE",
    "EVT_N_EVENT_REPORT",
    "EVT_N_GET",
    "EVT_N_SET",
]

EVENT_ATTRIBUTES = [
    "assoc",
    "context",
    "request",
    "identifier",
    "dataset",
    "file_meta",
    "is_cancelled",
    "move_destination",
    "message_id",
    "timestamp",
    "event",
]


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_top_level_names(name: str) -> None:
    assert hasattr(pynetdicom, name)
    assert hasattr(chromanet, name)


def test_default_transfer_syntaxes_match() -> None:
    assert list(chromanet.DEFAULT_TRANSFER_SYNTAXES) == list(pynetdicom.DEFAULT_TRANSFER_SYNTAXES)


@pytest.mark.parametrize("name", AE_ATTRIBUTES + AE_METHODS)
def test_ae_names(name: str) -> None:
    assert hasattr(pynetdicom.AE(), name)
    assert hasattr(AE(), name)


def test_ae_method_keywords() -> None:
    """The keyword arguments pynetdicom programs pass are accepted."""
    ours = inspect.signature(AE.associate).parameters
    for keyword in ("addr", "port", "contexts", "ae_title", "max_pdu", "ext_neg", "bind_address", "tls_args", "evt_handlers"):
        assert keyword in ours
    ours = inspect.signature(AE.start_server).parameters
    for keyword in ("address", "block", "ssl_context", "evt_handlers", "ae_title", "contexts"):
        assert keyword in ours
    ours = inspect.signature(AE.add_supported_context).parameters
    for keyword in ("abstract_syntax", "transfer_syntax", "scu_role", "scp_role"):
        assert keyword in ours


# Set in __init__, so not visible on the class (the dual test uses them on
# live associations).
PN_INSTANCE_ATTRIBUTES = {"requestor", "acceptor", "ae", "is_established", "is_rejected", "is_aborted", "is_released"}
OUR_INSTANCE_ATTRIBUTES = {"requestor", "acceptor", "ae", "is_requestor", "is_acceptor"}


@pytest.mark.parametrize("name", ASSOCIATION_NAMES)
def test_association_names(name: str) -> None:
    assert hasattr(pynetdicom.association.Association, name) or name in PN_INSTANCE_ATTRIBUTES
    assert hasattr(Association, name) or hasattr(AsyncAssociation, name) or name in OUR_INSTANCE_ATTRIBUTES


def test_association_method_keywords() -> None:
    checks = {
        "send_c_echo": ["msg_id"],
        "send_c_store": ["dataset", "msg_id", "priority", "originator_aet", "originator_id"],
        "send_c_find": ["dataset", "query_model", "msg_id", "priority"],
        "send_c_get": ["dataset", "query_model", "msg_id", "priority"],
        "send_c_move": ["dataset", "move_aet", "query_model", "msg_id", "priority"],
        "send_c_cancel": ["msg_id", "context_id", "query_model"],
    }
    for method, keywords in checks.items():
        theirs = list(inspect.signature(getattr(pynetdicom.association.Association, method)).parameters)[1:]
        ours = list(inspect.signature(getattr(Association, method)).parameters)[1:]
        assert theirs[: len(keywords)] == keywords
        assert ours[: len(keywords)] == keywords, method


@pytest.mark.parametrize("name", EVENTS + NOT_TRIGGERED_EVENTS)
def test_event_names(name: str) -> None:
    theirs, ours = getattr(pynetdicom.evt, name), getattr(evt, name)
    assert ours.name == theirs.name == name
    assert ours.is_intervention == theirs.is_intervention
    assert ours.is_notification == theirs.is_notification


@pytest.mark.parametrize("name", NOT_TRIGGERED_EVENTS)
def test_binding_an_event_never_triggered_raises(name: str) -> None:
    with pytest.raises(NotImplementedError, match=name):
        evt.split_handlers([(getattr(evt, name), lambda event: None)])


@pytest.mark.parametrize("name", EVENT_ATTRIBUTES)
def test_event_attributes(name: str) -> None:
    assert hasattr(pynetdicom.events.Event, name) or name in ("assoc", "event", "timestamp", "context", "request")
    event = evt.Event(None, evt.EVT_C_ECHO)
    assert name in dir(event) or hasattr(evt.Event, name)


# ------------------------------------------------------------- sop_class
@pytest.mark.parametrize(
    "name",
    [
        "Verification",
        "ColorPaletteStorage",
        "ColorPaletteInformationModelFind",
        "ColorPaletteInformationModelMove",
        "ColorPaletteInformationModelGet",
    ],
)
def test_sop_class_values(name: str) -> None:
    assert getattr(sop_class, name) == getattr(pn_sop_class, name)


def test_storage_sop_classes_from_pydicom() -> None:
    expected = {
        keyword: uid
        for uid, (label, kind, _i, _r, keyword) in UID_dictionary.items()
        if kind == "SOP Class" and label.endswith("Storage")
    }
    assert sop_class.STORAGE_CLASSES == expected
    for keyword, uid in expected.items():
        assert getattr(sop_class, keyword) == uid
    # Where pynetdicom has the same keyword, the UID is the same.
    shared = [k for k in expected if isinstance(getattr(pn_sop_class, k, None), str)]
    assert len(shared) > 150
    for keyword in shared:
        assert getattr(sop_class, keyword) == getattr(pn_sop_class, keyword)


def test_storage_presentation_contexts() -> None:
    contexts = chromanet.StoragePresentationContexts
    assert len(contexts) <= 128
    assert len(contexts) == len({cx.abstract_syntax for cx in contexts}) == 120
    syntaxes = {cx.abstract_syntax for cx in contexts}
    assert sop_class.ColorPaletteStorage in syntaxes
    assert syntaxes <= set(sop_class.STORAGE_CLASSES.values())
    assert all(UID_dictionary[uid][3] != "Retired" for uid in syntaxes)
    current_images = {
        uid
        for uid, (label, kind, _i, retired, _k) in UID_dictionary.items()
        if kind == "SOP Class" and label.endswith("Image Storage") and retired != "Retired"
    }
    assert current_images <= syntaxes


def test_color_palette_and_verification_contexts() -> None:
    ours = [cx.abstract_syntax for cx in chromanet.ColorPalettePresentationContexts]
    theirs = [cx.abstract_syntax for cx in pynetdicom.ColorPalettePresentationContexts]
    assert ours == theirs
    assert [cx.abstract_syntax for cx in chromanet.VerificationPresentationContexts] == [
        cx.abstract_syntax for cx in pynetdicom.VerificationPresentationContexts
    ]


def test_unimplemented_sop_class_names_raise() -> None:
    with pytest.raises(NotImplementedError, match="ModalityWorklistInformationFind"):
        sop_class.ModalityWorklistInformationFind  # noqa: B018
    with pytest.raises(NotImplementedError, match="uid_to_sop_class"):
        sop_class.uid_to_sop_class  # noqa: B018
    assert not hasattr(sop_class, "PatientRootQueryRetrieveInformationModelFind")
    with pytest.raises(NotImplementedError, match="QueryRetrievePresentationContexts"):
        chromanet.QueryRetrievePresentationContexts  # noqa: B018


# ---------------------------------------------------------------- status
def test_status_names() -> None:
    for name in pn_status.__all__:
        if name in status.__all__:
            continue
        with pytest.raises(NotImplementedError, match=name):
            getattr(status, name)
    for name in ("STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_WARNING", "STATUS_CANCEL", "STATUS_PENDING", "STATUS_UNKNOWN"):
        assert getattr(status, name) == getattr(pn_status, name)


def test_code_to_category_matches() -> None:
    for code in list(range(0x0000, 0x0300)) + list(range(0xA000, 0xD001)) + [0xFE00, 0xFF00, 0xFF01, 0xFFFF]:
        assert status.code_to_category(code) == pn_status.code_to_category(code), hex(code)
    for bad in (-1, "0", 1.5):
        with pytest.raises(ValueError):
            status.code_to_category(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    [
        "GENERAL_STATUS",
        "VERIFICATION_SERVICE_CLASS_STATUS",
        "STORAGE_SERVICE_CLASS_STATUS",
        "QR_FIND_SERVICE_CLASS_STATUS",
        "QR_MOVE_SERVICE_CLASS_STATUS",
        "QR_GET_SERVICE_CLASS_STATUS",
    ],
)
def test_status_tables_same_codes_and_categories(name: str) -> None:
    ours, theirs = getattr(status, name), getattr(pn_status, name)
    assert set(ours) == set(theirs)
    assert {code: category for code, (category, _) in ours.items()} == {
        code: category for code, (category, _) in theirs.items()
    }


def test_code_to_status_and_status_enum() -> None:
    ds = status.code_to_status(0xA700)
    assert isinstance(ds, Dataset) and ds.Status == 0xA700 and len(ds) == 1
    assert status.Status.SUCCESS == pn_status.Status.SUCCESS
    assert status.Status.MOVE_DESTINATION_UNKNOWN == 0xA801
    status.Status.add("UNABLE_TO_PROCESS", 0xC000)
    assert status.Status.UNABLE_TO_PROCESS == 0xC000  # type: ignore[attr-defined]


# ------------------------------------------------------- debug_logger
def test_debug_logger() -> None:
    logger = logging.getLogger("chromanet")
    before = list(logger.handlers), logger.level
    try:
        chromanet.debug_logger()
        chromanet.debug_logger()
        ours = [h for h in logger.handlers if getattr(h, "_chromanet_debug", False)]
        assert len(ours) == 1
        assert logger.level == logging.DEBUG
    finally:
        logger.handlers[:] = before[0]
        logger.setLevel(before[1])


# ------------------------------------------------- TLS arguments are checked
def test_tls_arguments_must_be_ssl_contexts() -> None:
    ae = AE()
    ae.add_requested_context(sop_class.Verification)
    ae.add_supported_context(sop_class.Verification)
    with pytest.raises(TypeError, match="SSLContext"):
        ae.associate("127.0.0.1", 11112, tls_args=(object(), None))
    with pytest.raises(TypeError, match="SSLContext"):
        ae.start_server(("127.0.0.1", 0), block=False, ssl_context=object())
    assert ae.active_associations == []


# ------------------------------------------------- not implemented, loudly
def test_not_implemented_features_raise() -> None:
    ae = AE()
    ae.add_requested_context(sop_class.Verification)
    with pytest.raises(NotImplementedError, match="make_server"):
        ae.make_server(("127.0.0.1", 0))
    for method in ("send_n_action", "send_n_create", "send_n_delete", "send_n_event_report", "send_n_get", "send_n_set"):
        with pytest.raises(NotImplementedError, match=method):
            getattr(AsyncAssociation, method)(object.__new__(AsyncAssociation))
    with pytest.raises(NotImplementedError, match="serve_forever"):
        ThreadedServer.serve_forever(object.__new__(ThreadedServer))


PDU_PRIMITIVES = [
    "UserIdentityNegotiation",
    "SOPClassExtendedNegotiation",
    "SOPClassCommonExtendedNegotiation",
    "SCP_SCU_RoleSelectionNegotiation",
    "AsynchronousOperationsWindowNegotiation",
]


@pytest.mark.parametrize("name", PDU_PRIMITIVES)
def test_pdu_primitives_same_attributes_and_defaults(name: str) -> None:
    """The ext_neg items a requestor builds: the same attributes, with the
    same values when nothing was set."""
    import pynetdicom.pdu_primitives as pn_primitives

    from chromanet import pdu_primitives

    ours, theirs = getattr(pdu_primitives, name)(), getattr(pn_primitives, name)()
    public = [attr for attr in vars(type(ours)) if not attr.startswith("_") and attr != "to_item"]
    assert public
    for attr in public:
        assert getattr(ours, attr) == getattr(theirs, attr), attr


def test_pdu_primitives_incomplete_item_refused_at_associate() -> None:
    from chromanet import pdu_primitives

    identity = pdu_primitives.UserIdentityNegotiation()
    identity.user_identity_type = 2
    identity.primary_field = b"user"
    with pytest.raises(ValueError, match="secondary_field"):
        identity.to_item()
    role = pdu_primitives.SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = "1.2.840.10008.5.1.4.39.1"
    with pytest.raises(ValueError, match="scu_role or scp_role"):
        role.to_item()
    with pytest.raises(ValueError, match="not a valid UID"):
        role.sop_class_uid = "1.2.x"
    extended = pdu_primitives.SOPClassExtendedNegotiation()
    with pytest.raises(ValueError, match="sop_class_uid"):
        extended.to_item()
    ae = AE("ME")
    ae.add_requested_context("1.2.840.10008.1.1")
    with pytest.raises(ValueError):
        ae.associate("127.0.0.1", 9, ext_neg=[extended])


# ------------------------------------------------- bind_address is checked
@pytest.mark.parametrize("bad", [12, (12,), (12, 13), ("127.0.0.1",), ("127.0.0.1", "104"), ("a", 1, 2)])
def test_bind_address_must_be_host_and_port(bad: Any) -> None:
    ae = AE()
    ae.add_requested_context(sop_class.Verification)
    with pytest.raises(TypeError, match="bind_address"):
        ae.associate("127.0.0.1", 11112, bind_address=bad)


# ------------------------------------------------- wire hooks cost nothing unbound
def test_wire_hooks_only_while_bound() -> None:
    """Nothing bound: the connection and the DIMSE channel carry no hook
    (the hot path pays one attribute check); binding and unbinding
    EVT_DATA_* / EVT_DIMSE_* puts them on and takes them off."""
    from chromanet import evt
    from chromanet.ul.connection import _WatchedTransport

    ae = AE()
    ae.add_supported_context(sop_class.Verification)
    ae.add_requested_context(sop_class.Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        assoc = ae.associate("127.0.0.1", server.server_address[1])
        inner = assoc._inner if hasattr(assoc, "_inner") else assoc
        connection = inner._ul.connection
        channel = inner.service_session.channel
        assert connection.wire_hook is None and channel.dimse_hook is None
        assert not isinstance(connection.transport, _WatchedTransport)

        def handler(event: Any) -> None:
            pass

        assoc.bind(evt.EVT_DATA_SENT, handler)
        assoc.bind(evt.EVT_DIMSE_RECV, handler)
        assert assoc.send_c_echo().Status == 0
        assert connection.wire_hook is not None and channel.dimse_hook is not None
        assert isinstance(connection.transport, _WatchedTransport)
        assoc.unbind(evt.EVT_DATA_SENT, handler)
        assoc.unbind(evt.EVT_DIMSE_RECV, handler)
        assert assoc.send_c_echo().Status == 0
        assert connection.wire_hook is None and channel.dimse_hook is None
        assert not isinstance(connection.transport, _WatchedTransport)
        assoc.release()
    finally:
        server.shutdown()
