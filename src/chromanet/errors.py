"""Exception classes shared by every layer of chromanet.

This module is a leaf: it imports nothing from chromanet, so the Cython wire
modules (``chromanet._pdu`` and friends) and the Python layers above them can
all raise and catch the same classes.

The wire errors carry what the association layer needs to answer the peer as
PS3.8 prescribes: ``abort_reason`` is the A-ABORT reason (source 2, service
provider) that the state machine sends when such an error is found in an
incoming PDU.
"""

from __future__ import annotations

__all__ = [
    "ChromanetError",
    "PDUError",
    "UnrecognizedPDUError",
    "MalformedPDUError",
    "UnexpectedPDUParameterError",
    "InvalidPDUParameterError",
    "PDUTooLargeError",
    "PDataError",
    "CommandSetError",
    "EncodingError",
]

# A-ABORT reasons for source 2 (service provider), PS3.8 Table 9-26.
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_REASON_UNRECOGNIZED_PDU = 1
ABORT_REASON_UNEXPECTED_PDU = 2
ABORT_REASON_UNRECOGNIZED_PDU_PARAMETER = 4
ABORT_REASON_UNEXPECTED_PDU_PARAMETER = 5
ABORT_REASON_INVALID_PDU_PARAMETER_VALUE = 6


class ChromanetError(Exception):
    """Base class of every error chromanet raises on purpose."""


class PDUError(ChromanetError):
    """An incoming PDU could not be accepted.

    ``offset`` is the byte offset inside the PDU (from its first byte, the PDU
    type) where the problem was found, or None when it is not about a place.
    ``item_type`` names the item or sub-item being parsed, when there is one.
    """

    abort_reason: int = ABORT_REASON_INVALID_PDU_PARAMETER_VALUE

    def __init__(
        self,
        message: str,
        *,
        offset: int | None = None,
        item_type: int | None = None,
        pdu_type: int | None = None,
    ) -> None:
        where = []
        if pdu_type is not None:
            where.append(f"PDU type 0x{pdu_type:02X}")
        if item_type is not None:
            where.append(f"item 0x{item_type:02X}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.offset = offset
        self.item_type = item_type
        self.pdu_type = pdu_type


class UnrecognizedPDUError(PDUError):
    """The PDU type byte is not one of the seven PS3.8 PDU types (Evt19)."""

    abort_reason = ABORT_REASON_UNRECOGNIZED_PDU


class MalformedPDUError(PDUError):
    """The PDU's structure is broken: truncated, lengths that disagree,
    a mandatory item missing, or an item that cannot be parsed."""

    abort_reason = ABORT_REASON_INVALID_PDU_PARAMETER_VALUE


class UnexpectedPDUParameterError(PDUError):
    """An item that is recognised but not allowed where it was found."""

    abort_reason = ABORT_REASON_UNEXPECTED_PDU_PARAMETER


class InvalidPDUParameterError(PDUError):
    """A recognised field holds a value the standard does not allow."""

    abort_reason = ABORT_REASON_INVALID_PDU_PARAMETER_VALUE


class PDUTooLargeError(PDUError):
    """A PDU header announces more bytes than we accept.

    Raised as soon as the header is seen, before any of the claimed bytes are
    buffered, so a lying length field never costs memory.
    """

    abort_reason = ABORT_REASON_INVALID_PDU_PARAMETER_VALUE

    def __init__(self, message: str, *, length: int, limit: int, pdu_type: int | None = None) -> None:
        super().__init__(message, offset=2, pdu_type=pdu_type)
        self.length = length
        self.limit = limit


class PDataError(PDUError):
    """P-DATA-TF contents break the PS3.8 fragment rules: a PDV for an
    unnegotiated context, a data set fragment before its command, a context ID
    that changes within one message, a bad message control header."""

    abort_reason = ABORT_REASON_INVALID_PDU_PARAMETER_VALUE


class CommandSetError(ChromanetError):
    """A DIMSE command set (group 0000, Implicit VR Little Endian) is invalid.

    ``tag`` is the (group << 16 | element) tag concerned, when there is one;
    ``offset`` is the byte offset in the command set.
    """

    def __init__(self, message: str, *, tag: int | None = None, offset: int | None = None) -> None:
        where = []
        if tag is not None:
            where.append(f"tag ({tag >> 16:04X},{tag & 0xFFFF:04X})")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.tag = tag
        self.offset = offset


class EncodingError(ChromanetError, ValueError):
    """A data set is not well formed in its transfer syntax (at ``offset``).

    Raised by the data set codec (``chromanet._dataset``) and re-exported as
    ``chromanet.dsutil.EncodingError``.
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} at byte {offset}")
        self.offset = offset
