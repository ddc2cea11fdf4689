"""chromanet._framer: cutting a byte stream into PDUs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chromanet._framer import PDUFramer
from chromanet._pdu import PDV, Abort, PDataTF, ReleaseRQ, decode_pdu, encode_pdu
from chromanet.errors import PDUError, PDUTooLargeError

RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
ABORT = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"
PDATA = encode_pdu(PDataTF([PDV(1, True, True, b"C" * 100), PDV(1, False, True, b"D" * 300)]))


def _norm(pdus):
    return [(t, bytes(b)) for t, b in pdus]


def test_one_chunk_many_pdus_zero_copy():
    stream = RELEASE_RQ + PDATA + ABORT
    f = PDUFramer()
    got = f.feed(stream)
    assert _norm(got) == [(5, RELEASE_RQ[6:]), (4, PDATA[6:]), (7, ABORT[6:])]
    for _, body in got:
        assert isinstance(body, memoryview) and body.readonly and body.obj is stream
    assert f.buffered == 0 and not f.in_pdu


def test_one_byte_at_a_time():
    stream = RELEASE_RQ + PDATA + ABORT
    f = PDUFramer()
    got = []
    for i in range(len(stream)):
        got += f.feed(stream[i:i + 1])
        if i + 1 == 3:
            assert f.in_pdu and f.buffered == 3
        if i + 1 == len(RELEASE_RQ) + 20:
            assert f.in_pdu and f.buffered == 20
    assert _norm(got) == [(5, RELEASE_RQ[6:]), (4, PDATA[6:]), (7, ABORT[6:])]
    assert decode_pdu(4, got[1][1]) == decode_pdu(4, PDATA[6:])
    assert not f.in_pdu and f.buffered == 0


def test_header_complete_body_in_next_chunk_is_sliced():
    f = PDUFramer()
    assert f.feed(PDATA[:6]) == []
    assert f.in_pdu and f.buffered == 6
    rest = PDATA[6:] + RELEASE_RQ
    got = f.feed(rest)
    assert got[0][1].obj is rest  # whole body inside this chunk: still zero copy
    assert _norm(got) == [(4, PDATA[6:]), (5, RELEASE_RQ[6:])]


def test_empty_body_and_empty_feed():
    f = PDUFramer()
    assert f.feed(b"") == []
    assert f.feed(b"\x05\x00\x00\x00\x00\x00") == [(5, b"")]
    assert not f.in_pdu


def test_mutable_input_is_copied():
    buf = bytearray(RELEASE_RQ + PDATA[:50])
    f = PDUFramer()
    got = f.feed(buf)
    buf[:] = b"\xff" * len(buf)  # the caller reuses its buffer
    assert _norm(got) == [(5, RELEASE_RQ[6:])]
    mv = memoryview(bytearray(PDATA[50:]))
    got = f.feed(mv)
    mv[:] = b"\x00" * len(mv)
    assert _norm(got) == [(4, PDATA[6:])]


def test_memoryview_of_bytes_input_is_not_copied():
    stream = PDATA + ABORT
    f = PDUFramer()
    got = f.feed(memoryview(stream)[: len(PDATA)])
    assert got[0][1].obj is stream
    assert _norm(f.feed(memoryview(stream)[len(PDATA):])) == [(7, ABORT[6:])]


def test_unknown_pdu_type_is_returned():
    f = PDUFramer()
    assert _norm(f.feed(b"\x99\x00\x00\x00\x00\x03abc")) == [(0x99, b"abc")]


def test_4gb_header_refused_after_six_bytes_without_reserving_memory():
    f = PDUFramer()
    with pytest.raises(PDUTooLargeError) as ei:
        f.feed(b"\x01\x00\xff\xff\xff\xff")
    err = ei.value
    assert (err.length, err.limit, err.pdu_type, err.offset) == (0xFFFFFFFF, 1048576, 1, 2)
    assert f.buffered <= 6
    with pytest.raises(PDUError):  # unusable afterwards
        f.feed(b"\x00")


def test_header_split_then_refused():
    f = PDUFramer(max_other_length=100)
    assert f.feed(b"\x02\x00\x00") == []
    with pytest.raises(PDUTooLargeError):
        f.feed(b"\x00\x00\x65" + b"x" * 1000)  # 101 > 100


def test_pdata_unlimited_by_default_streams_without_reserving():
    f = PDUFramer()
    assert f.feed(b"\x04\x00\xff\xff\xff\xff" + b"\x00" * 10) == []
    assert f.buffered == 16 and f.in_pdu


@pytest.mark.parametrize(
    ("kwargs", "pdu_type", "length", "ok"),
    [
        ({"max_pdata_length": 16384}, 4, 16384, True),
        ({"max_pdata_length": 16384}, 4, 16385, False),
        ({"max_pdata_length": 16384}, 1, 16385, True),  # other types use max_other_length
        ({"max_other_length": 68}, 1, 68, True),
        ({"max_other_length": 68}, 1, 69, False),
        ({"max_other_length": 68}, 0x42, 69, False),  # unknown types too
        ({"max_other_length": 68, "max_pdata_length": 0}, 4, 1 << 31, True),
    ],
)
def test_limits_per_type(kwargs, pdu_type, length, ok):
    f = PDUFramer(**kwargs)
    header = bytes([pdu_type, 0]) + length.to_bytes(4, "big")
    if ok:
        assert f.feed(header) == []
        assert f.in_pdu
    else:
        with pytest.raises(PDUTooLargeError) as ei:
            f.feed(header)
        assert ei.value.pdu_type == pdu_type and ei.value.length == length


def test_attributes():
    f = PDUFramer(max_pdata_length=5, max_other_length=7)
    assert (f.max_pdata_length, f.max_other_length) == (5, 7)
    assert PDUFramer().max_other_length == 1048576 and PDUFramer().max_pdata_length == 0
    with pytest.raises(ValueError):
        PDUFramer(max_other_length=-1)


def test_large_trickle_keeps_memory_proportional():
    # a body arriving in many small pieces is joined once at the end
    body = bytes(range(256)) * 64
    pdu = b"\x04\x00" + len(body).to_bytes(4, "big") + body
    f = PDUFramer()
    got = []
    for i in range(0, len(pdu), 7):
        got += f.feed(pdu[i:i + 7])
    assert _norm(got) == [(4, body)]


def test_per_chunk_cost_is_not_proportional_to_buffered_bytes():
    # Feeding a 64 MiB body in 1 KiB chunks must not re-join the buffer on every feed;
    # a quadratic implementation would take hours here (timeout guards it).
    chunk = b"\xab" * 1024
    f = PDUFramer()
    n = 64 * 1024
    assert f.feed(b"\x04\x00" + (n * 1024).to_bytes(4, "big")) == []
    for _ in range(n - 1):
        assert f.feed(chunk) == []
    assert f.buffered == 6 + (n - 1) * 1024
    (t, body), = f.feed(chunk)
    assert t == 4 and len(body) == n * 1024


pdus = st.one_of(
    st.builds(PDataTF, st.lists(st.builds(PDV, st.integers(0, 127).map(lambda i: 2 * i + 1), st.booleans(),
                                          st.booleans(), st.binary(max_size=50)), min_size=1, max_size=3)),
    st.builds(ReleaseRQ),
    st.builds(Abort, st.integers(0, 2), st.integers(0, 6)),
).map(encode_pdu) | st.binary(max_size=20).map(lambda b: b"\x42\x00" + len(b).to_bytes(4, "big") + b)


@given(st.lists(pdus, max_size=8), st.data())
@settings(max_examples=300)
def test_any_chunking_gives_the_same_pdus(raw_pdus, data):
    stream = b"".join(raw_pdus)
    expected = [(r[0], r[6:]) for r in raw_pdus]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    kinds = data.draw(st.lists(st.sampled_from([bytes, bytearray, memoryview]), min_size=len(cuts) + 1,
                               max_size=len(cuts) + 1))
    f = PDUFramer()
    got = []
    prev = 0
    for cut, kind in zip(cuts + [len(stream)], kinds):
        piece = stream[prev:cut]
        got += f.feed(kind(piece) if kind is not memoryview else memoryview(bytearray(piece)))
        prev = cut
    assert _norm(got) == expected
    assert not f.in_pdu and f.buffered == 0


def test_non_contiguous_input():
    spread = bytes(x for b in PDATA + ABORT for x in (b, 0))
    f = PDUFramer()
    assert _norm(f.feed(memoryview(spread)[::2])) == [(4, PDATA[6:]), (7, ABORT[6:])]
