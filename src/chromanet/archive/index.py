"""The archive's SQLite index: one row per stored palette.

The index holds what C-FIND matches and returns (decoded to Unicode text)
and where each instance's Part 10 file is: a file in ``files/`` (named by
``file_name``), or, for a small instance, the file's bytes themselves in
the table ``instance_data`` (``data_id``; schema version 4). A row is
written after its file is durable, in one transaction, so a row never
points at a file that is not complete; bytes kept in the index are
committed with their row, in the same transaction.

Connections: one writer, serialised by a lock, and one reader per thread, so
that queries run in parallel with each other and with a store's commit (WAL
mode: readers see the last committed snapshot and never wait for the
writer). Every write is a ``BEGIN IMMEDIATE`` transaction: it takes
SQLite's write lock up front, so writers in several processes (the workers
of ``chromanet serve --workers``) queue on the busy handler
(``BUSY_TIMEOUT``) instead of failing half-way on a lock upgrade. ``synchronous=FULL`` makes a commit durable before a C-STORE is
answered with success.

Schema versions are ``PRAGMA user_version``; ``SCHEMA_VERSION`` is the one
this code writes. A newer database is refused rather than misread.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator

from chromanet.errors import ChromanetError

__all__ = ["Index", "IndexRow", "SCHEMA_VERSION", "ArchiveVersionError"]

LOGGER = logging.getLogger("chromanet.archive")

SCHEMA_VERSION = 4

#: Seconds a connection waits for another process's (or thread's) write
#: transaction before "database is locked" (SQLite's busy handler): worker
#: processes of one node write the same index.
BUSY_TIMEOUT = 30.0

_SCHEMA_V1 = """
CREATE TABLE instance (
    sop_instance_uid       TEXT PRIMARY KEY,
    sop_class_uid          TEXT NOT NULL,
    transfer_syntax        TEXT NOT NULL,
    file_name              TEXT NOT NULL UNIQUE,
    size                   INTEGER NOT NULL,
    content_label          TEXT NOT NULL,
    content_description    TEXT,            -- NULL: absent from the instance
    content_creator_name   TEXT,
    alternate_descriptions TEXT,            -- JSON list of items (DICOM JSON), NULL: absent
    specific_character_set TEXT,            -- values joined by backslash, NULL: absent
    ascii_only             INTEGER NOT NULL, -- every returnable text is ASCII
    stored_at              TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) WITHOUT ROWID;
