"""The palette archive in PostgreSQL, for several nodes on several hosts.

``chromanet serve --index postgresql://user@host:port/db`` keeps the index
*and the palette bytes* in one PostgreSQL database, reached through an
asyncpg pool on the node's event loop (no query blocks the loop; the
embedded SQLite archive of ``store.py`` stays the default). Every node
pointed at the database is the same archive: a commit through one is seen
by the next query through any other.

Why the bytes are in the database (``bytea``), not on a shared directory:
a palette is 4.4 KB to ~400 KB, so one row holds it comfortably; the row and
its bytes are then one transaction, which is the whole of the crash safety
(no temporary files, renames, directory fsyncs or ``recover()`` across a
network file system whose rename and fsync semantics vary), and there is
one source of truth to back up. A C-GET reads the bytes of a few instances
at a time (``read_many``), so a retrieve of many palettes does not hold them all.

Semantics are those of the SQLite archive (``store.py``): the same columns,
the same validation of what is stored (``check_palette_file``), the same
matching rules (``matching.plan_find`` rendered by ``render_postgresql``),
owners, the read-only well-known palettes, last write wins otherwise. The
replace-or-refuse decision is one ``INSERT ... ON CONFLICT DO UPDATE ...
WHERE`` statement: PostgreSQL locks the conflicting row, so two nodes racing
on one SOP Instance UID cannot both win (the loser's ``WHERE`` sees the
winner's owner and updates nothing).

Group commit (``group_commit.py``): ``commit_batch`` runs the upserts of a
batch of stores in one transaction, so one commit (one WAL flush on the
server) makes them all durable; should a statement fail for another reason
than a lost connection, the batch is retried one store per transaction so
that only the store at fault fails.

Schema versions are the row of ``schema_version``; ``SCHEMA_VERSION`` is
the one this code writes, migrations run in one transaction under an
advisory lock (two nodes starting at once do not both migrate), and a newer
database is refused (``ArchiveVersionError``) rather than misread.

Losing the database: an operation that cannot reach it raises
``ArchiveError`` (0xC000, C-FIND / C-GET / C-MOVE) or returns an
IngestResult with 0xA700 (C-STORE, as for an index the SQLite archive cannot
write); the first failure of an outage is logged, the rest are not, and the
first success after it says the index is back. The pool reconnects by
itself: nothing is restarted.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator
from contextlib import asynccontextmanager

from pydicom import Dataset

from chromanet import dsutil, uids
from chromanet.archive import matching as m
from chromanet.archive.index import ArchiveVersionError
from chromanet.archive.response import FindResult
from chromanet.errors import ChromanetError
from chromanet.archive.store import LocateResult
from chromanet.archive.validation import (
    NOT_AUTHORISED,
    OUT_OF_RESOURCES,
    SUCCESS,
    UNABLE_TO_PROCESS,
    WARNING_DATASET_DOES_NOT_MATCH,
    IngestResult,
    check_palette_data,
    check_palette_dataset,
    check_palette_file,
)

__all__ = ["PgArchive", "PgInstance", "PgPreparedStore", "IndexUnavailableError", "SCHEMA_VERSION", "is_postgresql_url", "redact_url"]

LOGGER = logging.getLogger("chromanet.archive")

SCHEMA_VERSION = 1

# pg_advisory_xact_lock key of the migrations ("chromanet" in ASCII, truncated).
_MIGRATION_LOCK = 0x6368726F6D61

# Text columns compare and sort byte by byte (COLLATE "C"), as SQLite does:
# exact, case-sensitive matching and the same order of responses.
_SCHEMA_V1 = [
    "CREATE TABLE schema_version (version integer NOT NULL)",
    "INSERT INTO schema_version VALUES (0)",
    """
    CREATE TABLE instance (
        sop_instance_uid       text COLLATE "C" PRIMARY KEY,
        sop_class_uid          text COLLATE "C" NOT NULL,
        transfer_syntax        text NOT NULL,
        size                   integer NOT NULL,
        content_label          text COLLATE "C" NOT NULL,
        content_description    text,            -- NULL: absent from the instance
        content_creator_name   text,
        alternate_descriptions text,            -- JSON list of items (DICOM JSON), NULL: absent
        specific_character_set text,            -- values joined by backslash, NULL: absent
        ascii_only             boolean NOT NULL, -- every returnable text is ASCII
        owner                  text,            -- who stored it; NULL: the well-known palettes
        stored_at              timestamptz NOT NULL DEFAULT now(),
        data                   bytea NOT NULL   -- the Part 10 file, as received
    )
    """,
    "CREATE INDEX instance_content_label ON instance (content_label)",
]

_COLUMNS = (
    "sop_instance_uid", "sop_class_uid", "transfer_syntax", "size", "content_label", "content_description",
    "content_creator_name", "alternate_descriptions", "specific_character_set", "ascii_only", "owner", "data",
)  # fmt: skip

# $13: the UID is a well-known palette (never replaced); $14: the storer may
# replace what others stored. No row returned: refused. xmax is 0 on a row
# this statement inserted and the locking transaction's id on one it updated.
_UPSERT = f"""
INSERT INTO instance ({", ".join(_COLUMNS)})
VALUES ({", ".join(f"${n}" for n in range(1, len(_COLUMNS) + 1))})
ON CONFLICT (sop_instance_uid) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:-2])}, data = excluded.data, stored_at = now(),
    owner = coalesce(instance.owner, excluded.owner)
