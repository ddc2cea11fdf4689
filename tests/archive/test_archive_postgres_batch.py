"""Group commit on the PostgreSQL archive (``PgArchive.commit_batch``):
a batch is one transaction; a store refused in it (another owner's palette,
a well-known palette, PS3.7 C 0x0124) is refused alone while the others
commit; a statement that fails (a value PostgreSQL cannot hold) fails its
store alone (0xA700, PS3.4 B.2.3): the batch is then committed one store
per transaction; two stores of one UID in a batch apply in order; the
spooled files of the stored ones are removed, the others' left."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from chromanet.archive import IngestResult
from chromanet.archive.postgres import PgArchive
from helpers.data import hot_iron_copy, write_part10

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

HOT_IRON = "1.2.840.10008.1.5.1"


def run(body: Any) -> Any:
    return asyncio.run(asyncio.wait_for(body(), 120))


def spool(directory: Path, uid: str, label: str) -> Path:
    directory.mkdir(exist_ok=True)
    return write_part10(hot_iron_copy(uid, label), directory / f".incoming-{generate_uid()[-12:]}.dcm")


def prepared(archive: PgArchive, path: Path, **rights: Any) -> Any:
    result = archive.prepare_file(path, **rights)
    assert not isinstance(result, IngestResult), result
    return result


def test_one_refused_or_failing_store_fails_alone(pg_url: str, tmp_path: Path) -> None:
    async def body() -> None:
        archive = await PgArchive.open(pg_url)
        try:
            theirs = generate_uid()
            assert (await archive.ingest_file(spool(tmp_path, theirs, "THEIRS"), owner="OTHER")).ok
            good = [generate_uid() for _ in range(3)]
            paths = [spool(tmp_path, good[0], "A"), spool(tmp_path, theirs, "MINE"), spool(tmp_path, good[1], "B"),
                     spool(tmp_path, HOT_IRON, "HOT"), spool(tmp_path, good[2], "C")]  # fmt: skip
            batch = [prepared(archive, p, owner="ME") for p in paths]
            results = await archive.commit_batch(batch)
            assert [r.status for r in results] == [0x0000, 0x0124, 0x0000, 0x0124, 0x0000]
            assert "well-known" in results[3].comment
            assert [p.exists() for p in paths] == [False, True, False, True, False]
            assert all([await archive.get(uid) is not None for uid in good])
            assert (await archive.get(theirs)).owner == "OTHER"

            # A value PostgreSQL cannot hold aborts the batch's transaction:
            # the stores are then committed one by one, that one failing.
            more = [generate_uid() for _ in range(3)]
            paths = [spool(tmp_path, uid, "D") for uid in more]
            batch = [prepared(archive, p) for p in paths]
            batch[1] = dataclasses.replace(batch[1], fields=dict(batch[1].fields, content_label="NUL\x00HERE"))
            results = await archive.commit_batch(batch)
            assert [r.status for r in results] == [0x0000, 0xA700, 0x0000]
            assert await archive.get(more[1]) is None and paths[1].exists()
            assert await archive.count() == 8 + 1 + 3 + 2
        finally:
            await archive.close()

    run(body)


def test_two_stores_of_one_uid_apply_in_order(pg_url: str, tmp_path: Path) -> None:
    async def body() -> None:
        archive = await PgArchive.open(pg_url)
        try:
            uid = generate_uid()
            batch = [prepared(archive, spool(tmp_path, uid, "FIRST")), prepared(archive, spool(tmp_path, uid, "SECOND"))]
            first, second = await archive.commit_batch(batch)
            assert (first.status, first.comment, second.status, second.comment) == (0, "", 0, "replaced")
            data = await archive.read(uid)
            assert b"SECOND" in data and b"FIRST" not in data
        finally:
            await archive.close()

    run(body)
