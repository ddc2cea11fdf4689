"""Tests for chromanet._pdata: P-DATA-TF fragmentation and reassembly."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from chromanet._dimse import Command, decode_command, encode_command
from chromanet._pdata import (
    CommandArrived,
    DatasetChunk,
    DimseMessage,
    Reassembler,
    fragment_message,
)
from chromanet.errors import CommandSetError, PDataError

ECHO = Command(0x0030, affected_sop_class_uid="1.2.840.10008.1.1", message_id=1,
               command_data_set_type=0x0101)
STORE = Command(0x0001, affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.7", message_id=2,
                priority=0, command_data_set_type=0x0001, affected_sop_instance_uid="1.2.3")
ECHO_BYTES = encode_command(ECHO)
STORE_BYTES = encode_command(STORE)


def split_pdus(buffers, max_pdu_length=0):
    """Concatenate ``buffers`` and cut them into P-DATA-TF bodies, checking headers."""
    wire = b"".join(buffers)
    bodies = []
    pos = 0
    while pos < len(wire):
        assert wire[pos] == 0x04, f"PDU type {wire[pos]:#x} at {pos}"
        assert wire[pos + 1] == 0
        (length,) = struct.unpack_from(">I", wire, pos + 2)
        if max_pdu_length:
            assert length <= max_pdu_length
        body = wire[pos + 6:pos + 6 + length]
        assert len(body) == length
        bodies.append(body)
        pos += 6 + length
    return bodies


def pdvs(body):
    """(context id, control header, fragment) of each PDV item in a body."""
    out = []
    pos = 0
    while pos < len(body):
        (length,) = struct.unpack_from(">I", body, pos)
        out.append((body[pos + 4], body[pos + 5], body[pos + 6:pos + 4 + length]))
        pos += 4 + length
    assert pos == len(body)
    return out


def pdv(ctx, mch, fragment):
    return struct.pack(">IBB", len(fragment) + 2, ctx, mch) + fragment


# ---------------------------------------------------------------- fragmenting


def test_small_message_is_one_pdu_with_two_pdvs():
    ds = b"\x08\x00\x18\x00\x04\x00\x00\x001.2\x00"
    bufs = fragment_message(3, STORE_BYTES, ds, 16384)
    n = 6 + len(STORE_BYTES) + 6 + len(ds)
    expected = (
        b"\x04\x00" + struct.pack(">I", n)  # P-DATA-TF header
        + struct.pack(">I", len(STORE_BYTES) + 2) + b"\x03\x03" + STORE_BYTES  # ctx 3, cmd+last
        + struct.pack(">I", len(ds) + 2) + b"\x03\x02" + ds  # ctx 3, data set + last
    )
    assert b"".join(bufs) == expected
    assert len(bufs) == 2 and isinstance(bufs[0], bytes) and isinstance(bufs[1], memoryview)


def test_no_pack_gives_one_pdv_per_pdu():
    ds = bytes(100)
    bodies = split_pdus(fragment_message(1, STORE_BYTES, ds, 16384, pack=False), 16384)
    assert [pdvs(b) for b in bodies] == [[(1, 3, STORE_BYTES)], [(1, 2, ds)]]


def test_command_only():
    bodies = split_pdus(fragment_message(1, ECHO_BYTES, None, 16384))
    assert [pdvs(b) for b in bodies] == [[(1, 3, ECHO_BYTES)]]


def test_empty_dataset_is_one_empty_last_fragment():
    for pack in (True, False):
        bodies = split_pdus(fragment_message(1, STORE_BYTES, b"", 16384, pack))
        items = [item for b in bodies for item in pdvs(b)]
        assert items == [(1, 3, STORE_BYTES), (1, 2, b"")]
        assert len(bodies) == (1 if pack else 2)


def test_command_fragments_and_last_bits():
    bodies = split_pdus(fragment_message(5, STORE_BYTES, bytes(range(50)), 26), 26)
    items = [item for b in bodies for item in pdvs(b)]
    cmd = [i for i in items if i[1] & 1]
    data = [i for i in items if not i[1] & 1]
    assert b"".join(f for _, _, f in cmd) == STORE_BYTES
    assert b"".join(f for _, _, f in data) == bytes(range(50))
    assert [m for _, m, _ in cmd] == [1] * (len(cmd) - 1) + [3]
    assert [m for _, m, _ in data] == [0] * (len(data) - 1) + [2]
    assert all(len(f) <= 20 for _, _, f in items)
    assert {c for c, _, _ in items} == {5}


def test_minimum_max_pdu_length():
    bodies = split_pdus(fragment_message(1, ECHO_BYTES, None, 7), 7)
    assert len(bodies) == len(ECHO_BYTES)
    for bad in (1, 6, -1, 2**32):
        with pytest.raises(ValueError):
            fragment_message(1, ECHO_BYTES, None, bad)
    for bad in (0, 256):
        with pytest.raises(ValueError):
            fragment_message(bad, ECHO_BYTES, None, 0)


def test_no_limit_caps_fragments_at_4_mib():
    ds = bytes(4 * 1024 * 1024 + 10)
    bufs = fragment_message(1, STORE_BYTES, ds, 0, pack=False)
    views = [b for b in bufs if isinstance(b, memoryview)]
    assert [len(v) for v in views] == [4 * 1024 * 1024, 10]


def test_dataset_is_never_copied():
    for source in (bytes(range(256)) * 300, bytearray(70000)):
        bufs = fragment_message(1, STORE_BYTES, source, 16384)
        views = [b for b in bufs if isinstance(b, memoryview)]
        assert len(views) == 5
        assert all(v.obj is source for v in views)
        assert all(isinstance(b, bytes) and len(b) <= 18 + len(STORE_BYTES)
                   for b in bufs if not isinstance(b, memoryview))
    # a memoryview input: slices point at the same underlying object
    base = bytearray(50000)
    bufs = fragment_message(1, STORE_BYTES, memoryview(base)[1000:], 16384)
    assert all(b.obj is base for b in bufs if isinstance(b, memoryview))
    base[1000] = 0x55  # shared memory: the first data set byte changes too
    first = next(b for b in bufs if isinstance(b, memoryview))
    assert first[0] == 0x55


def test_non_byte_memoryview_is_cast():
    import array

    a = array.array("H", range(100))
    bodies = split_pdus(fragment_message(1, STORE_BYTES, a, 64), 64)
    data = b"".join(f for b in bodies for _, m, f in pdvs(b) if not m & 1)
    assert data == a.tobytes()


def test_pack_fills_the_command_pdu():
    ds = bytes(1000)
    max_len = len(STORE_BYTES) + 6 + 100
    bodies = split_pdus(fragment_message(1, STORE_BYTES, ds, max_len), max_len)
    first = pdvs(bodies[0])
    assert [m for _, m, _ in first] == [3, 0]
    assert len(first[1][2]) == 100 - 6
    assert all(len(b) == max_len for b in bodies[:-1])


# --------------------------------------------------------------- reassembly


def test_collect_single_fragment_dataset_is_not_copied():
    ds = b"\x08\x00\x18\x00\x04\x00\x00\x001.2\x00"
    body = pdv(1, 3, STORE_BYTES) + pdv(1, 2, ds)
    events = Reassembler({1}).feed(body)
    assert len(events) == 1
    msg = events[0]
    assert isinstance(msg, DimseMessage)
    assert msg.context_id == 1 and msg.command == STORE
    assert isinstance(msg.dataset, memoryview) and msg.dataset.obj is body
    assert bytes(msg.dataset) == ds


def test_memoryview_of_bytes_is_kept_but_bytearray_is_copied():
    ds = b"abcdef"
    body = pdv(1, 3, STORE_BYTES) + pdv(1, 2, ds)
    msg = Reassembler().feed(memoryview(body))[0]
    assert msg.dataset.obj is body
    mutable = bytearray(body)
    msg = Reassembler().feed(mutable)[0]
    mutable[-6:] = b"XXXXXX"  # the caller reuses its buffer
    assert bytes(msg.dataset) == ds
    mutable = bytearray(body)
    msg = Reassembler().feed(memoryview(mutable))[0]
    mutable[-6:] = b"XXXXXX"
    assert bytes(msg.dataset) == ds


def test_collect_multi_fragment_command_and_dataset_across_pdus():
    r = Reassembler({1, 3})
    half = len(STORE_BYTES) // 2
    assert r.feed(pdv(3, 1, STORE_BYTES[:half])) == []
    assert r.in_message
    assert r.feed(pdv(3, 3, STORE_BYTES[half:]) + pdv(3, 0, b"ab")) == []
    assert r.feed(pdv(3, 0, b"cd")) == []
    events = r.feed(pdv(3, 2, b"ef") + pdv(1, 3, ECHO_BYTES))
    assert not r.in_message
    assert [type(e) for e in events] == [DimseMessage, DimseMessage]
    assert events[0].command == STORE and events[0].dataset == b"abcdef"
    assert isinstance(events[0].dataset, bytes)
    assert events[1].context_id == 1 and events[1].command == ECHO
    assert events[1].dataset is None


def test_streaming_mode_and_switching_between_messages():
    r = Reassembler(stream_datasets=True)
    events = r.feed(pdv(1, 3, STORE_BYTES) + pdv(1, 0, b"ab"))
    assert isinstance(events[0], CommandArrived) and events[0].command == STORE
    assert isinstance(events[1], DatasetChunk)
    assert bytes(events[1].data) == b"ab" and not events[1].is_last
    r.stream_datasets = False  # mid-message: applies from the next message on
    events = r.feed(pdv(1, 2, b"cd"))
    assert len(events) == 1 and isinstance(events[0], DatasetChunk) and events[0].is_last
    assert bytes(events[0].data) == b"cd"
    # command without a data set: a DimseMessage even in streaming mode
    r.stream_datasets = True
    events = r.feed(pdv(1, 3, ECHO_BYTES))
    assert len(events) == 1 and isinstance(events[0], DimseMessage)
    r.stream_datasets = False
    events = r.feed(pdv(1, 3, STORE_BYTES) + pdv(1, 2, b"xy"))
    assert len(events) == 1 and events[0].dataset == b"xy"


def test_streaming_ignores_max_dataset_length():
    r = Reassembler(stream_datasets=True, max_dataset_length=2)
    events = r.feed(pdv(1, 3, STORE_BYTES) + pdv(1, 0, b"abc") + pdv(1, 2, b"def"))
    assert len(events) == 3


def test_max_dataset_length():
    r = Reassembler(max_dataset_length=5)
    assert len(r.feed(pdv(1, 3, STORE_BYTES) + pdv(1, 2, b"abcde"))) == 1
    r.feed(pdv(1, 3, STORE_BYTES) + pdv(1, 0, b"abc"))
    with pytest.raises(PDataError):
        r.feed(pdv(1, 2, b"def"))
    with pytest.raises(ValueError):
        Reassembler(max_dataset_length=-1)


def _perr(r, body, offset=None):
    with pytest.raises(PDataError) as info:
        r.feed(body)
    if offset is not None:
        assert info.value.offset == offset, str(info.value)
    assert info.value.pdu_type == 0x04
    return info.value


def test_error_unaccepted_context():
    _perr(Reassembler({1, 3}), pdv(5, 3, ECHO_BYTES), offset=6 + 4)
    Reassembler(None).feed(pdv(5, 3, ECHO_BYTES))  # None: any context


CANCEL_BYTES = encode_command(Command(0x0FFF, message_id_being_responded_to=7, command_data_set_type=0x0101))


def test_cancel_on_unaccepted_context_is_returned():
    # A C-CANCEL-RQ names its operation by Message ID; peers send one on any
    # context, so it is read, not treated as a protocol error.
    r = Reassembler({1})
    half = len(CANCEL_BYTES) // 2
    assert r.feed(pdv(3, 1, CANCEL_BYTES[:half])) == []
    (event,) = r.feed(pdv(3, 3, CANCEL_BYTES[half:]))
    assert event.context_id == 3 and event.command.message_id_being_responded_to == 7
    (echo,) = r.feed(pdv(1, 3, ECHO_BYTES))  # the next message is checked as before
    assert echo.command == ECHO
    _perr(r, pdv(3, 3, ECHO_BYTES), offset=6 + 4)


def test_unaccepted_context_other_than_cancel_still_fails():
    cancel_with_data = encode_command(Command(0x0FFF, message_id_being_responded_to=7, command_data_set_type=0x0000))
    _perr(Reassembler({1}), pdv(3, 3, cancel_with_data), offset=6 + 4)
    _perr(Reassembler({1}), pdv(3, 2, b"data"), offset=6 + 4)  # a data set fragment
    r = Reassembler({1})
    r.feed(pdv(1, 1, ECHO_BYTES[:4]))  # an accepted message in progress
    _perr(r, pdv(3, 3, CANCEL_BYTES), offset=6 + 4)


@pytest.mark.parametrize("mch", [0x04, 0x07, 0x80, 0xFF, 0x13])
def test_error_reserved_bits(mch):
    _perr(Reassembler(), pdv(1, mch, ECHO_BYTES), offset=6 + 5)


def test_error_dataset_without_command():
    err = _perr(Reassembler(), pdv(1, 2, b"abc"), offset=11)
    assert "no command" in str(err)


def test_error_dataset_after_no_dataset_command():
    r = Reassembler()
    with pytest.raises(PDataError) as info:
        r.feed(pdv(1, 3, ECHO_BYTES) + pdv(1, 2, b"ab"))
    assert "no data set follows" in str(info.value)
    assert info.value.offset == 6 + 6 + len(ECHO_BYTES) + 5


def test_error_dataset_before_last_command_fragment():
    _perr(Reassembler(), pdv(1, 1, STORE_BYTES[:10]) + pdv(1, 2, b"ab"))


def test_error_command_while_dataset_expected():
    r = Reassembler()
    r.feed(pdv(1, 3, STORE_BYTES) + pdv(1, 0, b"ab"))
    err = _perr(r, pdv(1, 3, ECHO_BYTES))
    assert "command fragment" in str(err)
    r = Reassembler()
    r.feed(pdv(1, 3, STORE_BYTES))
    _perr(r, pdv(1, 1, ECHO_BYTES))


def test_error_context_changes_within_message():
    r = Reassembler()
    r.feed(pdv(1, 1, STORE_BYTES[:10]))
    _perr(r, pdv(3, 3, STORE_BYTES[10:]), offset=10)
    r = Reassembler()
    r.feed(pdv(1, 3, STORE_BYTES))
    _perr(r, pdv(3, 2, b"ab"), offset=10)


def test_error_pdv_overruns_pdu():
    body = pdv(1, 3, ECHO_BYTES)
    _perr(Reassembler(), body[:-1], offset=6)
    _perr(Reassembler(), body + b"\x00\x00\x00", offset=6 + len(body))  # truncated item header
    _perr(Reassembler(), body + struct.pack(">IBB", 10, 1, 3) + b"abc", offset=6 + len(body))
    _perr(Reassembler(), struct.pack(">IBB", 1, 1, 3) + b"\x00" * 10, offset=6)  # length < 2
    _perr(Reassembler(), b"")  # no PDV at all


def test_error_bad_command_set_is_command_set_error():
    bad = bytearray(ECHO_BYTES)
    bad[-2:] = b"\x01"  # truncated value
    with pytest.raises(CommandSetError):
        Reassembler().feed(pdv(1, 3, bytes(bad[:-1])))


def test_event_classes():
    m = DimseMessage(1, ECHO)
    assert m.dataset is None and m.context_id == 1 and "DimseMessage" in repr(m)
    c = CommandArrived(3, STORE)
    assert c.command is STORE and "CommandArrived" in repr(c)
    k = DatasetChunk(3, b"ab", True)
    assert k.is_last and k.data == b"ab" and "DatasetChunk" in repr(k)


# ---------------------------------------------------------------- hypothesis

max_lengths = st.one_of(st.just(0), st.integers(7, 64), st.integers(65, 20000))


@st.composite
def messages(draw):
    filler = draw(st.integers(0, 300))
    if draw(st.booleans()):
        cmd = Command(0x0001, affected_sop_class_uid="1.2.3", message_id=draw(st.integers(0, 65535)),
                      priority=0, command_data_set_type=0x0001, affected_sop_instance_uid="4.5",
                      other_elements={0x5000: bytes(filler & ~1)})
        ds = draw(st.one_of(st.just(b""), st.binary(max_size=3000)))
    else:
        cmd = Command(0x8030, message_id_being_responded_to=1, command_data_set_type=0x0101,
                      status=0, other_elements={0x5000: bytes(filler & ~1)})
        ds = None
    return cmd, ds


def _feed_all(r, bodies, kind):
    events = []
    for body in bodies:
        if kind == "bytearray":
            body = bytearray(body)
        elif kind == "memoryview":
            body = memoryview(body)
        events.extend(r.feed(body))
    return events


@given(
    msgs=st.lists(messages(), min_size=1, max_size=3),
    max_len=max_lengths,
    pack=st.booleans(),
    stream=st.booleans(),
    ctx=st.integers(1, 255),
    kind=st.sampled_from(["bytes", "bytearray", "memoryview"]),
)
@settings(max_examples=300, deadline=None)
def test_fragment_reassemble_round_trip(msgs, max_len, pack, stream, ctx, kind):
    bufs = []
    for cmd, ds in msgs:
        out = fragment_message(ctx, encode_command(cmd), ds, max_len, pack)
        for b in out:
            if isinstance(b, memoryview):
                assert b.obj is ds
        bufs.extend(out)
    bodies = split_pdus(bufs, max_len)
    for body in bodies:
        items = pdvs(body)
        if not pack:
            assert len(items) == 1
        for c, mch, frag in items:
            assert c == ctx
            assert max_len == 0 and len(frag) <= 4 * 1024 * 1024 or len(frag) <= max_len - 6
    r = Reassembler({ctx}, stream_datasets=stream)
    events = _feed_all(r, bodies, kind)
    assert not r.in_message
    got = []
    for e in events:
        if isinstance(e, DimseMessage):
            got.append((e.command, None if e.dataset is None else bytes(e.dataset)))
        elif isinstance(e, CommandArrived):
            got.append((e.command, b""))
        else:
            assert isinstance(e, DatasetChunk) and stream
            got[-1] = (got[-1][0], got[-1][1] + bytes(e.data))
    assert got == [(cmd, None if ds is None else bytes(ds)) for cmd, ds in msgs]


@given(msg=messages(), max_len=max_lengths)
@settings(max_examples=100, deadline=None)
def test_pack_never_uses_more_pdus(msg, max_len):
    cmd, ds = msg
    data = encode_command(cmd)
    packed = split_pdus(fragment_message(1, data, ds, max_len, True), max_len)
    unpacked = split_pdus(fragment_message(1, data, ds, max_len, False), max_len)
    assert len(packed) <= len(unpacked)


@given(st.binary(max_size=120), st.booleans())
@settings(max_examples=300)
def test_garbage_bodies_raise_only_documented_errors(body, stream):
    r = Reassembler(stream_datasets=stream)
    try:
        r.feed(body)
    except (PDataError, CommandSetError):
        pass


# ------------------------------------------------------------ pynetdicom peer

def test_pynetdicom_decodes_our_pdus_and_we_decode_its_pdus():
    pytest.importorskip("pynetdicom")
    from io import BytesIO

    from pynetdicom import dimse_messages as M, dimse_primitives as P
    from pynetdicom.pdu import P_DATA_TF

    ds = bytes(range(256)) * 200
    # ours -> pynetdicom
    for pack in (True, False):
        msg = M.DIMSEMessage()
        for body in split_pdus(fragment_message(1, STORE_BYTES, ds, 4096, pack), 4096):
            pdu = P_DATA_TF()
            pdu.decode(b"\x04\x00" + struct.pack(">I", len(body)) + body)
            done = msg.decode_msg(pdu.to_primitive())
        assert done and isinstance(msg, M.C_STORE_RQ)
        assert msg.data_set.getvalue() == ds
        assert msg.command_set.AffectedSOPInstanceUID == "1.2.3"
    # pynetdicom -> ours
    p = P.C_STORE()
    p.MessageID = 2; p.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    p.AffectedSOPInstanceUID = "1.2.3"; p.Priority = 0; p.DataSet = BytesIO(ds)
    msg = M.C_STORE_RQ()
    msg.primitive_to_message(p)
    r = Reassembler({1})
    events = []
    for prim in msg.encode_msg(1, 4096):
        pdu = P_DATA_TF()
        pdu.from_primitive(prim)
        wire = pdu.encode()
        assert len(wire) - 6 <= 4096
        events += r.feed(wire[6:])
    assert len(events) == 1
    assert events[0].command == STORE and bytes(events[0].dataset) == ds
    assert decode_command(encode_command(events[0].command)) == STORE
