# cython: language_level=3
"""Data sets (PS3.5 section 7) to pydicom Datasets and back, in C.

What it accepts: an encoded data set (no file meta) in one of the three
uncompressed encodings, Implicit VR Little Endian, Explicit VR Little Endian
and Explicit VR Big Endian (PS3.5 Annex A.1, A.2, A.3); Deflate is undone by
the caller. The rules it enforces are those of ``check``:

* every element header lies inside the data; in explicit VR, the VR is one of
  the 34 of PS3.5 Table 6.2-1 and OB OD OF OL OV OW SQ SV UC UN UR UT UV take
  the 12-byte header of PS3.5 7.1.2;
* every defined length lies inside what contains it (the data, a sequence,
  an item): a lying length raises, nothing is allocated from it;
* undefined length only on SQ (and any element in implicit VR), UN (whose
  content is Implicit VR Little Endian, PS3.5 6.2.2) and encapsulated OB/OW
  (PS3.5 A.4: fragments, then the Sequence Delimitation Item);
* items are (FFFE,E000), closed by their length or an Item Delimitation Item
  (PS3.5 7.5); sequences nest at most 32 deep.

A violation raises ``chromanet.errors.EncodingError`` with the byte offset.

``decode`` builds the Dataset pydicom's ``read_dataset`` builds from the same
bytes, in the same walk as the check: elements as pydicom ``RawDataElement``
(pydicom converts them when they are used), sequences as ``DataElement`` of
``Sequence`` of item Datasets, with the same offsets, flags and original
encoding. A defined-length sequence is parsed at once, where pydicom would
parse it when first used (in implicit VR: a public tag whose dictionary VR is
SQ; if its content does not parse it stays raw, as pydicom leaves it). Where pydicom would read
the bytes some other way (implicit VR data that looks explicit, content that
pydicom scans differently) it returns None once the check has passed, and the
caller reads the data with pydicom.

``encode`` writes what pydicom's ``write_dataset`` writes, byte for byte, for
the values it knows exactly (see ``_Writer``); for anything else it returns
None and the caller uses pydicom's writer for the whole data set.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.math cimport isinf
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from _bytes cimport load_be16, load_be32, load_le16, load_le32, store_be16, store_be32, store_le16, store_le32

from pydicom import config as _config
from pydicom.charset import convert_encodings, default_encoding, python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import PersonName
from pydicom.values import convert_string

from chromanet.errors import EncodingError

__all__ = ["EncodingError", "check", "decode", "encode", "scan", "plain_text", "text_json"]

cdef uint32_t UNDEFINED = 0xFFFFFFFF
cdef int MAX_DEPTH = 32
cdef uint32_t ITEM = 0xFFFEE000
cdef uint32_t ITEM_END = 0xFFFEE00D
cdef uint32_t SEQUENCE_END = 0xFFFEE0DD
cdef uint32_t PIXEL_DATA = 0x7FE00010
cdef uint32_t CHARSET = 0x00080005

# The VRs of PS3.5 Table 6.2-1, by code; a 26x26 table maps two capitals to
# a code (-1: not a VR).
_VR_NAMES = (
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV",
    "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV",
)
cdef enum:
    AE, AS, AT, CS, DA, DS, DT, FL, FD, IS, LO, LT, OB, OD, OF, OL, OV
    OW, PN, SH, SL, SQ, SS, ST, SV, TM, UC, UI, UL, UN, UR, US, UT, UV
    N_VRS

cdef signed char _VR_CODE[676]
cdef bint _LONG[N_VRS]
cdef tuple _VR_STR = _VR_NAMES


cdef void _init_tables():
    cdef int i, code
    for i in range(676):
        _VR_CODE[i] = -1
    for code, name in enumerate(_VR_NAMES):
        _VR_CODE[(ord(name[0]) - 65) * 26 + ord(name[1]) - 65] = code
        _LONG[code] = name in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")


_init_tables()


cdef inline int _vr_code(uint8_t a, uint8_t b) noexcept:
    if a < 65 or a > 90 or b < 65 or b > 90:
        return -1
    return _VR_CODE[(a - 65) * 26 + b - 65]


cdef inline uint16_t _u16(const uint8_t* p, bint little) noexcept:
    return load_le16(p) if little else load_be16(p)


cdef inline uint32_t _u32(const uint8_t* p, bint little) noexcept:
    return load_le32(p) if little else load_be32(p)


cdef inline bint _looks_explicit(uint8_t a, uint8_t b) noexcept:
    # pydicom's test for "this is a VR" at the start of a data set.
    return 0x40 < a < 0x5B and 0x40 < b < 0x5B


class _Fallback(Exception):
    """pydicom would read (or write) this differently: let it."""


# BaseTag objects, shared: a data set names few distinct tags.
cdef dict _TAGS = {}


cdef object _tag(uint32_t value):
    tag = _TAGS.get(value)
    if tag is None:
        if len(_TAGS) > 16384:
            _TAGS.clear()
        tag = BaseTag(value)
        _TAGS[value] = tag
    return tag


cdef struct Header:
    uint32_t tag
    int vr              # -1: none (implicit VR, or an item tag)
    uint32_t length
    Py_ssize_t value    # where the value starts


# --------------------------------------------------------------- decoding
cdef class _Reader:
    """One walk over ``data``; ``build`` False only checks."""

    cdef const uint8_t[::1] view
    cdef const uint8_t* p
    cdef Py_ssize_t size
    cdef bint build
    cdef dict empty     # VR code -> pydicom's raw value for an empty element

    def __cinit__(self, data, bint build):
        self.view = data
        self.size = self.view.shape[0]
        self.p = &self.view[0] if self.size else NULL
        self.build = build
        self.empty = {}

    cdef int header(self, Py_ssize_t pos, Py_ssize_t end, bint implicit, bint little, Header* h) except -1:
        cdef const uint8_t* p
        cdef int code
        if end - pos < 8:
            raise EncodingError("truncated element header", pos)
        p = self.p + pos
        h.tag = (<uint32_t>_u16(p, little) << 16) | _u16(p + 2, little)
        if implicit or (h.tag >> 16) == 0xFFFE:
            h.vr = -1
            h.length = _u32(p + 4, little)
            h.value = pos + 8
            return 0
        code = _vr_code(p[4], p[5])
        if code < 0:
            raise EncodingError(
                f"({h.tag >> 16:04X},{h.tag & 0xFFFF:04X}) has no valid VR ({bytes(p[4:6])!r})", pos + 4)
        h.vr = code
        if _LONG[code]:
            if end - pos < 12:
                raise EncodingError("truncated element header", pos)
            h.length = _u32(p + 8, little)
            h.value = pos + 12
        else:
            h.length = _u16(p + 6, little)
            h.value = pos + 8
        return 0

    cdef object empty_value(self, int code):
        value = self.empty.get(code, self)
        if value is self:
            value = empty_value_for_VR(None if code < 0 else _VR_STR[code], raw=True)
            self.empty[code] = value
        return value

    cdef Py_ssize_t dataset(self, Py_ssize_t pos, Py_ssize_t end, int depth, bint until_item_end,
                            bint implicit, bint little, dict out, Py_ssize_t base, Py_ssize_t stream_end,
                            object encoding) except -1:
        """Walk (and build into ``out``) the elements from ``pos``; returns
        where the data set ended. ``base`` is where pydicom's stream for these
        elements starts (their ``value_tell`` counts from it), ``stream_end``
        where it ends; ``encoding`` is the character set in force."""
        cdef Header h
        cdef Py_ssize_t value
        cdef object tag, value_bytes, items
        cdef object seq_encoding = encoding    # for undefined-length sequences (pydicom's reader)
        cdef object item_encoding = _as_list(encoding)  # for defined-length ones (pydicom's lazy conversion)
        if depth > MAX_DEPTH:
            raise EncodingError(f"sequences nested deeper than {MAX_DEPTH}", pos)
        while pos < end:
            self.header(pos, end, implicit, little, &h)
            value = h.value
            if (h.tag >> 16) == 0xFFFE:
                if until_item_end and h.tag == ITEM_END:
                    return value
                raise EncodingError(f"item tag (FFFE,{h.tag & 0xFFFF:04X}) where an element is expected", pos)
            if h.length == UNDEFINED:
                if h.vr < 0 or h.vr == SQ:
                    items = None
                    if self.build:
                        if h.vr < 0:
                            self.implicit_sequence(h.tag, value, stream_end, little)
                        items = []
                    pos = self.sequence(value, end, depth, implicit, little, implicit, items, base, base,
                                        stream_end, seq_encoding)
                    if self.build:
                        tag = _tag(h.tag)
                        out[tag] = DataElement(tag, "SQ", _sequence(items, True), value - base,
                                               is_undefined_length=True)
                elif h.vr == UN:
                    items = None
                    if self.build:
                        if not little:
                            raise _Fallback  # pydicom reads it as implicit VR *big* endian
                        items = []
                    pos = self.sequence(value, end, depth, True, True, False, items, base, base,
                                        stream_end, seq_encoding)
                    if self.build:
                        tag = _tag(h.tag)
                        out[tag] = DataElement(tag, "SQ", _sequence(items, True), value - base,
                                               is_undefined_length=True)
                elif h.vr == OB or h.vr == OW:
                    pos = self.fragments(value, end, little)
                    if self.build:
                        tag = _tag(h.tag)
                        out[tag] = _raw(tag, _VR_STR[h.vr], UNDEFINED,
                                        PyBytes_FromStringAndSize(<const char*>self.p + value, pos - 8 - value),
                                        value - base, implicit, little)
                else:
                    raise EncodingError(f"undefined length with VR {bytes(_VR_STR[h.vr], 'ascii')!r}", pos)
            elif h.length > end - value:
                raise EncodingError(
                    f"({h.tag >> 16:04X},{h.tag & 0xFFFF:04X}) length {h.length} runs past the data", pos)
            elif h.vr == SQ and h.length:
                items = [] if self.build else None
                self.sequence_items(value, value + h.length, depth, implicit, little, items, base, value,
                                    value + h.length, item_encoding)
                if self.build:
                    tag = _tag(h.tag)
                    out[tag] = DataElement(tag, "SQ", _sequence(items, False), value - base, False,
                                           already_converted=True)
                pos = value + h.length
            elif self.build and h.vr < 0 and h.length and _dictionary_sq(h.tag) and self.implicit_items(
                    &h, out, depth, implicit, little, base, item_encoding):
                pos = value + h.length
            else:
                if self.build:
                    tag = _tag(h.tag)
                    if h.length:
                        value_bytes = PyBytes_FromStringAndSize(<const char*>self.p + value, h.length)
                    else:
                        value_bytes = self.empty_value(h.vr)
                    out[tag] = _raw(tag, None if h.vr < 0 else _VR_STR[h.vr], h.length, value_bytes,
                                    value - base, implicit, little)
                    if h.tag == CHARSET:
                        seq_encoding = _charsets(out[tag])[0]
                        item_encoding = _as_list(_own_encoding(out[tag], encoding) or encoding)
                pos = value + h.length
        if until_item_end:
            raise EncodingError("item without its delimitation item", pos)
        return pos

    cdef bint implicit_items(self, Header* h, dict out, int depth, bint implicit, bint little, Py_ssize_t base,
                             object encoding) except -1:
        """A defined-length sequence in implicit VR (SQ by the dictionary):
        pydicom keeps it raw and parses it when it is first used. Parse it now
        if it parses; if not, keep it raw, for pydicom to fail on when used
        (the check does not look inside it: its VR is not in the data)."""
        cdef Py_ssize_t value = h.value, stop = h.value + h.length
        cdef list items = []
        try:
            self.sequence_items(value, stop, depth, implicit, little, items, base, value, stop, encoding)
        except Exception:
            return False
        tag = _tag(h.tag)
        out[tag] = DataElement(tag, "SQ", _sequence(items, False), value - base, False, already_converted=True)
        return True

    cdef int implicit_sequence(self, uint32_t tag, Py_ssize_t value, Py_ssize_t stream_end,
                               bint little) except -1:
        """An undefined-length element in implicit VR: pydicom takes it as a
        sequence if the dictionary says SQ, or for an unknown tag if an item
        follows; otherwise it scans for the delimiter (left to pydicom)."""
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            if value + 4 <= stream_end and (
                    (<uint32_t>_u16(self.p + value, little) << 16) | _u16(self.p + value + 2, little)) == ITEM:
                return 0
            raise _Fallback
        if vr != "SQ":
            raise _Fallback
        return 0

    cdef Py_ssize_t sequence(self, Py_ssize_t pos, Py_ssize_t end, int depth, bint implicit, bint little,
                             bint assumed_implicit, list items, Py_ssize_t item_base, Py_ssize_t base,
                             Py_ssize_t stream_end, object encoding) except -1:
        """Items of an undefined-length sequence, up to its delimiter."""
        cdef Header h
        while True:
            self.header(pos, end, implicit, little, &h)
            if h.tag == SEQUENCE_END:
                return h.value
            pos = self.item(&h, end, depth, pos, implicit, little, assumed_implicit, items, item_base, base,
                            stream_end, encoding)

    cdef int sequence_items(self, Py_ssize_t pos, Py_ssize_t end, int depth, bint implicit, bint little,
                            list items, Py_ssize_t item_base, Py_ssize_t base, Py_ssize_t stream_end,
                            object encoding) except -1:
        cdef Header h
        while pos < end:
            self.header(pos, end, implicit, little, &h)
            pos = self.item(&h, end, depth, pos, implicit, little, implicit, items, item_base, base,
                            stream_end, encoding)
        return 0

    cdef Py_ssize_t item(self, Header* h, Py_ssize_t end, int depth, Py_ssize_t at, bint implicit, bint little,
                         bint assumed_implicit, list items, Py_ssize_t item_base, Py_ssize_t base,
                         Py_ssize_t stream_end, object encoding) except -1:
        cdef Py_ssize_t value = h.value, stop
        cdef bint undefined = h.length == UNDEFINED
        cdef bint item_implicit
        cdef dict out = {} if self.build else None
        if h.tag != ITEM:
            raise EncodingError(f"({h.tag >> 16:04X},{h.tag & 0xFFFF:04X}) where a sequence item is expected", at)
        if undefined:
            stop = self.dataset(value, end, depth + 1, True, implicit, little, out, base, stream_end, encoding)
        else:
            if h.length > end - value:
                raise EncodingError(f"item length {h.length} runs past the data", at)
            stop = value + h.length
            self.dataset(value, stop, depth + 1, False, implicit, little, out, base, stream_end, encoding)
        if self.build:
            # pydicom decides each item's VR encoding from the two bytes where
            # its first VR would be (looking past an empty item's end).
            item_implicit = assumed_implicit
            if not assumed_implicit and value + 6 <= stream_end:
                item_implicit = not _looks_explicit(self.p[value + 4], self.p[value + 5])
            if out and item_implicit != implicit:
                raise _Fallback
            ds = _dataset(out, encoding, item_implicit, little)
            state = ds.__dict__  # what Dataset.__setattr__ does with these names
            state["is_undefined_length_sequence_item"] = undefined
            state["seq_item_tell"] = at - item_base
            state["file_tell"] = at - item_base
            items.append(ds)
        return stop

    cdef Py_ssize_t fragments(self, Py_ssize_t pos, Py_ssize_t end, bint little) except -1:
        """Encapsulated pixel data: fragment items up to the delimiter."""
        cdef Header h
        while True:
            self.header(pos, end, True, little, &h)
            if h.tag == SEQUENCE_END:
                return h.value
            if h.tag != ITEM or h.length == UNDEFINED or h.length > end - h.value:
                raise EncodingError("malformed encapsulated fragment", pos)
            pos = h.value + h.length


cdef inline object _raw(object tag, object vr, uint32_t length, object value, Py_ssize_t tell,
                        bint implicit, bint little):
    return tuple.__new__(RawDataElement, (tag, vr, length, value, tell, implicit, little, True, False))


# Public tags whose dictionary VR is SQ (pydicom's VR for them in implicit VR).
cdef dict _IS_SQ = {}


cdef bint _dictionary_sq(uint32_t tag) except -1:
    found = _IS_SQ.get(tag)
    if found is None:
        try:
            found = dictionary_VR(tag) == "SQ"
        except KeyError:
            found = False
        if len(_IS_SQ) > 16384:
            _IS_SQ.clear()
        _IS_SQ[tag] = found
    return found


cdef object _sequence(list items, bint undefined):
    seq = Sequence(items)
    seq.is_undefined_length = undefined
    return seq


cdef object _as_list(object encoding):
    # pydicom's conversion of a value passes its encodings as a list.
    if not encoding:
        return [default_encoding]
    return [encoding] if isinstance(encoding, str) else encoding


cdef object _own_encoding(object raw, object parent):
    # What read_dataset records as a data set's character set.
    return _charsets(raw)[1]


# (0008,0005) value bytes -> what pydicom makes of them: the encodings its
# reader passes down to undefined-length sequences, and those read_dataset
# records. Only values made of standard terms are kept (pydicom converts the
# others with a warning, every time).
cdef dict _CHARSETS = {}


cdef tuple _charsets(object raw):
    key = (raw.value, raw.is_little_endian, raw.VR)
    found = _CHARSETS.get(key)
    if found is None:
        found = (convert_encodings(convert_string(raw.value or b"", raw.is_little_endian)),
                 convert_encodings(convert_raw_data_element(raw).value))
        terms = (raw.value or b"").decode("latin-1").strip(" \0").split("\\")
        if len(_CHARSETS) < 256 and all(term.strip(" \0") in python_encoding for term in terms):
            _CHARSETS[key] = found
    return (_copy(found[0]), _copy(found[1]))


cdef inline object _copy(object encoding):
    return list(encoding) if type(encoding) is list else encoding


# What Dataset.__init__ sets on a new instance, taken from one at import:
# a decoded data set starts from a copy of it (its dicts copied) instead of
# running __init__, whose attribute assignments go through Dataset.__setattr__
# one by one and cost most of a small data set's decode. Used only if the
# class looks as expected; the tests compare the instances' attributes.
cdef dict _FRESH = dict(vars(Dataset()))
cdef bint _FAST_NEW = (Dataset.__new__ is object.__new__ and "_dict" in _FRESH and "_read_charset" in _FRESH
                       and "_parent_encoding" in _FRESH and "_read_implicit" in _FRESH)


cdef inline dict _fresh_state(object ds):
    # A new instance's attributes as __init__ would set them (dicts copied).
    cdef dict state = ds.__dict__
    for name, value in _FRESH.items():
        state[name] = dict(value) if type(value) is dict else value
    return state


def new_dataset(dict elements):
    """A Dataset around ``elements`` (tag -> DataElement or RawDataElement),
    as ``Dataset(elements)`` makes it, without running ``__init__`` (for the
    Datasets made per message: response statuses, decoded data sets)."""
    if not _FAST_NEW:
        return Dataset(elements)
    ds = Dataset.__new__(Dataset)
    _fresh_state(ds)["_dict"] = elements
    return ds


cdef object _dataset(dict elements, object parent_encoding, bint implicit, bint little):
    cdef dict state
    raw = elements.get(CHARSET)
    encoding = parent_encoding if raw is None else _own_encoding(raw, parent_encoding)
    if not _FAST_NEW:
        ds = Dataset(elements, parent_encoding=parent_encoding)
        ds.set_original_encoding(implicit, little, encoding)
        return ds
    ds = Dataset.__new__(Dataset)
    state = _fresh_state(ds)
    state["_parent_encoding"] = parent_encoding
    state["_dict"] = elements
    state["_read_implicit"] = implicit
    state["_read_little"] = little
    if encoding is not None:
        state["_read_charset"] = encoding
    return ds


cdef bint _defaults() noexcept:
    # The pydicom settings the native reader assumes (pydicom's defaults).
    try:
        return bool(_config.settings.infer_sq_for_un_vr) and _config.data_element_callback is None
    except Exception:
        return False


def check(data, bint implicit, bint little):
    """Raise EncodingError unless ``data`` is a well-formed data set."""
    cdef _Reader reader = _Reader(data, False)
    reader.dataset(0, reader.size, 0, False, implicit, little, None, 0, reader.size, None)


def decode(data, bint implicit, bint little):
    """The Dataset pydicom's ``read_dataset`` makes of ``data``, or None when
    pydicom must read it (the data passed the check); EncodingError if the
    data is malformed."""
    cdef _Reader reader = _Reader(data, True)
    cdef dict out = {}
    if not _defaults():
        check(data, implicit, little)
        return None
    if reader.size >= 6 and implicit and _looks_explicit(reader.p[4], reader.p[5]):
        # pydicom would switch to explicit VR here.
        check(data, implicit, little)
        return None
    try:
        reader.dataset(0, reader.size, 0, False, implicit, little, out, 0, reader.size, default_encoding)
    except EncodingError:
        raise
    except _Fallback:
        check(data, implicit, little)
        return None
    except Exception:
        # pydicom's own error on a value (a character set it cannot take):
        # a structural error further on comes first, as in check().
        check(data, implicit, little)
        raise
    return _dataset(out, default_encoding, implicit, little)


include "_dataset_encode.pxi"
include "_dataset_scan.pxi"
include "_dataset_text.pxi"
