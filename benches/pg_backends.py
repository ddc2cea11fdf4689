"""The palette node on its two index backends, side by side in one run.

    .venv/bin/python benches/pg_backends.py                 # W3 2000 finds, W4 1000 instances, 5 repeats
    .venv/bin/python benches/pg_backends.py --find1-n 500 --retrieve-n 300 --repeats 3   # quicker

Workloads of ``benches/e2e.py`` on the same data set, chromanet async client
-> chromanet node, over loopback, client and node in separate processes
(``benches/e2e_peers.py``):

- ``W3 find1``: N one-match C-FINDs on one association (finds/s);
- ``W4 get``: one C-GET of N ~4.4 KB palettes (instances/s).

Backends: the embedded SQLite index in the data directory (the default,
``PaletteArchive``), and PostgreSQL (``--index postgresql://...``,
``PgArchive``, palettes as bytea) on a throwaway cluster this script makes
with initdb in a temporary directory (``tests/helpers/postgres.py``: as the
system user ``chromanet-test`` when run as root), reached over its Unix
socket, with the server's default durability (fsync on). The PostgreSQL
database is loaded with the very files of the SQLite archive.

Output: median and min-max over the repeats per cell, and the ratio
PostgreSQL / SQLite. Both nodes run at once and their repeats alternate, so
a drift in the machine's load weighs on both backends alike. Both servers share the machine with the client: on 2
cores, PostgreSQL's backend process competes with the node and the client
for CPU, which the SQLite node does not have to.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))  # helpers.postgres: the throwaway cluster

from e2e import PEERS, Peer, free_port, wait_listening  # noqa: E402
from e2e_peers import part10_files  # noqa: E402
from helpers.postgres import PgCluster, require_postgresql  # noqa: E402


def load_postgresql(url: str, files: list[Path]) -> int:
    """Store every instance of the SQLite archive (its Part 10 ``files``) in the PostgreSQL one."""
    from chromanet.archive.postgres import PgArchive

    async def load() -> int:
        archive = await PgArchive.open(url, seed=True)
        try:
            for path in files:
                result = await archive.ingest_file(path, move=False)
                if not result.ok and result.status != 0x0124:  # the seeded ones are there already
                    raise SystemExit(f"loading {path.name}: 0x{result.status:04X} {result.comment}")
            return await archive.count()
        finally:
            await archive.close()

    return asyncio.run(load())


def start_pair(workload: str, n: int, data_dir: Path, uids: Path, index: str | None, log: Path,
               timeout: float, registry: list[Peer]) -> Peer:
    """A node on one backend and a client of it, warmed up; the client."""
    py = sys.executable
    port = free_port()
    argv = [py, str(PEERS), "scp", "--impl", "chromanet-node", "--port", str(port), "--data-dir", str(data_dir)]
    if index:
        argv += ["--index", index]
    scp = Peer(argv, log, registry)
    wait_listening(scp, port)
    client = Peer([py, str(PEERS), "client", "--impl", "chromanet-async", "--port", str(port),
                   "--workload", workload, "--n", str(n), "--warmup", "20", "--uids", str(uids)], log, registry)
    line = client.readline(timeout)
    if line != "ready":
        raise RuntimeError(f"client said {line!r}")
    return client


def run_cells(workload: str, n: int, dirs: dict[str, Path], uids: Path, indexes: dict[str, str | None],
              repeats: int, log: Path, timeout: float) -> dict[str, list[float]]:
    """Both backends' nodes up at once, their runs alternated (SQLite,
    PostgreSQL, SQLite, ...) so that the load of the machine, which drifts,
    weighs on both alike."""
    registry: list[Peer] = []
    try:
        clients = {b: start_pair(workload, n, dirs[b], uids, indexes[b], log, timeout, registry) for b in indexes}
        rates: dict[str, list[float]] = {b: [] for b in indexes}
        for _ in range(repeats):
            for backend, client in clients.items():
                client.send("go")
                answer = json.loads(client.readline(timeout))
                if "error" in answer or answer["errors"]:
                    raise RuntimeError(f"{workload} on {backend}: {answer}")
                rates[backend].append(answer["n"] / (answer["t1"] - answer["t0"]))
        return rates
    finally:
        for peer in reversed(registry):
            peer.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--find1-n", type=int, default=2000, help="W3: one-match C-FINDs per run")
    p.add_argument("--retrieve-n", type=int, default=1000, help="W4: instances per C-GET")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args()
    bin_dir = require_postgresql_or_exit()
    with tempfile.TemporaryDirectory(prefix="pg-bench-") as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, str(PEERS), "data", "--root", str(root), "--set",
                        f"small:small:{args.retrieve_n}"], check=True, cwd=REPO)  # fmt: skip
        data_dir = root / "cn" / "small"
        uids = root / "uids" / "small.txt"
        cluster = PgCluster.create(bin_dir)
        try:
            cluster.start()
            url = cluster.create_database()
            stored = load_postgresql(url, part10_files(data_dir))
            print(f"data: {args.retrieve_n} palettes (+8 well-known) in SQLite and in PostgreSQL ({stored} rows)")
            log = root / "bench.log"
            rows = []
            # The SQLite node serves the data set's archive; the PostgreSQL
            # node's data directory holds only its spool.
            dirs = {"sqlite": data_dir, "postgresql": root / "pg-node"}
            indexes = {"sqlite": None, "postgresql": url}
            for label, workload, n in (("W3 one-match C-FIND", "find-one", args.find1_n),
                                       ("W4 C-GET of N ~4.4 KB", "get", args.retrieve_n)):
                rates = run_cells(workload, n, dirs, uids, indexes, args.repeats, log, args.timeout)
                medians = {b: statistics.median(r) for b, r in rates.items()}
                for backend, r in rates.items():
                    rows.append((label, n, backend, medians[backend], min(r), max(r)))
                rows.append((label, n, "pg/sqlite", medians["postgresql"] / medians["sqlite"], None, None))
        finally:
            cluster.destroy()
    unit = {"W3": "finds/s", "W4": "inst/s"}
    print(f"{'workload':24} {'n':>5} {'backend':>11} {'median':>10} {'min-max':>19}")
    for label, n, backend, median, lo, hi in rows:
        if lo is None:
            print(f"{label:24} {n:>5} {backend:>11} {median:>9.2f}x")
        else:
            print(f"{label:24} {n:>5} {backend:>11} {median:>10.0f} {lo:>9.0f}-{hi:<9.0f} {unit[label[:2]]}")


def require_postgresql_or_exit() -> Path:
    try:
        return require_postgresql()
    except BaseException as exc:  # pytest's skip/fail outcomes outside pytest
        raise SystemExit(f"PostgreSQL not available: {exc}") from None


if __name__ == "__main__":
    main()
