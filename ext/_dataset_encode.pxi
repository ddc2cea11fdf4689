# Encoding half of _dataset.pyx (included there): pydicom Datasets to bytes,
# exactly as pydicom's write_dataset writes them, or None.
#
# What is written natively (everything else makes ``encode`` return None):
#
# * RawDataElements read in the encoding being written, when pydicom writes
#   them raw: the data set's original encoding and character set are the
#   ones being written. Otherwise pydicom converts every element first, and
#   so do we (in place, as it does), except those whose bytes its conversion
#   would keep (``reheaded``: binary, text in ASCII, Latin-1 or UTF-8
#   padded as pydicom pads it, plain IS integers and ASCII person names
#   without trailing empty groups; a file's Explicit VR LE palette sent on an
#   Implicit VR LE context changes only their headers);
# * DataElements whose VR is one of the 34, with values of the types pydicom
#   makes: str (ASCII only) for the text VRs, int for US SS UL SL SV UV AT,
#   int or float for FL FD, bytes for OB OD OF OL OV OW UN, a Sequence of
#   Datasets for SQ; single or multi-valued; PN through PersonName.encode;
# * a character set that leaves ASCII as ASCII (none, ISO_IR 6, ISO_IR 100,
#   ISO_IR 192).
#
# Not written natively: ambiguous VRs ("US or SS"...) and anything pydicom
# would correct, groups 0000-0007 (file meta, command), values too long for a
# 16-bit length (pydicom switches them to UN), non-ASCII text, buffered and
# deferred values, LUT descriptors (pydicom writes their first value as US).

from pydicom.filewriter import _LUT_DESCRIPTOR_TAGS
from pydicom.valuerep import DSfloat as _DSfloat, IS as _IS

cdef frozenset _PLAIN_CHARSETS = frozenset(
    ["", "iso8859", "latin_1", "UTF8", "ISO_IR 6", "ISO 2022 IR 6", "ISO_IR 100", "ISO_IR 192"])
cdef frozenset _LUT_TAGS = frozenset(_LUT_DESCRIPTOR_TAGS)
cdef object _MISSING = object()
# Binary VRs whose little-endian bytes pydicom converts and writes back bit
# for bit (value length a multiple of the size; OB even, as pydicom pads it).
cdef dict _AS_IS_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "SV": 8, "UV": 8, "AT": 4,
                          "OB": 2, "OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


# Text VRs whose ASCII values pydicom's conversion and writer give back byte
# for byte when they are padded as its writer pads them (``_canonical_text``):
# those it strips before splitting (UI; AS CS; DA DT TM while pydicom leaves
# dates as strings), those it strips value by value (LO SH UC), and the
# single-valued ones (LT ST UT). Not AE and UR (stripped of all white space)
# and DS (converted to objects); IS and PN have their own rule
# (``_canonical_number_or_name``).
cdef frozenset _STRIPPED_WHOLE = frozenset(["UI", "AS", "CS", "DA", "DT", "TM", "LT", "ST", "UT"])
cdef frozenset _STRIPPED_EACH = frozenset(["LO", "SH", "UC"])
cdef frozenset _TEXT_AS_IS = _STRIPPED_WHOLE | _STRIPPED_EACH


cdef bint _canonical_text(bytes value, object vr, object encoding, bint dates_converted, bint raising) except -1:
    # ``dates_converted``, ``raising``: pydicom's config.datetime_conversion
    # and whether its reading validation mode is RAISE (read once per encode).
    cdef bytes pad = b"\0" if vr == "UI" else b" "
    cdef bytes kept
    if b"\x1b" in value:
        return False  # ISO 2022 escapes: decoded by the character set
    if not value.isascii() and not _bytes_kept_by(value, vr, encoding):
        return False
    if dates_converted and vr in ("DA", "DT", "TM"):
        return False
    if raising:
        return False  # pydicom's conversion may refuse the value
    if vr == "UI" and value.rstrip(b"\0").translate(None, b"0123456789."):
        return False  # pydicom's UID strips white space from both ends too
    if vr in _STRIPPED_EACH and b"\\" in value:
        kept = b"\\".join([part.rstrip(b"\0 ") for part in value.split(b"\\")])
    else:
        kept = value.rstrip(b"\0 ")
    if len(kept) % 2:
        kept += pad
    return kept == value


