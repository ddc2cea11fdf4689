"""How the SQLite archive makes a batch's files durable: ``fsync`` or ``syncfs``.

``PaletteArchive(durability=...)`` and ``chromanet serve --store-durability``:

* ``fsync``: every file of a batch fsynced, then renamed, then the
  directory fsynced (fsync(2) on each file and on ``files/``). Each fsync
  costs CPU of its own (~70-80 µs here), so a batch of 64 pays it 65 times.
* ``syncfs``: the batch's files are written and renamed, then *one*
  syncfs(2) on the file system that holds ``files/`` makes their data and
  their directory entries durable together; the index rows are committed
  after it. The trade-off: syncfs writes back every dirty page of that
  file system, not only ours, so on a file system shared with heavy
  writers (a database, a log) a batch waits for their data too, and per-file
  fsync may be the better choice there.
* ``auto`` (the default): ``syncfs`` where it reports write-back errors
  (Linux 5.8 and later) and the C library has it; ``fsync`` elsewhere.

Errors. Before Linux 5.8 syncfs(2) did not report write-back errors at
all; since then it reports an error of the file system that happened
since the descriptor it is called on was opened, once per open file
description (errseq). So the descriptor is opened once, when the archive
opens, and kept: an error after that is reported to the first syncfs that
follows. With two batches committing side by side, that first syncfs may
be the other batch's, and the error may have been about our pages: so
every error is counted (``SyncFs.failures``), each prepared store keeps
the count it saw when its file was written (``epoch``), and a batch fails
when its syncfs fails *or* any syncfs failed since its files were written;
syncfs calls take turns, so that one's error is counted before the next
one's success is believed. (A file spooled before it is prepared gets the
count of when it is prepared: an error in the short while between is
reported to a batch, but maybe not to this store's.)
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from typing import Any

__all__ = ["DURABILITY_MODES", "SyncFs", "check_durability", "linux_libc_call", "resolve_durability", "syncfs_supported"]

#: The values of the setting.
DURABILITY_MODES = ("auto", "syncfs", "fsync")

_libc_syncfs: Any = None


def check_durability(mode: str) -> str:
    """``mode`` if it is one of ``DURABILITY_MODES``, else ValueError."""
    if mode not in DURABILITY_MODES:
        raise ValueError(f"store durability {mode!r}: one of {', '.join(DURABILITY_MODES)}")
    return mode


def _kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release
    numbers = []
    for part in release.split("-", 1)[0].split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit()) if part else ""
        numbers.append(int(digits) if digits else 0)
    return tuple(numbers) >= (major, minor)


def linux_libc_call(name: str, argtypes: list[Any]) -> Any:
    """The C library's function ``name`` on Linux, typed (``argtypes``,
    an int result, errno kept for ``ctypes.get_errno``); None elsewhere or
    where the C library has no such function. ctypes releases the GIL
    around the call, as the os module's own calls do."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    call.argtypes = argtypes
    call.restype = ctypes.c_int
    return call


def _syncfs_call() -> Any:
    """libc's ``syncfs``, or None."""
    global _libc_syncfs
    if _libc_syncfs is None:
        _libc_syncfs = linux_libc_call("syncfs", [ctypes.c_int]) or False
    return _libc_syncfs or None


def syncfs_supported() -> bool:
    """syncfs(2) is there and reports write-back errors (Linux >= 5.8)."""
    return sys.platform.startswith("linux") and _kernel_at_least(5, 8) and _syncfs_call() is not None


def resolve_durability(mode: str) -> str:
    """``syncfs`` or ``fsync`` for a setting; ``syncfs`` asked for where it
    is not supported is an error, not a silent fallback."""
    check_durability(mode)
    if mode == "auto":
        return "syncfs" if syncfs_supported() else "fsync"
    if mode == "syncfs" and not syncfs_supported():
        raise ValueError("store durability 'syncfs' needs Linux 5.8 or later and a C library with syncfs")
    return mode


class SyncFs:
    """syncfs(2) on the file system of ``directory``, through one descriptor
    opened now and kept until ``close`` (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._call = _syncfs_call()
        if self._call is None:
            raise OSError("syncfs is not available")
        self._fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        self._lock = threading.Lock()
        #: syncfs calls that reported an error so far.
        self.failures = 0

    @property
    def epoch(self) -> int:
        """What a store notes when its file is written (see ``sync``)."""
        return self.failures

    def sync(self, since: int) -> None:
        """Everything written to the file system durable, or OSError: the
        call failed, or another failed after ``since`` (an ``epoch``)."""
        with self._lock:
            if self._call(self._fd) != 0:
                self.failures += 1
                code = ctypes.get_errno()
                raise OSError(code, f"syncfs: {os.strerror(code)}")
            if self.failures != since:
                raise OSError(5, "syncfs: a write-back error was reported since these files were written")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
