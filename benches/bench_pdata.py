"""P-DATA: a C-STORE-RQ with a 400 KB data set in 16 KB PDUs, ours vs pynetdicom.

Both sides go message -> wire bytes -> message:
- chromanet: ``fragment_message`` (headers + memoryview slices), joined as a
  transport would write them; the P-DATA-TF bodies are cut out of the wire
  bytes (as the framer hands them over) and fed to a ``Reassembler``.
- pynetdicom: ``primitive_to_message`` + ``encode_msg`` (P-DATA primitives),
  ``P_DATA_TF.from_primitive().encode()`` for the wire; back with
  ``P_DATA_TF.decode()``, ``to_primitive()`` and ``DIMSEMessage.decode_msg``.
"""

from io import BytesIO
import struct

import pytest
from pynetdicom import dimse_messages as M, dimse_primitives as P
from pynetdicom.pdu import P_DATA_TF

from chromanet._dimse import Command, encode_command
from chromanet._pdata import Reassembler, fragment_message

MAX_PDU = 16384
DATASET = bytes(range(256)) * 1600  # 409,600 bytes
SOP = "1.2.840.10008.5.1.4.1.1.7"
UID = "1.2.826.0.1.3680043.2.1125.1.12345678901234567890"


def _ours_fragment():
    cmd = encode_command(Command(0x0001, affected_sop_class_uid=SOP, message_id=1, priority=0,
                                 command_data_set_type=1, affected_sop_instance_uid=UID))
    return b"".join(fragment_message(1, cmd, DATASET, MAX_PDU))


def _cut(wire):
    view = memoryview(wire)
    bodies = []
    pos = 0
    unpack = struct.unpack_from
    while pos < len(wire):
        (length,) = unpack(">I", wire, pos + 2)
        bodies.append(view[pos + 6:pos + 6 + length])
        pos += 6 + length
    return bodies


def _ours_reassemble(wire):
    r = Reassembler({1})
    events = []
    for body in _cut(wire):
        events += r.feed(body)
    return events[0].dataset


def _pnd_fragment():
    prim = P.C_STORE()
    prim.MessageID = 1
    prim.AffectedSOPClassUID = SOP
    prim.AffectedSOPInstanceUID = UID
    prim.Priority = 0
    prim.DataSet = BytesIO(DATASET)
    msg = M.C_STORE_RQ()
    msg.primitive_to_message(prim)
    out = []
    for p in msg.encode_msg(1, MAX_PDU):
        pdu = P_DATA_TF()
        pdu.from_primitive(p)
        out.append(pdu.encode())
    return b"".join(out)


def _pnd_reassemble(wire):
    msg = M.DIMSEMessage()
    pos = 0
    while pos < len(wire):
        (length,) = struct.unpack_from(">I", wire, pos + 2)
        pdu = P_DATA_TF()
        pdu.decode(wire[pos:pos + 6 + length])
        if msg.decode_msg(pdu.to_primitive()):
            return msg.data_set.getvalue()
        pos += 6 + length


def test_equivalent():
    ours, theirs = _ours_fragment(), _pnd_fragment()
    assert bytes(_ours_reassemble(ours)) == bytes(_ours_reassemble(theirs)) == DATASET
    assert _pnd_reassemble(ours) == _pnd_reassemble(theirs) == DATASET


@pytest.mark.benchmark(group="pdata-fragment+reassemble-400k-16k")
def test_round_trip_chromanet(benchmark):
    assert len(benchmark(lambda: _ours_reassemble(_ours_fragment()))) == len(DATASET)


@pytest.mark.benchmark(group="pdata-fragment+reassemble-400k-16k")
def test_round_trip_pynetdicom(benchmark):
    assert len(benchmark(lambda: _pnd_reassemble(_pnd_fragment()))) == len(DATASET)


@pytest.mark.benchmark(group="pdata-fragment-400k-16k")
def test_fragment_chromanet(benchmark):
    benchmark(_ours_fragment)


@pytest.mark.benchmark(group="pdata-fragment-400k-16k")
def test_fragment_pynetdicom(benchmark):
    benchmark(_pnd_fragment)


@pytest.mark.benchmark(group="pdata-reassemble-400k-16k")
def test_reassemble_chromanet(benchmark):
    wire = _ours_fragment()
    assert len(benchmark(_ours_reassemble, wire)) == len(DATASET)


@pytest.mark.benchmark(group="pdata-reassemble-400k-16k")
def test_reassemble_pynetdicom(benchmark):
    wire = _pnd_fragment()
    assert len(benchmark(_pnd_reassemble, wire)) == len(DATASET)
