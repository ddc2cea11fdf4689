"""Durable ingest: C-STOREs into ``chromanet serve``, before and after, in one run.

    python benches/ingest.py --baseline /work/base16 [--candidate .] [-n 2000] [--concurrency 1,8,32]
                             [--workers 1] [--window 8] [--rounds 1] [--json out.json]
                             [--variant 'files=--store-inline-max 0']

For each build (``--baseline``, ``--candidate``: source trees with their
own ``.venv``, e.g. ``git worktree add /work/base16 2179f99 && (cd
/work/base16 && ./scripts/bootstrap)``), rounds interleaved (baseline,
candidate, baseline, ...):

- ``node, c assocs``: a fresh node (``chromanet serve --workers W`` of that
  tree, its own data directory on the disk the machine runs from, SQLite
  index) takes N C-STOREs of 4.4 KB palettes from ``c`` concurrent
  associations (1, 8, 32), each store a new SOP Instance UID (``chromanet
  bench --op store --new-uids``, the candidate's load tool for both
  builds): stores/s and latency per store p50/p99 (request to response).
  Every store is acknowledged only once it is durable, in both builds.
- ``--variant LABEL=ARGS``: a third (fourth...) build in the rounds, the
  candidate's node started with extra ``serve`` arguments, e.g. the file
  per instance layout next to the default that keeps small instances in
  the index (``files=--store-inline-max 0``).
- ``node, c assoc x window w`` (``--window w``): the same with each
  association proposing an asynchronous operations window of ``w`` and
  keeping ``w`` stores outstanding (``chromanet bench --window``), as a
  modality or migration tool that pipelines its stores does: more stores
  waiting means larger batches for each pair of syncs.
- ``echo during burst``: while the 8-association burst runs, a second
  client process holds one more association and sends a C-ECHO every
  10 ms: p50/p99/max of its round trip, next to the same probe against
  the idle node (does storing block the node's event loop?).
- ``storescu -> node``: DCMTK ``storescu`` (one association, TCP_NODELAY=1)
  sends N files of new UIDs into each build's node: stores/s.
- ``loadtool -> storescp (files)``: DCMTK ``storescp`` writing the files
  (``-od``, no fsync: not durable), the same load tool at 1 association,
  and 8 with ``--fork`` (a process per association): the reference of a
  C-STORE SCP that only writes.

Data directories are removed at the end of the run, not after each node
(``--clean-each`` does that, as before): removing a node's thousands of
files makes the next node's file creations slow on ext4 without a journal
(``perf``: most of the next node's CPU in ``ext4_new_inode`` ->
``find_inode_bit`` -> ``recently_deleted``, which skips inodes freed in
the last minutes), so each build would pay for the other's clean-up.

Output: a markdown table on stdout (raw figures), ``--json`` with every
figure, the commits and the load average. Benchmarks only: no assertion
on timings (``chromanet bench`` exits non-zero if any store failed; that
is reported).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "tests" / "data" / "storescp-palettes.cfg"
DCMTK_BIN = "/usr/bin"
SIDES = ("baseline", "candidate")


def say(msg: str) -> None:
    print(f"ingest: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(nodelay: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    if nodelay:
        env["TCP_NODELAY"] = "1"  # DCMTK sets TCP_NODELAY only with this
    return env


def wait_port(port: int, process: subprocess.Popen[Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {timeout} s")


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def tree_info(tree: Path) -> dict[str, Any]:
    python = tree / ".venv" / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{tree}: no .venv (run ./scripts/bootstrap there)")
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)  # fmt: skip
    return {"tree": str(tree), "python": str(python), "commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


class Node:
    """``chromanet serve`` of one tree on a fresh data directory."""

    def __init__(self, tree: dict[str, Any], workers: int, work: Path, extra: list[str], clean: bool = False) -> None:
        self.clean = clean
        self.data = Path(tempfile.mkdtemp(prefix="node-", dir=work))
        self.port = free_port()
        self.log = open(self.data.with_suffix(".log"), "wb")
        argv = [tree["python"], "-m", "chromanet.apps.cli", "serve", "--data-dir", str(self.data / "data"),
                "--port", str(self.port), "--bind", "127.0.0.1", "--workers", str(workers),
                "--default-access", "all", "--log-level", "WARNING", "--max-associations-per-host", "64", *extra]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=child_env())
        try:
            wait_port(self.port, self.process)
            time.sleep(0.5 if workers == 1 else 2.0)  # every worker listening
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        stop(self.process)
        self.log.close()
        if self.clean:
            shutil.rmtree(self.data, ignore_errors=True)


def loadtool(candidate: dict[str, Any], port: int, concurrency: int, n: int, out: Path,
             aec: str = "CHROMANET", timeout: float = 600, window: int = 1) -> dict[str, Any]:  # fmt: skip
    """The candidate's ``chromanet bench --op store --new-uids``: its summary.
    ``window`` > 1: each association proposes that asynchronous operations
    window and keeps that many stores outstanding (``--window``)."""
    per = max(1, n // concurrency)
    argv = [candidate["python"], "-m", "chromanet.apps.cli", "bench", "127.0.0.1", str(port), "-aec", aec,
            "--op", "store", "--new-uids", "-c", str(concurrency), "-n", str(per), "-q", "--json", str(out)]  # fmt: skip
    if window > 1:
        argv += ["--window", str(window)]
    done = subprocess.run(argv, env=child_env(), timeout=timeout, capture_output=True, text=True)
    if not out.exists():
        raise RuntimeError(f"bench failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads(out.read_text())
    lat = summary.get("latency_ms") or {}
    return {"stores": summary["ok"], "errors": summary["errors"], "errors_by_status": summary.get("errors_by_status"),
            "rate": summary["throughput_ops_s"], "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"),
            "max_ms": lat.get("max"), "elapsed_s": summary["elapsed_s"]}  # fmt: skip


class EchoProbe:
    """A client process with one association, a C-ECHO every 10 ms until stopped."""

    def __init__(self, candidate: dict[str, Any], port: int, out: Path) -> None:
        self.out = out
        self.process = subprocess.Popen(
            [candidate["python"], __file__, "--echo-probe", str(port), str(out)], env=child_env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not out.with_suffix(".ready").exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("echo probe did not start")
            time.sleep(0.05)

    def finish(self) -> dict[str, Any]:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
        lat = sorted(json.loads(self.out.read_text()))
        if not lat:
            return {"echoes": 0}
        return {"echoes": len(lat), "p50_ms": statistics.median(lat), "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                "max_ms": lat[-1]}  # fmt: skip


def echo_probe_main(port: int, out: Path) -> None:
    """The probe's process: latencies (ms) of C-ECHOs every 10 ms, to ``out`` on SIGTERM."""
    from chromanet import uids
    from chromanet.ae import AE

    async def main() -> None:
        ae = AE("ECHOPROBE")
        ae.add_requested_context(uids.Verification)
        assoc = await ae.associate_async("127.0.0.1", port, ae_title="CHROMANET")
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
        out.with_suffix(".ready").write_text("1")
        latencies: list[float] = []
        while not stopping.is_set():
            t0 = time.perf_counter()
            await assoc.send_c_echo()
            latencies.append((time.perf_counter() - t0) * 1e3)
            try:
                await asyncio.wait_for(stopping.wait(), 0.01)
            except asyncio.TimeoutError:
                pass
        await assoc.release()
        out.write_text(json.dumps(latencies))

    import uvloop

    uvloop.run(main())


