"""PaletteArchive: Color Palette instances on disk, indexed for Q/R.

Layout of ``data_dir``::

    index.sqlite3   the index (see ``index.py``), WAL mode, schema versioned; it also
                    keeps the bytes of small instances (up to ``inline_max``)
    files/          one Part 10 file per larger instance, named from its SOP Instance UID
    lock            held (flock) while an archive is open: exclusively by one process,
                    or shared by the worker processes of one node (``shared=True``)
    commit.lock     byte-range locks (fcntl) that serialise the commit of one
                    SOP Instance UID's stripe across processes

Small instances are kept in the index. A Part 10 file of at most
``inline_max`` bytes (``DEFAULT_INLINE_MAX``, 64 KiB; every palette of the
standard's well-known set is ~4 KiB) is not written to ``files/`` at all:
its bytes go into the index with its row, in the same transaction, made
durable by the one fsync of SQLite's write-ahead log that commits the
batch. Creating and flushing a file per store (an inode, a directory
entry, a syncfs or two fsyncs, then the index's own fsync) cost most of a
durable store's time; a row in a write-ahead log is appended. Nothing
below applies to such a store but the transaction (step 3) and the
removal of a replaced version's file (step 4): it is never half written,
because a transaction is atomic. ``inline_max=0`` keeps every instance
in a file, as before. Larger instances, and files handed over to be
moved in (``ingest_file(move=True)``: a rename creates no inode), are
files:

Storing a file, and why it is crash safe. A store is committed when its
index row is committed, and not before:

1. the data set is in a file in ``files/`` whose name starts with "." (a
   temporary; ``prepare_data`` writes a data set received in memory there
   directly), or is the caller's own file (``ingest_file``);
2. the file is validated, fsynced, and renamed (``os.replace``, atomic) to
   its final name ``<SOP Instance UID>.dcm`` (``<UID>_<random>.dcm`` when that
   name is taken by the version being replaced); the directory is fsynced;
3. the index row is written and committed in one transaction;
4. the file of the replaced version, if any, is removed.

Killed anywhere, the archive holds at most a temporary file (1-2) or a
complete file that no row names (2-3, or 4 for the old version). ``open``
removes both: a file without a row is a store that was never answered with
success, or a version already replaced. A row never names a file that is not
complete. ``verify()`` reports disagreement between index and files both ways.

Group commit (``prepare_file`` + ``commit_batch``; ``group_commit.py``
forms the batches). Steps 2-4 run for a whole batch of stores at once and
in the same order: every file fsynced (their writeback started together, so
the journal commits once for all of them), every file renamed, *one*
directory fsync, every row in *one* transaction, then the replaced files
removed. Each store's success is returned only after that transaction has
committed. The invariants above hold store by store, so a kill anywhere
in a batch leaves what it leaves for one store, times the batch, and
``recover()`` cleans it the same way. A store that fails in a batch
(refused replacement, a rename or its row) is undone and fails alone:
should the batch's transaction fail, the rows are written one per
transaction to find the one at fault. ``ingest_file`` and
``ingest_dataset`` are a batch of one.

Durability ``syncfs`` (``durability.py``; ``auto`` picks it where syncfs
reports write-back errors). Step 2 for a batch becomes: every file renamed
to its final name, then *one* syncfs(2) of the file system holding
``files/``, which makes the data of the batch's files and their directory
entries durable together; the rows are committed after it returns (step
3), and only then is any store answered. The invariants still hold: until
that syncfs returns, a renamed file may be short or empty after a power
loss, but no committed row names it, because a final name is never one a
committed row names (``<UID>.dcm`` is chosen only when no row has the UID,
under its stripe lock; a replacement's name has a random part), so a
rename never lands on an indexed file; killed before the transaction
commits, the file has no row and ``recover()`` removes it. A syncfs that
fails (or another one that failed since the batch's files were written,
see ``durability.py``) fails every store of the batch: their files are
removed (or given back to the caller), no row is written.

Several processes (``chromanet serve --workers N``). The supervisor opens
the archive exclusively once (recovery, seeding, schema migration), then
keeps a shared lock while its workers open it with ``shared=True``: they
skip ``recover()`` (another worker's renamed-but-not-yet-indexed file would
look like debris) and take the shared lock, so a second node or an offline
tool that wants the data directory to itself is still refused. Steps 2
(rename) to 4 of a batch run under the stripe locks of all its UIDs, taken
in ascending order, twice over: a ``threading.Lock`` per stripe within the
process and a byte-range ``fcntl.lockf`` on ``commit.lock`` across processes
(released by the kernel if the process dies); each worker forms its own
batches. The index write is a ``BEGIN IMMEDIATE`` transaction, which SQLite
serialises across processes; a writer that finds the database locked waits
up to the busy timeout (``index.BUSY_TIMEOUT``) rather than failing.

Duplicate SOP Instance UID: last write wins. PS3.4 leaves the behaviour to
the SCP and its Conformance Statement (B.4.1; PS3.2's sample statements
"overwrite the old file and database record"), and for palettes it is what a
user who edits a palette and sends it again expects. The replacement is
atomic for readers: a C-GET in progress keeps the old file open (POSIX), a
new one finds the new row. Exception: the eight well-known palettes
(1.2.840.10008.1.5.1-8) are defined by the standard (PS3.6 Annex A) and are
never replaced: a store of one that is already here is refused (0x0124).

Ownership: a store may name its ``owner`` (the node passes the peer's name).
An instance another owner stored is replaced only when the store says
``may_replace_others``; otherwise the store is refused (0x0124) and the
stored instance stays as it was. A store without an owner (local imports,
the library) is not checked.

C-STORE statuses (PS3.4 B.2.3, Table B.2-1) in ``IngestResult.status``:

* 0x0000 success;
* 0xB007 warning "Data Set does not match SOP Class": stored, but a Type 1
  attribute that the archive does not need to serve the palette is missing
  (ICC Profile (0028,2000)); the comment names it;
* 0x0124 "Refused: Not Authorized" (PS3.7 C): not stored, because the
  instance is a well-known palette already here or one another owner stored;
* 0xA700 "Refused: Out of Resources": the file or the index could not be
  written (disk full, I/O error); nothing is left behind;
* 0xA900 "Error: Data Set does not match SOP Class": not Color Palette
  Storage, SOP Class / Instance UID in the file meta and data set disagree,
  SOP Instance UID invalid, or Content Label, the LUT descriptors or the LUT
  data (normal or segmented) missing;
* 0xC000 "Error: Cannot understand": not a Part 10 file, or one pydicom
  cannot parse.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import json
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pydicom import Dataset

from chromanet import dsutil, uids
from chromanet.archive import matching as m
from chromanet.archive.durability import SyncFs, linux_libc_call, resolve_durability
from chromanet.archive.index import BUSY_TIMEOUT, Index, IndexRow
from chromanet.archive.response import FindResult
from chromanet.archive.validation import (
    NOT_AUTHORISED,
    OUT_OF_RESOURCES,
    SUCCESS,
    UNABLE_TO_PROCESS,
    WARNING_DATASET_DOES_NOT_MATCH,
    IngestResult,
    Refused,
    check_palette_dataset,
    check_palette_file,
    checked_data,
    checked_file,
)
from chromanet.errors import ChromanetError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "PaletteArchive",
    "StoredInstance",
    "LocateResult",
    "IngestResult",
    "PreparedStore",
    "VerifyReport",
    "ArchiveBusyError",
    "check_palette_file",
    "check_palette_dataset",
]

LOGGER = logging.getLogger("chromanet.archive")

_TEMP_PREFIX = "."
_COMMIT_STRIPES = 64
#: The byte of commit.lock after the stripes' whose lock is a process's
#: turn to write the index (``_index_turn``), taken after any stripe's.
_INDEX_TURN = _COMMIT_STRIPES

#: Part 10 files of at most this many bytes are kept in the index, not in
#: ``files/`` (see the module docstring).
DEFAULT_INLINE_MAX = 64 * 1024

class ArchiveBusyError(ChromanetError):
    """Another process has this data directory open."""


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """One stored Part 10 file, as C-GET / C-MOVE send it (bytes untouched):
    at ``file`` (its path as a string, what a retrieve opens: a ``Path``
    per instance cost a C-GET of a thousand more than its index query), or,
    when ``file`` is None, kept in the index (``PaletteArchive.read_many``)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    file: str | None
    size: int

    @property
    def path(self) -> Path | None:
        return None if self.file is None else Path(self.file)


