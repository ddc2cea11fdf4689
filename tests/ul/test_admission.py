"""The acceptor's admission check (``AE.admission``): an async check between
negotiation and the A-ASSOCIATE-AC. Its answers (accept with a grant and an
identity response, reject), its failures (raising, taking too long), and a
peer that gives up while it runs, over real loopback sockets."""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

from chromanet import _pdu, uids
from chromanet.ul.acse import Admission, AdmissionRequest
from chromanet.ul.negotiation import ContextSpec, build_associate_rq
from helpers.rawpeer import recv_pdu
from helpers.servers import configure_scp_ae

EXPLICIT = uids.ExplicitVRLittleEndian


def _rq(identity: Any = None) -> Any:
    return build_associate_rq("SRV", "PEER", [ContextSpec(uids.Verification, [EXPLICIT])], max_pdu_length=16382,
                              user_identity=identity)


def _serve(check: Any, **settings: Any) -> Any:
    ae = configure_scp_ae(admission=check, **settings)
    return ae.start_server(("127.0.0.1", 0), block=False)


def _answer(server: Any, rq: Any) -> Any:
    with socket.create_connection(server.server_address, timeout=10) as sock:
        sock.sendall(_pdu.encode_pdu(rq))
        return recv_pdu(sock)


def test_accept_with_a_grant_and_an_identity_response() -> None:
    seen: list[AdmissionRequest] = []

    async def check(request: AdmissionRequest) -> Admission:
        seen.append(request)
        return Admission(identity_response=b"server-token", grant={"may": "echo"})

    server = _serve(check)
    try:
        ac = _answer(server, _rq(_pdu.UserIdentityRQ(5, b"jwt", b"", True)))
        assert isinstance(ac, _pdu.AssociateAC)
        assert ac.user_information.user_identity_ac.server_response == b"server-token"
        (request,) = seen
        assert request.rq.calling_ae_title.strip() == "PEER" and request.peer_address[0] == "127.0.0.1"
        assert request.tls is None
        # Without a positive response asked for, no identity sub-item.
        ac = _answer(server, _rq(_pdu.UserIdentityRQ(5, b"jwt", b"", False)))
        assert ac.user_information.user_identity_ac is None
    finally:
        server.shutdown()


def test_reject_and_failures() -> None:
    async def refuse(request: AdmissionRequest) -> Admission:
        return Admission(rejection=(1, 1, 3), reason="not known here")

    async def broken(request: AdmissionRequest) -> Admission:
        raise RuntimeError("the verifier fell over")

    for check, expected in ((refuse, (1, 1, 3)), (broken, (2, 1, 1))):
        server = _serve(check)
        try:
            rj = _answer(server, _rq())
            assert isinstance(rj, _pdu.AssociateRJ) and (rj.result, rj.source, rj.reason) == expected
            assert not server.active_associations
        finally:
            server.shutdown()


def test_a_check_that_takes_too_long_rejects_transiently() -> None:
    async def slow(request: AdmissionRequest) -> Admission:
        import asyncio

        await asyncio.sleep(60)
        return Admission()

    server = _serve(slow, acse_timeout=0.5)
    try:
        started = time.monotonic()
        rj = _answer(server, _rq())
        assert isinstance(rj, _pdu.AssociateRJ) and (rj.result, rj.source, rj.reason) == (2, 1, 1)
        assert time.monotonic() - started < 10
    finally:
        server.shutdown()


def test_a_peer_that_aborts_during_the_check_gets_no_answer() -> None:
    """The peer sends an A-ABORT while the check runs: nothing is answered
    afterwards, nothing is left open, and the server serves on."""
    release = threading.Event()
    checked = threading.Event()

    async def gated(request: AdmissionRequest) -> Admission:
        import asyncio

        checked.set()
        while not release.is_set():
            await asyncio.sleep(0.01)
        return Admission()

    server = _serve(gated)
    try:
        sock = socket.create_connection(server.server_address, timeout=10)
        sock.sendall(_pdu.encode_pdu(_rq()))
        assert checked.wait(10)
        sock.sendall(struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0, 0))  # A-ABORT, service user
        release.set()
        received = b""
        while True:  # until the server closes: it must send nothing (no A-ASSOCIATE-AC)
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        sock.close()
        assert received == b""
        assert not server.active_associations
        ac = _answer(server, _rq())
        assert isinstance(ac, _pdu.AssociateAC)
    finally:
        server.shutdown()
