"""chromanet <-> pynetdicom over loopback, both directions: association
accept/reject, release, abort from either side, C-ECHO, C-STORE."""

from __future__ import annotations

import threading
from typing import Any

import pydicom
import pytest

from chromanet import uids
from helpers.data import dataset_bytes, pydicom_decode, pydicom_encode
from helpers.servers import Recorder, scu_ae
from helpers.waits import NETWORK_TIMEOUT, WAIT_TIMEOUT

pytestmark = [pytest.mark.peer, pytest.mark.timeout(90)]


def _pyn_scu(pynetdicom: Any, title: str = "PYSCU", palette_syntaxes: list[str] | None = None) -> Any:
    ae = pynetdicom.AE(title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT
    ae.add_requested_context(uids.Verification)
    if palette_syntaxes is None:
        ae.add_requested_context(uids.ColorPaletteStorage)
    else:
        ae.add_requested_context(uids.ColorPaletteStorage, palette_syntaxes)
    return ae


class _Flag:
    """A pynetdicom notification handler that sets a threading.Event."""

    def __init__(self) -> None:
        self.fired = threading.Event()

    def __call__(self, event: Any) -> None:
        self.fired.set()


# ============================================ pynetdicom SCU -> chromanet SCP
def test_pynetdicom_scu_echo_release(pynetdicom, chromanet_scp):
    assoc = _pyn_scu(pynetdicom).associate("127.0.0.1", chromanet_scp.port, ae_title="SRV")
    assert assoc.is_established
    accepted = {(c.abstract_syntax, str(c.transfer_syntax[0])) for c in assoc.accepted_contexts}
    assert accepted == {
        (uids.Verification, uids.ImplicitVRLittleEndian),
        (uids.ColorPaletteStorage, uids.ImplicitVRLittleEndian),
    }
    rsp = assoc.send_c_echo()
    assert rsp.Status == 0x0000
    assoc.release()
    assert assoc.is_released and not assoc.is_aborted
    rec = chromanet_scp.recorder
    assert rec.wait_event("EVT_CONN_CLOSE")
    assert rec.names() == [
        "EVT_CONN_OPEN", "EVT_REQUESTED", "EVT_ACCEPTED", "EVT_ESTABLISHED", "EVT_RELEASED", "EVT_CONN_CLOSE",
    ]
    assert rec.echoes == 1
    assert rec.events[-1][1].acse_request.calling_ae_title.strip() == "PYSCU"


def _pyn_saw_rj(assoc: Any, caplog: Any, result: str, source: str, reason: str) -> None:
    """What the pynetdicom requestor decoded from our A-ASSOCIATE-RJ.

    Read from pynetdicom's PDU dump (logged by its DUL thread) rather than
    only ``assoc.is_rejected``: pynetdicom's requestor thread checks that the
    socket is still connected *after* its DUL thread may already have
    handled a fast RJ and closed it, and then calls abort() instead of
    setting is_rejected (a pynetdicom race, seen against pynetdicom's own SCP
    too, more often against a fast one)."""
    assert not assoc.is_established
    assert assoc.is_rejected or assoc.is_aborted
    assert "INCOMING A-ASSOCIATE-RJ PDU" in caplog.text
    assert f"Result:    {result}" in caplog.text
    assert f"Source:    {source}" in caplog.text
    assert f"Reason:    {reason}" in caplog.text


@pytest.mark.parametrize(
    "settings, calling, called, reason_text",
    [
        pytest.param({"require_called_aet": True}, "PYSCU", "WRONG", "Called AE title not recognised", id="called"),
        pytest.param({"require_calling_aet": ["GOOD"]}, "PYSCU", "SRV", "Calling AE title not recognised", id="calling"),
    ],
)
def test_pynetdicom_scu_rejected(pynetdicom, make_scp, caplog, settings, calling, called, reason_text):
    scp = make_scp(**settings)
    with caplog.at_level("DEBUG", logger="pynetdicom"):
        assoc = _pyn_scu(pynetdicom, calling).associate("127.0.0.1", scp.port, ae_title=called)
    _pyn_saw_rj(assoc, caplog, "Rejected (Permanent)", "DUL service-user", reason_text)
    assert scp.recorder.wait_event("EVT_CONN_CLOSE")
    assert scp.recorder.names() == ["EVT_CONN_OPEN", "EVT_REQUESTED", "EVT_REJECTED", "EVT_CONN_CLOSE"]


def test_pynetdicom_scu_rejected_too_many(pynetdicom, make_scp, caplog):
    scp = make_scp(maximum_associations=1)
    ae = _pyn_scu(pynetdicom)
    first = ae.associate("127.0.0.1", scp.port, ae_title="SRV")
    assert first.is_established
    with caplog.at_level("DEBUG", logger="pynetdicom"):
        second = ae.associate("127.0.0.1", scp.port, ae_title="SRV")
    _pyn_saw_rj(
        second, caplog, "Rejected (Transient)", "DUL service-provider (presentation related)", "Local limit exceeded"
    )
    first.release()
    assert first.is_released


def test_pynetdicom_scu_aborts(pynetdicom, chromanet_scp):
    assoc = _pyn_scu(pynetdicom).associate("127.0.0.1", chromanet_scp.port, ae_title="SRV")
    assert assoc.is_established
    assoc.abort()
    assert assoc.is_aborted
    rec = chromanet_scp.recorder
    assert rec.wait_event("EVT_CONN_CLOSE")
    assert rec.names()[-2:] == ["EVT_ABORTED", "EVT_CONN_CLOSE"]
    server_assoc = rec.events[-1][1]
    assert server_assoc.is_aborted and server_assoc._ul.abort_source_reason == (0, 0)
    assert rec.wait_for(lambda: not chromanet_scp.server.active_associations)


def test_chromanet_scp_aborts_pynetdicom_scu(pynetdicom, chromanet_scp):
    aborted = _Flag()
    assoc = _pyn_scu(pynetdicom).associate(
        "127.0.0.1", chromanet_scp.port, ae_title="SRV", evt_handlers=[(pynetdicom.evt.EVT_ABORTED, aborted)]
    )
    assert assoc.is_established
    (server_side,) = chromanet_scp.server.active_associations
    server_side.abort()
    assert aborted.fired.wait(WAIT_TIMEOUT)
    assoc.join(WAIT_TIMEOUT)
    assert assoc.is_aborted and not assoc.is_established
    assert chromanet_scp.recorder.wait_event("EVT_ABORTED")


@pytest.mark.parametrize("syntax", [uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian])
def test_pynetdicom_scu_stores_palettes(pynetdicom, chromanet_scp, palette_files, syntax):
    assoc = _pyn_scu(pynetdicom, palette_syntaxes=[syntax]).associate(
        "127.0.0.1", chromanet_scp.port, ae_title="SRV"
    )
    assert assoc.is_established
    for path in palette_files:
        rsp = assoc.send_c_store(path)
        assert rsp.Status == 0x0000, path
    assoc.release()
    assert assoc.is_released

    stored = chromanet_scp.stored
    assert len(stored) == 8
    for item, path in zip(stored, palette_files):
        source = pydicom.dcmread(path)
        assert item.sop_class_uid == uids.ColorPaletteStorage
        assert item.sop_instance_uid == source.SOPInstanceUID
        assert item.transfer_syntax == syntax
        assert pydicom_decode(item.encoded, syntax) == source, path.name
        # pynetdicom decodes the file and encodes the data set with pydicom
        assert item.encoded == pydicom_encode(source, syntax), path.name


# ============================================ chromanet SCU -> pynetdicom SCP
def test_chromanet_scu_echo_release(pynetdicom_scp):
    client = Recorder()
    assoc = scu_ae().associate("127.0.0.1", pynetdicom_scp.port, ae_title="PYSCP", evt_handlers=client.handlers())
    assert assoc.is_established
    assert type(assoc.acse_response).__name__ == "AssociateAC"
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert assoc.is_released and not assoc.is_aborted
    assert client.wait_event("EVT_CONN_CLOSE")
    assert client.names() == ["EVT_REQUESTED", "EVT_CONN_OPEN", "EVT_ACCEPTED", "EVT_ESTABLISHED", "EVT_RELEASED", "EVT_CONN_CLOSE"]
    assert pynetdicom_scp.wait_event("EVT_RELEASED")
    assert "EVT_ABORTED" not in pynetdicom_scp.events


def test_chromanet_scu_rejected_by_pynetdicom(make_pynetdicom_scp):
    scp = make_pynetdicom_scp(require_called_aet=True)
    ae = scu_ae()
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="NOT-PYSCP")
    assert assoc.is_rejected and not assoc.is_established
    rj = assoc.acse_response
    assert (rj.result, rj.source, rj.reason) == (1, 1, 7)
    assert scp.wait_event("EVT_REJECTED")
    ok = ae.associate("127.0.0.1", scp.port, ae_title="PYSCP")
    assert ok.is_established
    ok.release()
    assert ok.is_released