class LocateResult(list[StoredInstance]):
    """The instances a retrieve identifier names, in request order.

    A list of StoredInstance; ``missing`` holds the requested UIDs that are
    not in the archive (for Failed SOP Instance UID List (0008,0058)).
    """

    missing: tuple[str, ...] = ()


@dataclass(slots=True)
class VerifyReport:
    """Where the index and ``files/`` disagree."""

    files_without_row: list[Path] = field(default_factory=list)
    rows_without_file: list[str] = field(default_factory=list)
    size_mismatches: list[str] = field(default_factory=list)
    temp_files: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.files_without_row or self.rows_without_file or self.size_mismatches or self.temp_files)


@dataclass(frozen=True, slots=True)
class _Rights:
    """Who stores, and whether they may replace what another owner stored."""

    owner: str | None
    may_replace_others: bool

    def may_replace(self, stored_by: str | None) -> bool:
        return self.owner is None or self.may_replace_others or stored_by is None or stored_by == self.owner


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: Any = None


def _start_writeback(fds: list[int]) -> None:
    """Ask the kernel to start writing these files' dirty pages (Linux
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; it does not wait, and it
    is no substitute for the fsyncs that follow). Best effort: nothing
    where the call is missing."""
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = linux_libc_call(
            "sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        ) or False
    if _sync_file_range:
        for fd in fds:
            _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def _write_new(path: Path, parts: tuple[Any, ...]) -> None:
    """A new file (it must not exist) holding ``parts``, written with as
    few calls as the kernel allows (one ``writev`` for a palette), and
    closed; not fsynced (``commit_batch`` does that for a whole batch).
    Owner-only, as a spooled file was."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        views = [memoryview(part).cast("B") for part in parts]
        while views:
            written = os.writev(fd, views) if hasattr(os, "writev") else os.write(fd, views[0])
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if views and written:
                views[0] = views[0][written:]
    finally:
        os.close(fd)


def _lock_range(fd: int, start: int, length: int) -> None:
    """``lockf`` a range of commit.lock, waiting for it. The kernel refuses
    a wait it takes for a deadlock (EDEADLK), judging by processes: with a
    commit thread of process A waiting for B while one of B's waits for
    another of A's threads, it sees A and B wait for each other, although
    every thread takes its locks in ascending order and the one it waits
    for will end its commit. So EDEADLK is retried, after a short pause
    that grows, for as long as SQLite's busy timeout lets a writer wait."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    pause = 0.0005
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, length, start)
            return
        except OSError as exc:
            if exc.errno != errno.EDEADLK or time.monotonic() > deadline:
                raise
        time.sleep(pause)  # a commit thread, not the event loop
        pause = min(pause * 2, 0.02)


