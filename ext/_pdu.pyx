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
from libc.string cimport memcpy, memset
from cython.dataclasses cimport dataclass, field

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


# ---------------------------------------------------------------- decoding

cdef unsigned char _EMPTY[1]


cdef inline unsigned int _u16(const unsigned char* p) noexcept nogil:
    return (<unsigned int>p[0] << 8) | p[1]


cdef inline unsigned long _u32(const unsigned char* p) noexcept nogil:
    return ((<unsigned long>p[0] << 24) | (<unsigned long>p[1] << 16)
            | (<unsigned long>p[2] << 8) | p[3])


cdef inline int _need(Py_ssize_t pos, Py_ssize_t want, Py_ssize_t end, int pdu_type,
                      int item_type, const char* what) except -1:
    """Raise MalformedPDUError unless ``want`` bytes remain at ``pos`` before ``end``.

    ``item_type`` -1 means "not inside an item".
    """
    if want > end - pos:
        _short(pos, want, end, pdu_type, item_type, what)
    return 0


cdef int _short(Py_ssize_t pos, Py_ssize_t want, Py_ssize_t end, int pdu_type,
                int item_type, const char* what) except -1:
    raise MalformedPDUError(
        f"{what.decode('ascii')}: needs {want} bytes, {end - pos} remain",
        offset=pos + HDR, item_type=None if item_type < 0 else item_type, pdu_type=pdu_type)


cdef str _ascii(const unsigned char* p, Py_ssize_t start, Py_ssize_t n, int pdu_type, int item_type):
    """Decode an ISO 646 string; anything outside ASCII is an invalid value."""
    cdef Py_ssize_t i
    for i in range(n):
        if p[start + i] & 0x80:
            raise InvalidPDUParameterError(
                "non-ASCII byte in a text field", offset=start + i + HDR,
                item_type=item_type, pdu_type=pdu_type)
    return (<const char*>p + start)[:n].decode("ascii")


cdef inline str _uid(const unsigned char* p, Py_ssize_t start, Py_ssize_t n, int pdu_type, int item_type):
    """A UID value: one trailing NUL (padding by some senders) is dropped."""
    if n > 0 and p[start + n - 1] == 0:
        n -= 1
    return _ascii(p, start, n, pdu_type, item_type)


cdef str _ae_title(const unsigned char* p, Py_ssize_t start, int pdu_type):
    """16 bytes, leading/trailing spaces not significant; trailing NULs dropped too."""
    cdef Py_ssize_t a = start, b = start + 16
    while b > a and (p[b - 1] == 0x20 or p[b - 1] == 0):
        b -= 1
    while a < b and p[a] == 0x20:
        a += 1
    if pdu_type == T_AC:
        # Reserved in the AC: echoed, "not tested"; never fail on it.
        return (<const char*>p + a)[:b - a].decode("latin-1")
    return _ascii_ae(p, a, b - a, pdu_type)


cdef str _ascii_ae(const unsigned char* p, Py_ssize_t start, Py_ssize_t n, int pdu_type):
    cdef Py_ssize_t i
    for i in range(n):
        if p[start + i] & 0x80:
            raise InvalidPDUParameterError(
                "non-ASCII byte in an AE title", offset=start + i + HDR, pdu_type=pdu_type)
    return (<const char*>p + start)[:n].decode("ascii")


cdef PresentationContextRQ _decode_pc_rq(const unsigned char* p, Py_ssize_t start, Py_ssize_t end):
    cdef Py_ssize_t pos, vend
    cdef unsigned int st, sl
    cdef PresentationContextRQ pc = PresentationContextRQ.__new__(PresentationContextRQ)
    _need(start, 4, end, T_RQ, I_PC_RQ, "presentation context item")
    _check_context_id(p[start], start, T_RQ, I_PC_RQ)
    pc.context_id = p[start]
    pc.abstract_syntax = None
    pc.transfer_syntaxes = []
    pos = start + 4
    while pos < end:
        _need(pos, 4, end, T_RQ, I_PC_RQ, "sub-item header")
        st = p[pos]
        sl = _u16(p + pos + 2)
        _need(pos, 4 + sl, end, T_RQ, st, "sub-item")
        vend = pos + 4 + sl
        if st == I_ABSTRACT:
            if pc.abstract_syntax is not None:
                raise UnexpectedPDUParameterError(
                    "second abstract syntax sub-item", offset=pos + HDR, item_type=st, pdu_type=T_RQ)
            pc.abstract_syntax = _uid(p, pos + 4, sl, T_RQ, st)
        elif st == I_TS:
            pc.transfer_syntaxes.append(_uid(p, pos + 4, sl, T_RQ, st))
        elif _known_item(st):
            raise UnexpectedPDUParameterError(
                "item not allowed in a presentation context (RQ)", offset=pos + HDR,
                item_type=st, pdu_type=T_RQ)
        pos = vend
    if pc.abstract_syntax is None:
        raise MalformedPDUError("presentation context without abstract syntax sub-item",
                                offset=start - 4 + HDR, item_type=I_ABSTRACT, pdu_type=T_RQ)
    if not pc.transfer_syntaxes:
        raise MalformedPDUError("presentation context without transfer syntax sub-item",
                                offset=start - 4 + HDR, item_type=I_TS, pdu_type=T_RQ)
    return pc


