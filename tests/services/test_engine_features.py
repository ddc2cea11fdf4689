"""Engine features over loopback: timeouts, the asynchronous operations
window, user identity and extended negotiation hooks, data set encodings."""

from __future__ import annotations

import asyncio

import pydicom
import pytest
from pydicom.data import get_palette_files

from chromanet import _pdu, dsutil, evt, uids
from chromanet.ae import AE

try:
    import uvloop

    run = uvloop.run
except ImportError:  # pragma: no cover
    run = asyncio.run

WAIT = 10.0


async def _server(ae: AE, handlers=None):
    return await ae.start_server_async(("127.0.0.1", 0), evt_handlers=handlers)


def _echo_ae(title: str = "SRV") -> AE:
    ae = AE(title)
    ae.add_supported_context(uids.Verification)
    return ae


def test_dimse_timeout_aborts_and_returns_empty_dataset():
    async def slow_echo(event):
        await asyncio.sleep(5)
        return 0

    async def main():
        server = await _server(_echo_ae(), [(evt.EVT_C_ECHO, slow_echo)])
        try:
            client = AE("CLI")
            client.add_requested_context(uids.Verification)
            client.dimse_timeout = 0.3
            assoc = await client.associate_async(*server.server_address)
            assert assoc.is_established
            response = await asyncio.wait_for(assoc.send_c_echo(), WAIT)
            assert len(response) == 0  # pynetdicom's answer when no response came
            assert (await asyncio.wait_for(assoc.wait_closed(), WAIT)) == "aborted"
            assert assoc.is_aborted
        finally:
            await server.close()

    run(main())


def test_network_timeout_aborts_idle_association():
    async def main():
        ae = _echo_ae()
        ae.network_timeout = 0.3
        server = await _server(ae)
        try:
            client = AE("CLI")
            client.add_requested_context(uids.Verification)
            client.network_timeout = None
            assoc = await client.associate_async(*server.server_address)
            assert assoc.is_established
            # Say nothing: the server gives up on us.
            assert (await asyncio.wait_for(assoc.wait_closed(), WAIT)) == "aborted"
            assert not server.associations
        finally:
            await server.close()

    run(main())


@pytest.mark.parametrize("window, expected_peak", [((3, 3), 3), ((1, 1), 1)])
def test_async_operations_window_is_honoured(window, expected_peak):
    """With (3, 3) negotiated three C-ECHOs run at once in the SCP; with the
    default (1, 1) they run one after another, although the SCU issues all
    of them at once."""
    state = {"running": 0, "peak": 0}

    async def echo(event):
        state["running"] += 1
        state["peak"] = max(state["peak"], state["running"])
        await asyncio.sleep(0.05)
        state["running"] -= 1
        return 0

    async def main():
        ae = _echo_ae()
        ae.async_ops_window = (5, 5)
        server = await _server(ae, [(evt.EVT_C_ECHO, echo)])
        try:
            client = AE("CLI")
            client.add_requested_context(uids.Verification)
            ext = [_pdu.AsyncOperationsWindow(*window)] if window != (1, 1) else None
            assoc = await client.associate_async(*server.server_address, ext_neg=ext)
            assert assoc.is_established
            responses = await asyncio.wait_for(asyncio.gather(*(assoc.send_c_echo() for _ in range(6))), WAIT)
            assert [r.Status for r in responses] == [0] * 6
            await assoc.release()
        finally:
            await server.close()

    run(main())
    assert state["peak"] == expected_peak


@pytest.mark.parametrize("password, accepted", [(b"secret", True), (b"wrong", False)])
def test_user_identity_hook(password, accepted):
    seen = {}

    def check_identity(event):
        seen["type"] = event.user_id_type
        seen["user"] = event.primary_field
        ok = event.secondary_field == b"secret"
        return ok, (b"token" if ok else None)

    async def main():
        server = await _server(_echo_ae(), [(evt.EVT_USER_ID, check_identity)])
        try:
            client = AE("CLI")
            client.add_requested_context(uids.Verification)
            identity = _pdu.UserIdentityRQ(2, b"alice", password, positive_response_requested=True)
            assoc = await client.associate_async(*server.server_address, ext_neg=[identity])
            if accepted:
                assert assoc.is_established
                ac = assoc.acse_response
                assert ac.user_information.user_identity_ac is not None
                await assoc.release()
            else:
                assert assoc.is_rejected
                rj = assoc.acse_response
                assert (rj.result, rj.source, rj.reason) == (1, 1, 1)
        finally:
            await server.close()

    run(main())
    assert seen == {"type": 2, "user": b"alice"}


def test_sop_class_extended_negotiation_hook():
    def extended(event):
        return {uid: info[::-1] for uid, info in event.app_info.items()}

    async def main():
        server = await _server(_echo_ae(), [(evt.EVT_SOP_EXTENDED, extended)])
        try:
            client = AE("CLI")
            client.add_requested_context(uids.Verification)
            item = _pdu.SOPClassExtendedNegotiation(uids.Verification, b"\x01\x02")
            assoc = await client.associate_async(*server.server_address, ext_neg=[item])
            assert assoc.is_established
            replies = assoc.acse_response.user_information.sop_class_extended
            assert [(r.sop_class_uid, r.application_information) for r in replies] == [
                (uids.Verification, b"\x02\x01")
            ]
            await assoc.release()
        finally:
            await server.close()

    run(main())