CREATE INDEX instance_content_label ON instance (content_label);
"""

# Version 2: who stored each instance (the node's peer name, or the calling
# AE title of a peer without an entry); NULL for instances stored before
# owners were kept, and for the seeded well-known palettes.
_SCHEMA_V2 = """
ALTER TABLE instance ADD COLUMN owner TEXT
"""

# Version 3: an ordinary (rowid) table, the SOP Instance UID a UNIQUE key.
# WITHOUT ROWID kept each whole row (~600 bytes with the alternate
# descriptions' JSON) in the primary key's B-tree, ordered by random UIDs:
# every insert landed in the middle of a full page and split it. Now rows
# are appended and only the UIDs go to the middle of an index: half the CPU
# and the pages written per stored row. The columns and what they hold do
# not change; the table is copied, in one transaction with the version.
_COLUMNS_V3 = """sop_instance_uid, sop_class_uid, transfer_syntax, file_name, size, content_label, content_description,
    content_creator_name, alternate_descriptions, specific_character_set, ascii_only, stored_at, owner"""
_SCHEMA_V3 = f"""
CREATE TABLE instance_v3 (
    sop_instance_uid       TEXT NOT NULL UNIQUE,
    sop_class_uid          TEXT NOT NULL,
    transfer_syntax        TEXT NOT NULL,
    file_name              TEXT NOT NULL UNIQUE,
    size                   INTEGER NOT NULL,
    content_label          TEXT NOT NULL,
    content_description    TEXT,            -- NULL: absent from the instance
    content_creator_name   TEXT,
    alternate_descriptions TEXT,            -- JSON list of items (DICOM JSON), NULL: absent
    specific_character_set TEXT,            -- values joined by backslash, NULL: absent
    ascii_only             INTEGER NOT NULL, -- every returnable text is ASCII
    stored_at              TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    owner                  TEXT             -- who stored it (version 2)
);
INSERT INTO instance_v3 ({_COLUMNS_V3}) SELECT {_COLUMNS_V3} FROM instance ORDER BY stored_at;
DROP TABLE instance;
ALTER TABLE instance_v3 RENAME TO instance;
CREATE INDEX instance_content_label ON instance (content_label);
"""


# Version 4: small instances kept in the index itself. Creating a file per
# store costs an inode allocation, a directory entry and a flush of both
# (syncfs or fsync, then the index's own): most of a durable store's time.
# A Part 10 file of up to ``PaletteArchive.inline_max`` bytes is instead a
# row of ``instance_data``, committed with its ``instance`` row in one
# transaction and one fsync of the WAL. ``file_name`` becomes NULL for such
# an instance and ``data_id`` names its bytes; exactly one of the two is
# set. The bytes live in a table of their own so that C-FIND's scans of
# ``instance`` keep reading small rows. Triggers drop an instance's bytes
# when its row is deleted or points elsewhere (a replacement), in the same
# transaction. Existing rows keep their files; the table is copied once.
_SCHEMA_V4 = f"""
CREATE TABLE instance_data (
    id   INTEGER PRIMARY KEY,
    data BLOB NOT NULL                      -- the whole Part 10 file
);
CREATE TABLE instance_v4 (
    sop_instance_uid       TEXT NOT NULL UNIQUE,
    sop_class_uid          TEXT NOT NULL,
    transfer_syntax        TEXT NOT NULL,
    file_name              TEXT UNIQUE,     -- NULL: the bytes are in instance_data
    size                   INTEGER NOT NULL,
    content_label          TEXT NOT NULL,
    content_description    TEXT,            -- NULL: absent from the instance
    content_creator_name   TEXT,
    alternate_descriptions TEXT,            -- JSON list of items (DICOM JSON), NULL: absent
    specific_character_set TEXT,            -- values joined by backslash, NULL: absent
    ascii_only             INTEGER NOT NULL, -- every returnable text is ASCII
    stored_at              TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    owner                  TEXT,            -- who stored it (version 2)
    data_id                INTEGER,         -- instance_data.id, or NULL: in files/ (version 4)
    CHECK ((file_name IS NULL) <> (data_id IS NULL))
);
INSERT INTO instance_v4 ({_COLUMNS_V3}) SELECT {_COLUMNS_V3} FROM instance ORDER BY rowid;
DROP TABLE instance;
ALTER TABLE instance_v4 RENAME TO instance;
CREATE INDEX instance_content_label ON instance (content_label);
CREATE TRIGGER instance_data_replaced AFTER UPDATE OF data_id ON instance
    WHEN old.data_id IS NOT NULL AND old.data_id IS NOT new.data_id
    BEGIN DELETE FROM instance_data WHERE id = old.data_id; END;
CREATE TRIGGER instance_data_deleted AFTER DELETE ON instance
    WHEN old.data_id IS NOT NULL
    BEGIN DELETE FROM instance_data WHERE id = old.data_id; END;
"""


def _statements(script: str) -> list[str]:
    """A schema script's statements, a trigger's body kept whole."""
    out: list[str] = []
    for part in script.split(";"):
        if out and out[-1].lstrip().upper().startswith("CREATE TRIGGER") and not out[-1].rstrip().upper().endswith("END"):
            out[-1] += ";" + part
        elif part.strip():
            out.append(part)
    return [statement for statement in out if statement.strip()]


class ArchiveVersionError(ChromanetError):
    """The index was written by a newer chromanet (schema version too high)."""


@dataclass(frozen=True, slots=True)
class IndexRow:
    """Everything the index keeps about one instance."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    file_name: str | None  # None: the bytes are kept in the index (``data_id``)
    size: int
    content_label: str
    content_description: str | None
    content_creator_name: str | None
    alternate_descriptions: str | None
    specific_character_set: str | None
    ascii_only: bool
    owner: str | None = None
    data_id: int | None = None


_INSERT = """
INSERT INTO instance (sop_instance_uid, sop_class_uid, transfer_syntax, file_name, size, content_label,
    content_description, content_creator_name, alternate_descriptions, specific_character_set, ascii_only, owner,
    data_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (sop_instance_uid) DO UPDATE SET
    sop_class_uid = excluded.sop_class_uid, transfer_syntax = excluded.transfer_syntax,
    file_name = excluded.file_name, size = excluded.size, content_label = excluded.content_label,
    content_description = excluded.content_description, content_creator_name = excluded.content_creator_name,
    alternate_descriptions = excluded.alternate_descriptions,
    specific_character_set = excluded.specific_character_set, ascii_only = excluded.ascii_only,
    data_id = excluded.data_id,
    stored_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
    -- A replacement keeps the first storer as the owner; an instance
    -- without one is claimed by whoever replaces it.
    owner = coalesce(instance.owner, excluded.owner)
"""