cdef PresentationContextAC _decode_pc_ac(const unsigned char* p, Py_ssize_t start, Py_ssize_t end):
    cdef Py_ssize_t pos
    cdef unsigned int st, sl
    cdef PresentationContextAC pc = PresentationContextAC.__new__(PresentationContextAC)
    cdef object ts = None
    _need(start, 4, end, T_AC, I_PC_AC, "presentation context item")
    _check_context_id(p[start], start, T_AC, I_PC_AC)
    if p[start + 2] > 4:
        raise InvalidPDUParameterError(
            f"presentation context result {p[start + 2]} is not 0-4", offset=start + 2 + HDR,
            item_type=I_PC_AC, pdu_type=T_AC)
    pc.context_id = p[start]
    pc.result = p[start + 2]
    pos = start + 4
    while pos < end:
        _need(pos, 4, end, T_AC, I_PC_AC, "sub-item header")
        st = p[pos]
        sl = _u16(p + pos + 2)
        _need(pos, 4 + sl, end, T_AC, st, "sub-item")
        if st == I_TS:
            if ts is not None:
                raise UnexpectedPDUParameterError(
                    "second transfer syntax sub-item", offset=pos + HDR, item_type=st, pdu_type=T_AC)
            ts = _uid(p, pos + 4, sl, T_AC, st)
        elif _known_item(st):
            raise UnexpectedPDUParameterError(
                "item not allowed in a presentation context (AC)", offset=pos + HDR,
                item_type=st, pdu_type=T_AC)
        pos += 4 + sl
    if ts is None:
        if pc.result == 0:
            raise MalformedPDUError("accepted presentation context without transfer syntax sub-item",
                                    offset=start - 4 + HDR, item_type=I_TS, pdu_type=T_AC)
        ts = ""  # not significant when rejected; tolerate its absence
    pc.transfer_syntax = ts
    return pc


cdef inline bint _known_item(unsigned int t) noexcept:
    return (t == I_APP or t == I_PC_RQ or t == I_PC_AC or t == I_ABSTRACT or t == I_TS
            or (I_USER <= t <= S_UID_AC))


cdef inline int _check_context_id(unsigned int cid, Py_ssize_t pos, int pdu_type, int item_type) except -1:
    if cid == 0 or (cid & 1) == 0:
        raise InvalidPDUParameterError(
            f"presentation context ID {cid} is not odd", offset=pos + HDR,
            item_type=None if item_type < 0 else item_type, pdu_type=pdu_type)
    return 0


cdef inline int _fixed(Py_ssize_t pos, unsigned int sl, unsigned int want, int pdu_type, int st) except -1:
    if sl != want:
        raise MalformedPDUError(f"sub-item length {sl}, expected {want}", offset=pos + HDR,
                                item_type=st, pdu_type=pdu_type)
    return 0


cdef int _dup(object existing, Py_ssize_t pos, int pdu_type, int st) except -1:
    if existing is not None:
        raise UnexpectedPDUParameterError("sub-item may appear only once", offset=pos + HDR,
                                          item_type=st, pdu_type=pdu_type)
    return 0


cdef int _bool_byte(const unsigned char* p, Py_ssize_t at, int pdu_type, int st) except -1:
    if p[at] > 1:
        raise InvalidPDUParameterError(f"value {p[at]} is not 0 or 1", offset=at + HDR,
                                       item_type=st, pdu_type=pdu_type)
    return p[at]


