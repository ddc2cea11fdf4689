"""Before/after benchmark of two builds of chromanet, side by side in one run.

    python benches/compare_builds.py --baseline /work/before --candidate . [--rounds 3] [--json out.json]
    python benches/compare_builds.py --baseline ../before --candidate . --quick   # smoke run, 1-2 min

Why: a refactor has to show "hot path not slower". Numbers from two separate
runs differ by the machine's load (±30 % on a shared box), so this script
measures both builds in the same run:

1. P-DATA codec micro-benchmarks: each tree's own ``benches/bench_pdata.py``
   under pytest-benchmark (``--benchmark-json``), baseline, candidate,
   baseline... for ``--rounds`` rounds; the median over the rounds of
   pytest-benchmark's medians. Tests are matched by name (names found in
   only one tree are listed). The pynetdicom tests run the same pynetdicom in both trees: their ratio is
   a control that shows the noise.
2. End-to-end W1 (N C-ECHOs on one association) and W3 (N one-match
   C-FINDs), chromanet client -> chromanet SCP only, through each tree's own
   ``benches/e2e.py`` (its CLI flags and JSON output), interleaved
   baseline, candidate, baseline, candidate... for ``--rounds`` rounds so that
   drift of the machine's load hits both alike. Medians are taken over all
   timed runs of all rounds (``--rounds`` x ``--repeats`` per build).

Each tree is run with its own ``.venv/bin/python`` (that tree's chromanet,
installed editable by ``scripts/bootstrap``) and its own bench files, as
subprocesses: nothing of either tree is imported here, so module moves inside
the package (e.g. ``chromanet.node`` -> ``chromanet.apps.node``) do not matter.
Every subprocess has a timeout. Output: a markdown table on stdout (ready to
paste), and with ``--json FILE`` every figure, the trees' commits and the
load average.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SIDES = ("baseline", "candidate")
E2E_WORKLOADS = {"w1-echo": "W1 C-ECHO x N, 1 assoc", "w3-find1": "W3 N one-match C-FINDs, 1 assoc"}
# e2e.py size flags: W1 echoes, W3 finds, and the size of the data set W3 queries (--retrieve-n).
SIZES = {"default": {"--echo-n": 2000, "--find1-n": 2000, "--retrieve-n": 1000},
         "quick": {"--echo-n": 200, "--find1-n": 100, "--retrieve-n": 50}}


def say(msg: str) -> None:
    print(f"compare: {msg}", file=sys.stderr, flush=True)


def child_env() -> dict[str, str]:
    """The environment for a tree's processes: no PYTHONPATH/PYTHONHOME that
    could put the other tree (or this one) on its path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def run(argv: list[str], cwd: Path, timeout: float, log: Path) -> int:
    """Run argv in cwd, output to log; on timeout SIGTERM (e2e.py then stops its
    peers), then SIGKILL, and raise TimeoutError."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env())
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise TimeoutError(f"{' '.join(argv[:3])} ... timed out after {timeout:.0f} s; see {log}") from None


def check_tree(tree: Path) -> dict[str, Any]:
    """The tree's python, the chromanet it imports (must be the tree's own) and its commit."""
    py = tree / ".venv" / "bin" / "python"
    if not os.access(py, os.X_OK):
        raise SystemExit(f"{py} missing: run scripts/bootstrap in {tree}")
    probe = subprocess.run([str(py), "-c", "import chromanet, sys; print(chromanet.__file__); print(sys.version.split()[0])"],
                           cwd=tree, capture_output=True, text=True, timeout=60, env=child_env())
    if probe.returncode != 0:
        raise SystemExit(f"{py} cannot import chromanet:\n{probe.stderr}")
    module, version = probe.stdout.split()
    if not Path(module).resolve().is_relative_to(tree):
        raise SystemExit(f"{py} imports chromanet from {module}, not from {tree}: reinstall it (scripts/bootstrap)")

    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *a], capture_output=True, text=True, timeout=30).stdout.strip()

    return {"tree": str(tree), "python": str(py), "python_version": version, "chromanet": module,
            "commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain", "-uno"))}


def run_pdata(tree: Path, work: Path, rnd: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """The tree's bench_pdata.py under pytest-benchmark: {test name: stats (seconds)}."""
    out = work / f"round{rnd}" / "pdata.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # never read a previous run's figures (--work-dir)
    argv = [str(tree / ".venv/bin/python"), "-m", "pytest", "benches/bench_pdata.py", "--benchmark-only",
            f"--benchmark-json={out}", "-q", "-p", "no:cacheprovider"]
    if args.quick:
        argv.append("--benchmark-max-time=0.2")
    rc = run(argv, tree, args.timeout, work / "pdata.log")
    if rc != 0 or not out.exists():
        raise RuntimeError(f"bench_pdata.py in {tree} failed (exit {rc}); see {work / 'pdata.log'}")
    return {b["name"]: {k: b["stats"][k] for k in ("median", "min", "max", "rounds")}
            for b in json.loads(out.read_text())["benchmarks"]}