_ASCII_ONLY_COLUMN = IndexRow.__slots__.index("ascii_only")

# A batch's rows go in one statement per table (multi-row VALUES), not one
# execution per row: SQLite's module gives the GIL up around every step of
# a statement and must wait to get it back behind the event loop, so a
# commit thread paid that wait twice per row. At most _ROWS_PER_STATEMENT
# rows a statement (13 parameters each: under SQLite's oldest limit of 999).
_ROWS_PER_STATEMENT = 64
_INSERT_HEAD, _, _INSERT_TAIL = _INSERT.partition("VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_DATA_HEAD = "INSERT INTO instance_data (id, data) VALUES "


@functools.lru_cache(maxsize=2 * _ROWS_PER_STATEMENT)
def _insert_statement(rows: int, data: bool = False) -> str:
    """``_INSERT`` (or the insert into instance_data) for ``rows`` rows."""
    if data:
        return _INSERT_DATA_HEAD + ", ".join(["(?, ?)"] * rows)
    return f"{_INSERT_HEAD}VALUES {', '.join(['(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)'] * rows)}{_INSERT_TAIL}"


def _insert_many(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], data: bool = False) -> None:
    """Insert ``rows`` (parameter tuples) a statement per _ROWS_PER_STATEMENT."""
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[start : start + _ROWS_PER_STATEMENT]
        conn.execute(_insert_statement(len(chunk), data), [value for row in chunk for value in row])


def _values(row: IndexRow, data_id: int | None = None) -> tuple[Any, ...]:
    """``row`` as the parameters of ``_INSERT`` (its bytes at ``data_id``)."""
    return (
        row.sop_instance_uid, row.sop_class_uid, row.transfer_syntax, row.file_name, row.size,
        row.content_label, row.content_description, row.content_creator_name,
        row.alternate_descriptions, row.specific_character_set, int(row.ascii_only), row.owner, data_id,
    )  # fmt: skip