cdef bint _plain_integer(bytes part):
    """An IS value pydicom's conversion keeps as it is (its
    ``original_string``, which its writer writes): an optional sign and
    1-12 ASCII digits, nothing around them (12 digits stay exact as a
    float, so no ISfloat)."""
    cdef Py_ssize_t n = len(part), i, start = 0
    cdef const unsigned char* p = <const unsigned char*><const char*>part
    if n and (p[0] == 43 or p[0] == 45):  # + -
        start = 1
    if n - start < 1 or n > 12:
        return False
    for i in range(start, n):
        if p[i] < 48 or p[i] > 57:
            return False
    return True


cdef bint _canonical_number_or_name(bytes value, object vr, bint raising) except -1:
    """Whether pydicom's conversion of a raw IS or PN value and its writer
    give back ``value`` byte for byte: ASCII, padded as the writer pads
    (trailing spaces and NULs stripped, one space to an even length), and
    IS values that are plain integers (``_plain_integer``), PN values with
    no empty component group at their end (pydicom drops trailing '=')."""
    if raising or _config.use_IS_numpy and vr == "IS":
        return False
    if not value.isascii() or b"\x1b" in value:
        return False
    kept = value.rstrip(b"\0 ")
    padded = kept + b" " if len(kept) % 2 else kept
    if padded != value:
        return False
    if not kept:
        return True
    for part in kept.split(b"\\"):
        if vr == "IS":
            if not _plain_integer(part):
                return False
        elif part.endswith(b"="):
            return False
    return True


cdef bint _bytes_kept_by(bytes value, object vr, object encoding) except -1:
    """Whether pydicom decodes non-ASCII ``value`` and encodes it back to the
    same bytes: text of a VR with a character set, in Latin-1 (ISO_IR 100,
    or pydicom's default when none is given), where every byte is a
    character, or valid UTF-8 (ISO_IR 192), where a space, a NUL or a
    backslash is never part of another character."""
    if vr not in _STRIPPED_EACH and vr not in ("LT", "ST", "UT"):
        return False
    names = _python_encodings(encoding or [default_encoding])
    if len(names) != 1:
        return False
    if names[0] in ("latin_1", "iso8859"):
        return True
    if names[0] in ("UTF8", "utf_8"):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True
    return False


cdef bint _plain_charset(object encoding):
    if encoding is None or isinstance(encoding, str):
        return encoding is None or encoding in _PLAIN_CHARSETS
    if isinstance(encoding, (list, tuple, MultiValue)):
        for name in encoding:
            if not isinstance(name, str) or name not in _PLAIN_CHARSETS:
                return False
        return True
    return False


# Character sets (as (0008,0005) or a parent's encodings give them) ->
# convert_encodings' Python codec names. pydicom converts them again for
# every data set, sequence and person name written (regular expressions and
# codec lookups: most of the time of a small data set with a sequence). The
# cache takes only the plain character sets the writer accepts, which
# convert without warnings, so it stays small whatever peers send.
cdef dict _ENCODINGS = {}


cdef object _python_encodings(object encoding):
    """``convert_encodings(encoding)``, remembered for plain character sets.
    The list is shared: callers read it, never change it."""
    if isinstance(encoding, str):
        key = encoding
    elif isinstance(encoding, (list, tuple, MultiValue)):
        key = tuple(encoding)
    else:
        return convert_encodings(encoding)
    found = _ENCODINGS.get(key)
    if found is None:
        found = convert_encodings(encoding)
        if _plain_charset(encoding) and len(_ENCODINGS) < 64:
            _ENCODINGS[key] = found
    return found


cdef object _character_set(object ds, dict elements):
    """``ds._character_set`` (pydicom's property), with the conversion cached."""
    if CHARSET not in elements:
        try:
            return ds._parent_encoding
        except AttributeError:  # a pydicom whose Dataset keeps it elsewhere
            return ds._character_set
    return list(_python_encodings(ds[_tag(CHARSET)].value))


cdef inline bint _multi(object value) except -1:
    # isinstance(value, (MultiValue, list, tuple)), the common exact types
    # first: MultiValue is an ABC, whose check costs ~0.3 us a call.
    cdef type kind = type(value)
    if kind is str or kind is bytes or kind is int or kind is float or kind is PersonName:
        return False
    if kind is MultiValue or kind is list or kind is tuple:
        return True
    return isinstance(value, (MultiValue, list, tuple))


cdef bytes _ascii(object text):
    if not isinstance(text, str) or not (<str>text).isascii():
        raise _Fallback
    return (<str>text).encode("ascii")