cdef UserInformation _decode_user_info(const unsigned char* p, Py_ssize_t start, Py_ssize_t end,
                                       int pdu_type):
    cdef Py_ssize_t pos, v, vend, q, rend
    cdef unsigned int st, sl, n1, n2, n3
    cdef UserInformation ui = UserInformation.__new__(UserInformation)
    ui.max_length = None
    ui.implementation_class_uid = None
    ui.implementation_version_name = None
    ui.async_ops_window = None
    ui.role_selections = []
    ui.sop_class_extended = []
    ui.sop_class_common_extended = []
    ui.user_identity_rq = None
    ui.user_identity_ac = None
    ui.unknown_items = []
    pos = start
    while pos < end:
        _need(pos, 4, end, pdu_type, I_USER, "sub-item header")
        st = p[pos]
        sl = _u16(p + pos + 2)
        _need(pos, 4 + sl, end, pdu_type, st, "sub-item")
        v = pos + 4
        vend = v + sl
        if st == S_MAXLEN:
            _fixed(pos, sl, 4, pdu_type, st)
            _dup(ui.max_length, pos, pdu_type, st)
            ui.max_length = _u32(p + v)
        elif st == S_IMPL_UID:
            _dup(ui.implementation_class_uid, pos, pdu_type, st)
            ui.implementation_class_uid = _uid(p, v, sl, pdu_type, st)
        elif st == S_ASYNC:
            _fixed(pos, sl, 4, pdu_type, st)
            _dup(ui.async_ops_window, pos, pdu_type, st)
            ui.async_ops_window = AsyncOperationsWindow(_u16(p + v), _u16(p + v + 2))
        elif st == S_ROLE:
            _need(v, 2, vend, pdu_type, st, "role selection UID length")
            n1 = _u16(p + v)
            _fixed(pos, sl, n1 + 4, pdu_type, st)
            ui.role_selections.append(RoleSelection(
                _uid(p, v + 2, n1, pdu_type, st),
                _bool_byte(p, v + 2 + n1, pdu_type, st),
                _bool_byte(p, v + 3 + n1, pdu_type, st)))
        elif st == S_IMPL_VER:
            _dup(ui.implementation_version_name, pos, pdu_type, st)
            ui.implementation_version_name = _ascii(p, v, sl, pdu_type, st)
        elif st == S_EXT:
            _need(v, 2, vend, pdu_type, st, "SOP class UID length")
            n1 = _u16(p + v)
            _need(v + 2, n1, vend, pdu_type, st, "SOP class UID")
            ui.sop_class_extended.append(SOPClassExtendedNegotiation(
                _uid(p, v + 2, n1, pdu_type, st),
                PyBytes_FromStringAndSize(<const char*>p + v + 2 + n1, vend - (v + 2 + n1))))
        elif st == S_COMMON_EXT:
            q = v
            _need(q, 2, vend, pdu_type, st, "SOP class UID length")
            n1 = _u16(p + q)
            _need(q + 2, n1, vend, pdu_type, st, "SOP class UID")
            sop = _uid(p, q + 2, n1, pdu_type, st)
            q += 2 + n1
            _need(q, 2, vend, pdu_type, st, "service class UID length")
            n2 = _u16(p + q)
            _need(q + 2, n2, vend, pdu_type, st, "service class UID")
            svc = _uid(p, q + 2, n2, pdu_type, st)
            q += 2 + n2
            _need(q, 2, vend, pdu_type, st, "related general SOP class length")
            n3 = _u16(p + q)
            q += 2
            _fixed(pos, sl, q + n3 - v, pdu_type, st)
            related = []
            rend = q + n3
            while q < rend:
                _need(q, 2, rend, pdu_type, st, "related general SOP class UID length")
                n1 = _u16(p + q)
                _need(q + 2, n1, rend, pdu_type, st, "related general SOP class UID")
                related.append(_uid(p, q + 2, n1, pdu_type, st))
                q += 2 + n1
            ui.sop_class_common_extended.append(SOPClassCommonExtendedNegotiation(sop, svc, related))
        elif st == S_UID_RQ:
            if pdu_type != T_RQ:
                raise UnexpectedPDUParameterError("user identity (RQ) sub-item outside an RQ",
                                                  offset=pos + HDR, item_type=st, pdu_type=pdu_type)
            _dup(ui.user_identity_rq, pos, pdu_type, st)
            _need(v, 4, vend, pdu_type, st, "user identity fields")
            n1 = _u16(p + v + 2)
            _need(v + 4, n1 + 2, vend, pdu_type, st, "primary field")
            n2 = _u16(p + v + 4 + n1)
            _fixed(pos, sl, 6 + n1 + n2, pdu_type, st)
            ident = UserIdentityRQ.__new__(UserIdentityRQ)
            (<UserIdentityRQ>ident).identity_type = p[v]
            (<UserIdentityRQ>ident).positive_response_requested = _bool_byte(p, v + 1, pdu_type, st)
            (<UserIdentityRQ>ident).primary_field = PyBytes_FromStringAndSize(<const char*>p + v + 4, n1)
            (<UserIdentityRQ>ident).secondary_field = PyBytes_FromStringAndSize(
                <const char*>p + v + 6 + n1, n2)
            ui.user_identity_rq = ident
        elif st == S_UID_AC:
            if pdu_type != T_AC:
                raise UnexpectedPDUParameterError("user identity (AC) sub-item outside an AC",
                                                  offset=pos + HDR, item_type=st, pdu_type=pdu_type)
            _dup(ui.user_identity_ac, pos, pdu_type, st)
            _need(v, 2, vend, pdu_type, st, "server response length")
            n1 = _u16(p + v)
            _fixed(pos, sl, 2 + n1, pdu_type, st)
            ui.user_identity_ac = UserIdentityAC(PyBytes_FromStringAndSize(<const char*>p + v + 2, n1))
        else:
            ui.unknown_items.append((st, PyBytes_FromStringAndSize(<const char*>p + v, sl)))
        pos = vend
    return ui


cdef object _decode_associate(int pdu_type, const unsigned char* p, Py_ssize_t n):
    cdef Py_ssize_t pos, v
    cdef unsigned int it, il
    cdef list contexts = []
    cdef object app = None, ui = None
    cdef unsigned int pc_type = I_PC_RQ if pdu_type == T_RQ else I_PC_AC
    _need(0, ASSOC_FIXED, n, pdu_type, -1, "fixed fields")
    version = _u16(p)
    called = _ae_title(p, 4, pdu_type)
    calling = _ae_title(p, 20, pdu_type)
    pos = ASSOC_FIXED
    while pos < n:
        _need(pos, 4, n, pdu_type, -1, "item header")
        it = p[pos]
        il = _u16(p + pos + 2)
        _need(pos, 4 + il, n, pdu_type, it, "item")
        v = pos + 4
        if it == I_APP:
            if app is not None:
                raise UnexpectedPDUParameterError("second application context item",
                                                  offset=pos + HDR, item_type=it, pdu_type=pdu_type)
            app = _uid(p, v, il, pdu_type, it)
        elif it == pc_type:
            if pdu_type == T_RQ:
                contexts.append(_decode_pc_rq(p, v, v + il))
            else:
                contexts.append(_decode_pc_ac(p, v, v + il))
        elif it == I_USER:
            if ui is not None:
                raise UnexpectedPDUParameterError("second user information item",
                                                  offset=pos + HDR, item_type=it, pdu_type=pdu_type)
            ui = _decode_user_info(p, v, v + il, pdu_type)
        elif _known_item(it):
            raise UnexpectedPDUParameterError("item not allowed at this level of the PDU",
                                              offset=pos + HDR, item_type=it, pdu_type=pdu_type)
        # else: unrecognised item type, ignored and skipped (PS3.8 9.3.1)
        pos = v + il
    if app is None:
        raise MalformedPDUError("no application context item", offset=n + HDR,
                                item_type=I_APP, pdu_type=pdu_type)
    if not contexts:
        raise MalformedPDUError("no presentation context item", offset=n + HDR,
                                item_type=pc_type, pdu_type=pdu_type)
    if ui is None:
        raise MalformedPDUError("no user information item", offset=n + HDR,
                                item_type=I_USER, pdu_type=pdu_type)
    if pdu_type == T_RQ:
        rq = AssociateRQ.__new__(AssociateRQ)
        (<AssociateRQ>rq).called_ae_title = called
        (<AssociateRQ>rq).calling_ae_title = calling
        (<AssociateRQ>rq).presentation_contexts = contexts
        (<AssociateRQ>rq).user_information = ui
        (<AssociateRQ>rq).application_context_name = app
        (<AssociateRQ>rq).protocol_version = version
        return rq
    ac = AssociateAC.__new__(AssociateAC)
    (<AssociateAC>ac).called_ae_title = called
    (<AssociateAC>ac).calling_ae_title = calling
    (<AssociateAC>ac).presentation_contexts = contexts
    (<AssociateAC>ac).user_information = ui
    (<AssociateAC>ac).application_context_name = app
    (<AssociateAC>ac).protocol_version = version
    return ac


