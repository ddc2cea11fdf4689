# cython: language_level=3
"""P-DATA-TF fragmentation and reassembly of DIMSE messages (PS3.8 9.3.5, Annex E).

A DIMSE message travels as presentation data values (PDVs): command
fragments, then (when the command says so) data set fragments, each PDV being
item length (4, big-endian) + presentation context ID (1) + message control
header (1: bit 0 command, bit 1 last) + fragment. PDVs are carried in P-DATA-TF
PDUs whose PDU length field must not exceed the peer's Maximum Length.

``fragment_message`` never copies the data set: it returns small header
``bytes`` and memoryview slices for ``transport.writelines``. ``Reassembler``
parses P-DATA-TF bodies itself (no PDU objects), keeps memoryviews of
immutable input and joins multi-fragment data sets once, at the end.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from _bytes cimport load_be32, store_be32

from chromanet._dimse import Command, decode_command
from chromanet.errors import PDataError

__all__ = ["fragment_message", "DimseMessage", "CommandArrived", "DatasetChunk", "Reassembler"]

cdef enum:
    _NO_LIMIT_FRAGMENT = 4 * 1024 * 1024
    _PDU_TYPE = 0x04


# ------------------------------------------------------------ fragmenting

cdef inline Py_ssize_t _pdv_header(uint8_t *w, Py_ssize_t size, int context_id,
                                   int control) noexcept nogil:
    store_be32(w, <uint32_t>(size + 2))
    w[4] = <uint8_t>context_id
    w[5] = <uint8_t>control
    return 6


cdef object _as_byte_view(object buffer):
    cdef object mv = memoryview(buffer)
    if mv.ndim != 1 or mv.itemsize != 1 or mv.format != "B":
        mv = mv.cast("B")
    return mv


def fragment_message(int context_id, command, dataset, max_pdu_length, bint pack=True):
    """One DIMSE message as P-DATA-TF PDUs, ready for ``transport.writelines``.

    ``command`` is an encoded command set, ``dataset`` any buffer or None.
    Returns a list of buffers whose concatenation is the PDUs: ``bytes``
    holding PDU and PDV headers (and command fragments, which are small) and
    memoryview slices of ``dataset``, which is never copied.

    ``max_pdu_length`` is the peer's Maximum Length (largest PDU length field
    value; 0 = no limit, fragments then capped at 4 MiB); non-zero values
    below 7 raise ValueError. With ``pack`` PDVs share PDUs as far as they
    fit (the command PDV and the first data set PDV travel together); without
    it every PDU holds one PDV. A data set of zero bytes is sent as one empty
    last fragment.
    """
    if context_id < 1 or context_id > 255:
        raise ValueError(f"context_id {context_id} out of range 1..255")
    cdef uint64_t max_len
    if max_pdu_length < 0 or max_pdu_length > 0xFFFFFFFF:
        raise ValueError(f"max_pdu_length {max_pdu_length} out of range")
    max_len = max_pdu_length
    if max_len == 0:
        max_len = _NO_LIMIT_FRAGMENT + 6
    elif max_len < 7:
        raise ValueError(f"max_pdu_length {max_pdu_length} leaves no room for a PDV fragment")

    cdef bytes cmd = command if type(command) is bytes else bytes(command)
    cdef const uint8_t *cp = <const uint8_t *>PyBytes_AS_STRING(cmd)
    cdef Py_ssize_t cmd_len = PyBytes_GET_SIZE(cmd)
    cdef object ds_view = None
    cdef Py_ssize_t ds_len = 0
    if dataset is not None:
        ds_view = _as_byte_view(dataset)
        ds_len = len(ds_view)

    cdef list out = []
    cdef int part = 0                 # 0 command, 1 data set
    cdef Py_ssize_t pos = 0           # offset in the current part
    cdef Py_ssize_t part_len = cmd_len
    cdef bint done = False
    cdef uint64_t room
    cdef Py_ssize_t cmd_frag, cmd_start, ds_frag, ds_pos, hdr_len
    cdef int cmd_control, ds_control
    cdef bytes hdr
    cdef uint8_t *w

    while not done:
        # Plan one PDU: optionally the (rest of the) command, then optionally
        # the (start of the) data set. Greedy packing never puts more than
        # these two PDVs in one PDU.
        room = max_len
        cmd_frag = -1
        ds_frag = -1
        ds_pos = 0
        cmd_control = 0
        ds_control = 0
        cmd_start = pos
        if part == 0:
            cmd_frag = <Py_ssize_t>min(<uint64_t>(cmd_len - pos), room - 6)
            room -= 6 + cmd_frag
            pos += cmd_frag
            cmd_control = 0x01
            if pos == cmd_len:
                cmd_control = 0x03
                if ds_view is None:
                    done = True
                else:
                    part = 1
                    pos = 0
        if part == 1 and not done and (cmd_frag < 0 or (pack and (
                room >= 7 or (room == 6 and ds_len == 0)))):
            ds_frag = <Py_ssize_t>min(<uint64_t>(ds_len - pos), room - 6)
            room -= 6 + ds_frag
            ds_pos = pos
            pos += ds_frag
            if pos == ds_len:
                ds_control = 0x02
                done = True

        # Emit it: one bytes object for all headers (and the command bytes),
        # then the data set slice.
        hdr_len = 6 + (6 + cmd_frag if cmd_frag >= 0 else 0) + (6 if ds_frag >= 0 else 0)
        hdr = PyBytes_FromStringAndSize(NULL, hdr_len)
        w = <uint8_t *>PyBytes_AS_STRING(hdr)
        w[0] = _PDU_TYPE
        w[1] = 0
        store_be32(w + 2, <uint32_t>(max_len - room))
        w += 6
        if cmd_frag >= 0:
            w += _pdv_header(w, cmd_frag, context_id, cmd_control)
            memcpy(w, cp + cmd_start, cmd_frag)
            w += cmd_frag
        if ds_frag >= 0:
            _pdv_header(w, ds_frag, context_id, ds_control)
        out.append(hdr)
        if ds_frag > 0:
            out.append(ds_view[ds_pos:ds_pos + ds_frag])
    return out


# ------------------------------------------------------------ reassembling

cdef class DimseMessage:
    """A complete message: the decoded command and the data set bytes (or None)."""

    cdef public int context_id
    cdef public object command
    cdef public object dataset

    def __init__(self, int context_id, command, dataset=None):
        self.context_id = context_id
        self.command = command
        self.dataset = dataset

    def __repr__(self):
        size = None if self.dataset is None else len(self.dataset)
        return f"DimseMessage(context_id={self.context_id}, command={self.command!r}, dataset_length={size})"


cdef class CommandArrived:
    """Streaming mode: a command whose data set fragments follow as DatasetChunk."""

    cdef public int context_id
    cdef public object command

    def __init__(self, int context_id, command):
        self.context_id = context_id
        self.command = command

    def __repr__(self):
        return f"CommandArrived(context_id={self.context_id}, command={self.command!r})"


cdef class DatasetChunk:
    """Streaming mode: one data set fragment, in order; ``is_last`` ends the message."""

    cdef public int context_id
    cdef public object data
    cdef public bint is_last

    def __init__(self, int context_id, data, bint is_last):
        self.context_id = context_id
        self.data = data
        self.is_last = is_last

    def __repr__(self):
        return (f"DatasetChunk(context_id={self.context_id}, length={len(self.data)}, "
                f"is_last={self.is_last})")


cdef enum:
    _IDLE = 0
    _IN_COMMAND = 1
    _IN_DATASET = 2


cdef enum:
    _C_CANCEL_RQ = 0x0FFF


cdef inline object _perror(str message, Py_ssize_t body_offset):
    # offsets in PDUError count from the PDU type byte: the body starts at 6
    return PDataError(message, offset=body_offset + 6, pdu_type=_PDU_TYPE)


cdef class Reassembler:
    """Rebuilds DIMSE messages from the bodies of incoming P-DATA-TF PDUs.

    See the stub (chromanet/_pdata.pyi) for the checks and the two modes.
    ``feed`` takes a P-DATA-TF PDU minus its 6-byte header. ``bytes`` input
    (or a read-only memoryview of ``bytes``) is kept by reference: fragments
    are memoryview slices of it; any other buffer is copied once to ``bytes``.
    After an error the reassembler's state is undefined: the association is
    to be aborted.
    """

    cdef public object accepted_context_ids
    cdef public bint stream_datasets
    cdef public Py_ssize_t max_dataset_length
    cdef public Py_ssize_t stream_threshold

    cdef int _state
    cdef int _context_id
    cdef bint _streaming            # mode of the message in progress
    cdef bint _after_no_dataset     # last message ended with a no-data-set command
    cdef bint _foreign              # message in progress is on a context not accepted
    cdef list _command_fragments
    cdef object _command
    cdef list _dataset_fragments
    cdef Py_ssize_t _dataset_length

    def __init__(self, accepted_context_ids=None, bint stream_datasets=False,
                 Py_ssize_t max_dataset_length=0, Py_ssize_t stream_threshold=0):
        if max_dataset_length < 0 or stream_threshold < 0:
            raise ValueError("max_dataset_length and stream_threshold must be >= 0")
        self.accepted_context_ids = accepted_context_ids
        self.stream_datasets = stream_datasets
        self.max_dataset_length = max_dataset_length
        self.stream_threshold = stream_threshold
        self._state = _IDLE
        self._command_fragments = []
        self._dataset_fragments = []

    @property
    def in_message(self):
        """True between the first fragment of a message and its last."""
        return self._state != _IDLE

    cdef inline void _reset(self):
        self._state = _IDLE
        self._foreign = False
        self._command = None
        if self._command_fragments:
            self._command_fragments = []
        if self._dataset_fragments:
            self._dataset_fragments = []
        self._dataset_length = 0

    def feed(self, pdata_body):
        """Parse one P-DATA-TF body; return the events it completes, in order."""
        cdef object keep
        cdef object view
        cdef Py_buffer buf
        cdef const uint8_t *p
        cdef Py_ssize_t n, pos, frag_start, frag_len
        cdef uint32_t item_len
        cdef int ctx, mch
        cdef list events = []
        cdef object accepted = self.accepted_context_ids

        if type(pdata_body) is bytes:
            keep = pdata_body
        elif (type(pdata_body) is memoryview and pdata_body.readonly
                and type(pdata_body.obj) is bytes and pdata_body.c_contiguous):
            keep = _as_byte_view(pdata_body)
        else:
            keep = bytes(pdata_body)
        PyObject_GetBuffer(keep, &buf, PyBUF_SIMPLE)
        try:
            p = <const uint8_t *>buf.buf
            n = buf.len
            if n == 0:
                raise _perror("P-DATA-TF without a PDV item", 0)
            view = memoryview(keep)
            pos = 0
            while pos < n:
                if n - pos < 6:
                    raise _perror(f"truncated PDV item header ({n - pos} bytes left)", pos)
                item_len = load_be32(p + pos)
                if item_len < 2:
                    raise _perror(f"PDV item length {item_len} is below 2", pos)
                if <uint64_t>item_len > <uint64_t>(n - pos - 4):
                    raise _perror(f"PDV item length {item_len} overruns the PDU "
                                  f"({n - pos - 4} bytes left)", pos)
                ctx = p[pos + 4]
                mch = p[pos + 5]
                frag_start = pos + 6
                frag_len = item_len - 2
                if accepted is not None and ctx not in accepted:
                    # Only a C-CANCEL-RQ may arrive on such a context: a
                    # cancel names its operation by Message ID, and peers
                    # (pynetdicom among them) send one on any context. Its
                    # command is read to find out; anything else aborts.
                    if not (mch & 1) or (self._state != _IDLE and not self._foreign):
                        raise _perror(f"PDV for presentation context {ctx}, which is not accepted",
                                      pos + 4)
                    if self._state == _IDLE:
                        self._foreign = True
                if mch & 0xFC:
                    raise _perror(f"reserved bits set in message control header 0x{mch:02X}",
                                  pos + 5)
                self._fragment(ctx, mch, view, frag_start, frag_len, pos, events)
                pos = frag_start + frag_len
        finally:
            PyBuffer_Release(&buf)
        return events

    cdef int _fragment(self, int ctx, int mch, object view, Py_ssize_t start, Py_ssize_t length,
                       Py_ssize_t item_pos, list events) except -1:
        cdef bint is_command = mch & 1
        cdef bint last = mch & 2
        cdef object command, data
        if self._state == _IDLE:
            if not is_command:
                if self._after_no_dataset:
                    raise _perror("data set fragment after a command that says no data set "
                                  "follows", item_pos + 5)
                raise _perror("data set fragment with no command before it", item_pos + 5)
            self._state = _IN_COMMAND
            self._context_id = ctx
            self._after_no_dataset = False
        elif ctx != self._context_id:
            raise _perror(f"presentation context ID changed from {self._context_id} to {ctx} "
                          "within a message", item_pos + 4)

        if self._state == _IN_COMMAND:
            if not is_command:
                raise _perror("data set fragment before the last command fragment",
                              item_pos + 5)
            self._command_fragments.append(view[start:start + length])
            if not last:
                return 0
            if len(self._command_fragments) == 1:
                command = decode_command(self._command_fragments[0])
            else:
                command = decode_command(b"".join(self._command_fragments))
            self._command_fragments = []
            if self._foreign and (command.command_field != _C_CANCEL_RQ or command.has_dataset):
                raise _perror(f"PDV for presentation context {ctx}, which is not accepted",
                              item_pos + 4)
            if not command.has_dataset:
                events.append(DimseMessage(ctx, command, None))
                self._reset()
                self._after_no_dataset = True
                return 0
            self._command = command
            self._state = _IN_DATASET
            self._streaming = self.stream_datasets
            if self._streaming:
                events.append(CommandArrived(ctx, command))
            return 0

        # _IN_DATASET
        if is_command:
            raise _perror("command fragment while a data set is expected", item_pos + 5)
        data = view[start:start + length]
        if self._streaming:
            events.append(DatasetChunk(ctx, data, last))
            if last:
                self._reset()
            return 0
        self._dataset_length += length
        if self.max_dataset_length and self._dataset_length > self.max_dataset_length:
            raise _perror(f"data set larger than {self.max_dataset_length} bytes", item_pos)
        if not last and self.stream_threshold and self._dataset_length > self.stream_threshold:
            # Too big to collect: from here on the message streams, starting
            # with what was collected (never joined).
            events.append(CommandArrived(ctx, self._command))
            for collected in self._dataset_fragments:
                events.append(DatasetChunk(ctx, collected, False))
            events.append(DatasetChunk(ctx, data, False))
            self._dataset_fragments = []
            self._streaming = True
            return 0
        if not last:
            self._dataset_fragments.append(data)
            return 0
        if self._dataset_fragments:
            self._dataset_fragments.append(data)
            data = b"".join(self._dataset_fragments)
        events.append(DimseMessage(ctx, self._command, data))
        self._reset()
        return 0