WHERE NOT $13::boolean
    AND ($14::boolean OR instance.owner IS NULL OR excluded.owner IS NULL OR instance.owner = excluded.owner)
RETURNING xmax::text <> '0' AS replaced
"""


def is_postgresql_url(url: str | None) -> bool:
    """Whether ``url`` names a PostgreSQL index (``postgresql://`` or ``postgres://``)."""
    return bool(url) and str(url).split("://", 1)[0] in ("postgresql", "postgres")


class IndexUnavailableError(ChromanetError):
    """The database could not be reached when the archive was opened."""


@dataclass(frozen=True, slots=True)
class PgInstance:
    """One stored instance without its bytes (``read`` fetches them)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    size: int
    owner: str | None = None


def _connection_lost(exc: BaseException) -> bool:
    import asyncpg

    return isinstance(
        exc,
        (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
         asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError),
    )  # fmt: skip


class PgArchive:
    """Color Palette instances in PostgreSQL; every method is a coroutine.

    Open with ``await PgArchive.open(url)``; ``close()`` closes the pool.
    """

    #: The node's handlers await this archive's methods.
    is_async = True

    def __init__(self, pool: Any, url: str) -> None:
        self._pool = pool
        self.url = url
        self._outage = False

    @classmethod
    async def open(
        cls, url: str, seed: bool = True, *, min_size: int = 1, max_size: int = 10, timeout: float = 10.0
    ) -> "PgArchive":
        """Connect, migrate the schema and, with ``seed``, store the
        well-known palettes the database lacks (idempotent, race-free)."""
        import asyncpg

        try:
            pool = await asyncpg.create_pool(
                url, min_size=min_size, max_size=max_size, timeout=timeout, command_timeout=timeout,
                reset=_session_unchanged,
            )
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise IndexUnavailableError(f"cannot open the index {redact_url(url)}: {exc or type(exc).__name__}") from exc
        archive = cls(pool, url)
        try:
            async with pool.acquire() as conn:
                await _migrate(conn, redact_url(url))
            if seed:
                await archive.seed_well_known()
        except BaseException:
            await pool.close()
            raise
        return archive

    async def close(self) -> None:
        await self._pool.close()

    @property
    def display_url(self) -> str:
        """The URL without its password, for logs."""
        return redact_url(self.url)

    async def __aenter__(self) -> "PgArchive":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the outage bookkeeping ------------------------------------------

    @asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[Any]:
        """A pooled connection; a failure to use it becomes ArchiveError
        (0xC000), logged once per outage."""
        import asyncpg

        try:
            async with self._pool.acquire() as conn:
                yield conn
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if _connection_lost(exc):
                if not self._outage:
                    self._outage = True
                    LOGGER.error(
                        "index %s unreachable (%s: %s); answering with failures until it is back",
                        self.display_url, what, exc or type(exc).__name__,
                    )  # fmt: skip
            else:
                LOGGER.warning("index %s: %s failed: %s", self.display_url, what, exc)
            raise m.ArchiveError(UNABLE_TO_PROCESS, f"index {what} failed: {type(exc).__name__}") from exc
        if self._outage:
            self._outage = False
            LOGGER.warning("index %s reachable again", self.display_url)

    # -- reading ---------------------------------------------------------

    async def count(self) -> int:
        async with self._connection("count") as conn:
            return int(await conn.fetchval("SELECT count(*) FROM instance"))

    async def find(self, identifier: Dataset) -> FindResult:
        """Match a C-FIND identifier like ``PaletteArchive.find``. Ties of
        label come by SOP Instance UID here (PostgreSQL keeps no row order
        a replacement would not change; SQLite gives them as stored)."""
        plan = m.plan_find(identifier)
        columns = m.selected_columns(plan)
        if any("\x00" in str(c.value) for c in plan.conditions):
            # PostgreSQL text cannot hold NUL, so no stored value has one: no
            # match, as in SQLite (and no database error a peer could repeat).
            return FindResult(plan, [])
        where, params = m.render_postgresql(plan.conditions)
        sql = f"SELECT {', '.join(columns)} FROM instance WHERE {where} ORDER BY content_label, sop_instance_uid"
        async with self._connection("query") as conn:
            rows = await conn.fetch(sql, *params)
        return FindResult(plan, rows)

    async def locate(self, identifier: Dataset) -> LocateResult:
        """The instances a C-GET / C-MOVE identifier asks for (``PgInstance``,
        without bytes), in request order; ``missing`` as in the SQLite archive."""
        wanted = m.retrieve_uids(identifier)
        async with self._connection("query") as conn:
            rows = await conn.fetch(
                "SELECT sop_class_uid, sop_instance_uid, transfer_syntax, size, owner FROM instance"
                " WHERE sop_instance_uid = ANY($1::text[])",
                wanted,
            )
        found = {row[1]: PgInstance(*row) for row in rows}
        result = LocateResult(found[u] for u in wanted if u in found)  # type: ignore[misc]
        result.missing = tuple(u for u in wanted if u not in found)
        return result

    async def get(self, sop_instance_uid: str) -> PgInstance | None:
        async with self._connection("query") as conn:
            row = await conn.fetchrow(
                "SELECT sop_class_uid, sop_instance_uid, transfer_syntax, size, owner FROM instance"
                " WHERE sop_instance_uid = $1",
                sop_instance_uid,
            )
        return PgInstance(*row) if row is not None else None

    async def read(self, sop_instance_uid: str) -> bytes | None:
        """The Part 10 bytes of one instance (None: not stored, or gone since located)."""
        async with self._connection("read") as conn:
            data = await conn.fetchval("SELECT data FROM instance WHERE sop_instance_uid = $1", sop_instance_uid)
        return bytes(data) if data is not None else None

    async def read_many(self, sop_instance_uids: list[str]) -> dict[str, bytes]:
        """The Part 10 bytes of several instances in one query (those stored)."""
        async with self._connection("read") as conn:
            rows = await conn.fetch(
                "SELECT sop_instance_uid, data FROM instance WHERE sop_instance_uid = ANY($1::text[])",
                sop_instance_uids,
            )
        return {uid: bytes(data) for uid, data in rows}

    # -- storing ---------------------------------------------------------

    async def ingest_file(
        self,
        path: str | Path,
        *,
        move: bool = True,
        owner: str | None = None,
        may_replace_others: bool = False,
    ) -> IngestResult:
        """Store a Part 10 file (a spooled C-STORE): validated and read off
        the loop, then committed in one statement. With ``move`` the file is
        removed once the store is committed; on failure it is left."""
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(
            None, lambda: self.prepare_file(path, move=move, owner=owner, may_replace_others=may_replace_others)
        )
        if isinstance(prepared, IngestResult):
            return prepared
        return (await self.commit_batch([prepared]))[0]

    def prepare_file(
        self,
        path: str | Path,
        *,
        move: bool = True,
        owner: str | None = None,
        may_replace_others: bool = False,
    ) -> "PgPreparedStore | IngestResult":
        """The blocking half of ``ingest_file`` (run it in a thread): the
        file validated and read, for ``commit_batch``; or the IngestResult
        of a refusal."""
        source = Path(path)
        try:
            checked, data = _check_and_read(source)
        except OSError as exc:
            return IngestResult(OUT_OF_RESOURCES, f"cannot read: {exc}"[:64])
        if isinstance(checked, IngestResult):
            return checked
        fields, transfer_syntax, warning = checked
        return PgPreparedStore(fields, transfer_syntax, data, warning, owner, may_replace_others, source if move else None)

    def prepare_data(
        self,
        data: Any,
        transfer_syntax: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        *,
        owner: str | None = None,
        may_replace_others: bool = False,
    ) -> "PgPreparedStore | IngestResult":
        """``prepare_file`` for a data set received in memory (the request's
        UIDs stand for its file meta): validated, and its Part 10 bytes
        made, for ``commit_batch``; or the IngestResult of a refusal."""
        checked = check_palette_data(data, transfer_syntax, sop_class_uid, sop_instance_uid)
        if isinstance(checked, IngestResult):
            return checked
        fields, transfer_syntax, warning = checked
        header = dsutil.file_header(fields["sop_class_uid"], fields["sop_instance_uid"], transfer_syntax)
        return PgPreparedStore(fields, transfer_syntax, header + bytes(data), warning, owner, may_replace_others)

    async def commit_batch(self, batch: "list[PgPreparedStore]") -> list[IngestResult]:
        """Commit prepared stores in ONE transaction (group commit: one
        commit, one WAL flush on the server for the batch), one upsert
        each, in order, so two of one UID behave as one after the other.
        Results only once the transaction has committed; the spooled files
        of the stored ones are then removed. A statement that fails for
        another reason than a lost connection aborts the transaction: the
        batch is then committed one store per transaction, so that the
        store at fault fails alone."""
        if len(batch) == 1:
            results = [await self._commit(*batch[0].commit_args())]
        else:
            results = await self._commit_together(batch)
        for store, result in zip(batch, results):
            if store.move_from is not None and result.ok:
                store.move_from.unlink(missing_ok=True)
        return results

    async def _commit_together(self, batch: "list[PgPreparedStore]") -> list[IngestResult]:
        try:
            async with self._connection("store") as conn:
                async with conn.transaction():
                    rows = [await conn.fetchrow(_UPSERT, *store.upsert_args()) for store in batch]
        except m.ArchiveError as exc:
            if exc.__cause__ is not None and _connection_lost(exc.__cause__):
                return [IngestResult(OUT_OF_RESOURCES, f"cannot store: {exc.comment}"[:64], s.uid) for s in batch]
            return [await self._commit(*store.commit_args()) for store in batch]
        return [_upsert_result(store.uid, row, store.warning, store.owner) for store, row in zip(batch, rows)]

    async def ingest_dataset(
        self,
        ds: Dataset,
        transfer_syntax: str = uids.ExplicitVRLittleEndian,
        *,
        owner: str | None = None,
        may_replace_others: bool = False,
    ) -> IngestResult:
        """Store a decoded data set, encoded in ``transfer_syntax``."""
        checked = check_palette_dataset(ds)
        if isinstance(checked, IngestResult):
            return checked
        fields, warning = checked
        meta = dsutil.build_file_meta(fields["sop_class_uid"], fields["sop_instance_uid"], transfer_syntax)
        data = dsutil.encode_file_header(meta) + dsutil.encode_dataset(ds, transfer_syntax)
        return await self._commit(fields, transfer_syntax, data, warning, owner, may_replace_others)

    async def _commit(
        self,
        fields: dict[str, Any],
        transfer_syntax: str,
        data: bytes,
        warning: str,
        owner: str | None,
        may_replace_others: bool,
    ) -> IngestResult:
        uid = fields["sop_instance_uid"]
        args = _upsert_args(fields, transfer_syntax, data, owner, may_replace_others)
        try:
            async with self._connection("store") as conn:
                row = await conn.fetchrow(_UPSERT, *args)
        except m.ArchiveError as exc:
            return IngestResult(OUT_OF_RESOURCES, f"cannot store: {exc.comment}"[:64], uid)
        return _upsert_result(uid, row, warning, owner)

    async def seed_well_known(self) -> list[IngestResult]:
        """Store every well-known palette the database lacks (PS3.6 Annex A)."""
        from chromanet.archive.seed import well_known_palettes

        results = []
        for path, uid in well_known_palettes():
            if await self.get(uid) is not None:
                continue
            result = await self.ingest_file(path, move=False)
            # Another node seeding at the same time: refused as read-only, fine.
            if not result.ok and result.status != NOT_AUTHORISED:
                LOGGER.error("seeding %s (%s) failed: 0x%04X %s", path.name, uid, result.status, result.comment)
            results.append(result)
        return results


@dataclass(frozen=True, slots=True)
class PgPreparedStore:
    """A validated store, its bytes read, waiting for ``PgArchive.commit_batch``
    (``move_from``: the spooled file to remove once stored)."""

    fields: dict[str, Any]
    transfer_syntax: str
    data: bytes
    warning: str
    owner: str | None
    may_replace_others: bool
    move_from: Path | None = None

    @property
    def uid(self) -> str:
        return str(self.fields["sop_instance_uid"])

    def commit_args(self) -> tuple[Any, ...]:
        return self.fields, self.transfer_syntax, self.data, self.warning, self.owner, self.may_replace_others

    def upsert_args(self) -> tuple[Any, ...]:
        return _upsert_args(self.fields, self.transfer_syntax, self.data, self.owner, self.may_replace_others)


def _upsert_args(
    fields: dict[str, Any], transfer_syntax: str, data: bytes, owner: str | None, may_replace_others: bool
) -> tuple[Any, ...]:
    """The parameters of ``_UPSERT`` for one store."""
    well_known = fields["sop_instance_uid"] in uids.WELL_KNOWN_PALETTE_UIDS
    values = dict(fields, transfer_syntax=transfer_syntax, size=len(data), owner=owner, data=data)
    return (*(values[c] for c in _COLUMNS), well_known, bool(may_replace_others))


def _upsert_result(uid: str, row: Any, warning: str, owner: str | None) -> IngestResult:
    """The IngestResult of one ``_UPSERT`` (no row returned: refused)."""
    if row is None:
        if uid in uids.WELL_KNOWN_PALETTE_UIDS:
            return IngestResult(NOT_AUTHORISED, "well-known palette is read-only: not stored", uid)
        LOGGER.info("store of %s by %s refused: stored by another peer", uid, owner)
        return IngestResult(NOT_AUTHORISED, "stored by another peer: not replaced", uid)
    if warning:
        return IngestResult(WARNING_DATASET_DOES_NOT_MATCH, warning, uid)
    return IngestResult(SUCCESS, "replaced" if row["replaced"] else "", uid)


async def _session_unchanged(conn: Any) -> None:
    """The pool's reset of a released connection. asyncpg's default sends
    a reset query (unlock advisory locks, close cursors, unlisten, reset
    settings): one more round trip per operation, for session state this
    archive never creates (its only lock is transaction-scoped). An open
    transaction is still rolled back by the pool before this is called."""


def _check_and_read(path: Path) -> tuple[Any, bytes]:
    checked = check_palette_file(path)
    if isinstance(checked, IngestResult):
        return checked, b""
    return checked, path.read_bytes()


def redact_url(url: str) -> str:
    """The URL without its password (in the user info or a ``password=``
    parameter), for logs and errors."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return scheme + sep + re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", rest)


async def _migrate(conn: Any, name: str) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
        version = int(await conn.fetchval("SELECT max(version) FROM schema_version")) if exists else 0
        if version > SCHEMA_VERSION:
            raise ArchiveVersionError(
                f"{name}: index schema version {version} is newer than this chromanet's ({SCHEMA_VERSION})"
            )
        if version == SCHEMA_VERSION:
            return
        if version < 1:
            for statement in _SCHEMA_V1:
                await conn.execute(statement)
        # Later versions: "if version < 2: ..." steps go here, in order.
        await conn.execute("UPDATE schema_version SET version = $1", SCHEMA_VERSION)
    LOGGER.info("index %s: schema version %d -> %d", name, version, SCHEMA_VERSION)