cdef PDataTF _decode_pdata(const unsigned char* p, Py_ssize_t n, object view):
    """``view`` is a memoryview of an immutable body (PDV data become slices of it) or None."""
    cdef Py_ssize_t pos = 0, a
    cdef unsigned long il
    cdef unsigned char mch
    cdef list pdvs = []
    cdef PDV pdv
    if n == 0:
        raise MalformedPDUError("P-DATA-TF without PDV item", offset=HDR, pdu_type=T_PDATA)
    while pos < n:
        _need(pos, 4, n, T_PDATA, -1, "PDV item length")
        il = _u32(p + pos)
        if il < 2:
            raise InvalidPDUParameterError(f"PDV item length {il} < 2", offset=pos + HDR,
                                           pdu_type=T_PDATA)
        if <unsigned long long>il > <unsigned long long>(n - pos - 4):
            raise MalformedPDUError(f"PDV item length {il} overruns the PDU ({n - pos - 4} remain)",
                                    offset=pos + HDR, pdu_type=T_PDATA)
        _check_context_id(p[pos + 4], pos + 4, T_PDATA, -1)
        mch = p[pos + 5]
        if mch & 0xFC:
            raise InvalidPDUParameterError(f"message control header 0x{mch:02X} has reserved bits set",
                                           offset=pos + 5 + HDR, pdu_type=T_PDATA)
        a = pos + 6
        pos += 4 + <Py_ssize_t>il
        pdv = PDV.__new__(PDV)
        pdv.context_id = p[a - 2]
        pdv.is_command = mch & 1
        pdv.is_last = (mch >> 1) & 1
        if view is not None:
            pdv.data = view[a:pos]
        else:
            pdv.data = PyBytes_FromStringAndSize(<const char*>p + a, pos - a)
        pdvs.append(pdv)
    cdef PDataTF pd = PDataTF.__new__(PDataTF)
    pd.pdvs = pdvs
    return pd


cdef object _decode(int pdu_type, const unsigned char* p, Py_ssize_t n, object view):
    if pdu_type == T_PDATA:
        return _decode_pdata(p, n, view)
    if pdu_type == T_RQ or pdu_type == T_AC:
        return _decode_associate(pdu_type, p, n)
    if pdu_type < T_RJ or pdu_type > T_ABORT:
        raise UnrecognizedPDUError(f"unknown PDU type 0x{pdu_type & 0xFF:02X}",
                                   offset=0, pdu_type=pdu_type)
    if n != 4:
        raise MalformedPDUError(f"PDU length {n}, expected 4", offset=2, pdu_type=pdu_type)
    if pdu_type == T_RJ:
        if p[1] != 1 and p[1] != 2:
            raise InvalidPDUParameterError(f"A-ASSOCIATE-RJ result {p[1]} is not 1 or 2",
                                           offset=7, pdu_type=pdu_type)
        if p[2] < 1 or p[2] > 3:
            raise InvalidPDUParameterError(f"A-ASSOCIATE-RJ source {p[2]} is not 1-3",
                                           offset=8, pdu_type=pdu_type)
        rj = AssociateRJ.__new__(AssociateRJ)
        (<AssociateRJ>rj).result = p[1]
        (<AssociateRJ>rj).source = p[2]
        (<AssociateRJ>rj).reason = p[3]
        return rj
    if pdu_type == T_RELRQ:
        return ReleaseRQ.__new__(ReleaseRQ)
    if pdu_type == T_RELRP:
        return ReleaseRP.__new__(ReleaseRP)
    # A-ABORT: an abort is never refused over its values (source 1 is reserved
    # but harmless); the association ends either way.
    ab = Abort.__new__(Abort)
    (<Abort>ab).source = p[2]
    (<Abort>ab).reason = p[3]
    return ab


cdef inline bint _immutable(object obj):
    if type(obj) is bytes:
        return True
    return type(obj) is memoryview and type((<object>obj).obj) is bytes


cdef object _byte_view(object obj):
    """A flat, C-contiguous unsigned-byte memoryview of ``obj`` (copied only if it is not)."""
    mv = memoryview(obj)
    if not mv.c_contiguous:
        return memoryview(mv.tobytes())
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