class Index:
    """The SQLite index at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        #: Set by an archive shared by several processes: a context manager
        #: that waits, blocked in the kernel, for this process's turn to
        #: write. SQLite's own wait for another process's write lock is a
        #: busy handler that sleeps and retries (1, 2, 5, 10... ms), which
        #: with two worker processes committing batches of a few stores
        #: each put tens of milliseconds into a store's p99.
        self.write_turn: Callable[[], ContextManager[None]] | None = None
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode=WAL")
        self._migrate()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _migrate(self) -> None:
        conn = self._writer
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise ArchiveVersionError(
                f"{self.path}: index schema version {version} is newer than this chromanet's ({SCHEMA_VERSION})"
            )
        if version == SCHEMA_VERSION:
            return
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if version == 0:
                    for statement in _SCHEMA_V1.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                if version < 2:
                    conn.execute(_SCHEMA_V2)
                if version < 3:
                    for statement in _statements(_SCHEMA_V3):
                        conn.execute(statement)
                if version < 4:
                    for statement in _statements(_SCHEMA_V4):
                        conn.execute(statement)
                # Later versions: "if version < 5: ..." steps go here, in order.
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        LOGGER.info("index %s: schema version %d -> %d", self.path, version, SCHEMA_VERSION)

    # -- reading ---------------------------------------------------------

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection."""
        if self._closed:
            raise ChromanetError("the archive is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def select(self, columns: Iterable[str], where: str, params: Iterable[Any], order: str = "") -> list[tuple[Any, ...]]:
        sql = f"SELECT {', '.join(columns)} FROM instance WHERE {where}"
        if order:
            sql += f" ORDER BY {order}"
        return self.reader().execute(sql, tuple(params)).fetchall()

    def get(self, sop_instance_uid: str) -> IndexRow | None:
        row = self.reader().execute(
            f"SELECT {', '.join(IndexRow.__slots__)} FROM instance WHERE sop_instance_uid = ?",
            (sop_instance_uid,),
        ).fetchone()
        if row is None:
            return None
        values = list(row)
        values[_ASCII_ONLY_COLUMN] = bool(values[_ASCII_ONLY_COLUMN])
        return IndexRow(*values)

    def get_many(self, sop_instance_uids: Iterable[str]) -> dict[str, IndexRow]:
        """The rows of those UIDs that are stored, in one query, on this
        thread's reader (a commit reads so: the writer may be busy with the
        other batch's transaction; the stripe locks keep the read exact)."""
        rows = self.reader().execute(
            f"SELECT {', '.join(IndexRow.__slots__)} FROM instance"
            " WHERE sop_instance_uid IN (SELECT value FROM json_each(?))",
            (json.dumps(list(sop_instance_uids)),),
        ).fetchall()
        found = {}
        for row in rows:
            values = list(row)
            values[_ASCII_ONLY_COLUMN] = bool(values[_ASCII_ONLY_COLUMN])
            found[values[0]] = IndexRow(*values)
        return found

    def file_names(self) -> dict[str, tuple[str, int]]:
        """file name -> (SOP Instance UID, size) for every row whose bytes are a file."""
        rows = self.reader().execute(
            "SELECT file_name, sop_instance_uid, size FROM instance WHERE file_name IS NOT NULL"
        ).fetchall()
        return {name: (uid, size) for name, uid, size in rows}

    def inline_size_mismatches(self) -> list[str]:
        """The UIDs of rows kept in the index whose bytes are missing or not
        of the indexed size (only a damaged database has any)."""
        rows = self.reader().execute(
            "SELECT i.sop_instance_uid FROM instance i LEFT JOIN instance_data d ON d.id = i.data_id"
            " WHERE i.data_id IS NOT NULL AND (d.id IS NULL OR length(d.data) != i.size)"
        ).fetchall()
        return [uid for (uid,) in rows]

    def read_data(self, sop_instance_uids: Iterable[str]) -> dict[str, bytes]:
        """The bytes of those instances that are kept in the index, in one
        query (one snapshot: a replacement since is not seen half-done)."""
        rows = self.reader().execute(
            "SELECT i.sop_instance_uid, d.data FROM instance i JOIN instance_data d ON d.id = i.data_id"
            " WHERE i.sop_instance_uid IN (SELECT value FROM json_each(?))",
            (json.dumps(list(sop_instance_uids)),),
        ).fetchall()
        return dict(rows)

    def count(self) -> int:
        return int(self.reader().execute("SELECT count(*) FROM instance").fetchone()[0])

    # -- writing ---------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The writer connection, this thread's alone (and, shared, this
        process's turn) until the block ends."""
        with self._write_lock:
            turn = self.write_turn
            if turn is None:
                yield self._writer
                return
            with turn():
                yield self._writer

    def upsert(self, row: IndexRow, data: bytes | None = None) -> None:
        """Insert or replace the row of ``row.sop_instance_uid``, committed on
        return; with ``data``, the instance's bytes kept in the index with it
        (``row.file_name`` None)."""
        self.upsert_many([row], [data])

    def upsert_many(self, rows: Iterable[IndexRow], data: Iterable[bytes | None] | None = None) -> None:
        """Like ``upsert`` for many rows (``data``: each one's bytes, or None
        for a row whose bytes are a file), in one transaction. The bytes a
        replaced row kept in the index are dropped in it (a trigger)."""
        with self._writing() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if data is None:
                    _insert_many(conn, [_values(r) for r in rows])
                else:
                    # The bytes' ids chosen here, under the write lock, so
                    # that a batch is one statement per table (each call
                    # into SQLite gives the GIL up and waits to get it back).
                    rows, data = list(rows), list(data)
                    (next_id,) = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM instance_data").fetchone()
                    ids: list[int | None] = []
                    blobs = []
                    for blob in data:
                        if blob is None:
                            ids.append(None)
                        else:
                            ids.append(next_id)
                            blobs.append((next_id, blob))
                            next_id += 1
                    if blobs:
                        _insert_many(conn, blobs, data=True)
                    _insert_many(conn, [_values(row, data_id) for row, data_id in zip(rows, ids)])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def delete(self, sop_instance_uids: Iterable[str]) -> int:
        with self._writing() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = conn.executemany(
                    "DELETE FROM instance WHERE sop_instance_uid = ?", ((u,) for u in sop_instance_uids)
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return cursor.rowcount

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._write_lock:
            self._writer.close()
