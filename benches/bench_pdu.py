"""PDU codec and framer benchmarks, each next to pynetdicom's equivalent.

Run: .venv/bin/python -m pytest benches/bench_pdu.py --benchmark-only

Groups (ours and pynetdicom side by side):
- assoc-rq-decode / assoc-rq-encode: a typical A-ASSOCIATE-RQ, 8 presentation
  contexts x 3 transfer syntaxes, full user information.
- pdata-decode: one P-DATA-TF with a command PDV and a 16 KiB data set PDV.
- pdata-stream: 4 MiB of 16 KiB P-DATA-TF PDUs arriving in 64 KiB chunks, cut
  into PDUs and decoded. pynetdicom has no sans-IO framer; its DUL reads each
  PDU with recv(6) then recv(length) and decodes it with P_DATA_TF.decode, so
  its side replays that loop over an in-memory socket (without its event
  queue and primitive conversion, which would only add to its time).
"""

from __future__ import annotations

import io
import struct

import pytest

from chromanet._framer import PDUFramer
from chromanet._pdu import (
    PDV,
    AssociateRQ,
    AsyncOperationsWindow,
    PDataTF,
    PresentationContextRQ,
    RoleSelection,
    UserIdentityRQ,
    UserInformation,
    decode_pdu,
    decode_pdu_bytes,
    encode_pdu,
)

pn_pdu = pytest.importorskip("pynetdicom.pdu")

TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.70"]
SOP_CLASSES = [
    "1.2.840.10008.1.1",
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.6.1",
    "1.2.840.10008.5.1.4.1.1.12.1",
    "1.2.840.10008.5.1.4.1.1.88.22",
]

RQ = AssociateRQ(
    called_ae_title="ARCHIVE",
    calling_ae_title="MODALITY01",
    presentation_contexts=[PresentationContextRQ(2 * i + 1, uid, TRANSFER_SYNTAXES) for i, uid in enumerate(SOP_CLASSES)],
    user_information=UserInformation(
        max_length=16384,
        implementation_class_uid="1.2.826.0.1.3680043.9.3811.2.0.4",
        implementation_version_name="CHROMANET_010",
        async_ops_window=AsyncOperationsWindow(1, 1),
        role_selections=[RoleSelection(SOP_CLASSES[1], True, True), RoleSelection(SOP_CLASSES[2], True, False)],
        user_identity_rq=UserIdentityRQ(2, b"operator", b"secret", True),
    ),
)
RQ_BYTES = encode_pdu(RQ)


def _pn_rq():
    p = pn_pdu.A_ASSOCIATE_RQ()
    p.decode(RQ_BYTES)
    return p


def test_same_bytes_both_ways():
    """The pairs below work on the same PDU: pynetdicom re-encodes our bytes identically."""
    assert _pn_rq().encode() == RQ_BYTES
    assert decode_pdu_bytes(RQ_BYTES) == RQ


@pytest.mark.benchmark(group="assoc-rq-decode")
def test_rq_decode_chromanet(benchmark):
    assert benchmark(decode_pdu_bytes, RQ_BYTES) == RQ


@pytest.mark.benchmark(group="assoc-rq-decode")
def test_rq_decode_pynetdicom(benchmark):
    def run():
        p = pn_pdu.A_ASSOCIATE_RQ()
        p.decode(RQ_BYTES)
        return p

    assert len(benchmark(run).presentation_context) == 8


@pytest.mark.benchmark(group="assoc-rq-encode")
def test_rq_encode_chromanet(benchmark):
    assert benchmark(encode_pdu, RQ) == RQ_BYTES


@pytest.mark.benchmark(group="assoc-rq-encode")
def test_rq_encode_pynetdicom(benchmark):
    p = _pn_rq()
    assert benchmark(p.encode) == RQ_BYTES


FRAGMENT = 16384 - 6
COMMAND = b"\x00" * 120
PDATA = encode_pdu(PDataTF([PDV(1, True, True, COMMAND), PDV(1, False, False, b"\x5a" * (FRAGMENT - 200))]))


@pytest.mark.benchmark(group="pdata-decode")
def test_pdata_decode_chromanet(benchmark):
    assert len(benchmark(decode_pdu_bytes, PDATA).pdvs) == 2


@pytest.mark.benchmark(group="pdata-decode")
def test_pdata_decode_pynetdicom(benchmark):
    def run():
        p = pn_pdu.P_DATA_TF()
        p.decode(PDATA)
        return p

    assert len(benchmark(run).presentation_data_value_items) == 2


STREAM_PDU = encode_pdu(PDataTF([PDV(1, False, False, b"\xa5" * FRAGMENT)]))
STREAM = STREAM_PDU * (4 * 1024 * 1024 // len(STREAM_PDU))
CHUNK = 65536
CHUNKS = [STREAM[i:i + CHUNK] for i in range(0, len(STREAM), CHUNK)]
N_PDUS = len(STREAM) // len(STREAM_PDU)


@pytest.mark.benchmark(group="pdata-stream")
def test_stream_chromanet(benchmark):
    def run():
        f = PDUFramer(max_pdata_length=16384)
        n = 0
        for chunk in CHUNKS:
            for pdu_type, body in f.feed(chunk):
                n += len(decode_pdu(pdu_type, body).pdvs)
        return n

    assert benchmark(run) == N_PDUS


class _MemorySocket:
    """recv() over bytes delivered in CHUNK-sized segments, like a TCP socket."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def recv(self, n: int) -> bytearray:
        # a socket returns at most what one segment holds; pynetdicom's
        # AssociationSocket.recv loops until it has n bytes
        out = bytearray()
        while len(out) < n:
            part = self._buf.read(min(n - len(out), CHUNK))
            if not part:
                break
            out += part
        return out


@pytest.mark.benchmark(group="pdata-stream")
def test_stream_pynetdicom(benchmark):
    def run():
        sock = _MemorySocket(STREAM)
        n = 0
        while True:
            bytestream = bytearray()
            bytestream.extend(sock.recv(6))  # as DULServiceProvider._read_pdu_data
            if not bytestream:
                break
            pdu_type, _, pdu_length = struct.unpack(">BBL", bytestream)
            bytestream += sock.recv(pdu_length)
            p = pn_pdu.P_DATA_TF()
            p.decode(bytestream)
            n += len(p.presentation_data_value_items)
        return n

    assert benchmark(run) == N_PDUS
