# cython: language_level=3
"""Incremental PDU framing of a byte stream.

The framer is a small state machine over two states, "collecting the 6-byte
header" and "collecting ``need`` body bytes". Each ``feed`` walks its chunk
once: the work per chunk is proportional to the number of PDUs it completes,
never to the bytes already buffered.

Bodies are handed out as memoryview slices of the incoming chunk when the
whole body lies in that chunk and the chunk is immutable (``bytes``, or a
memoryview of ``bytes``): no copy. A body spread over several chunks is kept
as the pieces received and joined once, when its last byte arrives. Mutable
input (bytearray, memoryview of one) is copied to ``bytes`` first, since the
caller may reuse its buffer after ``feed`` returns.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING
from libc.string cimport memcpy

from _bytes cimport load_be32

from chromanet.errors import PDUTooLargeError

cdef enum:
    HDR = 6
    T_PDATA = 0x04

cdef Py_ssize_t _SMALL = 4096  # body pieces shorter than this are copied, not viewed


cdef class PDUFramer:
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

    cdef unsigned long long _max_pdata
    cdef unsigned long long _max_other
    cdef unsigned char _hdr[6]
    cdef int _hdr_len              # header bytes collected, 0..6
    cdef int _type                 # PDU type of the PDU in progress
    cdef unsigned long long _length  # its body length (PDU length field)
    cdef unsigned long long _need    # body bytes still missing
    cdef list _parts               # body pieces received so far (partial PDU only)
    cdef object _error             # the error that made the framer unusable

    def __init__(self, max_pdata_length=0, max_other_length=1048576):
        self.max_pdata_length = max_pdata_length
        self.max_other_length = max_other_length
        self._hdr_len = 0
        self._need = 0
        self._parts = []
        self._error = None

    @property
    def max_pdata_length(self):
        return self._max_pdata

    @max_pdata_length.setter
    def max_pdata_length(self, value):
        if value < 0:
            raise ValueError("max_pdata_length must be >= 0 (0 = no limit)")
        self._max_pdata = value

    @property
    def max_other_length(self):
        return self._max_other

    @max_other_length.setter
    def max_other_length(self, value):
        if value < 0:
            raise ValueError("max_other_length must be >= 0")
        self._max_other = value

    @property
    def buffered(self):
        """Bytes received that belong to a PDU not yet complete."""
        if self._hdr_len < HDR or self._error is not None:
            return self._hdr_len
        return HDR + <Py_ssize_t>(self._length - self._need)

    @property
    def in_pdu(self):
        """True when the stream stopped in the middle of a PDU (or header)."""
        return self._hdr_len > 0

    def __repr__(self):
        return (f"PDUFramer(max_pdata_length={self._max_pdata}, max_other_length={self._max_other}, "
                f"buffered={self.buffered})")

    cdef int _header_done(self) except -1:
        cdef const unsigned char* h = self._hdr
        self._type = h[0]
        self._length = load_be32(h + 2)  # PDU length, big-endian (PS3.8 9.3.1)
        self._need = self._length  # so that ``buffered`` stays right even after an error
        if self._type == T_PDATA:
            if self._max_pdata and self._length > self._max_pdata:
                self._fail(self._max_pdata)
        elif self._length > self._max_other:
            self._fail(self._max_other)
        return 0

    cdef int _fail(self, unsigned long long limit) except -1:
        self._error = PDUTooLargeError(
            f"PDU length {self._length} exceeds the limit of {limit}",
            length=self._length, limit=limit, pdu_type=self._type)
        raise self._error

    def feed(self, data):
        """Add ``data``; return the PDUs it completed, as ``(pdu_type, body)``."""
        cdef const unsigned char[::1] buf
        cdef const unsigned char* p
        cdef Py_ssize_t n, pos = 0, take
        cdef list out = []
        if self._error is not None:
            raise self._error.with_traceback(None)  # a fresh traceback: re-raising must not chain (and keep) the old frames
        if type(data) is bytes:
            chunk = data
            n = len(<bytes>data)
            if n == 0:
                return out
            p = <const unsigned char*>PyBytes_AS_STRING(data)
            view = None  # created only when a body is sliced out of this chunk
        else:
            view = memoryview(data)
            if view.c_contiguous and (view.format != "B" or view.ndim != 1):
                view = view.cast("B")
            if not (type(view.obj) is bytes and view.c_contiguous):
                # Mutable (or unknown) storage: the caller may reuse it; copy once.
                chunk = view.tobytes()
                view = None
                n = len(<bytes>chunk)
                if n == 0:
                    return out
                p = <const unsigned char*>PyBytes_AS_STRING(chunk)
            else:
                chunk = view
                buf = view
                n = buf.shape[0]
                if n == 0:
                    return out
                p = &buf[0]
        while pos < n:
            if self._hdr_len < HDR:
                take = min(HDR - self._hdr_len, n - pos)
                memcpy(self._hdr + self._hdr_len, p + pos, take)
                self._hdr_len += take
                pos += take
                if self._hdr_len < HDR:
                    break
                self._header_done()
                if self._need == 0:
                    out.append((self._type, b""))
                    self._hdr_len = 0
                continue
            # collecting the body: _need > 0 here
            if <unsigned long long>(n - pos) >= self._need:
                take = <Py_ssize_t>self._need
                if view is None:
                    view = memoryview(chunk)
                if self._parts:
                    self._parts.append(view[pos:pos + take])
                    body = b"".join(self._parts)
                    self._parts = []
                else:
                    body = view[pos:pos + take]  # whole body in this chunk: zero copy
                pos += take
                out.append((self._type, body))
                self._hdr_len = 0
                self._need = 0
            else:
                take = n - pos
                if take < _SMALL:
                    # Tiny pieces (a peer trickling bytes) are copied into one
                    # bytearray rather than each costing a memoryview object.
                    if self._parts and type(self._parts[-1]) is bytearray:
                        (<bytearray>self._parts[-1]).extend((<const char*>p + pos)[:take])
                    else:
                        self._parts.append(bytearray((<const char*>p + pos)[:take]))
                else:
                    if view is None:
                        view = memoryview(chunk)
                    self._parts.append(view[pos:n])
                self._need -= take
                pos = n
        return out