def make_files(n: int, directory: Path) -> list[Path]:
    """N Part 10 palettes (Hot Iron) with new SOP Instance UIDs, for storescu."""
    from pydicom import dcmread
    from pydicom.data import get_palette_files
    from pydicom.uid import generate_uid

    directory.mkdir(parents=True, exist_ok=True)
    ds = dcmread(get_palette_files("hotiron.dcm")[0])
    paths = []
    for i in range(n):
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        path = directory / f"p{i:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def storescu(port: int, files: list[Path], timeout: float = 600) -> dict[str, Any]:
    argv = [f"{DCMTK_BIN}/storescu", "-R", "-aec", "CHROMANET", "127.0.0.1", str(port), *map(str, files)]
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=child_env(nodelay=True), timeout=timeout, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    return {"stores": len(files), "exit": done.returncode, "rate": len(files) / elapsed, "elapsed_s": elapsed,
            "errors": int(done.returncode != 0), "stderr": done.stderr[-500:]}  # fmt: skip


def storescp_cell(candidate: dict[str, Any], concurrency: int, n: int, work: Path, clean: bool) -> dict[str, Any]:
    port = free_port()
    out_dir = Path(tempfile.mkdtemp(prefix="storescp-", dir=work))
    fork = ["--fork"] if concurrency > 1 else []
    argv = [f"{DCMTK_BIN}/storescp", *fork, "-xf", str(PROFILE), "Palettes", "-aet", "CHROMANET", "-od", str(out_dir),
            str(port)]  # fmt: skip
    log = open(out_dir.with_suffix(".log"), "wb")
    process = subprocess.Popen(argv, env=child_env(nodelay=True), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, process)
        return loadtool(candidate, port, concurrency, n, work / f"storescp-c{concurrency}.json")
    finally:
        stop(process)
        log.close()
        if clean:
            shutil.rmtree(out_dir, ignore_errors=True)


