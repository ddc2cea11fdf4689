"""``chromanet bench`` (chromanet.apps.loadtool) against live SCPs.

The tool runs as a subprocess (``python -m chromanet.apps.cli bench``), as a user
runs it, against: the chromanet palette archive node (``chromanet serve`` in
a subprocess) for echo, find, get, store and move; DCMTK's ``storescp``
(echo, store, with the Color Palette profile in tests/data) and
``dcmqrscp`` (echo, and find on its Patient Root model with ``--query-model``
and ``-k``). Each test reads the ``--json`` summary and checks its counts and
that there were no errors. No timing is asserted.

Its latency record (src/chromanet/apps/latency.py, an HdrHistogram) is checked
on known data against the precision HdrHistogram documents (3 significant
digits: within 0.1 %), and for the exact addition of what worker processes send.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chromanet import evt
from chromanet.apps import cli, latency
from chromanet.apps import loadtool as bench
from chromanet.apps.latency import Latencies
from helpers.data import REPO
from helpers.dcmtk import storescp_palette_options, write_dcmqrscp_config
from helpers.servers import free_port, subprocess_server

pytestmark = [pytest.mark.timeout(120)]

TOOL_TIMEOUT = 90


def run_bench(*args: str, json_path: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    argv = [sys.executable, "-m", "chromanet.apps.cli", "bench", *args, "--json", str(json_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    summary = json.loads(json_path.read_text()) if json_path.exists() else {}
    return done, summary


def detail(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"


def assert_clean(done: subprocess.CompletedProcess[str], summary: dict[str, Any], ops: int, assocs: int) -> None:
    assert done.returncode == 0, detail(done)
    assert summary["errors"] == 0, summary["errors_by_status"]
    assert summary["errors_by_status"] == {}
    assert summary["ok"] == ops
    assert summary["operations"] == ops
    assert summary["associations"] == {**summary["associations"], "opened": assocs, "failed": 0}
    lat = summary["latency_ms"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert "errors by status: none" in done.stdout


# ------------------------------------------------------------ chromanet node
@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``chromanet serve`` on a fresh archive (the 8 well-known palettes),
    AE CHROMANET, open to every peer, with move destination SELF: a storage
    SCP in this process (the node itself would refuse the well-known
    palettes it already has)."""
    from chromanet import AE, uids

    destination = AE("SELF")
    destination.add_supported_context(uids.ColorPaletteStorage)
    destination_port = free_port()
    server = destination.start_server(("127.0.0.1", destination_port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    port = free_port()
    data = tmp_path_factory.mktemp("node")
    args = [sys.executable, "-m", "chromanet.apps.cli", "serve", "--port", str(port), "--bind", "127.0.0.1",
            "--data-dir", str(data), "--log-level", "WARNING", "--move-dest", f"SELF=127.0.0.1:{destination_port}",
            "--default-access", "all"]
    try:
        with subprocess_server(args, port, cwd=REPO):
            yield port
    finally:
        server.shutdown()


def _new_uid_palettes(directory: Path) -> Path:
    from pydicom import dcmread
    from pydicom.data import get_palette_files
    from pydicom.uid import generate_uid

    directory.mkdir()
    for path in sorted(get_palette_files("*.dcm"))[:2]:
        ds = dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ContentLabel = "BENCH_COPY"  # not matched by the other tests' HOT* queries
        ds.save_as(directory / Path(path).name)
    return directory


@pytest.mark.parametrize(
    "op, extra, items_per_op",
    [
        ("echo", [], 0),
        ("find", [], 8),  # every palette: the 8 well-known ones
        ("find", ["-k", "ContentLabel=HOT*"], 2),  # HOT_IRON, HOT_METAL_BLUE
        ("get", [], 8),  # default identifier: the 8 well-known UIDs
        ("get", ["-k", "SOPInstanceUID=1.2.840.10008.1.5.1"], 1),
        ("store", [], 0),  # copies of pydicom's palettes with new UIDs (see below)
        ("move", ["-aem", "SELF"], 8),
    ],
)
def test_against_chromanet_node(node: int, tmp_path: Path, op: str, extra: list[str], items_per_op: int) -> None:
    if op == "store":
        # The well-known palettes themselves are read-only on the node (0x0124).
        extra = ["--file", str(_new_uid_palettes(tmp_path / "palettes"))]
    done, summary = run_bench("127.0.0.1", str(node), "-aec", "CHROMANET", "--op", op, "-c", "3", "-n", "4",
                              *extra, json_path=tmp_path / "s.json")
    assert_clean(done, summary, ops=12, assocs=3)
    assert summary["op"] == op
    assert summary["concurrency"] == 3 and summary["ops_per_association"] == 4 and summary["processes"] == 1
    if op in ("find", "get", "move"):
        assert summary["query_model"] == "palette"
        assert summary["items"] == 12 * items_per_op


def test_store_with_new_uids(node: int, tmp_path: Path) -> None:
    """``--new-uids``: each store a new instance under a new UID of the
    placeholder's length (the same files again and again would be
    replacements, and the well-known palettes are refused, 0x0124): every
    store succeeds. (Files labelled BENCH_COPY: the other tests' HOT*
    queries on this node do not match them.)"""
    palettes = _new_uid_palettes(tmp_path / "palettes")
    done, summary = run_bench("127.0.0.1", str(node), "-aec", "CHROMANET", "--op", "store", "--new-uids",
                              "--file", str(palettes), "-c", "2", "-n", "5", json_path=tmp_path / "s.json")  # fmt: skip
    assert_clean(done, summary, ops=10, assocs=2)
    uid = bench._fresh_uid().decode()
    assert len(uid) == len(bench._UID_PLACEHOLDER) and uid.startswith("2.25.") and uid != bench._fresh_uid().decode()


def test_processes(node: int, tmp_path: Path) -> None:
    done, summary = run_bench("127.0.0.1", str(node), "-aec", "CHROMANET", "--op", "echo", "-c", "2", "-n", "25",
                              "--processes", "2", json_path=tmp_path / "s.json")
    assert_clean(done, summary, ops=100, assocs=4)
    assert summary["processes"] == 2


def test_duration_bound(node: int, tmp_path: Path) -> None:
    done, summary = run_bench("127.0.0.1", str(node), "-aec", "CHROMANET", "--op", "find", "-c", "2", "-n", "5",
                              "-k", "ContentLabel=HOT*", "--duration", "0.5", json_path=tmp_path / "s.json")
    assert done.returncode == 0, detail(done)
    assert summary["errors"] == 0 and summary["ok"] > 0
    assert summary["items"] == 2 * summary["ok"]  # HOT_IRON, HOT_METAL_BLUE
    assert summary["associations"]["opened"] >= 2  # new associations of 5 finds until the time is up
    assert summary["duration_s"] == 0.5


def test_window_keeps_operations_in_flight(tmp_path: Path) -> None:
    """``--window 4`` against an SCP that offers (4, 4): the SCP's async
    C-ECHO handler sees more than one and at most 4 echoes at once (each
    waits, bounded, until 4 are running or some call saw 4)."""
    import asyncio

    from chromanet import AE, uids

    seen = {"running": 0, "most": 0}
    full: list[asyncio.Event] = []

    async def on_echo(event: Any) -> int:
        if not full:
            full.append(asyncio.Event())
        seen["running"] += 1
        seen["most"] = max(seen["most"], seen["running"])
        if seen["running"] >= 4:
            full[0].set()
        try:
            await asyncio.wait_for(full[0].wait(), 10)
        except asyncio.TimeoutError:
            full[0].set()
        finally:
            seen["running"] -= 1
        return 0x0000

    scp = AE("WINDOW")
    scp.async_ops_window = (4, 4)
    scp.add_supported_context(uids.Verification)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_ECHO, on_echo)])
    try:
        done, summary = run_bench("127.0.0.1", str(port), "-aec", "WINDOW", "--op", "echo", "-c", "1", "-n", "20",
                                  "--window", "4", json_path=tmp_path / "s.json")
    finally:
        server.shutdown()
    assert_clean(done, summary, ops=20, assocs=1)
    assert summary["window"] == 4
    assert "up to 4 in flight" in done.stdout
    assert 1 < seen["most"] <= 4