def test_chromanet_scu_aborts_pynetdicom_scp(pynetdicom_scp):
    client = Recorder()
    assoc = scu_ae().associate("127.0.0.1", pynetdicom_scp.port, ae_title="PYSCP", evt_handlers=client.handlers())
    assert assoc.is_established
    assoc.abort()
    assert client.wait_event("EVT_CONN_CLOSE")
    assert assoc.is_aborted
    assert pynetdicom_scp.wait_event("EVT_ABORTED")
    assert "EVT_RELEASED" not in pynetdicom_scp.events


def test_pynetdicom_scp_aborts_chromanet_scu(pynetdicom_scp):
    client = Recorder()
    assoc = scu_ae().associate("127.0.0.1", pynetdicom_scp.port, ae_title="PYSCP", evt_handlers=client.handlers())
    assert assoc.is_established
    assert client.wait_for(lambda: bool(pynetdicom_scp.server.active_associations))
    (server_side,) = pynetdicom_scp.server.active_associations
    server_side.abort()
    assert client.wait_event("EVT_CONN_CLOSE")
    assert client.names() == ["EVT_REQUESTED", "EVT_CONN_OPEN", "EVT_ACCEPTED", "EVT_ESTABLISHED", "EVT_ABORTED", "EVT_CONN_CLOSE"]
    # (no check of the A-ABORT source: pynetdicom may close the socket
    # before its A-ABORT PDU is written, which is a provider abort to us)
    assert assoc.is_aborted and not assoc.is_established
    with pytest.raises(RuntimeError, match="not established"):
        assoc.send_c_echo()


