"""The cost of recording one latency in ``chromanet bench``, next to the list
append it replaced.

Run: .venv/bin/python -m pytest benches/bench_latency.py --benchmark-only

Group latency-record, 1,000,000 latencies (log-normal around 0.3 ms, in ns as
the worker measures them) recorded one call at a time:
- list-append: the baseline, what the load tool did before (a float in seconds
  appended to a list: memory grows with every operation);
- latencies-record: ``Latencies.record`` (apps/latency.py): an append to a
  bounded buffer, folded into the HdrHistogram every FOLD_EVERY values;
- hdrh-record-value: ``HdrHistogram.record_value`` called for every value,
  what the fold avoids (pure Python).
"""

from __future__ import annotations

import random

import pytest

from chromanet.apps.latency import HIGHEST_US, SIGNIFICANT_DIGITS, Latencies

hdrh = pytest.importorskip("hdrh.histogram")

N = 1_000_000
_rng = random.Random(1)
NANOSECONDS = [int(_rng.lognormvariate(-8, 0.5) * 1e9) for _ in range(N)]


def _list_append() -> list[float]:
    values: list[float] = []
    for ns in NANOSECONDS:
        values.append(ns / 1e9)
    return values


def _latencies_record() -> Latencies:
    latencies = Latencies()
    for ns in NANOSECONDS:
        latencies.record(ns)
    latencies.summary_ms()  # the last fold too
    return latencies


def _hdrh_record_value() -> object:
    histogram = hdrh.HdrHistogram(1, HIGHEST_US, SIGNIFICANT_DIGITS)
    for ns in NANOSECONDS:
        histogram.record_value(ns // 1000)
    return histogram


@pytest.mark.benchmark(group="latency-record")
@pytest.mark.parametrize(
    "record",
    [_list_append, _latencies_record, _hdrh_record_value],
    ids=["list-append", "latencies-record", "hdrh-record-value"],
)
def test_record(benchmark: object, record: object) -> None:
    benchmark.pedantic(record, rounds=3, iterations=1)  # type: ignore[attr-defined]
