"""The state machine over a real socket: what a misbehaving peer gets back.

A raw TCP peer (a plain blocking socket in the test) sends bad or
out-of-state PDUs to a chromanet acceptor, and a fake acceptor answers a
chromanet requestor badly. Each test asserts the PDU that comes back on the
wire, that the association ends, and that the server is still there and
holds no association afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
import time

import pytest

from chromanet import _pdu, loopthread, uids
from chromanet.ae import AE
from chromanet.ul.negotiation import ContextSpec, build_associate_rq
from helpers.rawpeer import IO_TIMEOUT, FakeAcceptor, pdata, recv_pdu, wait_closed


def associate_rq(called: str = "SRV", calling: str = "RAW") -> bytes:
    rq = build_associate_rq(
        called, calling, [ContextSpec(uids.Verification, [uids.ImplicitVRLittleEndian])], max_pdu_length=16382
    )
    return _pdu.encode_pdu(rq)


@pytest.fixture
def server():
    ae = AE("SRV")
    ae.add_supported_context(uids.Verification, uids.ImplicitVRLittleEndian)
    ae.artim_timeout = 1.0
    ae.network_timeout = 10
    srv = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        yield srv
    finally:
        srv.shutdown()


def _no_associations_left(srv) -> bool:
    deadline = time.monotonic() + IO_TIMEOUT
    while time.monotonic() < deadline:
        if not srv._server.associations:
            return True
        time.sleep(0.02)
    return False


def _connect(srv) -> socket.socket:
    sock = socket.create_connection(srv.server_address, timeout=IO_TIMEOUT)
    sock.settimeout(IO_TIMEOUT)
    return sock


def _established(srv) -> socket.socket:
    sock = _connect(srv)
    sock.sendall(associate_rq())
    assert isinstance(recv_pdu(sock), _pdu.AssociateAC)
    return sock


def _assert_server_alive(srv) -> None:
    """A fresh association still works after the misbehaviour."""
    sock = _established(srv)
    sock.sendall(_pdu.encode_pdu(_pdu.ReleaseRQ()))
    assert isinstance(recv_pdu(sock), _pdu.ReleaseRP)
    sock.close()


# --------------------------------------------------------------- Sta2 cases
@pytest.mark.parametrize(
    "payload, reason",
    [
        # Evt19: unrecognised PDU type 0x09
        (b"\x09\x00\x00\x00\x00\x04\x00\x00\x00\x00", 1),
        # Evt10 (P-DATA) before any association: unexpected PDU
        (pdata(1, 0x03, b"\x00" * 8), 2),
        # Evt12 (A-RELEASE-RQ) before any association
        (_pdu.encode_pdu(_pdu.ReleaseRQ()), 2),
        # Evt19: an A-ASSOCIATE-RQ whose item lengths are broken
        (b"\x01\x00\x00\x00\x00\x4a" + b"\x00\x01" + b"\x00" * 72, 6),
    ],
    ids=["unknown-type", "p-data", "release-rq", "malformed-rq"],
)
def test_sta2_bad_pdu_gets_provider_abort(server, payload, reason):
    sock = _connect(server)
    sock.sendall(payload)
    answer = recv_pdu(sock)
    assert isinstance(answer, _pdu.Abort)
    assert (answer.source, answer.reason) == (2, reason)
    # AA-1 started ARTIM: the server closes even if we keep the socket open.
    assert wait_closed(sock)
    sock.close()
    assert _no_associations_left(server)
    _assert_server_alive(server)


def test_sta2_artim_expiry_closes_connection(server):
    sock = _connect(server)  # and send nothing: ARTIM (1 s here) expires
    assert wait_closed(sock)
    sock.close()
    assert _no_associations_left(server)


def test_lying_length_is_refused_before_buffering(server):
    sock = _connect(server)
    # An A-ASSOCIATE-RQ header claiming 4 GiB, then nothing.
    sock.sendall(b"\x01\x00\xff\xff\xff\xff")
    answer = recv_pdu(sock)
    assert isinstance(answer, _pdu.Abort) and answer.source == 2
    assert wait_closed(sock)
    sock.close()
    _assert_server_alive(server)


def test_peer_closes_mid_pdu_in_sta2(server):
    sock = _connect(server)
    sock.sendall(associate_rq()[:30])
    sock.close()
    assert _no_associations_left(server)
    _assert_server_alive(server)


# --------------------------------------------------------------- Sta6 cases
@pytest.mark.parametrize(
    "payload, reason",
    [
        # Evt6: a second A-ASSOCIATE-RQ on an established association
        (associate_rq(), 2),
        # Evt3: an A-ASSOCIATE-AC makes no sense in Sta6
        (
            _pdu.encode_pdu(
                _pdu.AssociateAC(
                    "SRV",
                    "RAW",
                    [_pdu.PresentationContextAC(1, 0, uids.ImplicitVRLittleEndian)],
                    _pdu.UserInformation(max_length=0, implementation_class_uid="1.2.3"),
                )
            ),
            2,
        ),
        # Evt19: unrecognised PDU type
        (b"\x0a\x00\x00\x00\x00\x00", 1),
        # Evt19: P-DATA whose PDV length overruns the PDU
        (b"\x04\x00\x00\x00\x00\x08" + b"\x00\x00\x00\x40\x01\x03\x00\x00", 6),
        # P-DATA for a presentation context that was never negotiated
        (pdata(7, 0x03, b"\x00" * 8), 6),
        # P-DATA whose message control header has reserved bits set
        (pdata(1, 0xF3, b"\x00" * 8), 6),
        # A data set fragment with no command before it
        (pdata(1, 0x02, b"\x08\x00\x10\x00"), 6),
        # A command that is not a valid command set
        (pdata(1, 0x03, b"\x00\x00\x00\x00\x04\x00\x00\x00\xff\xff"), 6),
    ],
    ids=[
        "second-rq",
        "ac-in-sta6",
        "unknown-type",
        "pdv-overrun",
        "unknown-context",
        "reserved-bits",
        "dataset-first",
        "bad-command-set",
    ],
)
def test_sta6_bad_pdu_gets_provider_abort(server, payload, reason):
    sock = _established(server)
    sock.sendall(payload)
    answer = recv_pdu(sock)
    assert isinstance(answer, _pdu.Abort)
    assert (answer.source, answer.reason) == (2, reason)
    assert wait_closed(sock)
    sock.close()
    assert _no_associations_left(server)
    _assert_server_alive(server)


def test_sta6_pdata_longer_than_our_maximum(server):
    sock = _established(server)
    # We told the peer 16382 bytes at most; it announces 1 MiB.
    sock.sendall(b"\x04\x00" + struct.pack(">I", 1 << 20) + b"\x00" * 64)
    answer = recv_pdu(sock)
    assert isinstance(answer, _pdu.Abort) and answer.source == 2
    sock.close()
    assert _no_associations_left(server)


def test_sta6_peer_abort_ends_association(server):
    sock = _established(server)
    sock.sendall(_pdu.encode_pdu(_pdu.Abort(source=0, reason=0)))
    # AA-3: the acceptor closes the transport.
    assert wait_closed(sock)
    sock.close()
    assert _no_associations_left(server)
    _assert_server_alive(server)


def test_sta6_peer_closes_mid_pdata(server):
    sock = _established(server)
    sock.sendall(pdata(1, 0x03, b"\x00" * 40)[:20])
    sock.close()
    assert _no_associations_left(server)
    _assert_server_alive(server)


def test_release_then_acceptor_waits_for_close(server):
    sock = _established(server)
    sock.sendall(_pdu.encode_pdu(_pdu.ReleaseRQ()))
    assert isinstance(recv_pdu(sock), _pdu.ReleaseRP)
    # AR-4 started ARTIM in Sta13: if we do not close, the server does.
    assert wait_closed(sock)
    sock.close()
    assert _no_associations_left(server)


def test_pdata_after_release_request_is_answered_in_sta8(server):
    """A C-ECHO-RQ sent right before A-RELEASE-RQ is still answered (the
    acceptor answers the release after the echo response, in order)."""
    from chromanet._dimse import C_ECHO_RQ, NO_DATASET, Command, encode_command, decode_command

    sock = _established(server)
    echo = encode_command(
        Command(C_ECHO_RQ, affected_sop_class_uid=uids.Verification, message_id=7, command_data_set_type=NO_DATASET)
    )
    sock.sendall(pdata(1, 0x03, echo) + _pdu.encode_pdu(_pdu.ReleaseRQ()))
    first = recv_pdu(sock)
    assert isinstance(first, _pdu.PDataTF)
    response = decode_command(bytes(first.pdvs[0].data))
    assert (response.message_id_being_responded_to, response.status) == (7, 0)
    assert isinstance(recv_pdu(sock), _pdu.ReleaseRP)
    sock.close()


# ---------------------------------------------------------- requestor side
def _requestor() -> AE:
    ae = AE("RAW")
    ae.add_requested_context(uids.Verification, uids.ImplicitVRLittleEndian)
    ae.acse_timeout = 1.5
    ae.artim_timeout = 0.5
    return ae


def _ac_bytes() -> bytes:
    return _pdu.encode_pdu(
        _pdu.AssociateAC(
            "SRV",
            "RAW",
            [_pdu.PresentationContextAC(1, 0, uids.ImplicitVRLittleEndian)],
            _pdu.UserInformation(max_length=16382, implementation_class_uid="1.2.3.4"),
        )
    )


def test_requestor_sees_reject():
    fake = FakeAcceptor(lambda conn, f: conn.sendall(_pdu.encode_pdu(_pdu.AssociateRJ(1, 1, 7))))
    assoc = _requestor().associate("127.0.0.1", fake.port)
    assert assoc.is_rejected and not assoc.is_established
    rj = assoc.acse_response
    assert (rj.result, rj.source, rj.reason) == (1, 1, 7)
    # AE-4: the requestor closes the transport after an RJ.
    assert fake.closed_by_peer.wait(IO_TIMEOUT)


def test_requestor_aborts_on_garbage_answer():
    def script(conn, fake):
        conn.sendall(b"\x0b\x00\x00\x00\x00\x02\x00\x00")  # PDU type 0x0B: Evt19 in Sta5
        fake.received.append(recv_pdu(conn))

    fake = FakeAcceptor(script)
    ae = _requestor()
    assoc = ae.associate("127.0.0.1", fake.port)
    assert not assoc.is_established and assoc.is_aborted
    fake.thread.join(IO_TIMEOUT)
    abort = fake.received[-1]
    assert isinstance(abort, _pdu.Abort) and (abort.source, abort.reason) == (2, 1)
    # AA-8 left the requestor in Sta13; ARTIM then closed the connection.
    assert fake.closed_by_peer.is_set()


@pytest.mark.parametrize(
    "context",
    [
        _pdu.PresentationContextAC(1, 0, uids.ExplicitVRLittleEndian),  # a transfer syntax not proposed
        _pdu.PresentationContextAC(1, 0, ""),  # none at all
        _pdu.PresentationContextAC(3, 0, uids.ImplicitVRLittleEndian),  # a context ID not proposed
    ],
    ids=["syntax-not-proposed", "no-syntax", "context-not-proposed"],
)
def test_requestor_aborts_an_ac_that_does_not_answer_its_rq(context):
    """An A-ASSOCIATE-AC that accepts what was not proposed (found by
    scripts/fuzz_scu.py): A-ABORT (service provider, invalid parameter
    value), and ``associate`` returns an association that is not
    established, as for any other failed request; it raised
    NegotiationError before."""

    def script(conn, fake):
        conn.sendall(
            _pdu.encode_pdu(
                _pdu.AssociateAC("SRV", "RAW", [context], _pdu.UserInformation(max_length=16382,
                                                                               implementation_class_uid="1.2.3.4"))
            )
        )
        fake.received.append(recv_pdu(conn))

    for blocking in (True, False):
        fake = FakeAcceptor(script)
        ae = _requestor()
        if blocking:
            assoc = ae.associate("127.0.0.1", fake.port)
        else:
            async def associate() -> object:
                return await ae.associate_async("127.0.0.1", fake.port)

            assoc = asyncio.run(associate())
        assert not assoc.is_established and assoc.is_aborted
        fake.thread.join(IO_TIMEOUT)
        abort = fake.received[-1]
        assert isinstance(abort, _pdu.Abort) and (abort.source, abort.reason) == (2, 6)
        assert fake.closed_by_peer.is_set()


def test_requestor_acse_timeout_aborts():
    def silent(conn, fake):
        # Read what comes next: the A-ABORT after the ACSE timeout.
        fake.received.append(recv_pdu(conn))

    fake = FakeAcceptor(silent)
    assoc = _requestor().associate("127.0.0.1", fake.port)
    assert not assoc.is_established
    fake.thread.join(IO_TIMEOUT)
    assert isinstance(fake.received[-1], _pdu.Abort)


def test_requestor_aborts_unexpected_ac_in_sta6():
    def script(conn, fake):
        conn.sendall(_ac_bytes())
        time.sleep(0.1)
        conn.sendall(_ac_bytes())  # Evt3 in Sta6: AA-8
        fake.received.append(recv_pdu(conn))

    fake = FakeAcceptor(script)
    assoc = _requestor().associate("127.0.0.1", fake.port)
    assert assoc.is_established
    fake.thread.join(IO_TIMEOUT)
    abort = fake.received[-1]
    assert isinstance(abort, _pdu.Abort) and (abort.source, abort.reason) == (2, 2)
    deadline = time.monotonic() + IO_TIMEOUT
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.02)
    assert assoc.is_aborted


def test_requestor_release_collision():
    """Both sides send A-RELEASE-RQ: the requestor answers with its RP first
    (Sta9 -> Sta11), then takes the acceptor's RP and closes."""

    def script(conn, fake):
        conn.sendall(_ac_bytes())
        fake.received.append(recv_pdu(conn))  # the requestor's A-RELEASE-RQ
        conn.sendall(_pdu.encode_pdu(_pdu.ReleaseRQ()))  # collision
        fake.received.append(recv_pdu(conn))  # the requestor's A-RELEASE-RP (AR-9)
        conn.sendall(_pdu.encode_pdu(_pdu.ReleaseRP()))

    fake = FakeAcceptor(script)
    assoc = _requestor().associate("127.0.0.1", fake.port)
    assert assoc.is_established
    assoc.release()
    fake.thread.join(IO_TIMEOUT)
    assert [type(p) for p in fake.received] == [_pdu.AssociateRQ, _pdu.ReleaseRQ, _pdu.ReleaseRP]
    assert fake.closed_by_peer.is_set()
    assert assoc.is_released