def test_unreachable_counts_errors(tmp_path: Path) -> None:
    done, summary = run_bench("127.0.0.1", str(free_port()), "--op", "echo", "-c", "2", "-n", "3",
                              "--timeout", "5", json_path=tmp_path / "s.json")
    assert done.returncode == 1, detail(done)
    assert summary["ok"] == 0
    assert summary["associations"]["failed"] == 2
    assert summary["errors_by_status"] == {"association failed": 2}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--op", "move"], "--move-dest"),
        (["--op", "get", "--query-model", "patient"], "--storage-class"),
        (["--op", "find", "--query-model", "nonsense"], "--query-model"),
        (["--op", "find", "-k", "NotAKeyword=1"], "bad query key"),
        (["-c", "0"], "at least 1"),
    ],
)
def test_usage_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "127.0.0.1", "1", *args]) == bench.EXIT_USAGE
    assert message in capsys.readouterr().err


# ------------------------------------------------------------ latencies (HdrHistogram)
def recorded(microseconds: Any) -> Latencies:
    latencies = Latencies()
    for value in microseconds:
        latencies.record(value * 1000)  # nanoseconds in, as the worker measures
    return latencies


def assert_within_precision(summary: dict[str, float], expected: dict[str, float]) -> None:
    """HdrHistogram at 3 significant digits: a value is reported within 0.1 %;
    a percentile or the maximum as the top of its bucket, so never below."""
    for key, true in expected.items():
        assert abs(summary[key] - true) <= true * 1e-3, (key, summary[key], true)
        if key.startswith("p") or key == "max":
            assert summary[key] >= true, (key, summary[key], true)


