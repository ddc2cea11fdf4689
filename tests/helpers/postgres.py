"""A throwaway PostgreSQL cluster for the tests of the PostgreSQL archive.

``PgCluster.create()`` runs ``initdb`` in a new temporary directory, and
``start()`` runs the server on a free port with its Unix socket in that
directory and no TCP listener (``listen_addresses=''``), trusting local
connections: nothing outside the directory can reach it. ``stop()`` stops it
(fast shutdown: open connections are cut, which is how the tests take the
database away from a running node), ``destroy()`` removes everything.

initdb and postgres refuse to run as root: as root (CI) the cluster belongs
to the system user ``chromanet-test``, made with ``useradd`` when missing,
and the binaries run through ``runuser -u``. Debian keeps the binaries in
/usr/lib/postgresql/<version>/bin, off PATH: looked for there too.

Missing binaries skip the tests locally, with the reason, and fail them in
CI (``CI`` set), where ``scripts/bootstrap --peers`` installs Debian's
``postgresql`` package.
"""

from __future__ import annotations

import contextlib

import asyncio
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from chromanet import loopthread

TEST_USER = "chromanet-test"  # the system user of the cluster when the tests run as root
DB_USER = "chromanet"  # the cluster's superuser role
_COMMAND_TIMEOUT = 60.0
_names = itertools.count(1)


def find_bin_dir() -> Path | None:
    """The directory of initdb and pg_ctl, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def require_postgresql() -> Path:
    """The binaries' directory; skip (fail under CI) without them."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI must run the PostgreSQL tests)")
        pytest.skip(reason)
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("asyncpg not installed (scripts/bootstrap installs .[test])")
        pytest.skip("asyncpg not installed")
    return bin_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_test_user() -> None:
    try:
        subprocess.run(["id", "-u", TEST_USER], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
            check=True,
            capture_output=True,
            timeout=_COMMAND_TIMEOUT,
        )


@dataclass
class PgCluster:
    bin_dir: Path
    directory: Path
    port: int
    as_root: bool

    @classmethod
    def create(cls, bin_dir: Path) -> "PgCluster":
        as_root = os.geteuid() == 0
        if as_root:
            _ensure_test_user()
        # Not under pytest's tmp_path: its parents are private to root.
        directory = Path(tempfile.mkdtemp(prefix="chromanet-pg-"))
        if as_root:
            shutil.chown(directory, TEST_USER, TEST_USER)
        cluster = cls(bin_dir, directory, _free_port(), as_root)
        cluster._run(
            "initdb", "-D", str(directory / "data"), "-U", DB_USER, "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        return cluster

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin_dir / tool), *args]
        if self.as_root:
            argv = ["runuser", "-u", TEST_USER, "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, cwd=self.directory)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr or result.stdout}")
        return result

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses='' -c fsync=off -c max_connections=100"
        self._run("pg_ctl", "-D", str(self.directory / "data"), "-l", str(self.directory / "log"),
                  "-o", options, "-w", "-t", "60", "start")  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.directory / "data"), "-m", "fast", "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass  # not running
        shutil.rmtree(self.directory, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{DB_USER}@/{database}?host={self.directory}&port={self.port}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t{os.getpid()}_{next(_names)}"

        async def create() -> None:
            import asyncpg

            conn = await asyncpg.connect(self.url(), timeout=_COMMAND_TIMEOUT)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return self.url(name)


class SyncPgArchive:
    """A ``PgArchive`` behind the synchronous methods of ``PaletteArchive``,
    so that one test body runs against both backends. Its coroutines run on
    chromanet's background loop (``loopthread``), where its pool lives."""

    def __init__(self, url: str, seed: bool = True) -> None:
        from chromanet.archive.postgres import PgArchive

        self.url = url
        self.pg = loopthread.run(PgArchive.open(url, seed=seed), timeout=_COMMAND_TIMEOUT)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.pg, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            return loopthread.run(method(*args, **kwargs), timeout=_COMMAND_TIMEOUT)

        return call

    def __len__(self) -> int:
        return int(loopthread.run(self.pg.count(), timeout=_COMMAND_TIMEOUT))

    def close(self) -> None:
        loopthread.run(self.pg.close(), timeout=_COMMAND_TIMEOUT)

    def __enter__(self) -> "SyncPgArchive":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def running_cluster() -> Iterator[PgCluster]:
    """A new cluster, started; stopped and removed on exit (skipped, or
    failed under CI, without PostgreSQL's binaries)."""
    cluster = PgCluster.create(require_postgresql())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
