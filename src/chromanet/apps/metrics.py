"""The node's Prometheus metrics (``chromanet serve --metrics-port``).

``NodeMetrics`` is an ``AssociationObserver`` (``chromanet.server``), like
the audit trail: the node's servers tell it of each connection, and the
operation records of ``chromanet.services.observe`` (one per request, filled
where the facts already are) of each operation. It turns them into counters,
gauges and histograms of the ``prometheus_client`` library, and the node
tells it how long its index queries took (``index_query``).

One process (``--workers 1``): the metrics live in this process's registry
and ``serve_metrics`` exposes it on an HTTP port (a thread of
prometheus_client's). Worker processes: ``PROMETHEUS_MULTIPROC_DIR`` is set
by the supervisor before any worker starts, so that every worker's values
go to memory-mapped files in it (prometheus_client's multi-process mode),
and the supervisor alone serves /metrics, summing them
(``serve_multiprocess_metrics``); ``chromanet_associations_open`` is summed
over live workers only. The spool gauge is computed when scraped, from the
spool directory, by whichever process serves.

What it costs an operation: one call with the finished record that adds
to plain Python numbers kept per (operation, status) (a dict lookup, a
bisect for the latency bucket, a few additions: no lock, no mmap write);
at most ``FLUSH_INTERVAL`` seconds later one loop callback adds what
gathered to the prometheus_client metrics in one go, so a scrape shows
operations at most that late. (prometheus_client's own ``inc`` and
``observe`` take a lock each, and write a memory-mapped file in
multi-process mode: about four times the cost, per operation.) Association
metrics, a few per association, are updated at once.

The names and labels (README.md "Metrics" lists them with their meaning):

- ``chromanet_associations_open`` (gauge), ``chromanet_associations_accepted_total``,
  ``chromanet_associations_rejected_total{reason}``, ``chromanet_associations_aborted_total{by}``,
  ``chromanet_connections_total`` (every TCP connection or TLS session accepted);
- ``chromanet_worker_associations_total{worker}`` (with workers only);
- ``chromanet_operations_total{operation, status, category}``;
- ``chromanet_operation_duration_seconds{operation}`` (histogram);
- ``chromanet_dataset_bytes_received_total{operation}``, ``chromanet_dataset_bytes_sent_total{operation}``;
- ``chromanet_suboperations_total{operation, result}``;
- ``chromanet_spool_bytes`` (gauge);
- ``chromanet_index_query_seconds{query}`` (histogram);
- ``chromanet_shared_commit_batches_total``, ``chromanet_shared_commit_stores_total``
  (the supervisor's shared committer, with workers).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from chromanet.services.observe import OperationRecord
from chromanet.status import code_to_category
from chromanet.ul.negotiation import REJECT_REASONS

if TYPE_CHECKING:
    from chromanet.association import AsyncAssociation

LOGGER = logging.getLogger("chromanet.metrics")

#: The environment variable of prometheus_client's multi-process mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Seconds. A one-match C-FIND on loopback takes ~100 µs, a C-GET of
#: thousands of palettes minutes: fine at the bottom, coarse at the top.
OPERATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
INDEX_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0)
#: Seconds at most between an operation's end and its appearance in /metrics.
FLUSH_INTERVAL = 0.5


class _Tally:
    """What gathered for one histogram child (and the counters that go
    with it) since the last flush."""

    __slots__ = ("bounds", "count", "total", "buckets", "bytes_in", "bytes_out")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.bytes_in = 0
        self.bytes_out = 0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.buckets[bisect.bisect_left(self.bounds, seconds)] += 1


def _add_to_histogram(child: Any, tally: _Tally) -> None:
    """Add a tally's observations to a prometheus_client histogram child at
    once (its per-bucket values: ``observe`` would take a lock per
    observation)."""
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if buckets is None or total is None or len(buckets) != len(tally.buckets):  # pragma: no cover - another version
        upper = list(tally.bounds) + [tally.bounds[-1] * 2]
        for index, n in enumerate(tally.buckets):
            for _ in range(n):
                child.observe(upper[index])
        return
    for index, n in enumerate(tally.buckets):
        if n:
            buckets[index].inc(n)
    total.inc(tally.total)


class _OperationObserver:
    """The operation observer metrics give an association: no query keys
    wanted (``OperationRecord.details``)."""

    __slots__ = ("ended",)
    wants_details = False

    def __init__(self, ended: Any) -> None:
        self.ended = ended

    def __call__(self, record: OperationRecord) -> None:
        self.ended(record)


class NodeMetrics:
    """The metrics of one node process; an ``AssociationObserver``."""

    def __init__(self, registry: CollectorRegistry | None = None, worker: int | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.open = Gauge(
            "chromanet_associations_open", "Associations established and not yet ended",
            registry=reg, multiprocess_mode="livesum",
        )  # fmt: skip
        self.connections = Counter(
            "chromanet_connections", "Connections accepted (TCP, or TLS after its handshake)", registry=reg
        )
        self.accepted = Counter("chromanet_associations_accepted", "Associations established", registry=reg)
        self.rejected = Counter(
            "chromanet_associations_rejected", "A-ASSOCIATE-RJ sent, by reason", ["reason"], registry=reg
        )
        self.aborted = Counter(
            "chromanet_associations_aborted", "Associations ended by an A-ABORT, by who aborted", ["by"], registry=reg
        )
        self.per_worker = None
        if worker is not None:
            self.per_worker = Counter(
                "chromanet_worker_associations", "Associations established, by worker process", ["worker"],
                registry=reg,
            ).labels(str(worker))  # fmt: skip
        self.operations = Counter(
            "chromanet_operations", "DIMSE operations served, by final status (none: ended without one)",
            ["operation", "status", "category"], registry=reg,
        )  # fmt: skip
        self.duration = Histogram(
            "chromanet_operation_duration_seconds", "From the request to the final response",
            ["operation"], buckets=OPERATION_BUCKETS, registry=reg,
        )  # fmt: skip
        self.bytes_in = Counter(
            "chromanet_dataset_bytes_received", "Data set bytes received (C-STORE data sets, identifiers)",
            ["operation"], registry=reg,
        )  # fmt: skip
        self.bytes_out = Counter(
            "chromanet_dataset_bytes_sent", "Data set bytes sent (matches, sub-operation data sets)",
            ["operation"], registry=reg,
        )  # fmt: skip
        self.suboperations = Counter(
            "chromanet_suboperations", "C-GET/C-MOVE sub-operations, by result", ["operation", "result"],
            registry=reg,
        )  # fmt: skip
        self.index = Histogram(
            "chromanet_index_query_seconds", "Archive index work of an operation (find, locate, store)",
            ["query"], buckets=INDEX_BUCKETS, registry=reg,
        )  # fmt: skip
        self._established: set[int] = set()
        # (operation, status) -> the children that a record of it updates.
        self._children: dict[tuple[str, int | None], tuple[Any, Any, Any, Any]] = {}
        # Gathered since the last flush: (operation, status) -> tally, and
        # index query -> tally.
        self._tallies: dict[tuple[str, int | None], _Tally] = {}
        self._index_tallies: dict[str, _Tally] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self._observer = _OperationObserver(self.operation_ended)

    # -------------------------------------------- AssociationObserver
    def association_opened(self, assoc: AsyncAssociation) -> Any:
        self.connections.inc()
        return self._observer

    def association_established(self, assoc: AsyncAssociation) -> None:
        self._established.add(id(assoc))
        self.open.inc()
        self.accepted.inc()
        if self.per_worker is not None:
            self.per_worker.inc()

    def association_closed(self, assoc: AsyncAssociation) -> None:
        if id(assoc) in self._established:
            self._established.discard(id(assoc))
            self.open.dec()
        outcome = assoc.outcome
        if outcome == "rejected":
            rj = assoc.acse_response
            key = (getattr(rj, "source", 0), getattr(rj, "reason", 0))
            self.rejected.labels(REJECT_REASONS.get(key, f"source {key[0]} reason {key[1]}")).inc()
        elif outcome == "aborted":
            self.aborted.labels(assoc.aborted_by or "unknown").inc()

    # ------------------------------------------------------ operations
    def operation_ended(self, record: OperationRecord) -> None:
        """The operation observer: one finished operation."""
        key = (record.operation, record.status)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = _Tally(OPERATION_BUCKETS)
        tally.observe(record.duration)
        tally.bytes_in += record.bytes_in
        tally.bytes_out += record.bytes_out
        if record.completed is not None:
            subs = self.suboperations
            operation = record.operation
            subs.labels(operation, "completed").inc(record.completed)
            if record.failed:
                subs.labels(operation, "failed").inc(record.failed)
            if record.warning:
                subs.labels(operation, "warning").inc(record.warning)
        if self._flush_timer is None:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on a loop (a test, a tool): at once
            self.flush()
            return
        self._flush_timer = loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Add what gathered to the prometheus_client metrics (the loop's
        timer does; the node once more when it closes)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        tallies, self._tallies = self._tallies, {}
        for key, tally in tallies.items():
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = self._children_of(*key)
            count, duration, received, sent = children
            count.inc(tally.count)
            _add_to_histogram(duration, tally)
            if tally.bytes_in:
                received.inc(tally.bytes_in)
            if tally.bytes_out:
                sent.inc(tally.bytes_out)
        index_tallies, self._index_tallies = self._index_tallies, {}
        for query, tally in index_tallies.items():
            _add_to_histogram(self.index.labels(query), tally)

    def _children_of(self, operation: str, status: int | None) -> tuple[Any, Any, Any, Any]:
        if status is None:
            text, category = "none", "none"
        else:
            text, category = f"0x{status:04X}", code_to_category(status)
        return (
            self.operations.labels(operation, text, category),
            self.duration.labels(operation),
            self.bytes_in.labels(operation),
            self.bytes_out.labels(operation),
        )

    def index_query(self, query: str, seconds: float) -> None:
        """The node's archive call ``query`` ("find", "locate", "store") took ``seconds``."""
        tally = self._index_tallies.get(query)
        if tally is None:
            tally = self._index_tallies[query] = _Tally(INDEX_BUCKETS)
        tally.observe(seconds)
        if self._flush_timer is None:
            self._schedule_flush()


