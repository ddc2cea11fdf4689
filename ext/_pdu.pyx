# cython: language_level=3
"""PS3.8 Upper Layer PDUs: value classes and their encoder/decoder.

Decoding parses untrusted bytes through a raw pointer: every read is preceded
by an explicit check of the length that remains (``_need``), so no Cython
bounds checks are involved and none are needed. Encoding measures the PDU
first, then fills one pre-sized ``bytes`` object.

Leniency, decided from PS3.8 section 9.3.1 ("Items of unrecognized types
shall be ignored and skipped"):

* item types we do not know at PDU level (A-ASSOCIATE-RQ/AC) and sub-item
  types we do not know inside a Presentation Context item are skipped by
  their length and not kept;
* unknown User Information sub-items are kept in
  ``UserInformation.unknown_items`` (PS3.7 Annex D lets new ones appear);
* reserved fields are never tested; the protocol version is returned as
  received (testing bit 0 is the association layer's job: it answers with
  A-ASSOCIATE-RJ, not an abort);
* item order is not enforced on receive; we send in increasing type order.

A *recognised* item where PS3.8 does not allow it (0x21 in an RQ, a second
Application Context item, User Identity AC 0x59 in an RQ, ...) raises
UnexpectedPDUParameterError. Maximum Length and Implementation Class UID are
mandatory by the standard but their absence is reported as ``None`` rather
than an error, so that the association layer decides.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memcpy, memset
from cython.dataclasses cimport dataclass, field

from _bytes cimport load_be16, load_be32, store_be16, store_be32

from chromanet.errors import (
    InvalidPDUParameterError,
    MalformedPDUError,
    UnexpectedPDUParameterError,
    UnrecognizedPDUError,
)

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)
    const void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)


A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"

cdef enum:
    T_RQ = 0x01
    T_AC = 0x02
    T_RJ = 0x03
    T_PDATA = 0x04
    T_RELRQ = 0x05
    T_RELRP = 0x06
    T_ABORT = 0x07
    I_APP = 0x10
    I_PC_RQ = 0x20
    I_PC_AC = 0x21
    I_ABSTRACT = 0x30
    I_TS = 0x40
    I_USER = 0x50
    S_MAXLEN = 0x51
    S_IMPL_UID = 0x52
    S_ASYNC = 0x53
    S_ROLE = 0x54
    S_IMPL_VER = 0x55
    S_EXT = 0x56
    S_COMMON_EXT = 0x57
    S_UID_RQ = 0x58
    S_UID_AC = 0x59
    HDR = 6            # PDU header size: offsets in errors count from the type byte
    ASSOC_FIXED = 68   # fixed part of A-ASSOCIATE-RQ/AC after the header


# ---------------------------------------------------------------- value classes
#
# Text fields are typed ``object`` so that str subclasses (pydicom's UID) are
# accepted; decoding always stores plain ``str`` and encoding checks the type.

@dataclass
cdef class PresentationContextRQ:
    """Item 0x20: a proposed presentation context."""
    context_id: int
    abstract_syntax: object
    transfer_syntaxes: list = field(default_factory=list)


@dataclass
cdef class PresentationContextAC:
    """Item 0x21: the acceptor's answer for one presentation context."""
    context_id: int
    result: int = 0
    transfer_syntax: object = ""


@dataclass
cdef class RoleSelection:
    """Sub-item 0x54 (PS3.7 D.3.3.4)."""
    sop_class_uid: object
    scu_role: cython.bint
    scp_role: cython.bint


@dataclass
cdef class AsyncOperationsWindow:
    """Sub-item 0x53 (PS3.7 D.3.3.3); 0 means unlimited."""
    max_operations_invoked: int = 1
    max_operations_performed: int = 1


@dataclass
cdef class SOPClassExtendedNegotiation:
    """Sub-item 0x56 (PS3.7 D.3.3.5); the application information is opaque."""
    sop_class_uid: object
    application_information: bytes = b""


@dataclass
cdef class SOPClassCommonExtendedNegotiation:
    """Sub-item 0x57 (PS3.7 D.3.3.6).

    Defined for the A-ASSOCIATE-RQ; accepted in an AC too (some peers echo it)
    and kept there, so that such an AC round-trips.
    """
    sop_class_uid: object
    service_class_uid: object
    related_general_sop_classes: list = field(default_factory=list)


@dataclass
cdef class UserIdentityRQ:
    """Sub-item 0x58 (PS3.7 D.3.3.7.1)."""
    identity_type: int
    primary_field: bytes
    secondary_field: bytes = b""
    positive_response_requested: cython.bint = False


@dataclass
cdef class UserIdentityAC:
    """Sub-item 0x59 (PS3.7 D.3.3.7.2)."""
    server_response: bytes = b""


@dataclass
cdef class UserInformation:
    """Item 0x50. ``None`` means the sub-item is absent."""
    max_length: object = None
    implementation_class_uid: object = None
    implementation_version_name: object = None
    async_ops_window: object = None
    role_selections: list = field(default_factory=list)
    sop_class_extended: list = field(default_factory=list)
    sop_class_common_extended: list = field(default_factory=list)
    user_identity_rq: object = None
    user_identity_ac: object = None
    unknown_items: list = field(default_factory=list)


@dataclass
cdef class AssociateRQ:
    """A-ASSOCIATE-RQ (0x01). AE titles are kept without their padding."""
    called_ae_title: object
    calling_ae_title: object
    presentation_contexts: list = field(default_factory=list)
    user_information: UserInformation = field(default_factory=UserInformation)
    application_context_name: object = APPLICATION_CONTEXT_NAME
    protocol_version: int = 1


@dataclass
cdef class AssociateAC:
    """A-ASSOCIATE-AC (0x02). The AE titles are echoed from the RQ, never tested."""
    called_ae_title: object
    calling_ae_title: object
    presentation_contexts: list = field(default_factory=list)
    user_information: UserInformation = field(default_factory=UserInformation)
    application_context_name: object = APPLICATION_CONTEXT_NAME
    protocol_version: int = 1


@dataclass
cdef class AssociateRJ:
    """A-ASSOCIATE-RJ (0x03)."""
    result: int
    source: int
    reason: int


@dataclass(repr=False)
cdef class PDV:
    """One Presentation Data Value item of a P-DATA-TF.

    ``data`` is a zero-copy memoryview when decoded from an immutable body.
    """
    context_id: int
    is_command: cython.bint
    is_last: cython.bint
    data: object

    def __repr__(self):
        cdef Py_ssize_t n = len(self.data)
        head = bytes(self.data[:16])
        return (f"PDV(context_id={self.context_id!r}, is_command={self.is_command!r}, "
                f"is_last={self.is_last!r}, data=<{n} bytes {head!r}{'...' if n > 16 else ''}>)")


@dataclass
cdef class PDataTF:
    """P-DATA-TF (0x04)."""
    pdvs: list = field(default_factory=list)


@dataclass
cdef class ReleaseRQ:
    """A-RELEASE-RQ (0x05)."""
    pass


@dataclass
cdef class ReleaseRP:
    """A-RELEASE-RP (0x06)."""
    pass


@dataclass
cdef class Abort:
    """A-ABORT (0x07). ``reason`` is meaningful when ``source`` == 2."""
    source: int = 0
    reason: int = 0


include "_pdu_decode.pxi"
include "_pdu_encode.pxi"
