# cython: language_level=3
"""DIMSE command sets: group 0000, Implicit VR Little Endian.

A command set is a short run of group-0000 elements in ascending tag order,
led by (0000,0000) Command Group Length. ``decode_command`` walks the bytes
once in C, switching on the element number; ``encode_command`` sizes the
result first and fills one pre-allocated ``bytes`` object.

Mandatory elements checked by ``decode_command`` (from the PS3.7 section 9.3
message tables, read together with the section 9.1 service parameter tables):

* every command: Command Group Length, Command Field, Command Data Set Type
  (the last two are "required by the DIMSE-C protocol");
* C-ECHO-RQ: Affected SOP Class UID, Message ID;
* C-STORE-RQ: Affected SOP Class UID, Message ID, Priority, Affected SOP
  Instance UID (Move Originator AE Title / Message ID are U);
* C-FIND-RQ, C-GET-RQ: Affected SOP Class UID, Message ID, Priority;
* C-MOVE-RQ: as C-FIND-RQ plus Move Destination;
* every response: Message ID Being Responded To, Status. Affected SOP Class
  UID and (C-STORE-RSP) Affected SOP Instance UID are U(=) in the service
  tables and are often omitted by real peers, so they are not required;
  sub-operation counts are conditional on the status and not required;
* C-CANCEL-RQ: Message ID Being Responded To.

The Command Group Length must be present, as a UL, but its value is not
compared with the length of the command set: the P-DATA framing, not the
value, bounds the command set, and peers whose value is off are common.

Values are not checked against their meaning (a C-ECHO-RQ whose Data Set Type
says a data set follows is decoded as such): the layer above decides.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeLatin1
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy
from libc.stdlib cimport qsort

from _bytes cimport load_le16, load_le32, store_le16, store_le32

from operator import index as _index

from chromanet.errors import CommandSetError

__all__ = [
    "Command", "encode_command", "decode_command",
    "C_STORE_RQ", "C_STORE_RSP", "C_GET_RQ", "C_GET_RSP", "C_FIND_RQ", "C_FIND_RSP",
    "C_MOVE_RQ", "C_MOVE_RSP", "C_ECHO_RQ", "C_ECHO_RSP", "C_CANCEL_RQ",
    "NO_DATASET", "DATASET_PRESENT", "PRIORITY_MEDIUM", "PRIORITY_HIGH", "PRIORITY_LOW",
]

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_GET_RQ = 0x0010
C_GET_RSP = 0x8010
C_FIND_RQ = 0x0020
C_FIND_RSP = 0x8020
C_MOVE_RQ = 0x0021
C_MOVE_RSP = 0x8021
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_CANCEL_RQ = 0x0FFF

NO_DATASET = 0x0101
DATASET_PRESENT = 0x0001

PRIORITY_MEDIUM = 0
PRIORITY_HIGH = 1
PRIORITY_LOW = 2

_COMMAND_NAMES = {
    0x0001: "C-STORE-RQ", 0x8001: "C-STORE-RSP", 0x0010: "C-GET-RQ", 0x8010: "C-GET-RSP",
    0x0020: "C-FIND-RQ", 0x8020: "C-FIND-RSP", 0x0021: "C-MOVE-RQ", 0x8021: "C-MOVE-RSP",
    0x0030: "C-ECHO-RQ", 0x8030: "C-ECHO-RSP", 0x0FFF: "C-CANCEL-RQ",
}

# Value kinds
cdef enum:
    K_US = 0
    K_UL = 1
    K_UI = 2     # NUL padded
    K_AE = 3     # space padded, ASCII
    K_LO = 4     # space padded, Latin-1 on decode
    K_AT = 5
    K_RAW = 6    # other_elements

# Presence bits, one per known element
cdef enum:
    B_GL = 1 << 0          # 0000,0000
    B_ASC = 1 << 1         # 0000,0002
    B_RSC = 1 << 2         # 0000,0003
    B_CF = 1 << 3          # 0000,0100
    B_MID = 1 << 4         # 0000,0110
    B_MIDR = 1 << 5        # 0000,0120
    B_MDEST = 1 << 6       # 0000,0600
    B_PRIO = 1 << 7        # 0000,0700
    B_DST = 1 << 8         # 0000,0800
    B_STATUS = 1 << 9      # 0000,0900
    B_OFFEND = 1 << 10     # 0000,0901
    B_ECOMM = 1 << 11      # 0000,0902
    B_EID = 1 << 12        # 0000,0903
    B_ASI = 1 << 13        # 0000,1000
    B_RSI = 1 << 14        # 0000,1001
    B_NREM = 1 << 15       # 0000,1020
    B_NCOMP = 1 << 16      # 0000,1021
    B_NFAIL = 1 << 17      # 0000,1022
    B_NWARN = 1 << 18      # 0000,1023
    B_MOAE = 1 << 19       # 0000,1030
    B_MOMID = 1 << 20      # 0000,1031

# Element number of each presence bit, for error messages
cdef uint16_t _BIT_ELEMENT[21]
_BIT_ELEMENT[:] = [0x0000, 0x0002, 0x0003, 0x0100, 0x0110, 0x0120, 0x0600, 0x0700, 0x0800,
                   0x0900, 0x0901, 0x0902, 0x0903, 0x1000, 0x1001, 0x1020, 0x1021, 0x1022,
                   0x1023, 0x1030, 0x1031]

cdef enum:
    _ALWAYS = B_GL | B_CF | B_DST
    _RSP = _ALWAYS | B_MIDR | B_STATUS
    _QUERY_RQ = _ALWAYS | B_ASC | B_MID | B_PRIO

_FIELD_NAMES = (
    "command_field", "affected_sop_class_uid", "requested_sop_class_uid", "message_id",
    "message_id_being_responded_to", "move_destination", "priority", "command_data_set_type",
    "status", "offending_element", "error_comment", "error_id", "affected_sop_instance_uid",
    "requested_sop_instance_uid", "number_of_remaining_suboperations",
    "number_of_completed_suboperations", "number_of_failed_suboperations",
    "number_of_warning_suboperations", "move_originator_application_entity_title",
    "move_originator_message_id",
)
_FIELD_SET = frozenset(_FIELD_NAMES) | {"other_elements"}
_HEX_FIELDS = frozenset({"command_field", "status", "command_data_set_type"})


cdef class Command:
    """One command set. Absent elements are None (see the module docstring
    for what ``decode_command`` requires per command)."""

    cdef public object command_field
    cdef public object affected_sop_class_uid
    cdef public object requested_sop_class_uid
    cdef public object message_id
    cdef public object message_id_being_responded_to
    cdef public object move_destination
    cdef public object priority
    cdef public object command_data_set_type
    cdef public object status
    cdef public object offending_element
    cdef public object error_comment
    cdef public object error_id
    cdef public object affected_sop_instance_uid
    cdef public object requested_sop_instance_uid
    cdef public object number_of_remaining_suboperations
    cdef public object number_of_completed_suboperations
    cdef public object number_of_failed_suboperations
    cdef public object number_of_warning_suboperations
    cdef public object move_originator_application_entity_title
    cdef public object move_originator_message_id
    cdef public object other_elements

    def __init__(self, command_field=None, **fields):
        self.command_field = command_field
        self.other_elements = {}
        if fields:
            for name, value in fields.items():
                if name not in _FIELD_SET or name == "command_field":
                    raise TypeError(f"Command() got an unexpected keyword argument {name!r}")
                setattr(self, name, value)
            if self.other_elements is None:
                self.other_elements = {}

    cdef bint _has_dataset(self):
        cdef object t = self.command_data_set_type
        return t is not None and t != 0x0101

    @property
    def has_dataset(self):
        """True when Command Data Set Type says a data set follows (not 0x0101, not None)."""
        return self._has_dataset()

    @property
    def is_request(self):
        """True for a request (bit 15 of Command Field clear), C-CANCEL-RQ included."""
        return self.command_field is not None and not (self.command_field & 0x8000)

    cdef tuple _values(self):
        return (self.command_field, self.affected_sop_class_uid, self.requested_sop_class_uid,
                self.message_id, self.message_id_being_responded_to, self.move_destination,
                self.priority, self.command_data_set_type, self.status, self.offending_element,
                self.error_comment, self.error_id, self.affected_sop_instance_uid,
                self.requested_sop_instance_uid, self.number_of_remaining_suboperations,
                self.number_of_completed_suboperations, self.number_of_failed_suboperations,
                self.number_of_warning_suboperations,
                self.move_originator_application_entity_title,
                self.move_originator_message_id, self.other_elements or {})

    def __eq__(self, other):
        if not isinstance(other, Command):
            return NotImplemented
        return self._values() == (<Command>other)._values()

    def __ne__(self, other):
        if not isinstance(other, Command):
            return NotImplemented
        return self._values() != (<Command>other)._values()

    __hash__ = None

    def __repr__(self):
        parts = []
        values = self._values()
        for name, value in zip(_FIELD_NAMES, values):
            if value is None:
                continue
            if name in _HEX_FIELDS and isinstance(value, int):
                text = f"0x{value:04X}"
                if name == "command_field" and value in _COMMAND_NAMES:
                    text += f" ({_COMMAND_NAMES[value]})"
                parts.append(f"{name}={text}")
            else:
                parts.append(f"{name}={value!r}")
        if values[-1]:
            parts.append(f"other_elements={values[-1]!r}")
        return f"Command({', '.join(parts)})"


# ---------------------------------------------------------------- decoding

cdef object _error(str message, uint32_t tag, Py_ssize_t offset):
    return CommandSetError(message, tag=tag, offset=offset)


cdef inline object _us(const uint8_t *v, uint32_t vlen, uint32_t tag, Py_ssize_t off):
    if vlen != 2:
        raise _error(f"US value length {vlen}, expected 2", tag, off)
    return load_le16(v)


cdef object _text(const uint8_t *v, uint32_t vlen, int kind, uint32_t tag, Py_ssize_t off):
    cdef Py_ssize_t a = 0
    cdef Py_ssize_t b = vlen
    while b > a and (v[b - 1] == 0x20 or v[b - 1] == 0):
        b -= 1
    if kind != K_UI:
        while a < b and v[a] == 0x20:
            a += 1
    if kind == K_LO:
        return PyUnicode_DecodeLatin1(<const char *>v + a, b - a, NULL)
    if kind == K_UI and b - a > 64:
        # PS3.5 9.1: a UID has at most 64 characters. A longer one could not
        # even be echoed back in the response: the command set is invalid.
        raise _error(f"UI value of {b - a} characters, more than 64", tag, off)
    try:
        return PyUnicode_DecodeASCII(<const char *>v + a, b - a, NULL)
    except UnicodeDecodeError:
        raise _error("non-ASCII character in a UI or AE value", tag, off) from None


cdef list _at(const uint8_t *v, uint32_t vlen, uint32_t tag, Py_ssize_t off):
    cdef uint32_t i
    if vlen % 4:
        raise _error(f"AT value length {vlen} is not a multiple of 4", tag, off)
    out = []
    for i in range(0, vlen, 4):
        out.append((<uint32_t>load_le16(v + i) << 16) | load_le16(v + i + 2))
    return out


cdef Command _decode(const uint8_t *p, Py_ssize_t n):
    cdef Command cmd = Command.__new__(Command)
    cmd.other_elements = {}
    cdef Py_ssize_t pos = 0, start, cf_offset = 0
    cdef uint32_t present = 0, mask, missing, bit
    cdef int64_t prev_tag = -1
    cdef uint16_t group, elem
    cdef uint32_t tag, vlen
    cdef const uint8_t *v
    cdef int cf = -1, i

    while pos < n:
        start = pos
        if n - pos < 8:
            raise CommandSetError(
                f"truncated element header ({n - pos} of 8 bytes)", offset=pos,
                tag=((<uint32_t>load_le16(p + pos) << 16) | load_le16(p + pos + 2))
                if n - pos >= 4 else None)
        group = load_le16(p + pos)
        elem = load_le16(p + pos + 2)
        tag = (<uint32_t>group << 16) | elem
        vlen = load_le32(p + pos + 4)
        if group != 0:
            raise _error("element outside group 0000 in a command set", tag, pos)
        if <int64_t>tag == prev_tag:
            raise _error("repeated element", tag, pos)
        if <int64_t>tag < prev_tag:
            raise _error("elements not in ascending tag order", tag, pos)
        prev_tag = tag
        pos += 8
        if vlen > <uint64_t>(n - pos):
            raise _error(f"value length {vlen} overruns the command set ({n - pos} bytes left)",
                         tag, start)
        v = p + pos
        if elem == 0x0000:
            if vlen != 4:
                raise _error(f"UL value length {vlen}, expected 4", tag, start)
            present |= B_GL
        elif elem == 0x0002:
            cmd.affected_sop_class_uid = _text(v, vlen, K_UI, tag, start)
            present |= B_ASC
        elif elem == 0x0003:
            cmd.requested_sop_class_uid = _text(v, vlen, K_UI, tag, start)
            present |= B_RSC
        elif elem == 0x0100:
            if vlen != 2:
                raise _error(f"US value length {vlen}, expected 2", tag, start)
            cf = load_le16(v)
            cf_offset = start
            cmd.command_field = cf
            present |= B_CF
        elif elem == 0x0110:
            cmd.message_id = _us(v, vlen, tag, start)
            present |= B_MID
        elif elem == 0x0120:
            cmd.message_id_being_responded_to = _us(v, vlen, tag, start)
            present |= B_MIDR
        elif elem == 0x0600:
            cmd.move_destination = _text(v, vlen, K_AE, tag, start)
            present |= B_MDEST
        elif elem == 0x0700:
            cmd.priority = _us(v, vlen, tag, start)
            present |= B_PRIO
        elif elem == 0x0800:
            cmd.command_data_set_type = _us(v, vlen, tag, start)
            present |= B_DST
        elif elem == 0x0900:
            cmd.status = _us(v, vlen, tag, start)
            present |= B_STATUS
        elif elem == 0x0901:
            cmd.offending_element = _at(v, vlen, tag, start)
            present |= B_OFFEND
        elif elem == 0x0902:
            cmd.error_comment = _text(v, vlen, K_LO, tag, start)
            present |= B_ECOMM
        elif elem == 0x0903:
            cmd.error_id = _us(v, vlen, tag, start)
            present |= B_EID
        elif elem == 0x1000:
            cmd.affected_sop_instance_uid = _text(v, vlen, K_UI, tag, start)
            present |= B_ASI
        elif elem == 0x1001:
            cmd.requested_sop_instance_uid = _text(v, vlen, K_UI, tag, start)
            present |= B_RSI
        elif elem == 0x1020:
            cmd.number_of_remaining_suboperations = _us(v, vlen, tag, start)
            present |= B_NREM
        elif elem == 0x1021:
            cmd.number_of_completed_suboperations = _us(v, vlen, tag, start)
            present |= B_NCOMP
        elif elem == 0x1022:
            cmd.number_of_failed_suboperations = _us(v, vlen, tag, start)
            present |= B_NFAIL
        elif elem == 0x1023:
            cmd.number_of_warning_suboperations = _us(v, vlen, tag, start)
            present |= B_NWARN
        elif elem == 0x1030:
            cmd.move_originator_application_entity_title = _text(v, vlen, K_AE, tag, start)
            present |= B_MOAE
        elif elem == 0x1031:
            cmd.move_originator_message_id = _us(v, vlen, tag, start)
            present |= B_MOMID
        else:
            cmd.other_elements[tag] = PyBytes_FromStringAndSize(<const char *>v, vlen)
        pos += vlen

    # The Command Group Length's value is not compared with the bytes that
    # follow it: the command set ends where its last PDV fragment ends, so
    # the value decides nothing, and peers that get it wrong are served
    # (as DCMTK and pynetdicom serve them) rather than aborted.
    if not present & B_CF:
        raise _error("Command Field missing", 0x0100, n)
    if cf == 0x0001:
        mask = _QUERY_RQ | B_ASI
    elif cf == 0x0020 or cf == 0x0010:
        mask = _QUERY_RQ
    elif cf == 0x0021:
        mask = _QUERY_RQ | B_MDEST
    elif cf == 0x0030:
        mask = _ALWAYS | B_ASC | B_MID
    elif cf == 0x8001 or cf == 0x8010 or cf == 0x8020 or cf == 0x8021 or cf == 0x8030:
        mask = _RSP
    elif cf == 0x0FFF:
        mask = _ALWAYS | B_MIDR
    else:
        raise _error(f"unknown Command Field 0x{cf:04X}", 0x0100, cf_offset)
    missing = mask & ~present
    if missing:
        for i in range(21):
            bit = 1u << i
            if missing & bit:
                raise _error(f"{_COMMAND_NAMES[cf]} lacks a mandatory element", _BIT_ELEMENT[i], n)
    # A mandatory UID present but empty is as good as missing: a request
    # names its SOP class, a C-STORE-RQ its instance too (PS3.7 9.3).
    if not cf & 0x8000 and cf != 0x0FFF and not cmd.affected_sop_class_uid:
        raise _error(f"{_COMMAND_NAMES[cf]} has an empty Affected SOP Class UID", 0x0002, n)
    if cf == 0x0001 and not cmd.affected_sop_instance_uid:
        raise _error("C-STORE-RQ has an empty Affected SOP Instance UID", 0x1000, n)
    return cmd


cpdef Command decode_command(object data):
    """Decode an Implicit VR Little Endian group-0000 command set.

    Raises chromanet.errors.CommandSetError naming the tag/offset at fault.
    """
    cdef Py_buffer view
    if type(data) is bytes:
        return _decode(<const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return _decode(<const uint8_t *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


# ---------------------------------------------------------------- encoding

cdef struct _Elem:
    uint32_t elem       # element number (group is 0000)
    int kind
    uint32_t ival       # US value
    const char *data    # value bytes for the other kinds (owned by a kept object)
    Py_ssize_t size     # bytes at data
    Py_ssize_t pad      # 0 or 1 padding byte
    char pad_char


cdef int _cmp_elem(const void *a, const void *b) noexcept nogil:
    cdef uint32_t x = (<const _Elem *>a).elem
    cdef uint32_t y = (<const _Elem *>b).elem
    return (x > y) - (x < y)


cdef inline int _add_us(_Elem *e, int *ne, uint32_t elem, object value, str name) except -1:
    if value is None:
        return 0
    cdef object iv = value if type(value) is int else _index(value)
    if iv < 0 or iv > 0xFFFF:
        raise ValueError(f"{name}={value!r} out of range for US (0..65535)")
    e[ne[0]].elem = elem
    e[ne[0]].kind = K_US
    e[ne[0]].ival = <uint32_t>iv
    ne[0] += 1
    return 0


cdef int _add_bytes(_Elem *e, int *ne, uint32_t elem, int kind, bytes raw, char pad_char,
                    list keep) except -1:
    keep.append(raw)
    e[ne[0]].elem = elem
    e[ne[0]].kind = kind
    e[ne[0]].data = PyBytes_AS_STRING(raw)
    e[ne[0]].size = PyBytes_GET_SIZE(raw)
    e[ne[0]].pad = e[ne[0]].size & 1 if kind != K_RAW else 0
    e[ne[0]].pad_char = pad_char
    ne[0] += 1
    return 0


cdef int _add_str(_Elem *e, int *ne, uint32_t elem, object value, int kind, Py_ssize_t maxlen,
                  str name, list keep) except -1:
    if value is None:
        return 0
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    cdef bytes raw = (<str>value).encode("ascii")
    if PyBytes_GET_SIZE(raw) > maxlen:
        raise ValueError(f"{name}={value!r} longer than {maxlen} characters")
    return _add_bytes(e, ne, elem, kind, raw, b"\0"[0] if kind == K_UI else b" "[0], keep)


cdef int _add_at(_Elem *e, int *ne, object value, list keep) except -1:
    if value is None:
        return 0
    tags = list(value)
    cdef bytes raw = PyBytes_FromStringAndSize(NULL, 4 * len(tags))
    cdef uint8_t *w = <uint8_t *>PyBytes_AS_STRING(raw)
    cdef uint32_t t
    cdef Py_ssize_t i = 0
    for item in tags:
        if not isinstance(item, int):
            raise TypeError(f"offending_element items must be int tags, not {type(item).__name__}")
        if item < 0 or item > 0xFFFFFFFF:
            raise ValueError(f"offending_element tag {item!r} out of range")
        t = item
        store_le16(w + i, <uint16_t>(t >> 16))     # group
        store_le16(w + i + 2, <uint16_t>t)         # element
        i += 4
    return _add_bytes(e, ne, 0x0901, K_AT, raw, 0, keep)


cdef bint _is_known(uint32_t elem) noexcept:
    cdef int i
    for i in range(21):
        if _BIT_ELEMENT[i] == elem:
            return True
    return False


cdef inline uint8_t *_put_header(uint8_t *w, uint32_t elem, uint32_t vlen) noexcept nogil:
    store_le16(w, 0x0000)                  # group 0000
    store_le16(w + 2, <uint16_t>elem)
    store_le32(w + 4, vlen)
    return w + 8


cpdef bytes encode_command(Command command):
    """Encode ``command`` as a group-0000 Implicit VR Little Endian command set.

    Writes the elements that are not None in ascending tag order after a
    computed Command Group Length. Raises ValueError for a missing
    command_field, out-of-range numbers and over-long strings; TypeError for
    values of the wrong type.
    """
    if command.command_field is None:
        raise ValueError("command_field is required")
    cdef _Elem fixed[20]
    cdef _Elem *e = fixed
    cdef int ne = 0, i
    cdef list keep = []
    cdef object others = command.other_elements
    cdef Py_ssize_t n_other = len(others) if others else 0
    cdef uint64_t total = 12
    cdef bytes out
    cdef uint8_t *w
    if n_other:
        e = <_Elem *>PyMem_Malloc((20 + n_other) * sizeof(_Elem))
        if e == NULL:
            raise MemoryError()
    try:
        _add_str(e, &ne, 0x0002, command.affected_sop_class_uid, K_UI, 64, "affected_sop_class_uid", keep)
        _add_str(e, &ne, 0x0003, command.requested_sop_class_uid, K_UI, 64, "requested_sop_class_uid", keep)
        _add_us(e, &ne, 0x0100, command.command_field, "command_field")
        _add_us(e, &ne, 0x0110, command.message_id, "message_id")
        _add_us(e, &ne, 0x0120, command.message_id_being_responded_to, "message_id_being_responded_to")
        _add_str(e, &ne, 0x0600, command.move_destination, K_AE, 16, "move_destination", keep)
        _add_us(e, &ne, 0x0700, command.priority, "priority")
        _add_us(e, &ne, 0x0800, command.command_data_set_type, "command_data_set_type")
        _add_us(e, &ne, 0x0900, command.status, "status")
        _add_at(e, &ne, command.offending_element, keep)
        _add_str(e, &ne, 0x0902, command.error_comment, K_LO, 64, "error_comment", keep)
        _add_us(e, &ne, 0x0903, command.error_id, "error_id")
        _add_str(e, &ne, 0x1000, command.affected_sop_instance_uid, K_UI, 64, "affected_sop_instance_uid", keep)
        _add_str(e, &ne, 0x1001, command.requested_sop_instance_uid, K_UI, 64, "requested_sop_instance_uid", keep)
        _add_us(e, &ne, 0x1020, command.number_of_remaining_suboperations, "number_of_remaining_suboperations")
        _add_us(e, &ne, 0x1021, command.number_of_completed_suboperations, "number_of_completed_suboperations")
        _add_us(e, &ne, 0x1022, command.number_of_failed_suboperations, "number_of_failed_suboperations")
        _add_us(e, &ne, 0x1023, command.number_of_warning_suboperations, "number_of_warning_suboperations")
        _add_str(e, &ne, 0x1030, command.move_originator_application_entity_title, K_AE, 16,
                 "move_originator_application_entity_title", keep)
        _add_us(e, &ne, 0x1031, command.move_originator_message_id, "move_originator_message_id")
        if n_other:
            for key, value in others.items():
                if not isinstance(key, int) or key <= 0 or key > 0xFFFF:
                    raise ValueError(f"other_elements key {key!r} is not a group-0000 tag "
                                     "other than (0000,0000)")
                if _is_known(key):
                    raise ValueError(f"other_elements key (0000,{key:04X}) is a Command "
                                     "field; set the attribute instead")
                _add_bytes(e, &ne, key, K_RAW, bytes(value), 0, keep)
            qsort(e, ne, sizeof(_Elem), _cmp_elem)
        for i in range(ne):
            total += 8 + (2 if e[i].kind == K_US else e[i].size + e[i].pad)
        if total - 12 > 0xFFFFFFFF:
            raise ValueError("command set too long")
        out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>total)
        w = <uint8_t *>PyBytes_AS_STRING(out)
        w = _put_header(w, 0x0000, 4)
        store_le32(w, <uint32_t>(total - 12))
        w += 4
        for i in range(ne):
            if e[i].kind == K_US:
                w = _put_header(w, e[i].elem, 2)
                store_le16(w, <uint16_t>e[i].ival)
                w += 2
            else:
                w = _put_header(w, e[i].elem, <uint32_t>(e[i].size + e[i].pad))
                if e[i].size:
                    memcpy(w, e[i].data, e[i].size)
                w += e[i].size
                if e[i].pad:
                    w[0] = <uint8_t>e[i].pad_char
                    w += 1
        return out
    finally:
        if e != fixed:
            PyMem_Free(e)
