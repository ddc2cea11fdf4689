"""The palette archive: Color Palette instances on disk, indexed for Q/R.

No networking here. The Q/R service layer calls ``find`` (C-FIND),
``locate`` (C-GET / C-MOVE) and ``ingest_file`` / ``ingest_dataset``
(C-STORE); ``chromanet serve`` opens one with ``PaletteArchive.open``.

Modules: ``store`` (files, crash safety, statuses of stores), ``index``
(SQLite), ``matching`` (identifiers to SQL, PS3.4 X.6.1.2 and C.2.2.2),
``response`` (response identifiers), ``seed`` (the well-known palettes),
``postgres`` (``PgArchive``: index and palettes in PostgreSQL, awaited, for
several nodes; asyncpg is imported only when one is opened),
``group_commit`` (C-STOREs made durable in batches, for the node),
``validation`` (what a store must be, shared by both archives).
"""

from chromanet.archive.index import ArchiveVersionError
from chromanet.archive.matching import ArchiveError, IdentifierError
from chromanet.archive.response import FindResult
from chromanet.archive.postgres import PgArchive
from chromanet.archive.seed import WELL_KNOWN_PALETTE_UIDS
from chromanet.archive.store import (
    ArchiveBusyError,
    IngestResult,
    LocateResult,
    PreparedStore,
    PaletteArchive,
    StoredInstance,
    VerifyReport,
)

__all__ = [
    "PaletteArchive",
    "PgArchive",
    "FindResult",
    "LocateResult",
    "StoredInstance",
    "IngestResult",
    "PreparedStore",
    "VerifyReport",
    "ArchiveError",
    "IdentifierError",
    "ArchiveBusyError",
    "ArchiveVersionError",
    "WELL_KNOWN_PALETTE_UIDS",
]
