# The elements of an Explicit VR Little Endian data set, as bytes, by tag
# (``scan``; included by _dataset.pyx). What ``chromanet.archive.rawscan``
# documents: a dict per data set or item, tag -> (VR, value) or, for a
# sequence, ("SQ", [item dicts]); a value is bytes up to 256 bytes, a
# memoryview of the data beyond (not copied). Not a checker: ``check``
# must have passed on the same bytes; anything the scan does not handle
# (undefined length but on a sequence or an item, a header cut short) makes
# it return None, and the caller decodes the data set the general way.
# One walk in C instead of a Python loop over every element: validating a
# received palette in the commit thread took most of its GIL time there.

cdef Py_ssize_t _INLINE_VALUE = 256


class _ScanUnhandled(Exception):
    """Bytes ``scan`` leaves to the general decoder."""


cdef class _Scanner:
    cdef const uint8_t* p
    cdef Py_ssize_t size
    cdef bytes raw
    cdef object view

    def __cinit__(self, bytes raw):
        self.raw = raw
        self.p = <const uint8_t*> raw
        self.size = len(raw)
        self.view = memoryview(raw)

    cdef tuple level(self, Py_ssize_t pos, Py_ssize_t end, bint in_undefined_item, int depth):
        """The elements from ``pos`` to ``end`` (or, in an item of undefined
        length, to its Item Delimitation Item); their dict and where they end."""
        cdef dict elements = {}
        cdef uint32_t tag, length
        cdef uint16_t group
        cdef int vr
        cdef list items
        if depth > MAX_DEPTH:
            raise _ScanUnhandled()
        while pos < end:
            if pos + 8 > self.size:
                raise _ScanUnhandled()
            group = load_le16(self.p + pos)
            tag = (<uint32_t> group) << 16 | load_le16(self.p + pos + 2)
            if tag == ITEM_END:
                if not in_undefined_item:
                    raise _ScanUnhandled()
                return elements, pos + 8
            if group == 0xFFFE:
                raise _ScanUnhandled()
            vr = _vr_code(self.p[pos + 4], self.p[pos + 5])
            if vr < 0:
                raise _ScanUnhandled()
            if _LONG[vr]:
                if pos + 12 > self.size:
                    raise _ScanUnhandled()
                length = load_le32(self.p + pos + 8)
                pos += 12
            else:
                length = load_le16(self.p + pos + 6)
                pos += 8
            if vr == SQ:
                items, pos = self.sequence(pos, length, end, depth + 1)
                elements[tag] = ("SQ", items)
                continue
            if length == UNDEFINED or pos + <Py_ssize_t> length > end:
                raise _ScanUnhandled()
            if length <= _INLINE_VALUE:
                value = PyBytes_FromStringAndSize(<const char*> self.p + pos, length)
            else:
                value = self.view[pos : pos + length]
            elements[tag] = (_VR_STR[vr], value)
            pos += length
        if in_undefined_item:
            raise _ScanUnhandled()  # no Item Delimitation Item before the end
        return elements, pos

    cdef tuple sequence(self, Py_ssize_t pos, uint32_t length, Py_ssize_t end, int depth):
        """The items of a sequence whose value starts at ``pos``; they and
        where the sequence ends."""
        cdef bint undefined = length == UNDEFINED
        cdef Py_ssize_t stop = end if undefined else pos + <Py_ssize_t> length
        cdef uint32_t tag, item_length
        cdef list items = []
        cdef dict item
        if stop > end:
            raise _ScanUnhandled()
        while pos < stop:
            if pos + 8 > self.size:
                raise _ScanUnhandled()
            tag = (<uint32_t> load_le16(self.p + pos)) << 16 | load_le16(self.p + pos + 2)
            item_length = load_le32(self.p + pos + 4)
            pos += 8
            if tag == SEQUENCE_END:
                if not undefined:
                    raise _ScanUnhandled()
                return items, pos
            if tag != ITEM:
                raise _ScanUnhandled()
            if item_length == UNDEFINED:
                item, pos = self.level(pos, stop, True, depth)
            else:
                if pos + <Py_ssize_t> item_length > stop:
                    raise _ScanUnhandled()
                item, pos = self.level(pos, pos + item_length, False, depth)
            items.append(item)
        if undefined:
            raise _ScanUnhandled()  # no Sequence Delimitation Item before the end
        return items, pos


def scan(data):
    """The top-level elements of ``data`` (Explicit VR Little Endian, already
    checked), by tag; None where the general decoder must read it."""
    cdef _Scanner scanner = _Scanner(bytes(data))
    try:
        return scanner.level(0, scanner.size, False, 0)[0]
    except _ScanUnhandled:
        return None
