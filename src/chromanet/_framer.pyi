"""Incremental PDU framing of a byte stream (Cython)."""

class PDUFramer:
    """Cuts a TCP byte stream into whole PDUs.

    Feed it whatever the socket delivered (1 byte to megabytes). It returns the
    PDUs completed by that chunk as ``(pdu_type, body)`` pairs, ``body`` being
    the bytes after the 6-byte header, as an immutable bytes-like object
    (``bytes``, or a ``memoryview`` of an immutable chunk) that stays valid.

    Memory: never reserves what a length field claims; pieces of a partial PDU
    are kept as received and joined once, when the PDU is complete.

    Limits, checked as soon as a header is complete, before its body arrives:
    a P-DATA-TF whose length exceeds ``max_pdata_length`` (0 = no limit), or
    any other PDU type longer than ``max_other_length``, raises
    ``chromanet.errors.PDUTooLargeError``. An unknown PDU type is *not* an error
    here (the state machine turns it into Evt19); it is limited by
    ``max_other_length`` like the others. After an error the framer is
    unusable (the stream is no longer aligned); the association aborts.
    """

    max_pdata_length: int
    max_other_length: int
    def __init__(self, max_pdata_length: int = 0, max_other_length: int = 1048576) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, bytes | memoryview]]: ...
    @property
    def buffered(self) -> int:
        """Bytes received that belong to a PDU not yet complete."""
    @property
    def in_pdu(self) -> bool:
        """True when the stream stopped in the middle of a PDU (or header)."""