def measure(args: argparse.Namespace, trees: dict[str, dict[str, Any]], work: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    candidate = trees["candidate"]
    files = make_files(args.n, work / "storescu-files") if args.dcmtk else []
    sides = [(side, trees[side], []) for side in SIDES]
    sides += [(label, candidate, extra) for label, extra in args.variant]
    for rnd in range(1, args.rounds + 1):
        for side, tree, extra in sides:
            for workers in args.workers:
                say(f"round {rnd}: {side}, {workers} worker(s)")
                node = Node(tree, workers, work, extra, args.clean_each)
                try:
                    idle = EchoProbe(candidate, node.port, work / f"echo-idle-{side}-{rnd}-{workers}.json")
                    time.sleep(2.0)
                    rows.append({"cell": "echo, idle node", "side": side, "workers": workers, "round": rnd,
                                 **idle.finish()})  # fmt: skip
                    for c, w in [(c, 1) for c in args.concurrency] + [(c, w) for w in args.window for c in args.concurrency]:
                        probe = None
                        if c == 8 and w == 1:
                            probe = EchoProbe(candidate, node.port, work / f"echo-{side}-{rnd}-{workers}.json")
                        try:
                            cell = loadtool(candidate, node.port, c, args.n,
                                            work / f"node-{side}-{rnd}-{workers}-c{c}-w{w}.json", window=w)  # fmt: skip
                        finally:
                            echo = probe.finish() if probe is not None else None
                        name = f"node, {c} assoc" + (f" x window {w}" if w > 1 else "")
                        rows.append({"cell": name, "side": side, "workers": workers, "round": rnd, **cell})
                        say(f"  {name}: {cell['rate']:.0f}/s p50 {cell['p50_ms']} p99 {cell['p99_ms']} ms, "
                            f"{cell['errors']} errors")  # fmt: skip
                        if echo is not None:
                            rows.append({"cell": "echo during 8-assoc burst", "side": side, "workers": workers,
                                         "round": rnd, **echo})  # fmt: skip
                    if files:
                        cell = storescu(node.port, files)
                        rows.append({"cell": "storescu -> node, 1 assoc", "side": side, "workers": workers,
                                     "round": rnd, **cell})  # fmt: skip
                        say(f"  storescu: {cell['rate']:.0f}/s (exit {cell['exit']})")
                finally:
                    node.close()
        if args.dcmtk:
            for c in (1, 8):
                say(f"round {rnd}: storescp (files), {c} assoc")
                cell = storescp_cell(candidate, c, args.n, work, args.clean_each)
                rows.append({"cell": f"loadtool -> storescp (files), {c} assoc", "side": "dcmtk", "workers": None,
                             "round": rnd, **cell})  # fmt: skip
    return rows


def fmt(x: Any, digits: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| cell | build | workers | round | stores/s | p50 ms | p99 ms | max ms | errors |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["cell"].startswith("echo"):
            lines.append(f"| {r['cell']} ({r.get('echoes', 0)} echoes) | {r['side']} | {r['workers']} | {r['round']} "
                         f"| | {fmt(r.get('p50_ms'), 2)} | {fmt(r.get('p99_ms'), 2)} | {fmt(r.get('max_ms'), 2)} | |")  # fmt: skip
        else:
            lines.append(f"| {r['cell']} ({r['stores']}) | {r['side']} | {r['workers'] or '-'} | {r['round']} "
                         f"| {fmt(r['rate'])} | {fmt(r.get('p50_ms'), 2)} | {fmt(r.get('p99_ms'), 2)} "
                         f"| {fmt(r.get('max_ms'), 2)} | {r['errors']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 4 and sys.argv[1] == "--echo-probe":
        echo_probe_main(int(sys.argv[2]), Path(sys.argv[3]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, required=True, help="source tree before (with .venv built)")
    p.add_argument("--candidate", type=Path, default=REPO, help="source tree after (default: this one)")
    p.add_argument("-n", type=int, default=2000, help="stores per cell (default 2000)")
    p.add_argument("--concurrency", default="1,8,32", help="associations per node cell (default 1,8,32)")
    p.add_argument("--window", default="",
                   help="also run the node cells with each association keeping this many stores outstanding "
                        "(asynchronous operations window, chromanet bench --window), a comma list, e.g. 8")
    p.add_argument("--workers", default="1", help="node worker processes, a comma list (default 1)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=ARGS",
                   help="also the candidate's node started with these extra serve arguments, named LABEL in the "
                        "table, interleaved with the others (e.g. 'files=--store-inline-max 0'); repeatable")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default 1)")
    p.add_argument("--no-dcmtk", dest="dcmtk", action="store_false", help="skip the storescu and storescp rows")
    p.add_argument("--work-dir", type=Path, help="data directories and logs here, on the disk to measure "
                   "(default: a new directory in the system's temporary directory, removed at the end)")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--clean-each", action="store_true", help="remove each node's data directory when it stops "
                   "(default: all at the end; see above)")
    args = p.parse_args(argv)
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    args.workers = [int(x) for x in args.workers.split(",")]
    args.window = [int(x) for x in args.window.split(",") if x.strip() and int(x) > 1]
    variants = []
    for spec in args.variant:
        label, sep, extra = spec.partition("=")
        if not sep or not label.strip():
            p.error(f"--variant {spec!r}: LABEL=ARGS")
        variants.append((f"candidate, {label.strip()}", shlex.split(extra)))
    args.variant = variants
    if args.dcmtk and not Path(f"{DCMTK_BIN}/storescp").exists():
        say("DCMTK not found: no storescu/storescp rows")
        args.dcmtk = False
    trees = {"baseline": tree_info(args.baseline.resolve()), "candidate": tree_info(args.candidate.resolve())}
    for side in SIDES:
        t = trees[side]
        say(f"{side:9} {t['tree']} @ {t['commit']}{' (dirty)' if t['dirty'] else ''}")
    work = args.work_dir.resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    try:
        rows = measure(args, trees, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()
    print(f"**Durable ingest** (baseline `{trees['baseline']['commit']}`, candidate `{trees['candidate']['commit']}`"
          f"{' + uncommitted changes' if trees['candidate']['dirty'] else ''}; {args.n} stores of 4.4 KB per cell, "
          f"new SOP Instance UIDs; load average {load_start[0]:.2f} -> {load_end[0]:.2f} on {os.cpu_count()} CPUs)\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"trees": trees, "args": {k: str(v) for k, v in vars(args).items()},
                                         "loadavg": [load_start, load_end], "rows": rows}, indent=2) + "\n")  # fmt: skip
    return 1 if any(r.get("errors") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
