"""End-to-end association benchmarks: chromanet and pynetdicom, same run.

    python benches/e2e.py            # default sizes, ~2-3 minutes on 2 cores
    python benches/e2e.py --quick    # smoke run, ~30 s
    python benches/e2e.py --help

Every cell is one pairing (client implementation -> SCP implementation) and
one workload. For each cell the harness starts a fresh SCP process (its own
session, on a free port, waited for with a connect probe), starts the
client process(es), triggers the timed run ``--repeats`` times, reads the
SCP's peak RSS (``VmHWM``) and stops everything. Clients and SCPs are
separate processes (``benches/e2e_peers.py``), so no two of them share a GIL.

Workloads:
- ``W1 echo``: N C-ECHO round trips on one association (messages/s).
- ``W7 assoc x1``: M x (associate, C-ECHO, release), one client
  (associations/s).
- ``W7 assoc xP``: the same M associations split over P client processes
  in parallel; total associations / (last end - first start).
- ``store``: the 8 pydicom palettes x K on one association (stores/s).

Pairings (client -> SCP):
- chromanet async (``await ae.associate_async``, uvloop) -> chromanet
- chromanet blocking (``ae.associate``, pynetdicom-style) -> chromanet
- pynetdicom + TCP_NODELAY -> pynetdicom + TCP_NODELAY: the baseline for
  the ratios (see ``e2e_peers.py`` for how TCP_NODELAY is set: an
  ``EVT_CONN_OPEN`` handler, no patching)
- pynetdicom default -> pynetdicom default: as users run it. Its C-STORE
  stalls on Nagle + delayed ACK (~40 ms a store), so this pairing runs at
  sizes scaled by ``--stall-scale`` (the table shows the n used).
- with ``--cross``: chromanet async -> pynetdicom + TCP_NODELAY, and
  pynetdicom + TCP_NODELAY -> chromanet.

Output: a table on stdout (median, min-max over the repeats, ratio of
medians to the pynetdicom baselines, SCP peak RSS), and JSON in
``bench-results/e2e.json``; peers' stderr goes to ``bench-results/e2e-logs/``.
Timings vary with machine load: compare ratios from one run, not absolute
numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS = HERE / "e2e_peers.py"
HOST = "127.0.0.1"


# ------------------------------------------------------------------ processes
class Peer:
    """A child process in its own session (so we can kill its group), with
    a line reader on its stdout that honours a timeout."""

    def __init__(self, argv: list[str], log_path: Path, registry: list["Peer"]) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
            cwd=str(REPO),
        )
        self._buf = b""
        registry.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def readline(self, timeout: float) -> str:
        """The next stdout line; raises TimeoutError or RuntimeError (exit)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from {self.describe()} within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.describe()} exited (code {self.proc.wait()}); see {self.log_path}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def vmhwm_kb(self) -> int | None:
        """Peak resident set size of the process so far (Linux)."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def describe(self) -> str:
        return " ".join(self.argv[2:6]) + f" (pid {self.pid})"

    def stop(self) -> None:
        """Close stdin (peers exit on EOF), then TERM, then KILL the group."""
        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.pid, sig)  # the whole session/group we created
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_listening(peer: Peer, port: int, timeout: float = 30.0) -> None:
    """Connect-probe until the SCP accepts; fail early if it died."""
    deadline = time.monotonic() + timeout
    while True:
        if peer.proc.poll() is not None:
            raise RuntimeError(f"SCP exited (code {peer.proc.returncode}); see {peer.log_path}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"SCP not listening on {HOST}:{port} after {timeout:.0f} s")
            time.sleep(0.02)


# -------------------------------------------------------------------- the grid
@dataclass
class Side:
    impl: str  # peer --impl
    nodelay: bool = False


@dataclass
class Pairing:
    key: str
    label: str
    client: Side
    scp: Side
    scale: float = 1.0  # size multiplier (for the stalling pynetdicom default)


@dataclass
class Workload:
    key: str
    label: str
    peer_workload: str
    unit: str
    size: int
    clients: int = 1
    warmup: int = 0


@dataclass
class Cell:
    workload: Workload
    pairing: Pairing
    size: int
    rates: list[float] = field(default_factory=list)
    errors: int = 0
    scp_vmhwm_kb: int | None = None
    client_maxrss_kb: int | None = None
    failure: str | None = None
    incidents: list[str] = field(default_factory=list)


def pairings(args: argparse.Namespace) -> list[Pairing]:
    out = [
        Pairing("cn-async", "chromanet async -> chromanet", Side("chromanet-async"), Side("chromanet")),
        Pairing("cn-blocking", "chromanet blocking -> chromanet", Side("chromanet-blocking"), Side("chromanet")),
        Pairing("pyn-nodelay", "pynetdicom+NODELAY -> pynetdicom+NODELAY",
                Side("pynetdicom", True), Side("pynetdicom", True)),
    ]
    if not args.no_default_baseline:
        out.append(Pairing("pyn-default", "pynetdicom default -> pynetdicom default",
                           Side("pynetdicom"), Side("pynetdicom"), scale=args.stall_scale))
    if args.cross:
        out += [
            Pairing("cn-async>pyn", "chromanet async -> pynetdicom+NODELAY",
                    Side("chromanet-async"), Side("pynetdicom", True)),
            Pairing("pyn>cn", "pynetdicom+NODELAY -> chromanet", Side("pynetdicom", True), Side("chromanet")),
        ]
    if args.only:
        keys = set(args.only.split(","))
        out = [p for p in out if p.key in keys]
    return out


def workloads(args: argparse.Namespace) -> list[Workload]:
    out = [
        Workload("w1-echo", "W1 C-ECHO x N, 1 assoc", "echo", "msg/s", args.echo_n, warmup=50),
        Workload("w7-assoc", "W7 assoc+echo+release x M", "assoc", "assoc/s", args.assoc_m, warmup=5),
        Workload("w7-assoc-par", f"W7 same, {args.parallel} clients", "assoc", "assoc/s", args.assoc_m,
                 clients=args.parallel, warmup=2),
        Workload("store", "C-STORE 8 palettes x K, 1 assoc", "store", "store/s", args.store_k, warmup=1),
    ]
    if args.workloads:
        keys = set(args.workloads.split(","))
        out = [w for w in out if w.key in keys]
    return out


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_cell(cell: Cell, args: argparse.Namespace, registry: list[Peer], log_dir: Path) -> None:
    w, p = cell.workload, cell.pairing
    py = sys.executable
    log = log_dir / f"{w.key}.{p.key}.log"
    log.write_bytes(b"")
    scp = None
    clients: list[Peer] = []
    try:
        for attempt in range(3):  # a free port can be taken before the SCP binds it
            port = free_port()
            argv = [py, str(PEERS), "scp", "--impl", p.scp.impl, "--port", str(port)]
            if p.scp.nodelay:
                argv.append("--nodelay")
            scp = Peer(argv, log, registry)
            try:
                wait_listening(scp, port)
                break
            except RuntimeError:
                scp.stop()
                if attempt == 2:
                    raise
        assert scp is not None
        sizes = [s for s in split(cell.size, w.clients) if s > 0]
        for size in sizes:
            argv = [py, str(PEERS), "client", "--impl", p.client.impl, "--port", str(port),
                    "--workload", w.peer_workload, "--n", str(size), "--warmup", str(w.warmup)]
            if p.client.nodelay:
                argv.append("--nodelay")
            clients.append(Peer(argv, log, registry))
        for c in clients:  # all set up (imports, warm-up) before any timing
            line = c.readline(args.timeout)
            if line != "ready":
                raise RuntimeError(f"client said {line!r}, expected 'ready'")
        while len(cell.rates) < args.repeats:
            for c in clients:
                c.send("go")
            answers = [json.loads(c.readline(args.timeout)) for c in clients]
            bad = [a["error"] for a in answers if "error" in a]
            if bad:
                # A run that failed (e.g. pynetdicom's requestor aborting on
                # its reply race, see README) is recorded and run again.
                cell.incidents.append(bad[0])
                if len(cell.incidents) > args.retries:
                    raise RuntimeError(f"client error: {bad[0]}")
                continue
            count = sum(a["n"] for a in answers)
            span = max(a["t1"] for a in answers) - min(a["t0"] for a in answers)
            cell.rates.append(count / span)
            cell.errors += sum(a["errors"] for a in answers)
            cell.client_maxrss_kb = max(a["maxrss_kb"] for a in answers)
        cell.scp_vmhwm_kb = scp.vmhwm_kb()
    except (RuntimeError, TimeoutError, OSError, ValueError, KeyError) as exc:
        cell.failure = f"{type(exc).__name__}: {exc}"
    finally:
        for c in clients:
            c.stop()
        if scp is not None:
            scp.stop()


# ------------------------------------------------------------------ reporting
def summary(cell: Cell) -> dict[str, Any]:
    r = cell.rates
    return {
        "workload": cell.workload.key,
        "workload_label": cell.workload.label,
        "pairing": cell.pairing.key,
        "pairing_label": cell.pairing.label,
        "client": cell.pairing.client.__dict__,
        "scp": cell.pairing.scp.__dict__,
        "unit": cell.workload.unit,
        "size": cell.size,
        "ops_per_run": cell.size * 8 if cell.workload.key == "store" else cell.size,
        "clients": cell.workload.clients,
        "rates": r,
        "median": statistics.median(r) if r else None,
        "min": min(r) if r else None,
        "max": max(r) if r else None,
        "dimse_errors": cell.errors,
        "scp_peak_rss_kb": cell.scp_vmhwm_kb,
        "client_peak_rss_kb": cell.client_maxrss_kb,
        "failure": cell.failure,
        "incidents": cell.incidents,
    }


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """median(pairing) / median(baseline) per workload."""
    out: dict[str, dict[str, float]] = {}
    for w in dict.fromkeys(r["workload"] for r in rows):
        by = {r["pairing"]: r["median"] for r in rows if r["workload"] == w}
        for base in ("pyn-nodelay", "pyn-default"):
            if by.get(base):
                for k, v in by.items():
                    if v and k != base:
                        out.setdefault(w, {})[f"{k}/{base}"] = v / by[base]
    return out


def ops_per_run(row: dict[str, Any]) -> int:
    """Operations in one timed run (the store size counts palette rounds)."""
    return row["size"] * 8 if row["workload"] == "store" else row["size"]


def print_table(rows: list[dict[str, Any]], rat: dict[str, dict[str, float]]) -> None:
    head = (f"  {'pairing (client -> SCP)':42} {'n/run':>6} {'median':>9} {'min-max':>17} "
            f"{'x pyn+ND':>9} {'x pyn':>8} {'SCP RSS':>8}")
    print(head)
    print("-" * len(head))
    last = None
    for r in rows:
        if r["workload"] != last:
            if last is not None:
                print()
            print(f"{r['workload_label']} ({r['unit']})")
            last = r["workload"]
        n = ops_per_run(r)
        if r["failure"]:
            print(f"  {r['pairing_label']:42} {n:>6} FAILED: {r['failure']}")
            continue
        rr = rat.get(r["workload"], {})
        x_nd = rr.get(f"{r['pairing']}/pyn-nodelay")
        x_def = rr.get(f"{r['pairing']}/pyn-default")
        rng = f"{fmt_rate(r['min'])}-{fmt_rate(r['max'])}"
        rss = f"{r['scp_peak_rss_kb'] / 1024:.0f} MB" if r["scp_peak_rss_kb"] else "-"
        err = f"  ({r['dimse_errors']} DIMSE errors)" if r["dimse_errors"] else ""
        err += f"  ({len(r['incidents'])} failed run(s) re-run, see JSON)" if r["incidents"] else ""
        print(f"  {r['pairing_label']:42} {n:>6} {fmt_rate(r['median']):>9} {rng:>17} "
              f"{(f'{x_nd:.1f}x' if x_nd else ''):>9} {(f'{x_def:.1f}x' if x_def else ''):>8} {rss:>8}{err}")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("chromanet", "pynetdicom", "pydicom", "uvloop"):
        try:
            from importlib.metadata import version

            out[name] = version(name)
        except Exception:
            out[name] = "?"
    return out


# ----------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--echo-n", type=int, default=2000, help="W1: C-ECHOs per run (default 2000)")
    p.add_argument("--assoc-m", type=int, default=300, help="W7: associations per run (default 300)")
    p.add_argument("--parallel", type=int, default=4, help="W7: client processes for the parallel run (default 4)")
    p.add_argument("--store-k", type=int, default=125, help="store: rounds of the 8 palettes (default 125 = 1000 stores)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per cell (default 3)")
    p.add_argument("--stall-scale", type=float, default=0.05,
                   help="size multiplier for the pynetdicom-default pairing (default 0.05)")
    p.add_argument("--no-default-baseline", action="store_true", help="skip the pynetdicom default pairing")
    p.add_argument("--cross", action="store_true", help="also run the cross pairings (adds 1.5 to 4 min: see README on pynetdicom's reply race)")
    p.add_argument("--only", help="comma-separated pairing keys: cn-async,cn-blocking,pyn-nodelay,pyn-default,"
                                  "cn-async>pyn,pyn>cn")
    p.add_argument("--workloads", help="comma-separated: w1-echo,w7-assoc,w7-assoc-par,store")
    p.add_argument("--retries", type=int, default=2,
                   help="failed runs re-run per cell before the cell fails (default 2)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for any one client answer")
    p.add_argument("--out", type=Path, default=REPO / "bench-results" / "e2e.json")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes (echo 200, assoc 30, store 3)")
    args = p.parse_args(argv)
    if args.quick:
        args.echo_n, args.assoc_m, args.store_k = 200, 30, 3
        args.stall_scale = max(args.stall_scale, 0.2)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def scaled(size: int, scale: float, clients: int) -> int:
    return size if scale >= 1 else max(clients, round(size * scale))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_dir = args.out.parent / "e2e-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    registry: list[Peer] = []

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Explicit, because a shell starting us in the background ignores SIGINT.
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    cells = [Cell(w, p, scaled(w.size, p.scale, w.clients)) for w in workloads(args) for p in pairings(args)]
    meta = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pynetdicom_nodelay": "EVT_CONN_OPEN handler sets TCP_NODELAY on event.assoc.dul.socket.socket "
                              "(requestor and acceptor); verified with getsockopt in the client",
    }
    print(f"e2e: {len(cells)} cells x {args.repeats} repeats; load average {meta['loadavg_start'][0]:.2f} "
          f"on {meta['cpus']} CPUs", flush=True)
    t_start = time.monotonic()
    interrupted = False
    try:
        for i, cell in enumerate(cells, 1):
            t = time.monotonic()
            run_cell(cell, args, registry, log_dir)
            state = cell.failure or "  ".join(fmt_rate(x) for x in cell.rates) + f" {cell.workload.unit}"
            if cell.incidents and not cell.failure:
                state += f"  [{len(cell.incidents)} failed run(s) re-run: {cell.incidents[0][:120]}]"
            n = cell.size * 8 if cell.workload.key == "store" else cell.size
            print(f"  [{i:>2}/{len(cells)}] {cell.workload.key:13} {cell.pairing.label:42} n={n:<5} "
                  f"{state}  ({time.monotonic() - t:.1f} s)", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping peers", file=sys.stderr)
    finally:
        for peer in registry:
            if peer.proc.poll() is None:
                peer.stop()
    rows = [summary(c) for c in cells if c.rates or c.failure]
    rat = ratios(rows)
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    meta["loadavg_end"] = os.getloadavg()
    meta["interrupted"] = interrupted
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows, "ratios": rat}, indent=2) + "\n")
    print()
    print_table(rows, rat)
    print(f"\nmedian of {args.repeats}; 'x pyn+ND' = median / pynetdicom+TCP_NODELAY median, "
          f"'x pyn' = / pynetdicom default; SCP RSS = VmHWM of the SCP process.")
    print(f"{meta['elapsed_s']} s; JSON: {args.out}")
    failed = any(c.failure for c in cells) or any(c.errors for c in cells)
    return 130 if interrupted else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