@pytest.mark.parametrize(
    "microseconds, expected_ms",
    [
        # the nearest-rank percentiles of 1..100 ms
        ([v * 1000 for v in range(1, 101)],
         {"min": 1, "p50": 50, "p90": 90, "p99": 99, "p99.9": 100, "max": 100, "mean": 50.5}),
        # 1..100000 µs: more than FOLD_EVERY samples, so the fold runs mid-way too
        (range(1, 100_001),
         {"min": 0.001, "p50": 50, "p90": 90, "p99": 99, "p99.9": 99.9, "max": 100, "mean": 50.0005}),
        ([7000], {"min": 7, "p50": 7, "p99": 7, "max": 7, "mean": 7}),
    ],
)
def test_latency_percentiles(microseconds: Any, expected_ms: dict[str, float]) -> None:
    assert latency.FOLD_EVERY < 100_000
    latencies = recorded(microseconds)
    assert latencies.count == len(microseconds)
    assert_within_precision(latencies.summary_ms(), expected_ms)


def test_latencies_from_processes_add_exactly() -> None:
    """As worker processes send them back (pickled: HdrHistogram's compressed
    encoding, not the samples) and the parent adds them: bucket for bucket the
    same histogram as one that recorded every sample; an empty one changes nothing."""
    samples = [(i * 7919) % 50_000 + 1 for i in range(60_000)]
    parts = [recorded(samples[i::3]) for i in range(3)]
    parts.insert(1, Latencies())
    sent = [pickle.dumps(part) for part in parts]
    assert all(len(blob) < 8 * len(samples) / 3 / 4 for blob in sent)  # far less than the samples
    merged = Latencies()
    for blob in sent:
        merged.add(pickle.loads(blob))
    whole = recorded(samples)
    assert merged.histogram.equals(whole.histogram)
    assert merged.summary_ms() == whole.summary_ms()
    assert merged.summary_ms()["min"] == 0.001