class SpoolCollector(Collector):
    """``chromanet_spool_bytes``: the bytes of received C-STORE data sets
    on disk in the spool directory (being received, or waiting to be
    ingested), measured when scraped."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "chromanet_spool_bytes", "Bytes of received C-STORE data sets in the spool directory",
            value=_tree_size(self.directory),
        )  # fmt: skip


class SharedCommitCollector(Collector):
    """``chromanet_shared_commit_batches_total`` and
    ``chromanet_shared_commit_stores_total``: what the supervisor's shared
    committer (``archive/shared_commit.py``) committed, read when scraped;
    stores over batches is the mean batch, the sharing it buys."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "chromanet_shared_commit_batches", "Transactions of the supervisor's shared committer",
            value=self.service.batches,
        )  # fmt: skip
        yield CounterMetricFamily(
            "chromanet_shared_commit_stores", "Stores the supervisor's shared committer committed for the workers",
            value=self.service.stores,
        )  # fmt: skip


def _tree_size(directory: Path) -> int:
    """Bytes of the files in ``directory`` and its subdirectories (one
    per worker), what vanishes meanwhile not counted."""
    total = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += _tree_size(Path(entry.path))
            else:
                total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total


def serve_metrics(metrics: NodeMetrics, port: int, address: str, spool: Path) -> Any:
    """One process: expose ``metrics`` (and the spool gauge) on
    ``address:port``; returns the HTTP server (prometheus_client's thread)."""
    metrics.registry.register(SpoolCollector(spool))
    server, _thread = start_http_server(port, address, registry=metrics.registry)
    LOGGER.info("metrics on http://%s:%d/metrics", address or "0.0.0.0", server.server_port)
    return server


def serve_multiprocess_metrics(
    directory: Path, port: int, address: str, spool: Path, shared_committer: Any = None
) -> Any:
    """The supervisor: expose the sum of the workers' values from
    ``directory`` (prometheus_client's multi-process mode), and what its
    ``shared_committer`` (a ``CommitService``, if any) committed."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    registry.register(SpoolCollector(spool))
    if shared_committer is not None:
        registry.register(SharedCommitCollector(shared_committer))
    server, _thread = start_http_server(port, address, registry=registry)
    LOGGER.info("metrics of every worker on http://%s:%d/metrics", address or "0.0.0.0", server.server_port)
    return server


def worker_gone(directory: Path, pid: int) -> None:
    """A worker ended: its live gauges no longer count (its counters stay)."""
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(pid, path=str(directory))
    except OSError as exc:  # pragma: no cover - a file removed under us
        LOGGER.debug("metrics of worker %d: %s", pid, exc)


__all__ = [
    "MULTIPROC_ENV",
    "NodeMetrics",
    "SharedCommitCollector",
    "SpoolCollector",
    "serve_metrics",
    "serve_multiprocess_metrics",
    "worker_gone",
]
