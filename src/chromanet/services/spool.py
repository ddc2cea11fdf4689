"""Spooling received data sets to files, in bounded memory.

With a spool directory configured, a C-STORE data set is written fragment by
fragment to a temporary Part 10 file (file meta built from the command and
the context's transfer syntax) and the handler gets ``event.dataset_path``.
The file is removed after the handler returns unless the handler moved it
(``os.replace`` into its store), and on an abort mid-transfer.

With ``in_memory`` (``AE.store_spool_memory_limit``), a data set of at most
that many bytes stays in memory and reaches the handler as a data set
received without a spool (``event.encoded_dataset()``; no
``dataset_path``): a larger one is spooled from the fragment that crosses
the limit on. A file costs the event loop a create, writes, a close and
later a removal per C-STORE; a handler that writes the data set where it
keeps it anyway (the archive node) need not pay for one.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from chromanet import dsutil
from chromanet._dimse import Command


LOGGER = logging.getLogger("chromanet.services")

# Name prefix of spool files: a leftover one was never acknowledged to a peer.
SPOOL_PREFIX = ".incoming-"


class SpooledDataset(dsutil.Part10File):
    """A Part10File that removes its file when the handler is done with it."""

    def cleanup(self) -> None:
        """Remove the file unless the handler moved it away (then it is
        theirs): a store that was refused or failed leaves nothing behind."""
        self.close()
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                return
            LOGGER.info("C-STORE of %s not kept: its spooled data set removed", self.sop_instance_uid)


class FileSink:
    """DatasetSink writing one data set to a temporary file in ``directory``
    (kept in memory instead while it is at most ``in_memory`` bytes)."""

    def __init__(self, directory: Path, command: Command, transfer_syntax: str, in_memory: int = 0) -> None:
        self._directory = directory
        self._command = command
        self._transfer_syntax = transfer_syntax
        self._in_memory = in_memory
        self._parts: list[bytes] = []
        self._size = 0
        self._file: Any = None
        self.path: Path | None = None
        if not in_memory:
            self._open()

    def _open(self) -> None:
        command = self._command
        # The header first: if it cannot be built, no spool file is made.
        header = dsutil.file_header(
            command.affected_sop_class_uid or "", command.affected_sop_instance_uid or "", self._transfer_syntax
        )
        handle, name = tempfile.mkstemp(prefix=SPOOL_PREFIX, suffix=".dcm", dir=self._directory)
        self._file = os.fdopen(handle, "wb", buffering=1 << 16)
        self.path = Path(name)
        self._file.write(header)
        for part in self._parts:
            self._file.write(part)
        self._parts = []

    def write(self, data: Any) -> None:
        if self._file is None:
            self._size += len(data)
            if self._size <= self._in_memory:
                self._parts.append(bytes(data))
                return
            self._open()
        self._file.write(data)

    def finish(self) -> SpooledDataset | bytes:
        if self._file is None:
            return b"".join(self._parts)
        self._file.close()
        part = dsutil.open_part10(self.path)  # type: ignore[arg-type]
        return SpooledDataset(
            part.path, part.sop_class_uid, part.sop_instance_uid, part.transfer_syntax, part.dataset_offset, part.data
        )

    def discard(self) -> None:
        if self._file is None:
            self._parts = []
            return
        self._file.close()
        try:
            os.unlink(self.path)  # type: ignore[arg-type]
        except FileNotFoundError:
            return
        LOGGER.info("C-STORE cut off by the end of the association: its partial data set removed")
