"""Operation latencies for ``chromanet bench``, kept in an HdrHistogram.

Why a histogram (package ``hdrhistogram``, module ``hdrh``) rather than the list of
every sample: its memory is fixed whatever the number of operations (about 190 KB
for 1 µs .. 1 h), every percentile it reports is within 0.1 % of the true value (3
significant digits), and the histograms of several worker processes add up exactly:
a worker sends back the histogram's compressed V2 encoding (a few KB), not its samples.

Recording stays close to a list append (benches/bench_latency.py). ``hdrh``'s
``record_value`` is pure Python (only its codec is in C): some microseconds a call,
tens of list appends. So ``record`` appends the latency in whole microseconds to a
bounded buffer; when the buffer is full, and before anything is read, equal values
are counted (``collections.Counter``, in C) and each distinct value is recorded once
with its count. Latencies have a few thousand distinct microsecond values, so a fold
costs a few milliseconds once every ``FOLD_EVERY`` operations (a pause the operations
in flight then see); a run of fewer operations folds only after its clock has stopped.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hdrh.histogram import HdrHistogram

#: the range recorded, in microseconds: 1 µs .. 1 hour (longer latencies count as 1 hour)
HIGHEST_US = 3_600_000_000
#: significant decimal digits kept: every value within 0.1 %
SIGNIFICANT_DIGITS = 3
#: samples buffered between two folds into the histogram (about 2 MB of Python ints)
FOLD_EVERY = 1 << 16

#: the percentiles of a summary, by their JSON key
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}


class Latencies:
    """Durations in nanoseconds in, a summary in milliseconds out; picklable
    (as its encoded histogram) so that worker processes can send it back."""

    def __init__(self) -> None:
        self._histogram = HdrHistogram(1, HIGHEST_US, SIGNIFICANT_DIGITS)
        self._pending: list[int] = []

    def record(self, nanoseconds: int) -> None:
        """The hot path: one append, and a fold every ``FOLD_EVERY`` calls."""
        pending = self._pending
        pending.append(nanoseconds // 1000)
        if len(pending) >= FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        record = self._histogram.record_value
        for value, count in Counter(self._pending).items():
            record(min(value, HIGHEST_US), count)
        self._pending.clear()

    @property
    def histogram(self) -> HdrHistogram:
        """Everything recorded so far (read it, do not record into it)."""
        if self._pending:
            self._fold()
        return self._histogram

    @property
    def count(self) -> int:
        return self._histogram.get_total_count() + len(self._pending)

    def add(self, other: Latencies) -> None:
        """Add another one's counts: exact, as both have the same buckets."""
        self._add(other.histogram)

    def _add(self, histogram: HdrHistogram) -> None:
        if histogram.get_total_count():  # hdrh would take an empty one's minimum for 0
            self.histogram.add(histogram)

    def summary_ms(self) -> dict[str, float] | None:
        """min, the PERCENTILES, max and mean in ms; None when nothing was recorded."""
        h = self.histogram
        if not h.get_total_count():
            return None
        at = h.get_percentile_to_value_dict(list(PERCENTILES.values()))
        summary = {"min": h.get_min_value() / 1000}
        summary.update({key: at[p] / 1000 for key, p in PERCENTILES.items()})
        summary.update(max=h.get_max_value() / 1000, mean=h.get_mean_value() / 1000)
        return summary

    def encode(self) -> bytes:
        """The histogram in HdrHistogram's compressed V2 encoding (base64), as any
        HdrHistogram implementation reads it."""
        return self.histogram.encode()

    @classmethod
    def decode(cls, encoded: bytes) -> Latencies:
        latencies = cls()
        latencies._add(HdrHistogram.decode(encoded))
        return latencies

    def __reduce__(self) -> tuple[Any, ...]:
        return (Latencies.decode, (self.encode(),))