def decode_pdu(int pdu_type, body):
    """Decode a PDU from its type byte and the ``body`` after the 6-byte header.

    Raises UnrecognizedPDUError for an unknown type, MalformedPDUError /
    UnexpectedPDUParameterError / InvalidPDUParameterError (chromanet.errors)
    naming the item and offset for anything else wrong. ``offset`` counts
    from the PDU type byte, as if the 6-byte header preceded ``body``.

    P-DATA-TF: when ``body`` is ``bytes`` (or a memoryview of ``bytes``) each
    PDV's ``data`` is a memoryview slice of it, no copy; otherwise ``bytes``.
    """
    cdef const unsigned char[::1] buf
    cdef const unsigned char* p
    cdef Py_ssize_t n
    if type(body) is bytes:
        p = <const unsigned char*>PyBytes_AS_STRING(body)
        n = len(<bytes>body)
        return _decode(pdu_type, p, n, memoryview(body) if pdu_type == T_PDATA else None)
    mv = _byte_view(body)
    buf = mv
    n = buf.shape[0]
    p = &buf[0] if n else _EMPTY
    view = mv if (pdu_type == T_PDATA and _immutable(mv)) else None
    return _decode(pdu_type, p, n, view)


def decode_pdu_bytes(data):
    """Decode one whole PDU, header included; its length field must match len(data)."""
    cdef const unsigned char[::1] buf
    cdef Py_ssize_t n
    mv = _byte_view(data)
    buf = mv
    n = buf.shape[0]
    if n < HDR:
        raise MalformedPDUError(f"{n} bytes, shorter than a PDU header", offset=n)
    cdef unsigned long length = _u32(&buf[2])
    if <unsigned long long>length != <unsigned long long>(n - HDR):
        raise MalformedPDUError(f"PDU length field {length} but {n - HDR} bytes follow the header",
                                offset=2, pdu_type=buf[0])
    if buf[0] == T_PDATA:
        return decode_pdu(buf[0], mv[HDR:])
    return _decode(buf[0], &buf[HDR] if n > HDR else _EMPTY, n - HDR, None)


# ---------------------------------------------------------------- encoding

cdef struct _W:
    unsigned char* p
    Py_ssize_t pos
    Py_ssize_t cap


cdef inline int _room(_W* w, Py_ssize_t n) except -1:
    if n > w.cap - w.pos:  # sizes measured in pass 1 disagree with pass 2
        raise RuntimeError("PDU changed while it was being encoded")
    return 0


cdef inline int _w8(_W* w, unsigned int v) except -1:
    _room(w, 1)
    w.p[w.pos] = v & 0xFF
    w.pos += 1
    return 0


cdef inline int _w16(_W* w, unsigned int v) except -1:
    _room(w, 2)
    w.p[w.pos] = (v >> 8) & 0xFF
    w.p[w.pos + 1] = v & 0xFF
    w.pos += 2
    return 0


cdef inline int _w32(_W* w, unsigned long v) except -1:
    _room(w, 4)
    w.p[w.pos] = (v >> 24) & 0xFF
    w.p[w.pos + 1] = (v >> 16) & 0xFF
    w.p[w.pos + 2] = (v >> 8) & 0xFF
    w.p[w.pos + 3] = v & 0xFF
    w.pos += 4
    return 0


cdef inline int _wmem(_W* w, const void* src, Py_ssize_t n) except -1:
    _room(w, n)
    if n:
        memcpy(w.p + w.pos, src, n)
    w.pos += n
    return 0


cdef Py_ssize_t _slen(object s, str what) except -1:
    """Length of an ASCII str (its encoded size); ValueError/TypeError otherwise."""
    if type(s) is not str:
        if not isinstance(s, str):
            raise TypeError(f"{what} must be str, not {type(s).__name__}")
    if not PyUnicode_IS_ASCII(s):
        raise ValueError(f"{what} must be ASCII: {s!r}")
    return PyUnicode_GET_LENGTH(s)


cdef inline int _wstr(_W* w, object s) except -1:
    # ASCII compact str: its data is the 1-byte encoding already (checked by _slen).
    return _wmem(w, PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s))


cdef inline Py_ssize_t _item16(Py_ssize_t n, str what) except -1:
    if n > 0xFFFF:
        raise ValueError(f"{what} is {n} bytes, more than an item length can hold (65535)")
    return n


cdef int _wuid_item(_W* w, unsigned int t, object s) except -1:
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(s)
    _w8(w, t); _w8(w, 0); _w16(w, n)
    return _wstr(w, s)


cdef Py_ssize_t _uid_item_size(object s, str what) except -1:
    return 4 + _item16(_slen(s, what), what)


cdef int _check_ae(object title, str what) except -1:
    cdef Py_ssize_t n = _slen(title, what)
    if n > 16:
        raise ValueError(f"{what} {title!r} is longer than 16 characters")
    if not (<str>title).strip(" "):
        raise ValueError(f"{what} is empty")
    for ch in <str>title:
        if ch == "\\" or ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise ValueError(f"{what} {title!r} holds a backslash or a control character")
    return 0


cdef int _wae(_W* w, object title) except -1:
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(title)
    _room(w, 16)
    memcpy(w.p + w.pos, PyUnicode_DATA(title), n)
    memset(w.p + w.pos + n, 0x20, 16 - n)
    w.pos += 16
    return 0


cdef Py_ssize_t _blen(object b, str what) except -1:
    if type(b) is bytes:
        return len(<bytes>b)
    if isinstance(b, str):
        raise TypeError(f"{what} must be bytes-like, not str")
    try:
        return memoryview(b).nbytes
    except TypeError:
        raise TypeError(f"{what} must be bytes-like, not {type(b).__name__}") from None


cdef int _wbytes(_W* w, object b) except -1:
    cdef const unsigned char[::1] v
    if type(b) is bytes:
        return _wmem(w, PyBytes_AS_STRING(b), len(<bytes>b))
    v = _byte_view(b)
    if v.shape[0]:
        _wmem(w, &v[0], v.shape[0])
    return 0


