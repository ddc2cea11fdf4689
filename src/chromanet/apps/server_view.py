"""The server's side of a ``chromanet bench`` run, from its Prometheus
metrics (``chromanet bench --server-metrics URL``).

The load tool scrapes the node's /metrics (``apps/metrics.py``) before and
after its run and prints the difference next to its own figures: the
operations the server finished, by type and status category, the latency
quantiles estimated from the server's histogram (linear within a bucket,
as Prometheus' ``histogram_quantile`` does: as exact as the buckets), the
associations accepted, rejected and aborted, and the data set bytes. The
server's latency runs from the request's arrival to the final response's
send; the tool's adds the network and its own loop.

Other servers' metrics that follow the same names work too; the view only
sees what happened on the server between the two scrapes, the tool's run
or not.
"""

from __future__ import annotations

import math
import urllib.request
from typing import Any

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

QUANTILES = (0.5, 0.9, 0.99)


def scrape(url: str, timeout: float = 10.0) -> Samples:
    """Every sample at ``url`` (the text exposition format)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode("utf-8")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape_settled(url: str, interval: float = 0.6, tries: int = 8) -> Samples:
    """A scrape after the run: chromanet's node publishes an operation up
    to half a second after its end (``metrics.FLUSH_INTERVAL``), so scrape
    until two scrapes ``interval`` apart agree on the operations."""
    import time

    last = scrape(url)
    for _ in range(tries):
        time.sleep(interval)
        now = scrape(url)
        if _operations(now) == _operations(last):
            return now
        last = now
    return last


def _operations(samples: Samples) -> float:
    return sum(v for (name, _), v in samples.items() if name == "chromanet_operations_total")


def _delta(before: Samples, after: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v - before.get((n, labels), 0.0) for (n, labels), v in after.items() if n == name}


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile from cumulative ``(upper bound, count)`` pairs."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def compare(before: Samples, after: Samples) -> dict[str, Any]:
    """What the server did between two scrapes."""
    operations: dict[str, dict[str, Any]] = {}
    for labels, n in _delta(before, after, "chromanet_operations_total").items():
        if n <= 0:
            continue
        label = dict(labels)
        entry = operations.setdefault(label.get("operation", "?"), {"count": 0, "by_category": {}, "errors": 0})
        entry["count"] += n
        category = label.get("category", "?")
        entry["by_category"][category] = entry["by_category"].get(category, 0) + n
        if category not in ("Success", "Warning", "Cancel"):
            entry["errors"] += n
    buckets: dict[str, list[tuple[float, float]]] = {}
    for labels, n in _delta(before, after, "chromanet_operation_duration_seconds_bucket").items():
        label = dict(labels)
        buckets.setdefault(label.get("operation", "?"), []).append((float(label["le"]), n))
    for operation, pairs in buckets.items():
        if operation in operations:
            operations[operation]["latency_ms"] = {
                f"p{int(q * 100)}": (None if (v := histogram_quantile(q, pairs)) is None else v * 1000)
                for q in QUANTILES
            }

    def one(name: str) -> float:
        return sum(_delta(before, after, name).values())

    return {
        "operations": operations,
        "associations": {
            "accepted": one("chromanet_associations_accepted_total"),
            "rejected": {dict(k).get("reason", "?"): v
                         for k, v in _delta(before, after, "chromanet_associations_rejected_total").items() if v},
            "aborted": one("chromanet_associations_aborted_total"),
        },
        "bytes_received": one("chromanet_dataset_bytes_received_total"),
        "bytes_sent": one("chromanet_dataset_bytes_sent_total"),
        "suboperations": {dict(k).get("result", "?"): v
                          for k, v in _delta(before, after, "chromanet_suboperations_total").items() if v},
    }


def format_view(view: dict[str, Any], url: str) -> str:
    lines = [f"  server ({url}):"]
    if not view["operations"]:
        lines.append("    no operations counted")
    for operation, entry in sorted(view["operations"].items()):
        categories = ", ".join(f"{c} {n:.0f}" for c, n in sorted(entry["by_category"].items()))
        line = f"    {operation:<8} {entry['count']:.0f} ({categories}), {entry['errors']:.0f} error(s)"
        lat = entry.get("latency_ms")
        if lat:
            line += "; latency ms " + "  ".join(
                f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in lat.items()
            ) + " (from buckets)"
        lines.append(line)
    assoc = view["associations"]
    rejected = ", ".join(f"{reason} {n:.0f}" for reason, n in assoc["rejected"].items()) or "none"
    lines.append(f"    associations {assoc['accepted']:.0f} accepted, rejected: {rejected}, {assoc['aborted']:.0f} aborted")
    subs = ", ".join(f"{r} {n:.0f}" for r, n in sorted(view["suboperations"].items()))
    lines.append(f"    data set bytes in {view['bytes_received']:.0f}, out {view['bytes_sent']:.0f}"
                 + (f"; sub-operations {subs}" if subs else ""))
    return "\n".join(lines)


__all__ = ["compare", "format_view", "histogram_quantile", "scrape", "scrape_settled"]
