"""The in-memory data set sink (``dimse_channel.MemorySink``).

A received data set (PS3.7 8.1: the data set of a DIMSE message, its PDV
fragments in order, PS3.8 E.2) is the concatenation of its fragments. The
reassembler hands them out as read-only views of the received ``bytes``
(``_pdata.DatasetChunk``); checked here that the sink gives back exactly
those bytes, copies them only once (the join: no copy per fragment), still
copies a buffer its owner may reuse, and honours its size cap.
"""

from __future__ import annotations

import tracemalloc

from chromanet.dimse_channel import DatasetTooLarge, MemorySink


def test_fragments_joined_in_order() -> None:
    received = bytes(range(256)) * 64
    sink = MemorySink()
    for start in range(0, len(received), 1000):
        sink.write(memoryview(received)[start:start + 1000])
    assert sink.finish() == received


def test_views_of_received_bytes_are_not_copied_before_the_join() -> None:
    received = b"\x5a" * (4 << 20)
    view = memoryview(received)
    sink = MemorySink()
    tracemalloc.start()
    try:
        for start in range(0, len(received), 1 << 20):
            sink.write(view[start:start + (1 << 20)])
        kept, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept < 64 << 10  # four views, not four 1 MiB copies
    assert sink.finish() == received


def test_a_reusable_buffer_is_copied() -> None:
    buffer = bytearray(b"first")
    sink = MemorySink()
    sink.write(buffer)
    sink.write(memoryview(buffer))
    buffer[:] = b"later"
    assert sink.finish() == b"firstfirst"


def test_over_the_limit_finishes_as_too_large() -> None:
    sink = MemorySink(limit=10)
    sink.write(memoryview(b"123456"))
    sink.write(memoryview(b"789012"))
    outcome = sink.finish()
    assert isinstance(outcome, DatasetTooLarge)
    assert (outcome.size, outcome.limit) == (12, 10)
