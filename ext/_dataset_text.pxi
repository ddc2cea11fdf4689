# Text values of scanned elements, as pydicom converts them (``plain_text``),
# and the DICOM JSON (PS3.18 F.2) of chosen text elements of scanned items
# (``text_json``); included by _dataset.pyx. Both take what ``scan`` makes:
# (VR, value) entries and ("SQ", [item dicts]).
#
# Why in C: validating a received palette reads a dozen text values and
# builds the JSON of its Alternate Content Description Sequence; done in
# Python, that was most of the validation's time in the commit thread, where
# the GIL is shared with the event loop.
#
# Only what converts plainly is handled (a value of bytes without ESC, in a
# VR and character set where pydicom's conversion is decoding with one codec
# and stripping padding); anything else gives None and the caller asks
# pydicom, which decides.

from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.string cimport memchr

from json.encoder import encode_basestring as _json_string  # as json.dumps(ensure_ascii=False) quotes

cdef uint8_t _ESC = 0x1B


cdef inline bint _is_ascii(const uint8_t* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if p[i] >= 0x80:
            return False
    return True


cdef inline bint _uid_characters(const uint8_t* p, Py_ssize_t n) noexcept:
    """``p[:n]`` holds only digits, "." and the value separator "\\"."""
    cdef Py_ssize_t i
    for i in range(n):
        if not (0x30 <= p[i] <= 0x39 or p[i] == 0x2E or p[i] == 0x5C):
            return False
    return True


cdef inline Py_ssize_t _unpadded(const uint8_t* p, Py_ssize_t n) noexcept:
    """The length of ``p[:n]`` without its trailing spaces and NULs."""
    while n > 0 and (p[n - 1] == 0x20 or p[n - 1] == 0):
        n -= 1
    return n


cdef object _plain_text(object entry, object codec):
    """The text pydicom gives for a scanned ``(VR, value)``, or None (see
    ``plain_text``)."""
    cdef object vr = entry[0]
    cdef object value = entry[1]
    if type(value) is not bytes:
        return None
    cdef bytes raw = <bytes> value
    cdef const uint8_t* p = <const uint8_t*> (<char*> raw)
    cdef Py_ssize_t n = len(raw)
    if memchr(p, _ESC, n) != NULL:
        return None
    cdef bint ascii = _is_ascii(p, n)
    if vr == "CS":
        # pydicom decodes CS with its default encoding whatever the
        # character set, then strips the padding of the whole value.
        if not ascii:
            return None
        return PyUnicode_DecodeASCII(<const char*> p, _unpadded(p, n), NULL)
    if vr == "UI":
        # Likewise, and each value stripped of white space too (its UID
        # class): plain only when made of UID characters (PS3.5 9.1).
        n = _unpadded(p, n)
        if not _uid_characters(p, n):
            return None
        return PyUnicode_DecodeASCII(<const char*> p, n, NULL)
    if codec is None:
        return None
    try:
        if vr == "PN":
            # Padding stripped from the whole value; then, value by value,
            # the empty component groups at the end ("Doe^Jane=" reads
            # "Doe^Jane", as pydicom's PersonName gives it).
            n = _unpadded(p, n)
            if memchr(p, 0x3D, n) == NULL:
                if ascii:
                    return PyUnicode_DecodeASCII(<const char*> p, n, NULL)
                return raw[:n].decode(codec)
            return "\\".join([name.rstrip("=") for name in raw[:n].decode(codec).split("\\")])
        if vr == "SH" or vr == "LO":
            # Value by value: split at "\", each stripped of its padding.
            if ascii and memchr(p, 0x5C, n) == NULL:
                return PyUnicode_DecodeASCII(<const char*> p, _unpadded(p, n), NULL)
            return "\\".join([part.rstrip("\x00 ") for part in raw.decode(codec).split("\\")])
    except UnicodeDecodeError:
        return None
    return None


def plain_text(entry, codec):
    """The text pydicom's conversion gives for a scanned element ``entry``
    (``(VR, value)`` from ``scan``), joined by "\\" when it has several
    values, for the data set's one ``codec`` (an ASCII-compatible Python
    codec name, or None when its character set has none): CS and UI decoded
    as ASCII whatever the character set and stripped of trailing spaces and
    NULs as a whole (UI only when made of digits, "." and "\\");
    PN likewise in ``codec``, each value without its empty trailing component
    groups; SH and LO in ``codec``, value by value. None
    for anything else (another VR, a value not bytes, ESC in it, bytes the
    codec cannot decode): the caller asks pydicom."""
    return _plain_text(entry, codec)


cdef int _items_json(list items, dict keys, object codec, list out) except -1:
    """Append the JSON of ``items`` to ``out``; False if one is not plain."""
    cdef bint first_item = True, first
    cdef dict item
    out.append("[")
    for item in items:
        if CHARSET in item:
            return False  # an item with a character set of its own: pydicom's
        if not first_item:
            out.append(", ")
        first_item = False
        out.append("{")
        first = True
        for tag, inner in keys.items():
            entry = item.get(tag)
            if entry is None:
                continue
            if not first:
                out.append(", ")
            first = False
            out.append('"%08X": ' % tag)
            vr = entry[0]
            if inner is None:
                if vr != "SH" and vr != "LO":
                    return False
                text = _plain_text(entry, codec)
                if text is None:
                    return False
                if not text:
                    out.append('{"vr": "%s"}' % vr)
                    continue
                out.append('{"vr": "%s", "Value": [' % vr)
                out.append(", ".join([_json_string(part) for part in text.split("\\")]))
                out.append("]}")
            else:
                if vr != "SQ":
                    return False
                out.append('{"vr": "SQ", "Value": ')
                if not _items_json(entry[1], inner, codec, out):
                    return False
                out.append("}")
        out.append("}")
    out.append("]")
    return True


def text_json(items, keys, codec):
    """DICOM JSON (PS3.18 F.2) of the text elements ``keys`` of scanned
    ``items`` (item dicts from ``scan``), as a JSON list with one object per
    item: the text ``json.dumps(..., ensure_ascii=False)`` gives for what
    pydicom's ``DataElement.to_json_dict`` makes of each element.

    ``keys``: tag -> None for an SH or LO element, or tag -> the keys of the
    items of a sequence; an object lists the keys an item has, in the order
    of ``keys``. None when something is not plain (an element of another
    VR, a value ``plain_text`` leaves to pydicom, an item with a Specific
    Character Set of its own)."""
    cdef list out = []
    if not _items_json(items, keys, codec, out):
        return None
    return "".join(out)