@pytest.mark.parametrize(
    "syntax",
    [
        uids.ImplicitVRLittleEndian,
        uids.ExplicitVRLittleEndian,
        uids.ExplicitVRBigEndian,
        uids.DeflatedExplicitVRLittleEndian,
    ],
)
def test_store_in_each_transfer_syntax(syntax):
    """The SCP accepts only ``syntax``: the SCU converts each palette file
    into it, and the SCP decodes an equivalent data set."""
    received = {}

    def on_store(event):
        ds = event.dataset
        received[str(ds.SOPInstanceUID)] = (ds, event.file_meta.TransferSyntaxUID)
        return 0

    async def main():
        ae = AE("SRV")
        ae.add_supported_context(uids.ColorPaletteStorage, syntax)
        server = await _server(ae, [(evt.EVT_C_STORE, on_store)])
        try:
            client = AE("CLI")
            client.add_requested_context(uids.ColorPaletteStorage, syntax)
            assoc = await client.associate_async(*server.server_address)
            assert assoc.is_established
            for path in get_palette_files("*.dcm"):
                assert (await assoc.send_c_store(path)).Status == 0
            await assoc.release()
        finally:
            await server.close()

    run(main())
    assert len(received) == 8
    for path in get_palette_files("*.dcm"):
        original = pydicom.dcmread(path)
        ds, received_syntax = received[str(original.SOPInstanceUID)]
        assert received_syntax == syntax
        assert [e.tag for e in ds] == [e.tag for e in original]
        for element in original:
            assert ds[element.tag].value == element.value, element.keyword


def test_encode_decode_dataset_round_trip_each_syntax():
    original = pydicom.dcmread(get_palette_files("hotiron.dcm")[0])
    for syntax in (
        uids.ImplicitVRLittleEndian,
        uids.ExplicitVRLittleEndian,
        uids.ExplicitVRBigEndian,
        uids.DeflatedExplicitVRLittleEndian,
    ):
        encoded = dsutil.encode_dataset(original, syntax)
        decoded = dsutil.decode_dataset(encoded, syntax)
        for element in original:
            assert decoded[element.tag].value == element.value, (syntax, element.keyword)


CONNECTION_TIMEOUT = 0.5


def test_connection_timeout():
    """A listener whose accept queue is full drops our SYN: without a
    connection timeout the connect would hang for minutes."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        # Fill the accept queue (never accepted).
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)

        async def main():
            client = AE("CLI")
            client.add_requested_context(uids.Verification)
            client.connection_timeout = CONNECTION_TIMEOUT
            # The guard: without a working connection timeout this raises.
            return await asyncio.wait_for(client.associate_async("127.0.0.1", port), WAIT)

        assoc = run(main())
        assert not assoc.is_established and assoc.is_aborted
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_large_store_is_paced_and_never_interleaved():
    """A 24 MB C-STORE goes out in slices (the write buffer never holds the
    whole data set) while a C-ECHO on the same association, sent in the
    middle of it, is queued behind it instead of interleaving its PDUs."""
    from pydicom import Dataset
    from pydicom.uid import generate_uid

    from chromanet.ul import connection as connection_module

    big = Dataset()
    big.SOPClassUID = uids.ColorPaletteStorage
    big.SOPInstanceUID = generate_uid()
    big.EncapsulatedDocument = bytes(range(256)) * (24 * 4096)  # 24 MiB
    received = {}

    async def on_store(event):
        received["size"] = len(event.dataset.EncapsulatedDocument)
        received["ok"] = event.dataset.EncapsulatedDocument == big.EncapsulatedDocument
        return 0

    buffered: list[int] = []

    async def main():
        ae = AE("SRV")
        ae.add_supported_context(uids.ColorPaletteStorage, uids.ExplicitVRLittleEndian)
        ae.add_supported_context(uids.Verification)
        ae.async_ops_window = (2, 2)
        server = await _server(ae, [(evt.EVT_C_STORE, on_store)])
        try:
            client = AE("CLI")
            client.add_requested_context(uids.ColorPaletteStorage, uids.ExplicitVRLittleEndian)
            client.add_requested_context(uids.Verification)
            assoc = await client.associate_async(
                *server.server_address, max_pdu=16382, ext_neg=[_pdu.AsyncOperationsWindow(2, 2)]
            )
            assert assoc.is_established
            conn = assoc._ul.connection
            original = conn._write_slice

            def recording(buffers):
                buffered.append(conn.transport.get_write_buffer_size())
                original(buffers)

            conn._write_slice = recording
            store = asyncio.ensure_future(assoc.send_c_store(big))
            while not buffered:
                await asyncio.sleep(0)
            echo = await asyncio.wait_for(assoc.send_c_echo(), WAIT)
            stored = await asyncio.wait_for(store, 60)
            assert (echo.Status, stored.Status) == (0, 0)
            await assoc.release()
        finally:
            await server.close()

    run(main())
    assert received == {"size": len(big.EncapsulatedDocument), "ok": True}
    assert len(buffered) > 10  # really sent in slices
    assert max(buffered) < 4 * connection_module.PACING_SLICE
