"""chromanet <-> chromanet over loopback: the association life cycle (PS3.8
A-ASSOCIATE, A-RELEASE, A-ABORT) through the public API. Accept and release
around C-ECHO, rejections (AE titles, a malformed request, too many
associations), presentation context negotiation, aborts from either side,
and a peer that drops the connection mid-association.

C-STORE over the same loopback is in tests/services/test_storage.py."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pydicom
import pytest
from pydicom import Dataset

from chromanet import _pdu, evt, uids
from chromanet.presentation import build_context
from chromanet.ul.negotiation import build_associate_rq
from helpers.rawpeer import raw_associate, recv_raw_pdu
from helpers.servers import Recorder, async_scp, scu_ae
from helpers.waits import NETWORK_TIMEOUT, WAIT_TIMEOUT, run_async

pytestmark = pytest.mark.timeout(90)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SERVER_LIFECYCLE = [
    "EVT_CONN_OPEN",
    "EVT_REQUESTED",
    "EVT_ACCEPTED",
    "EVT_ESTABLISHED",
]
#: What a requestor is told before the answer: the RQ went out (pynetdicom's order).
CLIENT_OPENING = ["EVT_REQUESTED", "EVT_CONN_OPEN"]


def _rj(assoc: Any) -> tuple[int, int, int]:
    rj = assoc.acse_response
    assert type(rj).__name__ == "AssociateRJ", rj
    return (rj.result, rj.source, rj.reason)


def _no_active(scp: Any) -> bool:
    # the whole set, not only the established ones: nothing may linger
    return not scp.server._server.associations


def _palette_dataset() -> Dataset:
    from pydicom.data import get_palette_files

    return pydicom.dcmread(get_palette_files("*.dcm")[0])


# ------------------------------------------------------------------ accept
def test_accept_echo_release(chromanet_scp):
    client = Recorder()
    ae = scu_ae()
    assoc = ae.associate(*chromanet_scp.address, ae_title="SRV", evt_handlers=client.handlers())
    assert assoc.is_established
    assert type(assoc.acse_response).__name__ == "AssociateAC"
    accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
    # The acceptor picks the first of its own syntaxes that we offered.
    assert accepted == {
        (uids.Verification, uids.ImplicitVRLittleEndian),
        (uids.ColorPaletteStorage, uids.ImplicitVRLittleEndian),
    }
    assert assoc.rejected_contexts == []

    rsp = assoc.send_c_echo()
    assert rsp.Status == 0x0000
    assert chromanet_scp.recorder.echoes == 1

    assoc.release()
    assert assoc.is_released and not assoc.is_aborted and not assoc.is_established
    assert client.wait_event("EVT_CONN_CLOSE")
    assert client.names() == CLIENT_OPENING + ["EVT_ACCEPTED", "EVT_ESTABLISHED", "EVT_RELEASED", "EVT_CONN_CLOSE"]

    rec = chromanet_scp.recorder
    assert rec.wait_event("EVT_CONN_CLOSE")
    assert rec.names() == SERVER_LIFECYCLE + ["EVT_RELEASED", "EVT_CONN_CLOSE"]
    server_assoc = rec.events[-1][1]
    assert server_assoc.is_released and server_assoc.is_acceptor
    assert rec.wait_for(lambda: _no_active(chromanet_scp))


def test_async_accept_echo_release_with_async_with():
    async def main() -> None:
        async with async_scp() as scp:
            ae = scu_ae()
            async with ae.associate_async(*scp.address, ae_title="SRV") as assoc:
                assert assoc.is_established
                for msg_id in (1, 2, 3):
                    assert (await assoc.send_c_echo(msg_id)).Status == 0
            assert assoc.is_released
            assert await scp.recorder.wait_event_async("EVT_CONN_CLOSE")
            assert scp.recorder.names() == SERVER_LIFECYCLE + ["EVT_RELEASED", "EVT_CONN_CLOSE"]
            assert scp.recorder.echoes == 3
            assert await scp.recorder.wait_until_async(lambda: not scp.server.associations)

    run_async(main())


# ------------------------------------------------------------------ reject
@pytest.mark.parametrize(
    "settings, calling, called, expected",
    [
        pytest.param({"require_called_aet": True}, "CLI", "WRONG", (1, 1, 7), id="called-aet"),
        pytest.param({"require_calling_aet": ["GOOD"]}, "BAD", "SRV", (1, 1, 3), id="calling-aet"),
    ],
)
def test_reject_ae_titles(make_scp, settings, calling, called, expected):
    scp = make_scp(**settings)
    client = Recorder()
    assoc = scu_ae(calling).associate(*scp.address, ae_title=called, evt_handlers=client.handlers())
    assert assoc.is_rejected
    assert not assoc.is_established and not assoc.is_aborted and not assoc.is_released
    assert _rj(assoc) == expected
    assert client.wait_event("EVT_CONN_CLOSE")
    assert client.names() == CLIENT_OPENING + ["EVT_REJECTED", "EVT_CONN_CLOSE"]
    assert scp.recorder.wait_event("EVT_CONN_CLOSE")
    assert scp.recorder.names() == ["EVT_CONN_OPEN", "EVT_REQUESTED", "EVT_REJECTED", "EVT_CONN_CLOSE"]

    # The right titles are accepted by the same server.
    good = scu_ae("GOOD").associate(*scp.address, ae_title="SRV")
    assert good.is_established
    good.release()


@pytest.mark.parametrize(
    "field, value, expected, by_user",
    [
        # an unknown application context name: permanent, service user, reason 2
        pytest.param("application_context_name", "1.2.3.4", (1, 1, 2), True, id="application-context"),
        # protocol version without bit 0: permanent, ACSE provider, reason 2.
        # The provider answers it (AE-6) and the user never sees the request.
        pytest.param("protocol_version", 2, (1, 2, 2), False, id="protocol-version"),
    ],
)
def test_reject_malformed_request(chromanet_scp, field, value, expected, by_user):
    """Rejections only a non-chromanet requestor can provoke: raw RQ PDUs."""
    rq = build_associate_rq("SRV", "RAW", [build_context(uids.Verification).to_spec()], max_pdu_length=16382)
    setattr(rq, field, value)
    with socket.create_connection(chromanet_scp.address, timeout=NETWORK_TIMEOUT) as sock:
        sock.sendall(_pdu.encode_pdu(rq))
        pdu_type, body = recv_raw_pdu(sock)
        assert pdu_type == 0x03, "expected an A-ASSOCIATE-RJ"
        rj = _pdu.decode_pdu(pdu_type, body)
        assert (rj.result, rj.source, rj.reason) == expected
        # after an RJ the acceptor waits for us to close (Sta13): we do
    rec = chromanet_scp.recorder
    assert rec.wait_event("EVT_CONN_CLOSE")
    if by_user:
        assert rec.names() == ["EVT_CONN_OPEN", "EVT_REQUESTED", "EVT_REJECTED", "EVT_CONN_CLOSE"]
        assert _rj(rec.events[-1][1]) == expected  # what the server says it sent
    else:
        assert rec.names() == ["EVT_CONN_OPEN", "EVT_CONN_CLOSE"]
    assert rec.wait_for(lambda: _no_active(chromanet_scp))


def test_reject_accepted_titles_pass(make_scp):
    scp = make_scp(require_called_aet=True, require_calling_aet=["GOOD", "ALSO"])
    for calling in ("GOOD", "ALSO"):
        assoc = scu_ae(calling).associate(*scp.address, ae_title="SRV")
        assert assoc.is_established, calling
        assoc.release()
        assert assoc.is_released


def test_reject_too_many_associations(make_scp):
    scp = make_scp(maximum_associations=2)
    ae = scu_ae()
    first = ae.associate(*scp.address, ae_title="SRV")
    second = ae.associate(*scp.address, ae_title="SRV")
    assert first.is_established and second.is_established
    third = ae.associate(*scp.address, ae_title="SRV")
    assert third.is_rejected
    # transient, ACSE-related presentation provider, local limit exceeded
    assert _rj(third) == (2, 3, 2)
    # the open ones are unaffected
    assert first.send_c_echo().Status == 0
    first.release()
    assert scp.recorder.wait_event("EVT_RELEASED")
    fourth = ae.associate(*scp.address, ae_title="SRV")
    assert fourth.is_established
    for assoc in (second, fourth):
        assoc.release()
        assert assoc.is_released


# ------------------------------------------------------- context negotiation
def test_some_contexts_rejected(make_scp):
    scp = make_scp(transfer_syntaxes=[uids.ExplicitVRBigEndian])
    ae = scu_ae(palette_syntaxes=[uids.ImplicitVRLittleEndian])
    ae.add_requested_context(CT_IMAGE_STORAGE)
    assoc = ae.associate(*scp.address, ae_title="SRV")
    assert assoc.is_established
    assert [(c.context_id, c.abstract_syntax) for c in assoc.accepted_contexts] == [(1, uids.Verification)]
    rejected = {c.abstract_syntax: (c.context_id, c.result) for c in assoc.rejected_contexts}
    assert rejected == {
        uids.ColorPaletteStorage: (3, 4),  # transfer syntaxes not supported
        CT_IMAGE_STORAGE: (5, 3),  # abstract syntax not supported
    }
    assert assoc.send_c_echo().Status == 0
    with pytest.raises(ValueError, match="no accepted presentation context"):
        assoc.send_c_store(_palette_dataset())
    assoc.release()
    assert assoc.is_released


def test_no_common_context(make_scp):
    scp = make_scp()
    ae = scu_ae()
    assoc = ae.associate(*scp.address, ae_title="SRV", contexts=[build_context(CT_IMAGE_STORAGE)])
    try:
        assert not assoc.is_rejected
        assert assoc.is_aborted  # as pynetdicom: nothing to do without a context
        assert assoc.accepted_contexts == []
        assert [(c.context_id, c.result) for c in assoc.rejected_contexts] == [(1, 3)]
        with pytest.raises((ValueError, RuntimeError)):
            assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    assert not assoc.is_established


# ------------------------------------------------------------------ abort
def test_abort_by_requestor():
    async def main() -> None:
        async with async_scp() as scp:
            client = Recorder()
            assoc = await scu_ae().associate_async(*scp.address, ae_title="SRV", evt_handlers=client.handlers())
            assert assoc.is_established
            assert (await assoc.send_c_echo()).Status == 0
            assoc.abort()
            assert await asyncio.wait_for(assoc.wait_closed(), WAIT_TIMEOUT) == "aborted"
            assert assoc.is_aborted and not assoc.is_released and not assoc.is_established
            # Its sync handlers run in a worker thread: wait for the last one.
            assert await client.wait_event_async("EVT_CONN_CLOSE")
            assert client.names() == CLIENT_OPENING + ["EVT_ACCEPTED", "EVT_ESTABLISHED", "EVT_ABORTED", "EVT_CONN_CLOSE"]

            assert await scp.recorder.wait_event_async("EVT_CONN_CLOSE")
            assert scp.recorder.names() == SERVER_LIFECYCLE + ["EVT_ABORTED", "EVT_CONN_CLOSE"]
            server_assoc = scp.recorder.events[-1][1]
            assert server_assoc.is_aborted and not server_assoc.is_released
            assert server_assoc._ul.abort_source_reason == (0, 0)  # A-ABORT from the service user
            assert await scp.recorder.wait_until_async(lambda: not scp.server.associations)

    run_async(main())


def test_abort_by_acceptor():
    async def main() -> None:
        async with async_scp() as scp:
            client = Recorder()
            assoc = await scu_ae().associate_async(*scp.address, ae_title="SRV", evt_handlers=client.handlers())
            assert assoc.is_established
            (server_assoc,) = scp.server.associations
            server_assoc.abort()
            await asyncio.wait_for(assoc.wait_closed(), WAIT_TIMEOUT)
            assert assoc.is_aborted and not assoc.is_released
            assert assoc._ul.abort_source_reason == (0, 0)
            assert await client.wait_event_async("EVT_CONN_CLOSE")
            assert client.names() == CLIENT_OPENING + ["EVT_ACCEPTED", "EVT_ESTABLISHED", "EVT_ABORTED", "EVT_CONN_CLOSE"]
            with pytest.raises(RuntimeError, match="not established"):
                await assoc.send_c_echo()
            assert await scp.recorder.wait_event_async("EVT_CONN_CLOSE")
            assert scp.recorder.names() == SERVER_LIFECYCLE + ["EVT_ABORTED", "EVT_CONN_CLOSE"]
            assert server_assoc.is_aborted

    run_async(main())


def test_abort_blocking_api_both_sides(chromanet_scp):
    ae = scu_ae()
    # requestor aborts
    assoc = ae.associate(*chromanet_scp.address, ae_title="SRV")
    assert assoc.is_established
    assoc.abort()
    assert chromanet_scp.recorder.wait_event("EVT_ABORTED")
    assert chromanet_scp.recorder.wait_event("EVT_CONN_CLOSE")
    assert assoc.is_aborted
    # acceptor aborts
    client = Recorder()
    assoc = ae.associate(*chromanet_scp.address, ae_title="SRV", evt_handlers=client.handlers())
    (server_side,) = chromanet_scp.server.active_associations
    server_side.abort()
    assert client.wait_event("EVT_CONN_CLOSE")
    assert "EVT_ABORTED" in client.names()
    assert assoc.is_aborted
    assert chromanet_scp.recorder.wait_event("EVT_ABORTED", count=2)


def test_acceptor_aborts_from_echo_handler(make_scp):
    def abort_now(event: Any) -> int:
        event.assoc.abort()
        return 0

    scp = make_scp(handlers=[(evt.EVT_C_ECHO, abort_now)])
    assoc = scu_ae().associate(*scp.address, ae_title="SRV")
    rsp = assoc.send_c_echo()
    # as pynetdicom: no response came, an empty Dataset
    assert "Status" not in rsp
    assert assoc.is_aborted
    assert scp.recorder.wait_event("EVT_CONN_CLOSE")
    assert "EVT_ABORTED" in scp.recorder.names()


# ------------------------------------------------- peer drops the connection
def _raw_associate(address: tuple[str, int]) -> socket.socket:
    rq = build_associate_rq(
        "SRV", "RAW", [build_context(uids.Verification).to_spec()], max_pdu_length=16382
    )
    return raw_associate(address, rq)


def _half_pdata() -> bytes:
    # P-DATA-TF announcing a 100-byte body; one PDV item header and 4 bytes sent.
    body = struct.pack(">IBB", 96, 1, 0x03) + b"\x00\x00\x00\x00"
    return struct.pack(">BBI", 0x04, 0, 100) + body


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"", id="close-after-accept"),
        pytest.param(_half_pdata(), id="half-a-pdata"),
        pytest.param(b"\x04\x00\x00", id="half-a-header"),
    ],
)
def test_peer_closes_mid_association(chromanet_scp, tail):
    rec = chromanet_scp.recorder
    sock = _raw_associate(chromanet_scp.address)
    assert rec.wait_event("EVT_ESTABLISHED")
    if tail:
        sock.sendall(tail)
    sock.close()

    assert rec.wait_event("EVT_CONN_CLOSE")
    assert rec.names() == SERVER_LIFECYCLE + ["EVT_ABORTED", "EVT_CONN_CLOSE"]
    server_assoc = rec.events[-1][1]
    assert server_assoc.is_aborted and not server_assoc.is_released
    assert rec.wait_for(lambda: _no_active(chromanet_scp))

    # The server still serves.
    assoc = scu_ae().associate(*chromanet_scp.address, ae_title="SRV")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    assert assoc.is_released