cdef class _Writer:
    """A growing buffer and the rules of pydicom's writer."""

    cdef uint8_t* buf
    cdef Py_ssize_t size
    cdef Py_ssize_t cap
    cdef bint implicit
    cdef bint little
    cdef tuple encoding
    cdef int converting     # data sets being written that pydicom converts first
    cdef bint dates_converted  # pydicom's config, as it is for this encode
    cdef bint raising

    def __cinit__(self, bint implicit, bint little):
        self.cap = 4096
        self.buf = <uint8_t*>PyMem_Malloc(self.cap)
        if self.buf == NULL:
            raise MemoryError
        self.size = 0
        self.implicit = implicit
        self.little = little
        self.encoding = (implicit, little)
        self.dates_converted = bool(_config.datetime_conversion)
        self.raising = _config.settings.reading_validation_mode == _config.RAISE

    def __dealloc__(self):
        PyMem_Free(self.buf)

    cdef int reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t cap = self.cap
        cdef uint8_t* grown
        if self.size + n <= cap:
            return 0
        while cap < self.size + n:
            cap *= 2
        grown = <uint8_t*>PyMem_Realloc(self.buf, cap)
        if grown == NULL:
            raise MemoryError
        self.buf = grown
        self.cap = cap
        return 0

    cdef int put(self, const uint8_t* data, Py_ssize_t n) except -1:
        self.reserve(n)
        if n:
            memcpy(self.buf + self.size, data, n)
        self.size += n
        return 0

    cdef int put_bytes(self, bytes data) except -1:
        return self.put(<const uint8_t*><const char*>data, len(data))

    cdef int put16(self, uint16_t v) except -1:
        self.reserve(2)
        if self.little:
            store_le16(self.buf + self.size, v)
        else:
            store_be16(self.buf + self.size, v)
        self.size += 2
        return 0

    cdef int put32(self, uint32_t v) except -1:
        self.reserve(4)
        self.patch32(self.size, v)
        self.size += 4
        return 0

    cdef void patch32(self, Py_ssize_t at, uint32_t v) noexcept:
        if self.little:
            store_le32(self.buf + at, v)
        else:
            store_be32(self.buf + at, v)

    cdef void patch16(self, Py_ssize_t at, uint16_t v) noexcept:
        if self.little:
            store_le16(self.buf + at, v)
        else:
            store_be16(self.buf + at, v)

    cdef int put_tag(self, uint32_t tag) except -1:
        self.put16(<uint16_t>(tag >> 16))
        self.put16(<uint16_t>tag)
        return 0

    cdef bytes result(self):
        return PyBytes_FromStringAndSize(<const char*>self.buf, self.size)

    # ----------------------------------------------------------- data sets
    cdef int dataset(self, object ds, object parent_encoding) except -1:
        cdef dict elements
        cdef uint32_t tag
        if not isinstance(ds, Dataset) or isinstance(ds, FileMetaDataset):
            raise _Fallback
        elements = ds._dict
        if type(elements) is not dict:
            raise _Fallback
        if CHARSET in elements:
            encoding = ds[_tag(CHARSET)].value  # what ds.get("SpecificCharacterSet") gives
        else:
            encoding = parent_encoding
        if not _plain_charset(encoding):
            raise _Fallback
        # pydicom converts every element (and corrects ambiguous VRs) unless
        # the data set is written in the encoding it was read in.
        convert = (_original_encoding(ds) != self.encoding
                   or _original_character_set(ds) != _character_set(ds, elements))
        if convert:
            self.converting += 1
        for key in _tag_order(elements):
            tag = key
            if (tag & 0xFFFF) == 0 and (tag >> 16) > 6:
                continue  # retired group length, never written
            if (tag >> 16) < 8:
                raise _Fallback
            elem = elements[key]
            if type(elem) is RawDataElement:
                if not convert:
                    self.raw_element(tag, elem)
                    continue
                if self.reheaded(tag, elem, encoding):
                    continue
                # What pydicom's writer does with it: convert it (in place,
                # through Dataset.__getitem__), then write what it became.
                elem = ds[key]
                if type(elem) is not DataElement:
                    raise _Fallback
                self.element(tag, elem, encoding)
            elif type(elem) is DataElement:
                self.element(tag, elem, encoding)
            else:
                raise _Fallback
        if convert:
            self.converting -= 1
        return 0

    cdef int raw_element(self, uint32_t tag, object raw) except -1:
        cdef object value = raw.value
        cdef bint undefined = raw.length == UNDEFINED
        cdef int code = -1
        cdef Py_ssize_t n
        if raw.is_implicit_VR != self.implicit or raw.is_little_endian != self.little or type(value) is not bytes:
            raise _Fallback
        n = len(<bytes>value)
        if self.converting and raw.VR == "SQ":
            raise _Fallback  # an enclosing data set's VR correction converts it
        if undefined and tag == PIXEL_DATA and value[:4] != (b"\xFE\xFF\x00\xE0" if self.little else b"\xFF\xFE\xE0\x00"):
            raise _Fallback  # pydicom refuses it
        if not self.implicit:
            code = self.vr_code(raw.VR)
            if not _LONG[code] and (undefined or n > 0xFFFF):
                raise _Fallback
        self.header(tag, code, UNDEFINED if undefined else <uint32_t>n)
        self.put_bytes(<bytes>value)
        if undefined:
            self.put_tag(SEQUENCE_END)
            self.put32(0)
        return 0

    cdef bint reheaded(self, uint32_t tag, object raw, object encoding) except -1:
        """Write a raw element of a data set being converted with its bytes
        as they are and a new header, when those bytes are what pydicom's
        conversion and writer would make of them: read with its VR (explicit)
        in the byte order being written, and either ASCII text padded as
        pydicom pads it (``_canonical_text``), IS integers and ASCII person
        names it keeps (``_canonical_number_or_name``) or, little endian, whole values
        of a binary VR whose conversion keeps every bit (not FL/FD, whose
        float32 NaNs Python may change; not UN, which pydicom may re-type;
        not an SS LUT Descriptor, whose first value pydicom writes as US)."""
        cdef object value = raw.value
        cdef object vr = raw.VR
        cdef Py_ssize_t n, size
        cdef int code
        if (raw.is_implicit_VR or type(value) is not bytes or raw.length == UNDEFINED
                or raw.is_little_endian != self.little):
            return False
        n = len(<bytes>value)
        if vr in _TEXT_AS_IS:
            if not _canonical_text(<bytes>value, vr, encoding, self.dates_converted, self.raising):
                return False
        elif vr == "IS" or vr == "PN":
            if not _canonical_number_or_name(<bytes>value, vr, self.raising):
                return False
        else:
            if not self.little:
                return False
            size = _AS_IS_SIZES.get(vr, 0)
            if size == 0 or n % size or (vr == "SS" and tag in _LUT_TAGS):
                return False
        code = self.vr_code(vr)
        if not self.implicit and not _LONG[code] and n > 0xFFFF:
            return False
        self.header(tag, code, <uint32_t>n)
        self.put_bytes(<bytes>value)
        return True

    cdef int vr_code(self, object vr) except -1:
        if not isinstance(vr, str) or len(<str>vr) != 2:
            raise _Fallback
        code = _vr_code(ord((<str>vr)[0]) & 0xFF, ord((<str>vr)[1]) & 0xFF)
        if code < 0:
            raise _Fallback
        return code

    cdef int header(self, uint32_t tag, int code, uint32_t length) except -1:
        """Tag, VR and length; returns nothing (patch the length later with
        ``patch_length`` when it is not known yet)."""
        cdef uint8_t vr[2]
        self.put_tag(tag)
        if self.implicit:
            self.put32(length)
            return 0
        name = _VR_STR[code]
        vr[0] = ord(name[0])
        vr[1] = ord(name[1])
        self.put(vr, 2)
        if _LONG[code]:
            self.put16(0)
            self.put32(length)
        else:
            self.put16(<uint16_t>length)
        return 0

    cdef int element(self, uint32_t tag, object elem, object encoding) except -1:
        cdef int code = self.vr_code(elem.VR)
        cdef bint undefined = elem.is_undefined_length
        cdef Py_ssize_t length_at, start
        cdef Py_ssize_t length
        if undefined and code != SQ:
            raise _Fallback
        self.header(tag, code, UNDEFINED if undefined else 0)
        start = self.size
        length_at = start - (2 if not self.implicit and not _LONG[code] else 4)
        if not _is_empty(elem, code):
            self.value(tag, code, elem, encoding)
        length = self.size - start
        if undefined:
            self.put_tag(SEQUENCE_END)
            self.put32(0)
        elif not self.implicit and not _LONG[code]:
            if length > 0xFFFF:
                raise _Fallback  # pydicom rewrites it as UN
            self.patch16(length_at, <uint16_t>length)
        else:
            if length >= UNDEFINED:
                raise _Fallback
            self.patch32(length_at, <uint32_t>length)
        return 0

    cdef int value(self, uint32_t tag, int code, object elem, object encoding) except -1:
        value = elem.value
        if code == SQ:
            return self.sequence(value, encoding)
        if code in (AE, AS, CS, UR, UI, DA, DT, TM):
            return self.text(value, b"\0" if code == UI else b" ")
        if code == DS or code == IS:
            return self.number_strings(value)
        if code in (LO, LT, SH, ST, UC, UT):
            return self.charset_text(value)
        if code == PN:
            return self.person_names(elem, encoding)
        if code in (OB, OD, OF, OL, OV, OW, UN):
            if type(value) is not bytes and type(value) is not bytearray:
                raise _Fallback
            self.put_bytes(bytes(value))
            if code != UN and len(value) % 2:
                self.put(<const uint8_t*>b"\0", 1)
            return 0
        if code == AT:
            return self.tags(value)
        if code == SS and tag in _LUT_TAGS:
            raise _Fallback
        return self.numbers(code, value)

    cdef int text(self, object value, bytes padding) except -1:
        # write_string: one str, or several joined by backslashes.
        if _multi(value):
            for part in value:
                if not isinstance(part, str):
                    raise _Fallback
            value = "\\".join(value)
        data = _ascii(value)
        self.put_bytes(data)
        if len(data) % 2:
            self.put_bytes(padding)
        return 0

    cdef int number_strings(self, object value) except -1:
        # write_number_string: each value's original string, else str().
        if _multi(value):
            text = "\\".join([_number_string(part) for part in value])
        else:
            text = _number_string(value)
        data = _ascii(text)
        self.put_bytes(data)
        if len(data) % 2:
            self.put(<const uint8_t*>b" ", 1)
        return 0

    cdef int charset_text(self, object value) except -1:
        # write_text: str values encoded (ASCII here), bytes values as they are.
        if _multi(value):
            if not value:
                raise _Fallback
            if isinstance(value[0], str):
                data = b"\\".join([_ascii(part) for part in value])
            else:
                for part in value:
                    if type(part) is not bytes:
                        raise _Fallback
                data = b"\\".join(value)
        elif isinstance(value, str):
            data = _ascii(value)
        elif type(value) is bytes:
            data = value
        else:
            raise _Fallback
        self.put_bytes(data)
        if len(data) % 2:
            self.put(<const uint8_t*>b" ", 1)
        return 0

    cdef int person_names(self, object elem, object encoding) except -1:
        value = elem.value
        if isinstance(value, PersonName):
            names = [value]
        elif _multi(value) and len(value) > 1:
            names = value
        else:
            raise _Fallback
        encodings = _python_encodings(encoding or [default_encoding])
        parts = []
        for name in names:
            if not isinstance(name, PersonName):
                raise _Fallback
            part = name.encode(encodings)
            if type(part) is not bytes or not (<bytes>part).isascii():
                raise _Fallback
            parts.append(part)
        data = b"\\".join(parts)
        self.put_bytes(data)
        if len(data) % 2:
            self.put(<const uint8_t*>b" ", 1)
        return 0

    cdef int tags(self, object value) except -1:
        if isinstance(value, (MultiValue, list)):
            for part in value:
                self.one_tag(part)
        else:
            self.one_tag(value)
        return 0

    cdef int one_tag(self, object value) except -1:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > 0xFFFFFFFF:
            raise _Fallback
        self.put_tag(<uint32_t>value)
        return 0

    cdef int numbers(self, int code, object value) except -1:
        # write_numbers: a list-like (it has .append) is several values.
        cdef type kind = type(value)
        if kind is int or kind is float:
            multi = False
        elif kind is list or kind is MultiValue:
            multi = True
        else:
            multi = hasattr(value, "append")
        if multi:
            for part in value:
                self.number(code, part)
        else:
            self.number(code, value)
        return 0

    cdef int number(self, int code, object value) except -1:
        cdef double d
        cdef float f
        cdef uint64_t u
        cdef uint32_t bits
        if code == FL or code == FD:
            if type(value) is not float and not (isinstance(value, int) and not isinstance(value, bool)):
                raise _Fallback
            try:
                d = value
            except OverflowError:
                raise _Fallback
            if code == FD:
                memcpy(&u, &d, 8)
                return self.put64(u)
            f = <float>d
            if isinf(f) and not isinf(d):
                raise _Fallback  # struct refuses it
            memcpy(&bits, &f, 4)
            return self.put32(bits)
        if not isinstance(value, int):
            raise _Fallback
        if code == US:
            if not 0 <= value <= 0xFFFF:
                raise _Fallback
            self.put16(<uint16_t>value)
        elif code == SS:
            if not -0x8000 <= value <= 0x7FFF:
                raise _Fallback
            self.put16(<uint16_t>(<int64_t>value))
        elif code == UL:
            if not 0 <= value <= 0xFFFFFFFF:
                raise _Fallback
            self.put32(<uint32_t>value)
        elif code == SL:
            if not -0x80000000 <= value <= 0x7FFFFFFF:
                raise _Fallback
            self.put32(<uint32_t>(<int64_t>value))
        elif code == UV:
            if not 0 <= value <= 0xFFFFFFFFFFFFFFFF:
                raise _Fallback
            self.put64(<uint64_t>value)
        elif code == SV:
            if not -0x8000000000000000 <= value <= 0x7FFFFFFFFFFFFFFF:
                raise _Fallback
            self.put64(<uint64_t>(<int64_t>value))
        else:
            raise _Fallback
        return 0

    cdef int put64(self, uint64_t v) except -1:
        if self.little:
            self.put32(<uint32_t>v)
            self.put32(<uint32_t>(v >> 32))
        else:
            self.put32(<uint32_t>(v >> 32))
            self.put32(<uint32_t>v)
        return 0

    cdef int sequence(self, object value, object encoding) except -1:
        cdef Py_ssize_t length_at
        if not isinstance(value, Sequence):
            raise _Fallback
        encodings = _python_encodings(encoding or [default_encoding])
        for item in value:
            if not isinstance(item, Dataset):
                raise _Fallback
            self.put_tag(ITEM)
            length_at = self.size
            self.put32(UNDEFINED)
            self.dataset(item, encodings)
            if getattr(item, "is_undefined_length_sequence_item", False):
                self.put_tag(ITEM_END)
                self.put32(0)
            else:
                if self.size - length_at - 4 >= UNDEFINED:
                    raise _Fallback
                self.patch32(length_at, <uint32_t>(self.size - length_at - 4))
        return 0