def _stripe(uid: str) -> int:
    return zlib.crc32(uid.encode()) % _COMMIT_STRIPES


def _runs(stripes: list[int]) -> list[tuple[int, int]]:
    """Ascending stripes as (start, length) runs of neighbours."""
    runs: list[tuple[int, int]] = []
    for stripe in stripes:
        if runs and runs[-1][0] + runs[-1][1] == stripe:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((stripe, 1))
    return runs


#: More than any file meta header ``dsutil.file_header`` writes: preamble
#: and prefix (132), group length (12), version (14), four UIs of at most 64
#: characters (4 x 72) and the implementation version name (24).
_MAX_FILE_META_SIZE = 512


@dataclass(frozen=True, slots=True)
class PreparedStore:
    """A validated store waiting for ``PaletteArchive.commit_batch``:
    ``source`` is the file (``ours``: a temporary of ours in ``files/``,
    removed on failure; else the caller's, given back on failure), or None
    when the instance is to be kept in the index: its Part 10 bytes are
    ``data``."""

    source: Path | None
    ours: bool
    fields: dict[str, Any]
    transfer_syntax: str
    warning: str
    rights: _Rights
    size: int  # bytes: the file is not written to once prepared
    #: ``SyncFs.epoch`` before the file was written (``syncfs`` durability).
    epoch: int = 0
    #: The whole Part 10 file, for an instance kept in the index.
    data: bytes | None = None

    @property
    def uid(self) -> str:
        return str(self.fields["sop_instance_uid"])

    @classmethod
    def kept_in_index(
        cls, fields: dict[str, Any], transfer_syntax: str, warning: str, owner: str | None,
        may_replace_others: bool, size: int, data: bytes,
    ) -> "PreparedStore":
        """A store prepared elsewhere (another process of the node,
        ``shared_commit.py``) of an instance kept in the index."""
        return cls(None, True, fields, transfer_syntax, warning, _Rights(owner, may_replace_others), size, data=data)


