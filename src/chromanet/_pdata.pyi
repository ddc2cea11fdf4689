"""P-DATA-TF fragmentation and reassembly of DIMSE messages (Cython)."""

from chromanet._dimse import Command

Buffer = bytes | bytearray | memoryview

def fragment_message(
    context_id: int,
    command: bytes,
    dataset: Buffer | None,
    max_pdu_length: int,
    pack: bool = True,
) -> list[bytes | memoryview]:
    """One DIMSE message as P-DATA-TF PDUs, ready for ``transport.writelines``.

    ``command`` is an encoded command set, ``dataset`` any buffer (bytes, a
    memoryview, an ``mmap`` of a file...) or None. The result is a list of
    buffers whose concatenation is the PDUs; the data set is never copied: its
    fragments are memoryview slices of ``dataset``, with small header buffers
    between them.

    ``max_pdu_length`` is the peer's Maximum Length (the largest PDU-length
    field value it accepts; 0 = no limit, then fragments are capped at 4 MiB).
    With ``pack`` (default) PDVs are packed into as few PDUs as fit: a small
    message travels as one PDU holding a command PDV and a data set PDV.
    """

class DimseMessage:
    """A complete message: the decoded command and the data set bytes (or None)."""

    context_id: int
    command: Command
    dataset: bytes | memoryview | None

class CommandArrived:
    """Streaming mode: a command whose data set fragments follow as DatasetChunk."""

    context_id: int
    command: Command

class DatasetChunk:
    """Streaming mode: one data set fragment, in order; ``is_last`` ends the message."""

    context_id: int
    data: memoryview | bytes
    is_last: bool

class Reassembler:
    """Rebuilds DIMSE messages from the bodies of incoming P-DATA-TF PDUs.

    Checks the PS3.8 rules and raises ``chromanet.errors.PDataError`` (or
    MalformedPDUError / CommandSetError) on: a PDV for a context ID not in
    ``accepted_context_ids`` (when that is not None; the one exception is a
    C-CANCEL-RQ command, which names its operation by Message ID and is
    returned whatever its context), reserved bits set in the
    message control header, a data set fragment with no command before it or
    after a command that says no data set follows, a command fragment while a
    data set is expected, a context ID that changes within a message, PDV items
    that overrun the PDU, and a data set larger than ``max_dataset_length``
    (0 = no limit; collecting mode only).

    Collecting mode (default): ``feed`` returns DimseMessage objects. With a
    ``stream_threshold`` (bytes, 0 = none), a data set that grows past it
    before its last fragment switches that message to streaming: a
    CommandArrived, the fragments so far and the rest as DatasetChunk objects.
    Small messages stay whole; a large one is never joined in memory.
    Streaming mode (``stream_datasets=True``): a command with no data set is
    still returned as a DimseMessage; one with a data set is returned as
    CommandArrived, then its fragments as DatasetChunk objects, so that large
    data sets can be written to a file in bounded memory. The mode may be
    switched between messages.
    """

    accepted_context_ids: set[int] | None
    stream_datasets: bool
    max_dataset_length: int
    stream_threshold: int
    def __init__(
        self,
        accepted_context_ids: set[int] | None = None,
        stream_datasets: bool = False,
        max_dataset_length: int = 0,
        stream_threshold: int = 0,
    ) -> None: ...
    def feed(self, pdata_body: Buffer) -> list[DimseMessage | CommandArrived | DatasetChunk]:
        """``pdata_body`` is a P-DATA-TF PDU minus its 6-byte header."""
    @property
    def in_message(self) -> bool:
        """True between the first fragment of a message and its last."""