@pytest.mark.parametrize("form", ["path", "bytes", "dataset"])
def test_chromanet_scu_stores_palettes(pynetdicom_scp, palette_files, form):
    assoc = scu_ae(palette_syntaxes=[uids.ExplicitVRLittleEndian]).associate(
        "127.0.0.1", pynetdicom_scp.port, ae_title="PYSCP"
    )
    assert assoc.is_established
    for path in palette_files:
        payload: Any = {"path": path, "bytes": path.read_bytes(), "dataset": pydicom.dcmread(path)}[form]
        assert assoc.send_c_store(payload).Status == 0x0000
    assoc.release()
    assert assoc.is_released

    stored = pynetdicom_scp.stored
    assert len(stored) == 8
    for item, path in zip(stored, palette_files):
        source = pydicom.dcmread(path)
        assert item.sop_instance_uid == source.SOPInstanceUID
        assert item.sop_class_uid == uids.ColorPaletteStorage
        assert item.transfer_syntax == uids.ExplicitVRLittleEndian
        assert item.extra == source, path.name  # pynetdicom's decode
        if form != "dataset":
            assert item.encoded == dataset_bytes(path), path.name


def test_chromanet_scu_stores_with_conversion_to_pynetdicom(pynetdicom_scp, palette_files):
    """Default offer: pynetdicom picks Implicit VR; the files are Explicit."""
    assoc = scu_ae().associate("127.0.0.1", pynetdicom_scp.port, ae_title="PYSCP")
    for path in palette_files:
        assert assoc.send_c_store(path).Status == 0
    assoc.release()
    assert len(pynetdicom_scp.stored) == 8
    for item, path in zip(pynetdicom_scp.stored, palette_files):
        assert item.transfer_syntax == uids.ImplicitVRLittleEndian
        assert item.extra == pydicom.dcmread(path), path.name