cdef bint _is_empty(object elem, int code) except -1:
    # DataElement.is_empty for the values the writer takes, without its
    # property calls; anything else asks the element.
    value = elem.value
    if code == SQ:
        return not value
    if value is None:
        return True
    if isinstance(value, (str, bytes, PersonName)):
        return not value
    if _multi(value):
        return len(value) == 0
    kind = type(value)
    if kind is int or kind is float or kind is _IS or kind is _DSfloat:
        return False  # what is_empty says: not iterable, VM 1
    return elem.is_empty


cdef object _ORIGINAL_ENCODING = Dataset.original_encoding
cdef object _ORIGINAL_CHARSET = Dataset.original_character_set


cdef object _original_encoding(object ds):
    """``ds.original_encoding``, read from the attributes pydicom's property
    returns (a property call costs ~0.6 us, once per data set and item)."""
    state = ds.__dict__
    if type(ds).original_encoding is _ORIGINAL_ENCODING and "_read_implicit" in state and "_read_little" in state:
        return (state["_read_implicit"], state["_read_little"])
    return ds.original_encoding


cdef object _original_character_set(object ds):
    state = ds.__dict__
    if type(ds).original_character_set is _ORIGINAL_CHARSET and "_read_charset" in state:
        return state["_read_charset"]
    return ds.original_character_set


cdef list _tag_order(dict elements):
    """The keys of ``elements`` in tag order: as they are when already
    ascending (as pydicom reads them, and as most code adds them), else
    sorted by their int values (without BaseTag.__lt__)."""
    cdef list keys = list(elements)
    cdef Py_ssize_t i, n = len(keys)
    cdef uint32_t previous = 0, tag
    for i in range(n):
        tag = keys[i]
        if i and tag <= previous:
            return sorted(keys, key=int)
        previous = tag
    return keys


cdef object _number_string(object value):
    original = getattr(value, "original_string", _MISSING)
    return str(value) if original is _MISSING else original


def encode(dataset, bint implicit, bint little):
    """``dataset`` encoded as pydicom's write_dataset would, or None when
    pydicom's writer must do it."""
    cdef _Writer writer = _Writer(implicit, little)
    try:
        writer.dataset(dataset, default_encoding)
    except _Fallback:
        return None
    return writer.result()