cdef unsigned long _uint(object value, unsigned long limit, str what) except? 0xFFFFFFFF:
    if not isinstance(value, int):
        raise TypeError(f"{what} must be int, not {type(value).__name__}")
    if value < 0 or value > limit:
        raise ValueError(f"{what} {value!r} is outside 0..{limit}")
    return <unsigned long>value


cdef int _check_cid(object cid, str what) except -1:
    cdef unsigned long c = _uint(cid, 255, what)
    if c == 0 or (c & 1) == 0:
        raise ValueError(f"{what} {cid!r} must be odd, 1..255")
    return 0


cdef Py_ssize_t _ui_size(UserInformation ui, int pdu_type) except -1:
    """Value length of the User Information item; validates everything it measures."""
    cdef Py_ssize_t n = 0, m, k
    if ui.max_length is not None:
        _uint(ui.max_length, 0xFFFFFFFF, "max_length")
        n += 8
    if ui.implementation_class_uid is not None:
        n += _uid_item_size(ui.implementation_class_uid, "implementation_class_uid")
    if ui.async_ops_window is not None:
        if not isinstance(ui.async_ops_window, AsyncOperationsWindow):
            raise TypeError("async_ops_window must be an AsyncOperationsWindow")
        _uint((<AsyncOperationsWindow>ui.async_ops_window).max_operations_invoked, 0xFFFF,
              "max_operations_invoked")
        _uint((<AsyncOperationsWindow>ui.async_ops_window).max_operations_performed, 0xFFFF,
              "max_operations_performed")
        n += 8
    for rs in ui.role_selections:
        if not isinstance(rs, RoleSelection):
            raise TypeError("role_selections must hold RoleSelection")
        n += 4 + _item16(4 + _slen((<RoleSelection>rs).sop_class_uid, "sop_class_uid"), "role selection")
    if ui.implementation_version_name is not None:
        n += _uid_item_size(ui.implementation_version_name, "implementation_version_name")
    for ext in ui.sop_class_extended:
        if not isinstance(ext, SOPClassExtendedNegotiation):
            raise TypeError("sop_class_extended must hold SOPClassExtendedNegotiation")
        m = 2 + _slen((<SOPClassExtendedNegotiation>ext).sop_class_uid, "sop_class_uid")
        m += _blen((<SOPClassExtendedNegotiation>ext).application_information, "application_information")
        n += 4 + _item16(m, "SOP class extended negotiation")
    for cex in ui.sop_class_common_extended:
        if not isinstance(cex, SOPClassCommonExtendedNegotiation):
            raise TypeError("sop_class_common_extended must hold SOPClassCommonExtendedNegotiation")
        m = 6 + _slen((<SOPClassCommonExtendedNegotiation>cex).sop_class_uid, "sop_class_uid")
        m += _slen((<SOPClassCommonExtendedNegotiation>cex).service_class_uid, "service_class_uid")
        k = 0
        for uid in (<SOPClassCommonExtendedNegotiation>cex).related_general_sop_classes:
            k += 2 + _item16(_slen(uid, "related general SOP class UID"), "related general SOP class UID")
        _item16(k, "related general SOP classes")
        n += 4 + _item16(m + k, "SOP class common extended negotiation")
    if ui.user_identity_rq is not None:
        if pdu_type != T_RQ:
            raise ValueError("user_identity_rq is sent in an A-ASSOCIATE-RQ only")
        if not isinstance(ui.user_identity_rq, UserIdentityRQ):
            raise TypeError("user_identity_rq must be a UserIdentityRQ")
        idr = <UserIdentityRQ>ui.user_identity_rq
        _uint(idr.identity_type, 255, "identity_type")
        m = _item16(_blen(idr.primary_field, "primary_field"), "primary_field")
        m += _item16(_blen(idr.secondary_field, "secondary_field"), "secondary_field")
        n += 4 + _item16(6 + m, "user identity")
    if ui.user_identity_ac is not None:
        if pdu_type != T_AC:
            raise ValueError("user_identity_ac is sent in an A-ASSOCIATE-AC only")
        if not isinstance(ui.user_identity_ac, UserIdentityAC):
            raise TypeError("user_identity_ac must be a UserIdentityAC")
        m = _blen((<UserIdentityAC>ui.user_identity_ac).server_response, "server_response")
        n += 4 + _item16(2 + _item16(m, "server_response"), "user identity")
    for unk in ui.unknown_items:
        t, val = unk
        if S_MAXLEN <= _uint(t, 255, "unknown item type") <= S_UID_AC:
            raise ValueError(f"unknown_items may not use the known sub-item type 0x{t:02X}")
        n += 4 + _item16(_blen(val, "unknown item value"), "unknown item value")
    return _item16(n, "user information item")


cdef int _w_unknown_upto(_W* w, list unknown, Py_ssize_t* idx, unsigned int upto) except -1:
    """Write the unknown sub-items (kept in order) whose type sorts before ``upto``."""
    while idx[0] < len(unknown) and unknown[idx[0]][0] < upto:
        t, val = unknown[idx[0]]
        _w8(w, t); _w8(w, 0); _w16(w, _blen(val, "unknown item value"))
        _wbytes(w, val)
        idx[0] += 1
    return 0


