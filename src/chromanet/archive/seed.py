"""The eight well-known Color Palettes (PS3.6 Annex A), stored on first start.

Their SOP Instance UIDs are fixed by the standard (1.2.840.10008.1.5.1 to
.8: Hot Iron, PET, Hot Metal Blue, PET 20 Step, Spring, Summer, Fall,
Winter); pydicom ships them as Part 10 files. Seeding copies each file that
is not yet in the archive through the ordinary store path, so it is as
crash safe as any store and running it again changes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from chromanet import uids

if TYPE_CHECKING:
    from chromanet.archive.store import IngestResult, PaletteArchive

__all__ = ["WELL_KNOWN_PALETTE_UIDS", "well_known_palette_files", "well_known_palettes", "seed_well_known"]

LOGGER = logging.getLogger("chromanet.archive")

#: SOP Instance UIDs of the well-known palettes, which the archive never replaces.
WELL_KNOWN_PALETTE_UIDS = uids.WELL_KNOWN_PALETTE_UIDS


def well_known_palette_files() -> list[Path]:
    """The Part 10 files of the well-known palettes that pydicom ships."""
    from pydicom.data import get_palette_files

    return sorted(Path(p) for p in get_palette_files("*.dcm"))


def well_known_palettes() -> list[tuple[Path, str]]:
    """(file, SOP Instance UID) of each well-known palette pydicom ships."""
    from chromanet import dsutil

    found = []
    for path in well_known_palette_files():
        part = dsutil.open_part10(path)
        try:
            found.append((path, part.sop_instance_uid))
        finally:
            part.close()
    return found


def seed_well_known(archive: "PaletteArchive") -> list["IngestResult"]:
    """Store every well-known palette the archive lacks; the results of those stores."""
    results = []
    for path, uid in well_known_palettes():
        if archive.get(uid) is not None:
            continue
        result = archive.ingest_file(path, move=False)
        if not result.ok:
            LOGGER.error("seeding %s (%s) failed: 0x%04X %s", path.name, uid, result.status, result.comment)
        results.append(result)
    return results
