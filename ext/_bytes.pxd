# Fixed-width unsigned integers at a byte pointer, in the two byte orders of
# the DICOM wire. The one copy for every module in ext/, which take what they
# use with ``from _bytes cimport load_be32, ...``.
#
# Which order where:
#
# * big-endian (the lower byte number holds the most significant value,
#   PS3.8 section 9.3.1): the PDU header's length, item and sub-item lengths,
#   the PDV item length and the binary fields of the A-ASSOCIATE items
#   (protocol version, Maximum Length, asynchronous operations window...).
#   Users: _framer, _pdu, _pdata.
# * little-endian (PS3.5 section 7.3): DIMSE command sets are always encoded
#   as Implicit VR Little Endian whatever transfer syntax was negotiated
#   (PS3.7 section 6.3.1): each element's group, element number and value
#   length, and its US, UL and AT values. User: _dimse.
#
# Contract: the caller has checked that 2 or 4 bytes are there (``_need`` in
# _pdu_decode.pxi, explicit comparisons elsewhere) and, for a store, that the
# value fits (callers holding a wider integer cast it, after that check).
# These functions check nothing, touch no Python object and need no alignment:
# they go byte by byte, which GCC at -O2 turns into one load or store plus a
# byte swap where the host order differs.
#
# Everything here is ``cdef inline``: Cython copies the bodies into each module
# that cimports them, so this file is a declaration only. It is not a module:
# setup.py compiles ext/*.pyx alone, nothing imports ``_bytes`` at run time,
# and ``include_path=["ext"]`` is what lets ``cimport`` find it.

from libc.stdint cimport uint8_t, uint16_t, uint32_t


cdef inline uint16_t load_be16(const uint8_t* p) noexcept nogil:
    return <uint16_t>((<uint16_t>p[0] << 8) | p[1])


cdef inline uint32_t load_be32(const uint8_t* p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16)
            | (<uint32_t>p[2] << 8) | <uint32_t>p[3])


cdef inline void store_be16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>v


cdef inline void store_be32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline uint16_t load_le16(const uint8_t* p) noexcept nogil:
    return <uint16_t>(p[0] | (<uint16_t>p[1] << 8))


cdef inline uint32_t load_le32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] | (<uint32_t>p[1] << 8)
            | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24))


cdef inline void store_le16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)


cdef inline void store_le32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)
    p[2] = <uint8_t>(v >> 16)
    p[3] = <uint8_t>(v >> 24)