cdef int _w_user_info(_W* w, UserInformation ui, Py_ssize_t size) except -1:
    """Sub-items in increasing type order (PS3.8 9.3.1); unknown ones merged by type."""
    cdef Py_ssize_t u = 0
    cdef list unknown = ui.unknown_items
    _w8(w, I_USER); _w8(w, 0); _w16(w, size)
    _w_unknown_upto(w, unknown, &u, S_MAXLEN)
    if ui.max_length is not None:
        _w8(w, S_MAXLEN); _w8(w, 0); _w16(w, 4); _w32(w, ui.max_length)
    _w_unknown_upto(w, unknown, &u, S_IMPL_UID)
    if ui.implementation_class_uid is not None:
        _wuid_item(w, S_IMPL_UID, ui.implementation_class_uid)
    _w_unknown_upto(w, unknown, &u, S_ASYNC)
    if ui.async_ops_window is not None:
        aw = <AsyncOperationsWindow>ui.async_ops_window
        _w8(w, S_ASYNC); _w8(w, 0); _w16(w, 4)
        _w16(w, aw.max_operations_invoked); _w16(w, aw.max_operations_performed)
    _w_unknown_upto(w, unknown, &u, S_ROLE)
    for rs in ui.role_selections:
        uid = (<RoleSelection>rs).sop_class_uid
        _w8(w, S_ROLE); _w8(w, 0); _w16(w, 4 + PyUnicode_GET_LENGTH(uid))
        _w16(w, PyUnicode_GET_LENGTH(uid)); _wstr(w, uid)
        _w8(w, (<RoleSelection>rs).scu_role); _w8(w, (<RoleSelection>rs).scp_role)
    _w_unknown_upto(w, unknown, &u, S_IMPL_VER)
    if ui.implementation_version_name is not None:
        _wuid_item(w, S_IMPL_VER, ui.implementation_version_name)
    _w_unknown_upto(w, unknown, &u, S_EXT)
    for ext in ui.sop_class_extended:
        uid = (<SOPClassExtendedNegotiation>ext).sop_class_uid
        info = (<SOPClassExtendedNegotiation>ext).application_information
        _w8(w, S_EXT); _w8(w, 0)
        _w16(w, 2 + PyUnicode_GET_LENGTH(uid) + _blen(info, "application_information"))
        _w16(w, PyUnicode_GET_LENGTH(uid)); _wstr(w, uid); _wbytes(w, info)
    _w_unknown_upto(w, unknown, &u, S_COMMON_EXT)
    for cex in ui.sop_class_common_extended:
        c = <SOPClassCommonExtendedNegotiation>cex
        k = 0
        for uid in c.related_general_sop_classes:
            k += 2 + PyUnicode_GET_LENGTH(uid)
        _w8(w, S_COMMON_EXT); _w8(w, 0)  # reserved byte = sub-item version 0
        _w16(w, 6 + PyUnicode_GET_LENGTH(c.sop_class_uid) + PyUnicode_GET_LENGTH(c.service_class_uid) + k)
        _w16(w, PyUnicode_GET_LENGTH(c.sop_class_uid)); _wstr(w, c.sop_class_uid)
        _w16(w, PyUnicode_GET_LENGTH(c.service_class_uid)); _wstr(w, c.service_class_uid)
        _w16(w, k)
        for uid in c.related_general_sop_classes:
            _w16(w, PyUnicode_GET_LENGTH(uid)); _wstr(w, uid)
    _w_unknown_upto(w, unknown, &u, S_UID_RQ)
    if ui.user_identity_rq is not None:
        idr = <UserIdentityRQ>ui.user_identity_rq
        n1 = _blen(idr.primary_field, "primary_field")
        n2 = _blen(idr.secondary_field, "secondary_field")
        _w8(w, S_UID_RQ); _w8(w, 0); _w16(w, 6 + n1 + n2)
        _w8(w, idr.identity_type); _w8(w, idr.positive_response_requested)
        _w16(w, n1); _wbytes(w, idr.primary_field)
        _w16(w, n2); _wbytes(w, idr.secondary_field)
    _w_unknown_upto(w, unknown, &u, S_UID_AC)
    if ui.user_identity_ac is not None:
        rsp = (<UserIdentityAC>ui.user_identity_ac).server_response
        n1 = _blen(rsp, "server_response")
        _w8(w, S_UID_AC); _w8(w, 0); _w16(w, 2 + n1); _w16(w, n1); _wbytes(w, rsp)
    _w_unknown_upto(w, unknown, &u, 0x100)
    return 0


cdef bytes _new_pdu(Py_ssize_t body, unsigned int pdu_type, _W* w):
    if body > 0xFFFFFFFF:
        raise ValueError(f"PDU body of {body} bytes does not fit the 32-bit length field")
    out = PyBytes_FromStringAndSize(NULL, HDR + body)
    w.p = <unsigned char*>PyBytes_AS_STRING(out)
    w.pos = 0
    w.cap = HDR + body
    _w8(w, pdu_type); _w8(w, 0); _w32(w, body)
    return out