def test_async_loop_not_blocked_by_slow_peer():
    """Sanity: the background loop keeps serving other work while one
    requestor waits for an answer that never comes."""

    async def tick() -> int:
        await asyncio.sleep(0)
        return 1

    fake = FakeAcceptor(lambda conn, f: time.sleep(1.0))
    ae = _requestor()
    ae.acse_timeout = 0.8
    result: dict[str, object] = {}
    worker = threading.Thread(target=lambda: result.setdefault("assoc", ae.associate("127.0.0.1", fake.port)))
    worker.start()
    assert loopthread.run(tick(), timeout=IO_TIMEOUT) == 1
    worker.join(IO_TIMEOUT)
    assert not result["assoc"].is_established


def _mutations(seed: int, count: int) -> list[tuple[bool, bytes]]:
    """(associate first?, bytes to send) pairs: valid PDUs with bytes
    flipped, cut or inserted, and plain noise. Seeded: failures reproduce."""
    import random

    from chromanet._dimse import C_ECHO_RQ, NO_DATASET, Command, encode_command

    rng = random.Random(seed)
    echo = encode_command(
        Command(C_ECHO_RQ, affected_sop_class_uid=uids.Verification, message_id=1, command_data_set_type=NO_DATASET)
    )
    seeds = [
        (False, associate_rq()),
        (True, pdata(1, 0x03, echo)),
        (True, _pdu.encode_pdu(_pdu.ReleaseRQ())),
        (True, _pdu.encode_pdu(_pdu.Abort(2, 6))),
    ]
    cases = []
    for _ in range(count):
        established, data = rng.choice(seeds)
        data = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            where = rng.randrange(len(data)) if data else 0
            if kind < 0.5 and data:
                data[where] = rng.randrange(256)
            elif kind < 0.75:
                del data[where : where + rng.randint(1, 8)]
            else:
                data[where:where] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        if rng.random() < 0.1:
            data = bytearray(rng.randbytes(rng.randint(1, 64)))
        cases.append((established, bytes(data)))
    return cases


def test_mutated_pdus_never_break_the_server(server, caplog):
    """Whatever a peer sends, the server answers per the state machine or
    closes, keeps serving others, and holds no association afterwards; no
    callback raises on the way (asyncio would only log it)."""
    caplog.set_level(logging.WARNING)
    for established, data in _mutations(seed=20261125, count=150):
        sock = _established(server) if established else _connect(server)
        try:
            sock.sendall(data)
            sock.settimeout(0.05)
            try:
                while sock.recv(65536):
                    pass
            except (socket.timeout, ConnectionError):
                pass
        finally:
            sock.close()
    assert _no_associations_left(server)
    _assert_server_alive(server)
    unexpected = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert unexpected == [], [r.getMessage() for r in unexpected][:5]
