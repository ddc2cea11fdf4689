"""What only the PostgreSQL archive has: its versioned schema (created from
scratch, left alone when current, a newer one refused, two nodes migrating
at once), the bytes kept in the database (a retrieve reads back exactly the
Part 10 file stored), and losing the database: operations fail with the
statuses the node answers with (C-FIND 0xC000 "unable to process", C-STORE
0xA700 "out of resources", as for an SQLite index error), the outage is
logged once, and the archive works again by itself once the server is back.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from pydicom import Dataset

from chromanet import loopthread
from chromanet.archive import ArchiveError, ArchiveVersionError
from chromanet.archive.postgres import SCHEMA_VERSION, IndexUnavailableError, PgArchive, is_postgresql_url, redact_url

from helpers.data import hot_iron_copy, palette_paths, write_part10
from helpers.postgres import PgCluster, SyncPgArchive, require_postgresql
from helpers.waits import wait_until

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

NEW_UID = "1.2.826.0.1.3680043.10.1234.99"


def sql(url: str, statement: str) -> object:
    async def run() -> object:
        import asyncpg

        conn = await asyncpg.connect(url, timeout=30)
        try:
            return await conn.fetchval(statement)
        finally:
            await conn.close()

    return loopthread.run(run(), timeout=60)


def test_urls() -> None:
    assert is_postgresql_url("postgresql://u@h:5432/db") and is_postgresql_url("postgres://h/db")
    assert not is_postgresql_url(None) and not is_postgresql_url("") and not is_postgresql_url("sqlite:///x")


def test_schema_created_then_left_alone(pg_url: str) -> None:
    with SyncPgArchive(pg_url) as archive:
        assert len(archive) == 8
    assert sql(pg_url, "SELECT version FROM schema_version") == SCHEMA_VERSION == 1
    assert sql(pg_url, "SELECT count(*) FROM schema_version") == 1
    with SyncPgArchive(pg_url) as archive:  # reopened: nothing migrated, nothing seeded twice
        assert len(archive) == 8
    assert sql(pg_url, "SELECT count(*) FROM schema_version") == 1


def test_newer_schema_refused(pg_url: str) -> None:
    SyncPgArchive(pg_url, seed=False).close()
    sql(pg_url, "UPDATE schema_version SET version = 99")
    with pytest.raises(ArchiveVersionError, match="99"):
        SyncPgArchive(pg_url)


def test_two_nodes_migrate_and_seed_at_once(pg_url: str) -> None:
    async def both() -> list[PgArchive]:
        return list(await asyncio.gather(PgArchive.open(pg_url), PgArchive.open(pg_url)))

    archives = loopthread.run(both(), timeout=60)
    try:
        assert sql(pg_url, "SELECT count(*) FROM instance") == 8
        assert sql(pg_url, "SELECT version FROM schema_version") == SCHEMA_VERSION
    finally:
        for archive in archives:
            loopthread.run(archive.close(), timeout=60)


def test_bytes_round_trip(pg_url: str, tmp_path: Path) -> None:
    source = write_part10(hot_iron_copy(NEW_UID, "BYTES"), tmp_path / "in.dcm")
    original = source.read_bytes()
    with SyncPgArchive(pg_url) as archive:
        assert archive.ingest_file(source, move=False).status == 0x0000
        assert archive.read(NEW_UID) == original
        assert archive.get(NEW_UID).size == len(original)
        assert archive.read("1.2.3.4") is None
        hot_iron = next(p for p in palette_paths() if p.name == "hotiron.dcm")
        assert archive.read("1.2.840.10008.1.5.1") == hot_iron.read_bytes()


def test_outage_fails_then_recovers(private_cluster: PgCluster, caplog: pytest.LogCaptureFixture) -> None:
    url = private_cluster.create_database()
    query = Dataset()
    query.ContentLabel = "*"
    with SyncPgArchive(url) as archive:
        assert archive.find(query).count == 8
        caplog.set_level(logging.INFO, logger="chromanet.archive")
        private_cluster.stop()
        for _ in range(3):
            with pytest.raises(ArchiveError) as info:
                archive.find(query)
            assert info.value.status == 0xC000
        stored = archive.ingest_dataset(hot_iron_copy(NEW_UID, "DURING"))
        assert stored.status == 0xA700 and not stored.ok
        with pytest.raises(ArchiveError):
            archive.locate(_uid_ds("1.2.840.10008.1.5.1"))
        unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(unreachable) == 1, [r.getMessage() for r in caplog.records]

        private_cluster.start()

        def works() -> bool:
            try:
                return archive.find(query).count == 8
            except ArchiveError:
                return False

        assert wait_until(works, timeout=30)
        assert archive.ingest_dataset(hot_iron_copy(NEW_UID, "AFTER")).status == 0x0000
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1


def _uid_ds(uid: str) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = uid
    return ds


def test_passwords_never_shown() -> None:
    assert redact_url("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("postgresql://u@h/db?sslmode=require&password=s3cret") == "postgresql://u@h/db?sslmode=require&password=***"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_unreachable_at_open(tmp_path: Path) -> None:
    url = f"postgresql://u:s3cret@/db?host={tmp_path}&port=5"  # no server there
    with pytest.raises(IndexUnavailableError, match="cannot open the index") as info:
        loopthread.run(PgArchive.open(url), timeout=60)
    assert "s3cret" not in str(info.value)


def test_read_many(pg_url: str) -> None:
    with SyncPgArchive(pg_url) as archive:
        got = archive.read_many(["1.2.840.10008.1.5.1", "1.2.3.4", "1.2.840.10008.1.5.2"])
        assert set(got) == {"1.2.840.10008.1.5.1", "1.2.840.10008.1.5.2"}
        assert got["1.2.840.10008.1.5.1"] == archive.read("1.2.840.10008.1.5.1")


def test_missing_postgresql_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    import helpers.postgres

    monkeypatch.setattr(helpers.postgres, "find_bin_dir", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="initdb"):
        require_postgresql()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run"):
        require_postgresql()
