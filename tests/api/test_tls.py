"""DICOM over TLS between chromanet AEs (PS3.15 B.1, the BCP 195
Non-downgrading profile of B.9): pynetdicom's ``tls_args`` and
``ssl_context``, on uvloop and on asyncio's own loop; what each side learns
of the other (``assoc.tls``); mutual TLS; the profile refusing TLS 1.1 and
non-AEAD suites; and the acceptor's handshake path: a failed or stalled
handshake is logged with the peer and the reason, holds no association
slot and leaks nothing, and the A-ASSOCIATE-RQ that follows a TLS 1.3
handshake at once is not lost."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import warnings
from typing import Any

import pytest
import uvloop

from chromanet import _pdu, logutil, uids
from chromanet.tls_context import BCP195_TLS12_CIPHERS, client_context, server_context
from chromanet.ul.negotiation import ContextSpec, build_associate_rq
from helpers.rawpeer import recv_raw_pdu
from helpers.servers import Recorder, configure_scp_ae, scu_ae
from helpers.tls import Pki, client_ssl, server_ssl
from helpers.waits import WAIT_TIMEOUT, until

BCP195_TLS12 = set(BCP195_TLS12_CIPHERS.split(":"))
LOOPS = {"uvloop": uvloop.run, "asyncio": asyncio.run}


def run_on(loop_name: str, coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 60)

    return LOOPS[loop_name](bounded())


async def tls_server(pki: Pki, mutual: bool = False, **settings: Any) -> Any:
    ae = configure_scp_ae("TLSSCP", **settings)
    return await ae.start_server_async(("127.0.0.1", 0), ssl_context=server_ssl(pki, mutual))


# ------------------------------------------------------------- both loops
@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_tls_association_both_ways_known(pki: Pki, loop_name: str):
    async def body() -> None:
        server = await tls_server(pki, mutual=True)
        try:
            port = server.server_address[1]
            tls_args = (client_ssl(pki, pki.client), None)
            async with scu_ae().associate_async("127.0.0.1", port, ae_title="TLSSCP", tls_args=tls_args) as assoc:
                status = await assoc.send_c_echo()
                assert status.Status == 0x0000
                ours = assoc.tls
                assert ours is not None and ours.version in ("TLSv1.2", "TLSv1.3")
                assert ours.peer_subject == "CN=chromanet-test-server,O=Chromanet Tests"
                (theirs,) = [a.tls for a in server.active_associations]
                assert theirs is not None and theirs.peer_subject == "CN=modality-1,O=Chromanet Tests"
                assert theirs.cipher == ours.cipher
        finally:
            await server.close()

    run_on(loop_name, body())


def test_blocking_api_tls_args_and_ssl_context(pki: Pki, palettes):
    recorder = Recorder()
    ae = configure_scp_ae("TLSSCP")
    server = ae.start_server(("127.0.0.1", 0), block=False, ssl_context=server_ssl(pki),
                             evt_handlers=recorder.handlers())
    assert server is not None
    try:
        port = server.server_address[1]
        assoc = scu_ae().associate("127.0.0.1", port, ae_title="TLSSCP", tls_args=(client_ssl(pki), "localhost"))
        assert assoc.is_established
        try:
            assert assoc.send_c_echo().Status == 0x0000
            palette = next(iter(palettes.values()))
            assert assoc.send_c_store(palette.filename).Status == 0x0000
            assert assoc.tls is not None and assoc.tls.peer_subject is not None
            (theirs,) = server.active_associations
            # No client certificate (none asked for): no subject.
            assert theirs.tls is not None and theirs.tls.peer_subject is None
        finally:
            assoc.release()
        assert [s.sop_instance_uid for s in recorder.stored] == [palette.SOPInstanceUID]
    finally:
        server.shutdown()


# ------------------------------------------------------------- the profile
def test_contexts_follow_bcp195(pki: Pki):
    for context in (server_ssl(pki), client_ssl(pki)):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
        assert tls12 and tls12 <= BCP195_TLS12
        assert context.options & ssl.OP_NO_COMPRESSION
    with pytest.raises(ValueError):
        server_context(pki.server.certificate, pki.server.key, require_client_certificate=True)


def test_tls12_negotiates_a_bcp195_suite_and_older_or_weaker_is_refused(pki: Pki):
    async def body() -> None:
        server = await tls_server(pki)
        try:
            port = server.server_address[1]
            tls12 = client_ssl(pki)
            tls12.maximum_version = ssl.TLSVersion.TLSv1_2
            async with scu_ae().associate_async("127.0.0.1", port, ae_title="TLSSCP", tls_args=(tls12, None)) as a:
                assert a.tls.version == "TLSv1.2" and a.tls.cipher in BCP195_TLS12

            # TLS 1.1, and a TLS 1.2 suite without forward secrecy or AEAD:
            # refused in the handshake.
            old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            old.load_verify_locations(cafile=str(pki.ca))
            old.set_ciphers("ALL:@SECLEVEL=0")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: the point
                old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
            weak = client_ssl(pki)
            weak.maximum_version = ssl.TLSVersion.TLSv1_2
            weak.set_ciphers("AES128-SHA:AES256-SHA")
            failures: list[str] = []
            server.on_handshake_failed = lambda peer, reason: failures.append(reason)
            for context in (old, weak):
                refused = await scu_ae().associate_async("127.0.0.1", port, ae_title="TLSSCP", tls_args=(context, None))
                assert not refused.is_established
            await asyncio.wait_for(until(lambda: len(failures) == 2), WAIT_TIMEOUT)
            assert not server.associations
        finally:
            await server.close()

    run_on("uvloop", body())


def test_client_verifies_the_server(pki: Pki, caplog: pytest.LogCaptureFixture):
    async def body() -> None:
        server = await tls_server(pki)
        try:
            port = server.server_address[1]
            for tls_args in ((client_ssl(pki, ca=pki.other_ca), None), (client_ssl(pki), "somebody-else.example")):
                refused = await scu_ae().associate_async("127.0.0.1", port, ae_title="TLSSCP", tls_args=tls_args)
                assert not refused.is_established
            no_name_check = client_context(pki.ca, check_hostname=False)
            async with scu_ae().associate_async(
                "127.0.0.1", port, ae_title="TLSSCP", tls_args=(no_name_check, "somebody-else.example")
            ) as assoc:
                assert (await assoc.send_c_echo()).Status == 0
        finally:
            await server.close()

    with caplog.at_level(logging.ERROR, logger="chromanet.ae"):
        run_on("uvloop", body())
    failed = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(failed) == 2 and all("127.0.0.1:" in m and "certificate verify failed" in m for m in failed)


# ------------------------------------------------------------- mutual TLS
def test_mutual_tls_refuses_no_and_foreign_certificates(pki: Pki, caplog: pytest.LogCaptureFixture):
    reported: list[tuple[tuple[str, int], str]] = []
    logutil.reset()  # what other tests logged for 127.0.0.1 counts against the rate limit

    async def body() -> None:
        server = await tls_server(pki, mutual=True, maximum_associations=1, maximum_associations_per_host=1)
        server.on_handshake_failed = lambda peer, reason: reported.append((peer, reason))
        try:
            port = server.server_address[1]
            for identity in (None, pki.stranger):
                tls_args = (client_ssl(pki, identity), None)
                refused = await scu_ae().associate_async("127.0.0.1", port, ae_title="TLSSCP", tls_args=tls_args)
                assert not refused.is_established
            await asyncio.wait_for(until(lambda: len(reported) == 2), WAIT_TIMEOUT)
            # No slot was held: the one association allowed (per host and in
            # all) is made.
            good = (client_ssl(pki, pki.client), None)
            async with scu_ae().associate_async("127.0.0.1", port, ae_title="TLSSCP", tls_args=good) as assoc:
                assert (await assoc.send_c_echo()).Status == 0
            await asyncio.wait_for(until(lambda: not server.associations), WAIT_TIMEOUT)
            assert server.pending_handshakes == 0
        finally:
            await server.close()

    with caplog.at_level(logging.WARNING, logger="chromanet.ul"):
        run_on("uvloop", body())
    assert [peer[0] for peer, _ in reported] == ["127.0.0.1", "127.0.0.1"]
    no_certificate, foreign = (reason for _, reason in reported)
    assert "CERTIFICATE" in no_certificate.upper()
    assert "certificate verify failed" in foreign or "UNKNOWN_CA" in foreign.upper()
    logged = [r.getMessage() for r in caplog.records if "TLS handshake with 127.0.0.1:" in r.getMessage()]
    assert len(logged) == 2 and logged[0].endswith(no_certificate) and logged[1].endswith(foreign)


# ------------------------------------------------------ the handshake path
def test_stalled_and_plain_connections_hold_no_slot(pki: Pki):
    """Connections that never send a ClientHello, and a plain-TCP client on
    the TLS port, take no association slot (one slot in all here); a
    stalled handshake is dropped after the handshake timeout."""
    reported: list[str] = []

    async def body() -> None:
        server = await tls_server(pki, maximum_associations=1, maximum_associations_per_host=1,
                                  tls_handshake_timeout=1.0)
        server.on_handshake_failed = lambda peer, reason: reported.append(reason)
        loop = asyncio.get_running_loop()
        stalled: list[socket.socket] = []
        try:
            port = server.server_address[1]
            for _ in range(3):
                sock = socket.socket()
                sock.setblocking(False)
                await loop.sock_connect(sock, ("127.0.0.1", port))
                stalled.append(sock)
            await asyncio.wait_for(until(lambda: server.pending_handshakes == 3), WAIT_TIMEOUT)
            plain = await scu_ae().associate_async("127.0.0.1", port, ae_title="TLSSCP")
            assert not plain.is_established
            async with scu_ae().associate_async(
                "127.0.0.1", port, ae_title="TLSSCP", tls_args=(client_ssl(pki), None)
            ) as assoc:
                assert (await assoc.send_c_echo()).Status == 0
            # The stalled ones are closed by the server at the timeout.
            for sock in stalled:
                assert await asyncio.wait_for(loop.sock_recv(sock, 1), WAIT_TIMEOUT) == b""
            await asyncio.wait_for(until(lambda: server.pending_handshakes == 0), WAIT_TIMEOUT)
            await asyncio.wait_for(until(lambda: not server.associations), WAIT_TIMEOUT)
        finally:
            for sock in stalled:
                sock.close()
            await server.close()

    run_on("uvloop", body())
    assert sum("taking longer" in reason for reason in reported) == 3
    assert len(reported) == 4  # and the plain client


def test_handshakes_per_host_are_capped(pki: Pki):
    """One host may have at most maximum_tls_handshakes_per_host handshakes
    running: further connections are closed at once, not held until the
    handshake timeout; once the running ones end, the host is served again."""

    async def body() -> None:
        server = await tls_server(pki, maximum_tls_handshakes_per_host=2, tls_handshake_timeout=2.0)
        loop = asyncio.get_running_loop()
        stalled: list[socket.socket] = []
        try:
            port = server.server_address[1]
            for _ in range(4):
                sock = socket.socket()
                sock.setblocking(False)
                await loop.sock_connect(sock, ("127.0.0.1", port))
                stalled.append(sock)
            # The two over the cap are closed long before the 2 s timeout.
            for sock in stalled[2:]:
                assert await asyncio.wait_for(loop.sock_recv(sock, 1), 1.0) == b""
            assert server.pending_handshakes == 2
            for sock in stalled[:2]:
                assert await asyncio.wait_for(loop.sock_recv(sock, 1), WAIT_TIMEOUT) == b""
            await asyncio.wait_for(until(lambda: server.pending_handshakes == 0), WAIT_TIMEOUT)
            async with scu_ae().associate_async(
                "127.0.0.1", port, ae_title="TLSSCP", tls_args=(client_ssl(pki), None)
            ) as assoc:
                assert (await assoc.send_c_echo()).Status == 0
        finally:
            for sock in stalled:
                sock.close()
            await server.close()

    run_on("uvloop", body())


def test_close_drops_handshakes_in_progress(pki: Pki):
    async def body() -> None:
        server = await tls_server(pki)
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", server.server_address[1]))
            await asyncio.wait_for(until(lambda: server.pending_handshakes == 1), WAIT_TIMEOUT)
            await asyncio.wait_for(server.close(), WAIT_TIMEOUT)
            assert server.pending_handshakes == 0
            assert await asyncio.wait_for(loop.sock_recv(sock, 1), WAIT_TIMEOUT) == b""
        finally:
            sock.close()
            await server.close()

    run_on("asyncio", body())


def test_request_right_behind_the_tls13_handshake_is_not_lost(pki: Pki):
    """A raw TLS 1.3 client writes its A-ASSOCIATE-RQ in the same breath as
    its Finished; the association must see it."""

    async def body() -> None:
        server = await tls_server(pki)
        try:
            port = server.server_address[1]
            rq = build_associate_rq("TLSSCP", "RAW", [ContextSpec(uids.Verification, [uids.ImplicitVRLittleEndian])],
                                    max_pdu_length=16382)

            def exchange() -> int:
                context = client_ssl(pki)
                context.minimum_version = ssl.TLSVersion.TLSv1_3
                with socket.create_connection(("127.0.0.1", port), timeout=WAIT_TIMEOUT) as raw:
                    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                        tls.sendall(_pdu.encode_pdu(rq))
                        pdu_type, _ = recv_raw_pdu(tls)  # type: ignore[arg-type]
                        tls.sendall(_pdu.encode_pdu(_pdu.ReleaseRQ()))
                        recv_raw_pdu(tls)  # type: ignore[arg-type]
                        return pdu_type

            loop = asyncio.get_running_loop()
            for _ in range(5):
                assert await loop.run_in_executor(None, exchange) == 0x02  # A-ASSOCIATE-AC
        finally:
            await server.close()

    for loop_name in LOOPS:
        run_on(loop_name, body())