def test_latency_beyond_range_counts_as_the_highest() -> None:
    latencies = recorded([1000, 2 * latency.HIGHEST_US])
    assert latencies.count == latencies.histogram.get_total_count() == 2
    assert latencies.summary_ms()["max"] >= latency.HIGHEST_US / 1000
    assert Latencies().summary_ms() is None


# ------------------------------------------------------------ DCMTK peers
@pytest.fixture
def dcmtk_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TCP_NODELAY", "1")  # DCMTK sets the socket option when this is set


@pytest.mark.peer
@pytest.mark.parametrize("op", ["echo", "store"])
def test_against_dcmtk_storescp(dcmtk: Any, dcmtk_env: None, tmp_path: Path, op: str) -> None:
    port = free_port()
    args = [dcmtk("storescp"), "--ignore", *storescp_palette_options(), str(port)]
    with subprocess_server(args, port):
        done, summary = run_bench("127.0.0.1", str(port), "-aec", "STORESCP", "--op", op, "-c", "2", "-n", "10",
                                  json_path=tmp_path / "s.json")
    assert_clean(done, summary, ops=20, assocs=2)


@pytest.fixture
def dcmqrscp(dcmtk: Any, dcmtk_env: None, tmp_path: Path) -> Any:
    """dcmqrscp (AE QRSCP) with 5 Secondary Capture images of one series."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    area = tmp_path / "qr"
    area.mkdir()
    study, series = generate_uid(), generate_uid()
    files = []
    for i in range(5):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID = "BENCH^TEST", "BENCH1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.StudyID, ds.SeriesNumber = study, series, "1", 1
        ds.InstanceNumber, ds.Modality, ds.ConversionType = i + 1, "OT", "WSD"
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", 8, 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = bytes(64)
        path = area / f"img{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(str(path))
    subprocess.run([dcmtk("dcmqridx"), str(area), *files], check=True, capture_output=True, timeout=TOOL_TIMEOUT)
    port = free_port()
    config = write_dcmqrscp_config(tmp_path / "dcmqrscp.cfg", port, area)
    with subprocess_server([dcmtk("dcmqrscp"), "-c", str(config), str(port)], port):
        yield port, study, series


@pytest.mark.peer
def test_against_dcmqrscp_echo(dcmqrscp: Any, tmp_path: Path) -> None:
    port, _, _ = dcmqrscp
    done, summary = run_bench("127.0.0.1", str(port), "-aec", "QRSCP", "--op", "echo", "-c", "2", "-n", "10",
                              json_path=tmp_path / "s.json")
    assert_clean(done, summary, ops=20, assocs=2)


@pytest.mark.peer
@pytest.mark.parametrize(
    "model, keys, matches",
    [
        ("patient", ["QueryRetrieveLevel=PATIENT", "PatientID=BENCH1"], 1),
        ("patient", ["QueryRetrieveLevel=IMAGE", "PatientID=BENCH1", "StudyInstanceUID={study}",
                     "SeriesInstanceUID={series}", "SOPInstanceUID="], 5),
        ("study", ["QueryRetrieveLevel=SERIES", "StudyInstanceUID={study}", "SeriesInstanceUID="], 1),
        ("1.2.840.10008.5.1.4.1.2.2.1", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID="], 1),
    ],
)
def test_against_dcmqrscp_find(dcmqrscp: Any, tmp_path: Path, model: str, keys: list[str], matches: int) -> None:
    port, study, series = dcmqrscp
    k = [x for key in keys for x in ("-k", key.format(study=study, series=series))]
    done, summary = run_bench("127.0.0.1", str(port), "-aec", "QRSCP", "--op", "find", "--query-model", model,
                              *k, "-c", "2", "-n", "5", json_path=tmp_path / "s.json")
    assert_clean(done, summary, ops=10, assocs=2)
    assert summary["items"] == 10 * matches
    assert summary["sop_class"] in ("1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1")
