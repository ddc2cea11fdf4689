"""Spooling received data sets to files, in bounded memory.

With a spool directory configured, a C-STORE data set is written fragment by
fragment to a temporary Part 10 file (file meta built from the command and
the context's transfer syntax) and the handler gets ``event.dataset_path``.
The file is removed after the handler returns unless the handler moved it
(``os.replace`` into its store), and on an abort mid-transfer.
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
    """DatasetSink writing one data set to a temporary file in ``directory``."""

    def __init__(self, directory: Path, command: Command, transfer_syntax: str) -> None:
        # The header first: if it cannot be built, no spool file is made.
        meta = dsutil.build_file_meta(
            command.affected_sop_class_uid or "", command.affected_sop_instance_uid or "", transfer_syntax
        )
        header = dsutil.encode_file_header(meta)
        handle, name = tempfile.mkstemp(prefix=SPOOL_PREFIX, suffix=".dcm", dir=directory)
        self._file = os.fdopen(handle, "wb", buffering=1 << 16)
        self.path = Path(name)
        self._file.write(header)

    def write(self, data: Any) -> None:
        self._file.write(data)

    def finish(self) -> SpooledDataset:
        self._file.close()
        part = dsutil.open_part10(self.path)
        return SpooledDataset(
            part.path, part.sop_class_uid, part.sop_instance_uid, part.transfer_syntax, part.dataset_offset, part.data
        )

    def discard(self) -> None:
        self._file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        LOGGER.info("C-STORE cut off by the end of the association: its partial data set removed")
