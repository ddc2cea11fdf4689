"""``chromanet serve --workers N`` under load, and the cost of --metrics-port.

Side by side in one run, against a node started here (loopback, its own
temporary data directory):

- ``W7 x4``: associate + C-ECHO + release, over and over, from 4 client
  processes (``chromanet bench --op echo -n 1 --processes 4 --duration S``),
  against 1 and 2 workers: associations/s.
- ``1000 assoc``: 1,000 associations at once (4 client processes x 250),
  each doing one C-FIND (one match) and one C-GET (one palette) and a
  release; latency of each association from its A-ASSOCIATE-RQ to the
  end of its release, p50/p99, against 1 and 2 workers.
- ``metrics``: one-match C-FIND rate with and without ``--metrics-port``
  (one process, 4 associations x N C-FINDs), runs alternating so that the
  machine's drift falls on both.

    python benches/workers.py [--duration 5] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PY = sys.executable
HOT_IRON = "1.2.840.10008.1.5.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Node:
    def __init__(self, workers: int, metrics: bool = False) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="cn-bench-workers-")
        self.port = free_port()
        args = [PY, "-m", "chromanet.apps.cli", "serve", "--data-dir", self.dir.name, "--port", str(self.port),
                "--bind", "127.0.0.1", "--workers", str(workers), "--log-level", "WARNING",
                "--max-associations", "4000", "--max-associations-per-host", "4000"]  # fmt: skip
        if metrics:
            args += ["--metrics-port", str(free_port())]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not self._echo_ok():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the node did not start")
            time.sleep(0.2)

    def _echo_ok(self) -> bool:
        done = subprocess.run([PY, "-m", "chromanet.apps.cli", "echo", "127.0.0.1", str(self.port), "--timeout", "2"],
                              capture_output=True)  # fmt: skip
        return done.returncode == 0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.dir.cleanup()


def bench(port: int, *extra: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([PY, "-m", "chromanet.apps.cli", "bench", "127.0.0.1", str(port), "-aec", "CHROMANET",
                        "-q", "--json", out.name, *extra], check=False, timeout=600)  # fmt: skip
        return json.loads(Path(out.name).read_text())


def w7(workers: int, duration: float) -> float:
    node = Node(workers)
    try:
        s = bench(node.port, "--op", "echo", "-n", "1", "--processes", "4", "--duration", str(duration))
        return s["associations"]["opened"] / s["elapsed_s"]
    finally:
        node.stop()


# ---------------------------------------------------- 1000 associations
def _many(port: int, count: int, start_at: float, queue: Any) -> None:
    from pydicom import Dataset

    from chromanet import evt, uids
    from chromanet.ae import AE
    from chromanet.loopthread import new_event_loop

    ae = AE("BENCH")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 120
    ae.add_requested_context(uids.ColorPaletteInformationModelFind)
    ae.add_requested_context(uids.ColorPaletteInformationModelGet)

    async def one() -> tuple[float, bool]:
        t0 = time.perf_counter()
        assoc = await ae.associate_async("127.0.0.1", port, ae_title="CHROMANET",
                                         evt_handlers=[(evt.EVT_C_STORE, lambda e: 0)])  # fmt: skip
        if not assoc.is_established:
            return time.perf_counter() - t0, False
        query = Dataset()
        query.SOPInstanceUID = HOT_IRON
        query.ContentLabel = ""
        ok = True
        async for status, _ in assoc.send_c_find(query, uids.ColorPaletteInformationModelFind):
            final = status.Status
        ok &= final == 0
        retrieve = Dataset()
        retrieve.SOPInstanceUID = HOT_IRON
        async for status, _ in assoc.send_c_get(retrieve, uids.ColorPaletteInformationModelGet):
            final = status.Status
        ok &= final == 0
        await assoc.release()
        return time.perf_counter() - t0, ok

    async def main() -> list[tuple[float, bool]]:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        return await asyncio.gather(*(one() for _ in range(count)))

    loop = new_event_loop()
    try:
        queue.put(loop.run_until_complete(main()))
    except Exception as exc:  # reported, not hidden
        queue.put(repr(exc))
    finally:
        loop.close()


def thousand(workers: int, processes: int = 4, each: int = 250) -> dict[str, Any]:
    node = Node(workers)
    try:
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        start_at = time.time() + 3.0  # every client process ready, then all at once
        procs = [ctx.Process(target=_many, args=(node.port, each, start_at, queue)) for _ in range(processes)]
        for p in procs:
            p.start()
        results: list[tuple[float, bool]] = []
        for _ in procs:
            got = queue.get(timeout=600)
            if isinstance(got, str):
                raise RuntimeError(got)
            results += got
        for p in procs:
            p.join()
        times = sorted(t for t, _ in results)
        failed = sum(1 for _, ok in results if not ok)
        return {"workers": workers, "associations": len(results), "failed": failed,
                "p50_ms": 1000 * times[len(times) // 2], "p99_ms": 1000 * times[int(len(times) * 0.99) - 1],
                "max_ms": 1000 * times[-1]}  # fmt: skip
    finally:
        node.stop()


def metrics_cost(rounds: int, count: int) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for key in ("off", "on"):
            node = Node(1, metrics=key == "on")
            try:
                s = bench(node.port, "--op", "find", "-c", "4", "-n", str(count), "-k", f"SOPInstanceUID={HOT_IRON}")
                assert s["errors"] == 0 and s["items"] == s["ok"], s
                rates[key].append(s["throughput_ops_s"])
            finally:
                node.stop()
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    return {"runs": rates, "median_off": off, "median_on": on, "cost_pct": 100 * (off - on) / off}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="W7: seconds per run")
    p.add_argument("--rounds", type=int, default=3, help="metrics: alternating runs of each")
    p.add_argument("--find-n", type=int, default=2500, help="metrics: C-FINDs per association (x4)")
    p.add_argument("--only", choices=["w7", "thousand", "metrics"], action="append")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    only = set(args.only or ["w7", "thousand", "metrics"])
    out: dict[str, Any] = {"cpus": os.cpu_count()}
    if "w7" in only:
        out["w7_assoc_s"] = {n: w7(n, args.duration) for n in (1, 2)}
        print("W7 x4 clients, assoc/s:", {k: round(v) for k, v in out["w7_assoc_s"].items()}, flush=True)
    if "thousand" in only:
        out["thousand"] = [thousand(n) for n in (1, 2)]
        for row in out["thousand"]:
            print("1000 assoc find+get:", {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()},
                  flush=True)  # fmt: skip
    if "metrics" in only:
        out["metrics"] = metrics_cost(args.rounds, args.find_n)
        m = out["metrics"]
        print(f"one-match C-FIND/s: off {m['runs']['off']} on {m['runs']['on']}; median off {m['median_off']:.0f}, "
              f"on {m['median_on']:.0f}: {m['cost_pct']:.1f} % slower with metrics", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
