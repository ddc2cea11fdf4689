"""The Prometheus metrics of ``chromanet serve --metrics-port`` (issue 14).

A session of C-ECHO, C-FIND, C-STORE, C-GET and C-MOVE, a rejected and an
aborted association against the node, then /metrics is scraped and parsed
with prometheus_client's parser (the text exposition format) and every
number is checked against what the session did: one process
(``--workers 1``, the node serves /metrics itself) and two workers (the
supervisor serves the sum of the workers' values, prometheus_client's
multi-process mode). The statuses are PS3.4's (C.4.1.1.4 for the Q/R
sub-operation counts); the rejection reason PS3.8 Table 9-21's.
"""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from chromanet import evt, uids
from chromanet.ae import AE
from chromanet.apps.metrics import NodeMetrics

from helpers.data import dataset_bytes
from helpers.nodeproc import ServeProcess, scrape, total, value
from helpers.qr import FIND, GET, MOVE, StoreLog, statuses
from helpers.servers import configure_scp_ae, start_scp
from helpers.waits import NETWORK_TIMEOUT, wait_until

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the node's subprocess tests run on POSIX")

HOT_IRON = "1.2.840.10008.1.5.1"


def scu(*contexts: str, calling: str = "METRICSCU") -> AE:
    ae = AE(calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = NETWORK_TIMEOUT
    for context in contexts:
        ae.add_requested_context(context)
    return ae


def new_palette_file(directory: Path) -> tuple[str, Path]:
    ds = pydicom.dcmread(pydicom.data.get_palette_files("hotiron.dcm")[0])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ContentLabel = "METRICS"
    path = directory / "metrics.dcm"
    ds.save_as(path, enforce_file_format=True)
    return ds.SOPInstanceUID, path


def session(node: ServeProcess, tmp_path: Path, destination_recorder: object) -> dict[str, int]:
    """echo, find (2 matches), store, get (2 sub-operations), move (1);
    one association rejected (called AE title), one aborted by us."""
    uid, path = new_palette_file(tmp_path)
    store = scu(uids.Verification, uids.ColorPaletteStorage).associate("127.0.0.1", node.port, ae_title="CHROMANET")
    assert store.is_established
    assert store.send_c_echo().Status == 0x0000
    assert store.send_c_store(path).Status == 0x0000
    store.release()

    log = StoreLog()
    qr = scu(FIND, GET, MOVE).associate("127.0.0.1", node.port, ae_title="CHROMANET",
                                        evt_handlers=[(evt.EVT_C_STORE, log)])  # fmt: skip
    assert qr.is_established
    query = pydicom.Dataset()
    query.ContentLabel = "HOT*"
    query.SOPInstanceUID = ""
    assert statuses(list(qr.send_c_find(query, FIND))) == [0xFF00, 0xFF00, 0x0000]
    retrieve = pydicom.Dataset()
    retrieve.SOPInstanceUID = [uid, HOT_IRON]
    assert statuses(list(qr.send_c_get(retrieve, GET)))[-1] == 0x0000
    one = pydicom.Dataset()
    one.SOPInstanceUID = HOT_IRON
    assert statuses(list(qr.send_c_move(one, "DEST", MOVE)))[-1] == 0x0000
    qr.release()

    rejected = scu(uids.Verification).associate("127.0.0.1", node.port, ae_title="SOMEONE_ELSE")
    assert rejected.is_rejected
    aborted = scu(uids.Verification).associate("127.0.0.1", node.port, ae_title="CHROMANET")
    assert aborted.is_established
    aborted.abort()
    return {"store_bytes": len(dataset_bytes(path))}


def check(node: ServeProcess, done: dict[str, int]) -> None:
    assert node.metrics_port is not None

    def settled() -> bool:
        # Operations reach /metrics within FLUSH_INTERVAL of their end.
        samples = scrape(node.metrics_port or 0)
        return (value(samples, "chromanet_associations_open") == 0
                and total(samples, "chromanet_associations_aborted_total") == 1
                and total(samples, "chromanet_operations_total") == 5
                and total(samples, "chromanet_index_query_seconds_count") == 4)  # fmt: skip

    assert wait_until(settled)
    s = scrape(node.metrics_port)
    assert value(s, "chromanet_associations_accepted_total") == 3
    assert value(s, "chromanet_associations_rejected_total", reason="called AE title not recognized") == 1
    assert value(s, "chromanet_associations_aborted_total", by="peer") == 1
    for operation in ("C-ECHO", "C-STORE", "C-FIND", "C-GET", "C-MOVE"):
        assert value(s, "chromanet_operations_total", operation=operation, status="0x0000", category="Success") == 1
        assert value(s, "chromanet_operation_duration_seconds_count", operation=operation) == 1
        assert value(s, "chromanet_operation_duration_seconds_bucket", operation=operation, le="+Inf") == 1
    assert total(s, "chromanet_operations_total") == 5
    assert value(s, "chromanet_suboperations_total", operation="C-GET", result="completed") == 2
    assert value(s, "chromanet_suboperations_total", operation="C-MOVE", result="completed") == 1
    assert value(s, "chromanet_suboperations_total", operation="C-GET", result="failed") == 0
    assert value(s, "chromanet_dataset_bytes_received_total", operation="C-STORE") == done["store_bytes"]
    # The C-GET sent the stored palette and Hot Iron; the C-FIND two identifiers.
    sent_get = value(s, "chromanet_dataset_bytes_sent_total", operation="C-GET")
    assert sent_get >= done["store_bytes"] * 2 - 64
    assert value(s, "chromanet_dataset_bytes_sent_total", operation="C-FIND") > 0
    assert value(s, "chromanet_index_query_seconds_count", query="find") == 1
    assert value(s, "chromanet_index_query_seconds_count", query="locate") == 2
    assert value(s, "chromanet_index_query_seconds_count", query="store") == 1
    assert value(s, "chromanet_spool_bytes") == 0


@pytest.fixture
def destination():
    started: list = []
    handle = start_scp(started, configure_scp_ae("DEST"), None, store=True)
    try:
        yield handle
    finally:
        for server in started:
            server.shutdown()


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_after_a_session(tmp_path: Path, destination, workers: int, monkeypatch: pytest.MonkeyPatch):
    # "HOT*" is a query, not a valid CS value: no warning about it.
    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
    extra = ["--workers", str(workers), "--default-access", "all",
             "--move-dest", f"DEST=127.0.0.1:{destination.port}"]  # fmt: skip
    node = ServeProcess(tmp_path / "data", extra, metrics=True)
    with node:
        node.wait_ready(workers=workers)
        done = session(node, tmp_path, destination)
        check(node, done)
        assert destination.recorder.wait_for(lambda: len(destination.stored) == 1)
        if workers == 2:
            samples = scrape(node.metrics_port or 0)
            assert sum(v for (n, _), v in samples.items() if n == "chromanet_worker_associations_total") == 3
            # The one C-STORE (kept in the index) was committed by the supervisor.
            assert value(samples, "chromanet_shared_commit_stores_total") == 1
            assert value(samples, "chromanet_shared_commit_batches_total") == 1
        else:
            assert "workers on" not in node.output  # no supervisor
            samples = scrape(node.metrics_port or 0)
            assert not any(n.startswith("chromanet_shared_commit") for n, _ in samples)
    assert node.process.returncode == 0


def test_metrics_of_a_dead_worker_stay_counted(tmp_path: Path):
    """Counters of a worker killed with SIGKILL stay in the sums (their
    files stay); its live gauge is dropped."""
    import signal

    node = ServeProcess(tmp_path / "data", ["--workers", "2"], metrics=True)
    with node:
        node.wait_ready(workers=2)
        echo = scu(uids.Verification)
        for _ in range(6):
            assoc = echo.associate("127.0.0.1", node.port, ae_title="CHROMANET")
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
        assert wait_until(lambda: value(scrape(node.metrics_port or 0), "chromanet_operations_total",
                                        operation="C-ECHO", status="0x0000", category="Success") == 6)  # fmt: skip
        pids = node.worker_pids()
        os.kill(pids[1], signal.SIGKILL)
        node.wait_line(r"worker 1 \(pid \d+\) killed by SIGKILL")
        samples = scrape(node.metrics_port or 0)
        assert value(samples, "chromanet_operations_total", operation="C-ECHO", status="0x0000", category="Success") == 6
        assert value(samples, "chromanet_associations_open") == 0


def test_an_interrupted_operation_is_counted_without_status():
    """The observer side alone: a record that ended without a final
    response counts under status "none"."""
    from prometheus_client import generate_latest

    from chromanet import _dimse
    from chromanet.services.observe import OperationRecord

    metrics = NodeMetrics()
    command = _dimse.Command(command_field=_dimse.C_FIND_RQ, message_id=1,
                             affected_sop_class_uid=FIND)  # fmt: skip
    record = OperationRecord(command, bytes_in=10)
    metrics.operation_ended(record)
    text = generate_latest(metrics.registry).decode()
    assert 'chromanet_operations_total{category="none",operation="C-FIND",status="none"} 1.0' in text
    assert 'chromanet_dataset_bytes_received_total{operation="C-FIND"} 10.0' in text


def test_bench_prints_the_server_view(tmp_path: Path):
    """``chromanet bench --server-metrics``: the server's count of the
    run's operations, its latency quantiles and errors next to the tool's."""
    import json
    import subprocess
    import sys

    node = ServeProcess(tmp_path / "data", ["--workers", "2"], metrics=True)
    with node:
        node.wait_ready(workers=2)
        url = f"http://127.0.0.1:{node.metrics_port}/metrics"
        out = tmp_path / "bench.json"
        bench = subprocess.run(
            [sys.executable, "-m", "chromanet.apps.cli", "bench", "127.0.0.1", str(node.port), "-aec", "CHROMANET",
             "--op", "find", "-c", "3", "-n", "20", "-k", "ContentLabel=HOT*", "--server-metrics", url,
             "--json", str(out)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert bench.returncode == 0, bench.stdout + bench.stderr
    assert "server (" in bench.stdout and "C-FIND   60 (Success 60), 0 error(s)" in bench.stdout
    server = json.loads(out.read_text())["server"]
    assert server["operations"]["C-FIND"]["count"] == 60
    assert server["associations"]["accepted"] == 3
    assert 0 < server["operations"]["C-FIND"]["latency_ms"]["p50"] <= server["operations"]["C-FIND"]["latency_ms"]["p99"]


def test_histogram_quantile_interpolates_within_a_bucket():
    from chromanet.apps.server_view import histogram_quantile

    buckets = [(0.001, 0.0), (0.002, 50.0), (0.004, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.002)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.0015)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.003)
    assert histogram_quantile(0.5, [(float("inf"), 0.0)]) is None
