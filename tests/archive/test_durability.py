"""The ``store_durability`` setting (``archive/durability.py``): its values,
what ``auto`` becomes with and without syncfs(2) (Linux 5.8 and later
report write-back errors through it), and that ``syncfs`` asked for where
it is missing is refused rather than quietly weakened."""

from __future__ import annotations

from pathlib import Path

import pytest

from chromanet.archive import PaletteArchive, durability
from chromanet.archive.durability import check_durability, resolve_durability


def test_the_values_are_checked() -> None:
    for mode in ("auto", "syncfs", "fsync"):
        assert check_durability(mode) == mode
    for bad in ("", "SYNCFS", "none", "fdatasync"):
        with pytest.raises(ValueError, match="one of auto, syncfs, fsync"):
            check_durability(bad)


def test_auto_is_syncfs_only_where_supported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(durability, "syncfs_supported", lambda: False)
    assert resolve_durability("auto") == "fsync"
    assert resolve_durability("fsync") == "fsync"
    with pytest.raises(ValueError, match="Linux 5.8"):
        resolve_durability("syncfs")
    with PaletteArchive.open(tmp_path / "a", seed=False) as archive:
        assert archive.durability == "fsync"
    monkeypatch.setattr(durability, "syncfs_supported", lambda: True)
    assert resolve_durability("auto") == "syncfs"
    assert resolve_durability("fsync") == "fsync"


def test_kernel_release_is_compared_by_number(monkeypatch: pytest.MonkeyPatch) -> None:
    for release, ok in (("5.8.0", True), ("5.10.0-21-amd64", True), ("6.18.44-fc", True), ("5.7.19", False),
                        ("4.19.0", False), ("5.4", False), ("10.0", True)):  # fmt: skip
        monkeypatch.setattr(durability.os, "uname", lambda r=release: type("U", (), {"release": r})())
        assert durability._kernel_at_least(5, 8) is ok, release


def test_the_archive_follows_the_setting(tmp_path: Path) -> None:
    with PaletteArchive.open(tmp_path / "f", seed=False, durability="fsync") as archive:
        assert archive.durability == "fsync"
    with pytest.raises(ValueError):
        PaletteArchive.open(tmp_path / "x", seed=False, durability="never")
    if durability.syncfs_supported():
        with PaletteArchive.open(tmp_path / "s", seed=False, durability="syncfs") as archive:
            assert archive.durability == "syncfs"
        with PaletteArchive.open(tmp_path / "d", seed=False) as archive:
            assert archive.durability == "syncfs"