class PaletteArchive:
    """Color Palette instances in ``data_dir``: store, C-FIND, locate for retrieve.

    Thread-safe: queries run on a per-thread SQLite connection, stores are
    serialised only for their commit. Every method is synchronous and short
    except ``ingest_*`` (fsync); an asyncio server runs those in an executor.
    """

    #: Methods are plain calls (``PgArchive``'s are awaited).
    is_async = False

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        shared: bool = False,
        durability: str = "auto",
        inline_max: int = DEFAULT_INLINE_MAX,
    ) -> None:
        if inline_max < 0:
            raise ValueError("inline_max must not be negative")
        self.data_dir = Path(data_dir)
        self.files_dir = self.data_dir / "files"
        #: Part 10 files of at most this many bytes are kept in the index.
        self.inline_max = inline_max
        #: ``fsync`` or ``syncfs``: how a batch's files are made durable
        #: (``durability.py``; ``auto`` resolved here).
        self.durability = resolve_durability(durability)
        self.files_dir.mkdir(parents=True, exist_ok=True)
        #: Opened by one of several processes of a node (see the module docstring).
        self.shared = shared
        self._lock_file = open(self.data_dir / "lock", "a+b")
        self._commit_file: Any = None
        self._syncfs: SyncFs | None = None
        try:
            if fcntl is not None:
                try:
                    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
                    fcntl.flock(self._lock_file.fileno(), mode | fcntl.LOCK_NB)
                except OSError as exc:
                    raise ArchiveBusyError(f"{self.data_dir} is open in another process") from exc
                if shared:
                    self._commit_file = open(self.data_dir / "commit.lock", "a+b")
            self.index = Index(self.data_dir / "index.sqlite3")
            if self._commit_file is not None:
                self.index.write_turn = self._index_turn
            if self.durability == "syncfs":
                # Opened once: syncfs reports the errors since this open.
                self._syncfs = SyncFs(self.files_dir)
        except BaseException:
            self._lock_file.close()
            if self._commit_file is not None:
                self._commit_file.close()
            raise
        # Stores of one SOP Instance UID commit one at a time (the index
        # read, the rename, the index write and the removal of the replaced
        # file), or two concurrent ones would each keep their file and one
        # would be left behind unindexed. Striped: different UIDs rarely wait.
        self._commit_locks = [threading.Lock() for _ in range(_COMMIT_STRIPES)]
        # A file on another file system is copied in, not renamed.
        self._files_device = os.stat(self.files_dir).st_dev
        self._temp_prefix = f"{_TEMP_PREFIX}tmp-{secrets.token_hex(6)}-"
        self._temp_counter = itertools.count()
        self.recovered = VerifyReport() if shared else self.recover()

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        seed: bool = True,
        shared: bool = False,
        durability: str = "auto",
        inline_max: int = DEFAULT_INLINE_MAX,
    ) -> "PaletteArchive":
        """Open (creating if needed) and, with ``seed``, store the eight
        well-known palettes that are not there yet (idempotent).
        ``durability``: ``auto``, ``syncfs`` or ``fsync`` (``durability.py``);
        ``inline_max``: instances up to this size are kept in the index."""
        archive = cls(data_dir, shared=shared, durability=durability, inline_max=inline_max)
        if seed and not shared:
            from chromanet.archive.seed import seed_well_known

            try:
                seed_well_known(archive)
            except BaseException:
                archive.close()
                raise
        return archive

    def share(self) -> None:
        """Let worker processes open this data directory (``shared=True``)
        while this process keeps it from anyone who wants it exclusively:
        the exclusive lock becomes a shared one. The supervisor of
        ``chromanet serve --workers`` calls it after recovery and seeding."""
        if fcntl is not None and not self.shared:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_SH)
            # From now on this process commits beside the workers (the
            # supervisor's shared committer): the same cross-process locks.
            self._commit_file = open(self.data_dir / "commit.lock", "a+b")
            self.index.write_turn = self._index_turn
        self.shared = True

    def close(self) -> None:
        self.index.close()
        if self._syncfs is not None:
            self._syncfs.close()
        if not self._lock_file.closed:
            self._lock_file.close()
        if self._commit_file is not None and not self._commit_file.closed:
            self._commit_file.close()

    def __enter__(self) -> "PaletteArchive":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.index.count()

    # -- C-FIND ----------------------------------------------------------

    def find(self, identifier: Dataset) -> FindResult:
        """Match a C-FIND identifier (PS3.4 X.4.1, K.4.1); see ``matching``.

        Raises IdentifierError (0xA900) for an identifier of the wrong shape,
        ArchiveError (0xC000) when the index cannot be read.
        """
        plan = m.plan_find(identifier)
        try:
            # Ties of label in the order they were stored: the label index
            # (whose entries are label, rowid) gives the rows in that order,
            # with no sort of the matches in a temporary B-tree (which was
            # more than half the query's time for 10,000 matches).
            rows = self.index.select(m.selected_columns(plan), plan.where, plan.params, order="content_label, rowid")
        except sqlite3.Error as exc:
            raise m.ArchiveError(UNABLE_TO_PROCESS, f"index query failed: {exc}") from exc
        return FindResult(plan, rows)

    # -- C-GET / C-MOVE --------------------------------------------------

    def locate(self, identifier: Dataset) -> LocateResult:
        """The stored files a C-GET / C-MOVE identifier asks for (X.4.2, X.4.3).

        Raises IdentifierError (0xA900) for a missing or invalid SOP Instance
        UID, Query/Retrieve Level present, or any other key.
        """
        wanted = m.retrieve_uids(identifier)
        try:
            rows = self.index.select(
                ("sop_instance_uid", "sop_class_uid", "transfer_syntax", "file_name", "size"),
                "sop_instance_uid IN (SELECT value FROM json_each(?))",
                (json.dumps(wanted),),
            )
        except sqlite3.Error as exc:
            raise m.ArchiveError(UNABLE_TO_PROCESS, f"index query failed: {exc}") from exc
        directory = os.path.join(self.files_dir, "")
        found = {
            uid: StoredInstance(cls, uid, ts, None if name is None else directory + name, size)
            for uid, cls, ts, name, size in rows
        }
        result = LocateResult(found[u] for u in wanted if u in found)
        result.missing = tuple(u for u in wanted if u not in found)
        return result

    def get(self, sop_instance_uid: str) -> StoredInstance | None:
        """The stored instance with this UID, or None."""
        row = self.index.get(sop_instance_uid)
        if row is None:
            return None
        file = None if row.file_name is None else str(self.files_dir / row.file_name)
        return StoredInstance(row.sop_class_uid, row.sop_instance_uid, row.transfer_syntax, file, row.size)

    def read_many(self, sop_instance_uids: list[str]) -> dict[str, bytes]:
        """The Part 10 bytes of those instances that are kept in the index
        (``StoredInstance.file`` None), in one query. Raises ArchiveError
        (0xC000) when the index cannot be read."""
        try:
            return self.index.read_data(sop_instance_uids)
        except sqlite3.Error as exc:
            raise m.ArchiveError(UNABLE_TO_PROCESS, f"index query failed: {exc}") from exc

    def read(self, sop_instance_uid: str) -> bytes | None:
        """The Part 10 bytes of one stored instance, wherever kept, or None."""
        stored = self.get(sop_instance_uid)
        if stored is None:
            return None
        if stored.path is not None:
            return stored.path.read_bytes()
        return self.index.read_data([sop_instance_uid]).get(sop_instance_uid)

    # -- C-STORE ---------------------------------------------------------

    def ingest_file(
        self,
        path: str | os.PathLike[str],
        *,
        move: bool = True,
        owner: str | None = None,
        may_replace_others: bool = False,
    ) -> IngestResult:
        """Store a Part 10 file already on disk (a spooled C-STORE).

        With ``move`` the file is renamed into the archive (copied first if it
        is on another file system) and is gone from ``path`` on success; on
        failure it is left where it was. Without ``move`` it is copied.
        ``owner`` and ``may_replace_others``: see the module docstring.
        """
        prepared = self.prepare_file(path, move=move, owner=owner, may_replace_others=may_replace_others)
        if isinstance(prepared, IngestResult):
            return prepared
        return self.commit_batch([prepared])[0]

    def ingest_dataset(
        self,
        ds: Dataset,
        transfer_syntax: str = uids.ExplicitVRLittleEndian,
        *,
        owner: str | None = None,
        may_replace_others: bool = False,
    ) -> IngestResult:
        """Store a decoded data set, encoded in ``transfer_syntax``."""
        rights = _Rights(owner, may_replace_others)
        checked = check_palette_dataset(ds)
        if isinstance(checked, IngestResult):
            return checked
        fields, warning = checked
        meta = dsutil.build_file_meta(fields["sop_class_uid"], fields["sop_instance_uid"], transfer_syntax)
        try:
            parts = (dsutil.encode_file_header(meta), dsutil.encode_dataset(ds, transfer_syntax))
        except Exception as exc:
            return IngestResult(OUT_OF_RESOURCES, f"cannot write: {exc}"[:64], fields["sop_instance_uid"])
        prepared = self._prepare_bytes(parts, fields, transfer_syntax, warning, rights)
        if isinstance(prepared, IngestResult):
            return prepared
        return self.commit_batch([prepared])[0]

    def prepare_data(
        self,
        data: Any,
        transfer_syntax: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        *,
        owner: str | None = None,
        may_replace_others: bool = False,
    ) -> "PreparedStore | IngestResult":
        """Step 1 for a data set received in memory (a C-STORE's, without
        its file meta; the request's Affected SOP Class and Instance UIDs
        stand for it): validated from the bytes, then written with its file
        meta header straight into a temporary in ``files/``, the file it
        becomes. The same as spooling it and ``prepare_file``, without the
        spool file (its create, write, reread and removal). A
        ``PreparedStore`` for ``commit_batch``, or the IngestResult of a
        refusal. Takes no lock."""
        rights = _Rights(owner, may_replace_others)
        try:
            fields, warning = checked_data(data, transfer_syntax, sop_class_uid, sop_instance_uid)
        except Refused as refused:
            return IngestResult(refused.status, refused.comment)
        header = dsutil.file_header(fields["sop_class_uid"], fields["sop_instance_uid"], transfer_syntax)
        return self._prepare_bytes((header, data), fields, transfer_syntax, warning, rights)

    def prepares_in_memory(self, data_size: int) -> bool:
        """Whether ``prepare_data`` of a data set of ``data_size`` bytes
        keeps it in the index, touching no file: its Part 10 file (the data
        set behind a file meta header, under _MAX_FILE_META_SIZE) fits
        ``inline_max``. Such a store may be prepared on the event loop (it
        costs validation, tens of microseconds, and no I/O)."""
        return data_size + _MAX_FILE_META_SIZE <= self.inline_max

    def prepare_file(
        self,
        path: str | os.PathLike[str],
        *,
        move: bool = True,
        owner: str | None = None,
        may_replace_others: bool = False,
    ) -> "PreparedStore | IngestResult":
        """Step 1 of ``ingest_file``: validate the file (and copy it into a
        temporary when it is not to be moved, or is on another file system).
        A ``PreparedStore`` for ``commit_batch``, or the IngestResult of a
        refusal. Takes no lock: any number may run at once."""
        rights = _Rights(owner, may_replace_others)
        source = Path(path)
        try:
            fields, transfer_syntax, warning, stat = checked_file(source)
        except Refused as refused:
            return IngestResult(refused.status, refused.comment)
        copy_file = lambda temp: shutil.copyfile(source, temp)  # noqa: E731
        if not move:
            if stat.st_size <= self.inline_max:
                try:
                    data = source.read_bytes()
                except OSError as exc:
                    return IngestResult(OUT_OF_RESOURCES, f"cannot read: {exc}"[:64], fields["sop_instance_uid"])
                return self._prepare_bytes((data,), fields, transfer_syntax, warning, rights)
            return self._prepare_new_file(copy_file, fields, transfer_syntax, warning, rights)
        refused = self._refuse_stored_well_known(fields)
        if refused is not None:
            return refused
        if stat.st_dev != self._files_device:
            return self._prepare_new_file(copy_file, fields, transfer_syntax, warning, rights)
        return PreparedStore(source, False, fields, transfer_syntax, warning, rights, stat.st_size, self._epoch())

    def commit_batch(self, batch: "list[PreparedStore]") -> list[IngestResult]:
        """Steps 2-4 of a store for every prepared store of ``batch`` at once
        (group commit): the files fsynced together, renamed, one directory
        fsync (with ``syncfs`` durability: renamed, one syncfs), the rows
        in one transaction, under the stripe locks of all
        their UIDs. One result per store, in order; a store that fails
        (refused replacement, a failed rename or row) fails alone. Two
        stores of one UID in a batch commit one after the other, in order."""
        results: list[IngestResult | None] = [None] * len(batch)
        todo = list(range(len(batch)))
        while todo:
            seen: set[str] = set()
            now, later = [], []
            for i in todo:
                uid = batch[i].fields["sop_instance_uid"]
                (later if uid in seen else now).append(i)
                seen.add(uid)
            for i, result in zip(now, self._commit_round([batch[i] for i in now])):
                results[i] = result
            todo = later
        return results  # type: ignore[return-value]

    # The steps of a store, as methods so that tests can fail each one.

    def _step_fsync_file(self, path: Path, fd: int | None = None) -> None:
        if fd is None:
            _fsync_path(path)
        else:
            os.fsync(fd)

    def _step_fsync_files(self, paths: list[Path]) -> list[Exception | None]:
        """Each file's data durable; per file None or the error. Writeback of
        all of them is started first, so that their blocks are allocated in
        one journal transaction, which the first fsync commits and the next
        ones find done (one fsync after another would each wait for a
        journal commit of its own). Each file is opened once for both."""
        errors: list[Exception | None] = [None] * len(paths)
        fds: list[int | None] = [None] * len(paths)
        try:
            for k, path in enumerate(paths):
                try:
                    fds[k] = os.open(path, os.O_RDONLY)
                except OSError as exc:
                    errors[k] = exc
            if len(paths) > 1:
                _start_writeback([fd for fd in fds if fd is not None])
            for k, path in enumerate(paths):
                if fds[k] is not None:
                    try:
                        self._step_fsync_file(path, fds[k])
                    except Exception as exc:
                        errors[k] = exc
        finally:
            for fd in fds:
                if fd is not None:
                    os.close(fd)
        return errors

    def _step_rename(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def _step_fsync_dir(self) -> None:
        if os.name == "posix":
            _fsync_path(self.files_dir)

    def _step_syncfs(self, since: int) -> None:
        assert self._syncfs is not None
        self._syncfs.sync(since)

    def _step_index(self, row: IndexRow, data: bytes | None = None) -> None:
        self.index.upsert(row, data)

    def _step_index_many(self, rows: list[IndexRow], data: list[bytes | None] | None = None) -> None:
        self.index.upsert_many(rows, data)

    def _step_remove_old(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def _temp_path(self) -> Path:
        # A random prefix per archive object and a counter: unique without
        # a getrandom call per store (another process has its own prefix,
        # and O_EXCL refuses a name that is taken).
        return self.files_dir / f"{self._temp_prefix}{next(self._temp_counter)}.dcm"

    def _final_name(self, uid: str, existing: IndexRow | None) -> str:
        # Without a row, no one names "<uid>.dcm" (names come from UIDs, and
        # the UID's stripe lock is held): a file there is debris of a store
        # never committed, which recover() would remove; renaming over it
        # is as good. A replacement gets a name of its own, so that readers
        # of the old file keep it until the new row is committed.
        if existing is None:
            return f"{uid}.dcm"
        return f"{uid}_{secrets.token_hex(4)}.dcm"

    def _prepare_new_file(
        self, write: Any, fields: dict[str, Any], transfer_syntax: str, warning: str, rights: _Rights,
        size: int | None = None,
    ) -> "PreparedStore | IngestResult":
        refused = self._refuse_stored_well_known(fields)
        if refused is not None:
            return refused
        temp = self._temp_path()
        epoch = self._epoch()
        try:
            write(temp)
            if size is None:
                size = os.stat(temp).st_size
        except Exception as exc:
            temp.unlink(missing_ok=True)
            return IngestResult(OUT_OF_RESOURCES, f"cannot write: {exc}"[:64], fields["sop_instance_uid"])
        return PreparedStore(temp, True, fields, transfer_syntax, warning, rights, size, epoch)

    def _prepare_bytes(
        self, parts: tuple[Any, ...], fields: dict[str, Any], transfer_syntax: str, warning: str, rights: _Rights
    ) -> "PreparedStore | IngestResult":
        """A store of the Part 10 file made of ``parts`` (bytes-like): kept in
        the index when it is small enough, else written to a temporary."""
        size = sum(memoryview(part).nbytes for part in parts)
        if size > self.inline_max:
            return self._prepare_new_file(
                lambda temp: _write_new(temp, parts), fields, transfer_syntax, warning, rights, size
            )
        refused = self._refuse_stored_well_known(fields)
        if refused is not None:
            return refused
        return PreparedStore(None, True, fields, transfer_syntax, warning, rights, size, data=b"".join(parts))

    def _epoch(self) -> int:
        return self._syncfs.epoch if self._syncfs is not None else 0

    def _refuse_stored_well_known(self, fields: dict[str, Any]) -> IngestResult | None:
        uid = fields["sop_instance_uid"]
        if uid in uids.WELL_KNOWN_PALETTE_UIDS:
            existing = self.get(uid)
            if existing is not None:
                return IngestResult(NOT_AUTHORISED, "well-known palette is read-only: not stored", uid)
        return None

    def _commit_round(self, stores: "list[PreparedStore]") -> list[IngestResult]:
        """``commit_batch`` for stores of distinct UIDs."""
        results: list[IngestResult | None] = [None] * len(stores)
        # The data first, outside the locks: no one else names these files.
        # (With syncfs, the data and the renames are made durable together.)
        on_file = [k for k, store in enumerate(stores) if store.source is not None]
        if self._syncfs is None and on_file:
            for k, error in zip(on_file, self._step_fsync_files([stores[k].source for k in on_file])):  # type: ignore[misc]
                if error is not None:
                    results[k] = self._failed(stores[k], None, error)
        live = [k for k in range(len(stores)) if results[k] is None]
        stripes = sorted({_stripe(stores[k].uid) for k in live})
        with self._stripe_locks(stripes):
            for k, result in zip(live, self._commit_locked([stores[k] for k in live])):
                results[k] = result
        return results  # type: ignore[return-value]

    @contextlib.contextmanager
    def _index_turn(self) -> Iterator[None]:
        """This process's turn to write the index, among the processes
        sharing it: a byte-range lock of commit.lock, waited for in the
        kernel (woken when the holder lets go), taken after any stripe
        lock (ascending, as they are). SQLite's write lock still decides;
        this only replaces its sleeping busy handler as the way to wait."""
        fd = self._commit_file.fileno()
        _lock_range(fd, _INDEX_TURN, 1)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, _INDEX_TURN)

    @contextlib.contextmanager
    def _stripe_locks(self, stripes: list[int]) -> Iterator[None]:
        """The commit locks of ``stripes`` (ascending: two batches never
        wait for each other crosswise), in this process and, shared, across
        processes (one byte of commit.lock per stripe, a run of neighbours
        in one call). POSIX record locks belong to the process (hence the
        thread locks first) and go with it when it dies."""
        held: list[threading.Lock] = []
        ranges: list[tuple[int, int]] = []
        try:
            for stripe in stripes:
                lock = self._commit_locks[stripe]
                lock.acquire()
                held.append(lock)
            if self._commit_file is not None:
                fd = self._commit_file.fileno()
                for start, length in _runs(stripes):
                    _lock_range(fd, start, length)
                    ranges.append((start, length))
            yield
        finally:
            if ranges:
                fd = self._commit_file.fileno()
                for start, length in reversed(ranges):
                    fcntl.lockf(fd, fcntl.LOCK_UN, length, start)
            for lock in reversed(held):
                lock.release()

    def _commit_locked(self, stores: "list[PreparedStore]") -> list[IngestResult]:
        """Steps 2-4 (see the module docstring) for stores whose data is
        durable, under their stripe locks.

        Cleanup is done for ``Exception`` only: anything else is treated as
        the process dying, and left to ``recover()`` at the next open.
        """
        results: list[IngestResult | None] = [None] * len(stores)
        # (store, its file's final path or None when kept in the index, row, replaced row)
        renamed: list[tuple[int, Path | None, IndexRow, IndexRow | None]] = []
        # Read on this thread's reader, not the writer: the other batch's
        # transaction (and its fsync) does not hold this one up. The stripe
        # locks make it exact: whoever last wrote one of these UIDs had
        # committed before it let go of that UID's stripe.
        stored = self.index.get_many([store.uid for store in stores])
        for k, store in enumerate(stores):
            uid = store.uid
            existing = stored.get(uid)
            if existing is not None and not store.rights.may_replace(existing.owner):
                if store.ours and store.source is not None:
                    store.source.unlink(missing_ok=True)
                LOGGER.info("store of %s by %s refused: stored by %s", uid, store.rights.owner, existing.owner)
                results[k] = IngestResult(NOT_AUTHORISED, "stored by another peer: not replaced", uid)
                continue
            final = None
            if store.source is not None:
                final = self.files_dir / self._final_name(uid, existing)
                try:
                    self._step_rename(store.source, final)
                except Exception as exc:
                    results[k] = self._failed(store, None, exc)
                    continue
            row = IndexRow(
                transfer_syntax=store.transfer_syntax, file_name=None if final is None else final.name,
                size=store.size, owner=store.rights.owner, **store.fields,
            )  # fmt: skip
            renamed.append((k, final, row, existing))
        if not renamed:
            return results  # type: ignore[return-value]
        files = [entry for entry in renamed if entry[1] is not None]
        if files:
            try:
                if self._syncfs is None:
                    self._step_fsync_dir()
                else:
                    self._step_syncfs(min(stores[k].epoch for k, _, _, _ in files))
            except Exception as exc:
                for k, final, _, _ in files:
                    results[k] = self._failed(stores[k], final, exc)
                renamed = [entry for entry in renamed if entry[1] is None]
        committed = self._index_rows(stores, renamed, results)
        for k, final, _, existing in committed:
            store = stores[k]
            if existing is not None and existing.file_name is not None and (
                final is None or existing.file_name != final.name
            ):
                try:
                    self._step_remove_old(self.files_dir / existing.file_name)
                    LOGGER.info("%s replaced: its previous file %s removed", store.uid, existing.file_name)
                except Exception as exc:  # left for recover()
                    LOGGER.warning("cannot remove replaced file %s: %s", existing.file_name, exc)
            if store.warning:
                results[k] = IngestResult(WARNING_DATASET_DOES_NOT_MATCH, store.warning, store.uid, final)
            else:
                results[k] = IngestResult(SUCCESS, "replaced" if existing is not None else "", store.uid, final)
        return results  # type: ignore[return-value]

    def _index_rows(
        self,
        stores: "list[PreparedStore]",
        renamed: list[tuple[int, Path | None, IndexRow, IndexRow | None]],
        results: list[IngestResult | None],
    ) -> list[tuple[int, Path | None, IndexRow, IndexRow | None]]:
        """The rows of ``renamed`` (with the bytes of those kept in the index)
        in one transaction; if that fails, each in its own, so that a row
        that cannot be written fails its store alone. The entries committed;
        the others' results set and files undone."""
        if len(renamed) > 1:
            try:
                self._step_index_many([row for _, _, row, _ in renamed], [stores[k].data for k, _, _, _ in renamed])
                return renamed
            except Exception as exc:
                LOGGER.warning("index write of a batch of %d failed (%s): one row at a time", len(renamed), exc)
        committed = []
        for entry in renamed:
            k, final, row, _ = entry
            try:
                self._step_index(row, stores[k].data)
            except Exception as exc:
                results[k] = self._failed(stores[k], final, exc)
            else:
                committed.append(entry)
        return committed

    def _failed(self, store: "PreparedStore", renamed_to: Path | None, exc: Exception) -> IngestResult:
        """Undo what a failed store did (its file back to the caller, or our
        temporary removed) and say why."""
        if renamed_to is not None and not store.ours:
            try:
                os.replace(renamed_to, store.source)  # give the caller its file back
            except OSError:
                renamed_to.unlink(missing_ok=True)
        elif renamed_to is not None:
            renamed_to.unlink(missing_ok=True)
        elif store.ours and store.source is not None:
            store.source.unlink(missing_ok=True)
        LOGGER.warning("store of %s failed: %s", store.uid, exc)
        return IngestResult(OUT_OF_RESOURCES, f"cannot store: {exc}"[:64], store.uid)

    # -- consistency -----------------------------------------------------

    def verify(self) -> VerifyReport:
        """Compare the index with ``files/``; change nothing."""
        report = VerifyReport()
        rows = self.index.file_names()
        on_disk: dict[str, int] = {}
        for entry in os.scandir(self.files_dir):
            if entry.name.startswith(_TEMP_PREFIX):
                report.temp_files.append(Path(entry.path))
            elif entry.is_file():
                on_disk[entry.name] = entry.stat().st_size
        for name in sorted(on_disk.keys() - rows.keys()):
            report.files_without_row.append(self.files_dir / name)
        for name in sorted(rows.keys() - on_disk.keys()):
            report.rows_without_file.append(rows[name][0])
        for name in sorted(rows.keys() & on_disk.keys()):
            if rows[name][1] != on_disk[name]:
                report.size_mismatches.append(rows[name][0])
        report.size_mismatches.extend(self.index.inline_size_mismatches())
        return report

    def recover(self) -> VerifyReport:
        """Undo what an interrupted store left (run by the constructor).

        Removes temporary files and files that no row names (stores never
        committed, or versions already replaced), and rows whose file is gone
        (only possible if someone removed it). Returns what was found.
        """
        report = self.verify()
        for path in report.temp_files + report.files_without_row:
            LOGGER.info("recover: removing %s", path.name)
            path.unlink(missing_ok=True)
        if report.rows_without_file:
            LOGGER.warning("recover: %d index rows without their file, removed", len(report.rows_without_file))
            self.index.delete(report.rows_without_file)
        for uid in report.size_mismatches:
            LOGGER.warning("recover: file of %s does not have the indexed size", uid)
        return report
