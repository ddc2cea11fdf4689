"""The archive's durability modes (``archive/durability.py``) for tests
that run once per mode, and the store steps each mode goes through (the
methods a test fails or kills, in the order a store calls them)."""

from __future__ import annotations

import pytest

from chromanet.archive.durability import syncfs_supported

#: Both modes; syncfs skipped where the kernel or libc lacks it.
DURABILITIES = [
    "fsync",
    pytest.param("syncfs", marks=pytest.mark.skipif(not syncfs_supported(), reason="no syncfs reporting errors")),
]

#: A single store's steps (``ingest_dataset``), by mode.
STORE_STEPS = {
    "fsync": ["_step_fsync_file", "_step_rename", "_step_fsync_dir", "_step_index", "_step_remove_old"],
    "syncfs": ["_step_rename", "_step_syncfs", "_step_index", "_step_remove_old"],
}
#: A batch's steps (``commit_batch`` of more than one store), by mode.
BATCH_STEPS = {
    "fsync": ["_step_fsync_file", "_step_rename", "_step_fsync_dir", "_step_index_many", "_step_remove_old"],
    "syncfs": ["_step_rename", "_step_syncfs", "_step_index_many", "_step_remove_old"],
}


def mode_steps(table: dict[str, list[str]], last: int | None = None) -> list[object]:
    """(mode, step) parameters for every step of ``table`` (its first
    ``last`` steps only, if given), syncfs skipped where unsupported."""
    params: list[object] = []
    for mode in DURABILITIES:
        name = mode if isinstance(mode, str) else mode.values[0]
        marks = () if isinstance(mode, str) else mode.marks
        for step in table[name][:last]:
            params.append(pytest.param(name, step, marks=marks, id=f"{name}-{step}"))
    return params