cdef bytes _encode_associate(object pdu, int pdu_type):
    cdef _W w
    cdef Py_ssize_t n, ui_size, m
    cdef list contexts
    cdef UserInformation ui
    if pdu_type == T_RQ:
        rq = <AssociateRQ>pdu
        called, calling, contexts = rq.called_ae_title, rq.calling_ae_title, rq.presentation_contexts
        app, ui, version = rq.application_context_name, rq.user_information, rq.protocol_version
    else:
        ac = <AssociateAC>pdu
        called, calling, contexts = ac.called_ae_title, ac.calling_ae_title, ac.presentation_contexts
        app, ui, version = ac.application_context_name, ac.user_information, ac.protocol_version
    _check_ae(called, "called_ae_title")
    _check_ae(calling, "calling_ae_title")
    _uint(version, 0xFFFF, "protocol_version")
    if ui is None:
        raise ValueError("user_information is required")
    if not contexts:
        raise ValueError("at least one presentation context is required")
    # pass 1: measure (and validate)
    n = ASSOC_FIXED + _uid_item_size(app, "application_context_name")
    for pc in contexts:
        if pdu_type == T_RQ:
            if not isinstance(pc, PresentationContextRQ):
                raise TypeError("presentation_contexts must hold PresentationContextRQ")
            _check_cid((<PresentationContextRQ>pc).context_id, "context_id")
            m = 4 + _uid_item_size((<PresentationContextRQ>pc).abstract_syntax, "abstract_syntax")
            if not (<PresentationContextRQ>pc).transfer_syntaxes:
                raise ValueError("a proposed presentation context needs a transfer syntax")
            for ts in (<PresentationContextRQ>pc).transfer_syntaxes:
                m += _uid_item_size(ts, "transfer syntax")
        else:
            if not isinstance(pc, PresentationContextAC):
                raise TypeError("presentation_contexts must hold PresentationContextAC")
            _check_cid((<PresentationContextAC>pc).context_id, "context_id")
            _uint((<PresentationContextAC>pc).result, 4, "result")
            m = 4 + _uid_item_size((<PresentationContextAC>pc).transfer_syntax, "transfer_syntax")
        n += 4 + _item16(m, "presentation context item")
    ui_size = _ui_size(ui, pdu_type)
    n += 4 + ui_size
    # pass 2: write
    out = _new_pdu(n, pdu_type, &w)
    _w16(&w, version); _w16(&w, 0)
    _wae(&w, called); _wae(&w, calling)
    _room(&w, 32); memset(w.p + w.pos, 0, 32); w.pos += 32
    _wuid_item(&w, I_APP, app)
    for pc in contexts:
        if pdu_type == T_RQ:
            prq = <PresentationContextRQ>pc
            m = 4 + 4 + PyUnicode_GET_LENGTH(prq.abstract_syntax)
            for ts in prq.transfer_syntaxes:
                m += 4 + PyUnicode_GET_LENGTH(ts)
            _w8(&w, I_PC_RQ); _w8(&w, 0); _w16(&w, m)
            _w8(&w, prq.context_id); _w8(&w, 0); _w8(&w, 0); _w8(&w, 0)
            _wuid_item(&w, I_ABSTRACT, prq.abstract_syntax)
            for ts in prq.transfer_syntaxes:
                _wuid_item(&w, I_TS, ts)
        else:
            pac = <PresentationContextAC>pc
            _w8(&w, I_PC_AC); _w8(&w, 0); _w16(&w, 8 + PyUnicode_GET_LENGTH(pac.transfer_syntax))
            _w8(&w, pac.context_id); _w8(&w, 0); _w8(&w, pac.result); _w8(&w, 0)
            _wuid_item(&w, I_TS, pac.transfer_syntax)
    _w_user_info(&w, ui, ui_size)
    if w.pos != w.cap:
        raise RuntimeError("PDU changed while it was being encoded")
    return out


cdef bytes _encode_pdata(PDataTF pd):
    cdef _W w
    cdef Py_ssize_t n = 0
    cdef list sizes = []
    cdef PDV pdv
    for obj in pd.pdvs:
        if not isinstance(obj, PDV):
            raise TypeError("pdvs must hold PDV")
        pdv = <PDV>obj
        _check_cid(pdv.context_id, "context_id")
        size = _blen(pdv.data, "PDV data")
        if size > 0xFFFFFFFF - 2:
            raise ValueError("PDV data too large for one PDV item")
        sizes.append(size)
        n += 6 + size
    if not sizes:
        raise ValueError("a P-DATA-TF needs at least one PDV")
    out = _new_pdu(n, T_PDATA, &w)
    for i, obj in enumerate(pd.pdvs):
        pdv = <PDV>obj
        _w32(&w, <Py_ssize_t>sizes[i] + 2)
        _w8(&w, pdv.context_id)
        _w8(&w, (1 if pdv.is_command else 0) | (2 if pdv.is_last else 0))
        _wbytes(&w, pdv.data)
    if w.pos != w.cap:
        raise RuntimeError("PDU changed while it was being encoded")
    return out


cdef bytes _encode_fixed4(unsigned int pdu_type, unsigned int b1, unsigned int b2, unsigned int b3):
    cdef _W w
    out = _new_pdu(4, pdu_type, &w)
    _w8(&w, 0); _w8(&w, b1); _w8(&w, b2); _w8(&w, b3)
    return out


def encode_pdu(pdu):
    """The whole PDU, 6-byte header included.

    Raises TypeError/ValueError for values that cannot be sent: AE titles
    empty, longer than 16 or not ASCII, non-ASCII UIDs, even context IDs,
    lengths that overflow their fields, sub-items in the wrong PDU (user
    identity RQ in an AC, ...). UIDs are written as given, never padded.
    """
    t = type(pdu)
    if t is AssociateRQ:
        return _encode_associate(pdu, T_RQ)
    if t is AssociateAC:
        return _encode_associate(pdu, T_AC)
    if t is PDataTF:
        return _encode_pdata(<PDataTF>pdu)
    if t is AssociateRJ:
        rj = <AssociateRJ>pdu
        return _encode_fixed4(T_RJ, _uint(rj.result, 255, "result"), _uint(rj.source, 255, "source"),
                              _uint(rj.reason, 255, "reason"))
    if t is ReleaseRQ:
        return _encode_fixed4(T_RELRQ, 0, 0, 0)
    if t is ReleaseRP:
        return _encode_fixed4(T_RELRP, 0, 0, 0)
    if t is Abort:
        ab = <Abort>pdu
        return _encode_fixed4(T_ABORT, 0, _uint(ab.source, 255, "source"), _uint(ab.reason, 255, "reason"))
    raise TypeError(f"not a PDU: {t.__name__}")