def run_e2e(tree: Path, work: Path, rnd: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One e2e.py run of W1 and W3 (chromanet pairings only) in the tree: its JSON rows."""
    out = work / f"round{rnd}" / "e2e.json"  # e2e.py puts its peers' logs next to it (e2e-logs/)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # never read a previous run's figures (--work-dir)
    argv = [str(tree / ".venv/bin/python"), "benches/e2e.py", "--workloads", ",".join(E2E_WORKLOADS),
            "--only", args.pairings, "--no-dcmtk", "--no-default-baseline", "--repeats", str(args.repeats),
            "--data-dir", str(work / "data"), "--out", str(out), "--chart", str(out.with_suffix(".png"))]
    for flag, n in SIZES["quick" if args.quick else "default"].items():
        argv += [flag, str(n)]
    rc = run(argv, tree, args.timeout, work / "e2e.log")
    if not out.exists():
        raise RuntimeError(f"e2e.py in {tree} wrote no JSON (exit {rc}); see {work / 'e2e.log'}")
    return json.loads(out.read_text())["results"]


def describe(values: list[float], unit: str) -> str:
    """"median unit (min-max)" of values (seconds when unit is "s": shown in ms or µs)."""
    if not values:
        return "-"
    if unit == "s":
        scale, unit = (1e3, "ms") if statistics.median(values) >= 1e-3 else (1e6, "µs")
        values = [v * scale for v in values]
    med = statistics.median(values)
    num = lambda x: f"{x:,.{0 if med >= 100 else 1 if med >= 10 else 2}f}"  # noqa: E731
    return f"{num(med)} {unit}" + (f" ({num(min(values))}–{num(max(values))})" if len(values) > 1 else "")


def ratio_cells(time_ratio: float | None) -> list[str]:
    """[candidate/baseline time, speed]; speed > 1 means the candidate is faster."""
    if not time_ratio:
        return ["-", "-"]
    speed = 1 / time_ratio
    word = "faster" if speed > 1 else "slower"
    return [f"{time_ratio:.3f}", f"{speed:.3f}x ({abs(speed - 1) * 100:.1f} % {word})"]


def markdown(rows: list[list[str]], head: list[str]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def measure(args: argparse.Namespace, trees: dict[str, Path], work: dict[str, Path], table: list[list[str]],
            result: dict[str, Any]) -> bool:
    """Run the benchmarks; fill table (markdown rows) and result (JSON); True when a cell failed."""
    failed = False
    if not args.skip_pdata:
        pdata: dict[str, list[dict[str, dict[str, float]]]] = {side: [] for side in SIDES}  # per round
        for rnd in range(1, args.rounds + 1):
            for side in SIDES:
                say(f"bench_pdata.py round {rnd}/{args.rounds}, {side}")
                pdata[side].append(run_pdata(trees[side], work[side], rnd, args))
        names = list(dict.fromkeys(name for side in SIDES for got in pdata[side] for name in got))
        for name in names:
            per_round = {s: [got[name] for got in pdata[s] if name in got] for s in SIDES}
            medians = {s: [x["median"] for x in per_round[s]] for s in SIDES}
            b, c = (statistics.median(medians[s]) if medians[s] else None for s in SIDES)
            tr = c / b if b and c else None
            only = "" if b and c else f" (only in {'baseline' if b else 'candidate'})"
            control = " (control: same pynetdicom)" if name.endswith("pynetdicom") else ""
            table.append([f"pdata `{name}`{control}{only}", describe(medians["baseline"], "s"),
                          describe(medians["candidate"], "s"), *ratio_cells(tr)])
            result["pdata"].append({"name": name, "baseline": per_round["baseline"], "candidate": per_round["candidate"],
                                    "median_baseline": b, "median_candidate": c, "time_ratio": tr,
                                    "speed": 1 / tr if tr else None})

    if not args.skip_e2e:
        runs: dict[tuple[str, str], dict[str, Any]] = {}  # (workload, pairing) -> per side: rates per round
        for rnd in range(1, args.rounds + 1):
            for side in SIDES:
                say(f"e2e W1+W3 round {rnd}/{args.rounds}, {side}")
                for row in run_e2e(trees[side], work[side], rnd, args):
                    cell = runs.setdefault((row["workload"], row["pairing"]),
                                           {"unit": row["unit"], "n": row["size"], "baseline": [], "candidate": []})
                    cell[side].append({"rates": row["rates"], "median": row["median"], "failure": row["failure"],
                                       "dimse_errors": row["dimse_errors"], "incidents": row["incidents"]})
                    if row["failure"] or row["dimse_errors"]:
                        failed = True
                        say(f"  {row['workload']} {row['pairing']}: {row['failure'] or ''} "
                            f"{row['dimse_errors']} DIMSE errors (see {work[side]}/round{rnd}/e2e-logs)")
        for (workload, pairing), cell in runs.items():
            rates = {s: [r for x in cell[s] for r in x["rates"]] for s in SIDES}
            med = {s: statistics.median(rates[s]) if rates[s] else None for s in SIDES}
            tr = med["baseline"] / med["candidate"] if med["baseline"] and med["candidate"] else None
            unit = cell["unit"]
            table.append([f"{E2E_WORKLOADS.get(workload, workload)} (n={cell['n']}), `{pairing}`",
                          describe(rates["baseline"], unit), describe(rates["candidate"], unit), *ratio_cells(tr)])
            result["e2e"].append({"workload": workload, "pairing": pairing, **cell,
                                  "median_baseline": med["baseline"], "median_candidate": med["candidate"],
                                  "time_ratio": tr, "speed": 1 / tr if tr else None})

    return failed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, required=True, help="source tree before (with .venv built)")
    p.add_argument("--candidate", type=Path, required=True, help="source tree after (with .venv built)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per build, pdata and e2e (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="timed e2e runs per cell and round (e2e.py --repeats, default 3)")
    p.add_argument("--pairings", default="cn-async,cn-blocking",
                   help="e2e.py --only: chromanet pairings to run (default cn-async,cn-blocking)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: W1 200 echoes, W3 100 finds on a 50-palette set, short pytest-benchmark rounds")
    p.add_argument("--skip-pdata", action="store_true", help="end-to-end workloads only")
    p.add_argument("--skip-e2e", action="store_true", help="bench_pdata.py only")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed for any one benchmark process (default 900)")
    p.add_argument("--work-dir", type=Path,
                   help="keep logs, e2e JSON and the Q/R data sets here (reused next time); default: a temporary "
                        "directory, removed unless something failed")
    p.add_argument("--json", type=Path, help="write every figure here")
    args = p.parse_args()
    if args.rounds < 1 or args.repeats < 1:
        p.error("--rounds and --repeats must be at least 1")
    trees = {"baseline": args.baseline.resolve(), "candidate": args.candidate.resolve()}
    meta = {side: check_tree(tree) for side, tree in trees.items()}
    root = args.work_dir.resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="chromanet-compare-"))
    work = {side: root / side for side in SIDES}
    for d in work.values():
        d.mkdir(parents=True, exist_ok=True)
    meta["loadavg_start"] = os.getloadavg()
    for side in SIDES:
        m = meta[side]
        say(f"{side:9} {m['tree']} @ {m['commit']}{' (dirty)' if m['dirty'] else ''}, python {m['python_version']}")
    table: list[list[str]] = []
    result: dict[str, Any] = {"meta": meta, "args": {k: str(v) for k, v in vars(args).items()}, "pdata": [], "e2e": []}

    try:
        failed = measure(args, trees, work, table, result)
    except (RuntimeError, TimeoutError) as exc:
        say(f"FAILED: {exc}\ncompare: logs kept in {root}")
        return 2

    meta["loadavg_end"] = os.getloadavg()
    tag = {s: f"`{meta[s]['commit']}`" + (" + uncommitted changes" if meta[s]["dirty"] else "") for s in SIDES}
    print(f"**Hot path, before vs after** (baseline {tag['baseline']}, candidate {tag['candidate']}; "
          f"same machine, same run; load average "
          f"{meta['loadavg_start'][0]:.1f} -> {meta['loadavg_end'][0]:.1f} on {os.cpu_count()} CPUs)\n")
    print(markdown(table, ["benchmark", "baseline: median (min–max)", "candidate: median (min–max)", "time cand/base",
                           "speed cand vs base"]))
    print(f"\n{args.rounds} interleaved rounds (baseline, candidate, ...). pdata: pytest-benchmark's median time "
          f"per call, median (min–max) over the rounds; e2e: rate, median (min–max) over all {args.rounds} x "
          f"{args.repeats} runs of a build. speed > 1 = candidate faster; the pynetdicom rows (same code in both) "
          f"show the noise.")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        say(f"JSON: {args.json}")
    if args.work_dir or failed:
        say(f"logs and e2e JSON kept in {root}")
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
