"""Command-set codec: chromanet._dimse vs pynetdicom, a C-FIND-RSP (pending),
and the status Dataset an SCU call makes of such a response.

Each group holds ours and pynetdicom's way side by side:
- encode: build the command from its field values and encode it. pynetdicom
  does that with ``primitive_to_message`` (a pydicom Dataset of group 0000,
  group length computed) and ``dsutils.encode``, as ``encode_msg`` does.
- decode: decode the bytes and read the five fields. pynetdicom decodes with
  ``dsutils.decode`` (as ``DIMSEMessage.decode_msg`` does).
"""

from io import BytesIO

import pytest
from pynetdicom import dimse_messages as M, dimse_primitives as P
from pynetdicom.dsutils import decode as pnd_decode, encode as pnd_encode

from chromanet._dimse import Command, decode_command, encode_command

SOP = "1.2.840.10008.5.1.4.1.2.2.1"
IDENT = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
ENCODED = encode_command(Command(0x8020, affected_sop_class_uid=SOP, message_id_being_responded_to=5,
                                 command_data_set_type=0x0001, status=0xFF00))


def _ours_encode():
    return encode_command(Command(0x8020, affected_sop_class_uid=SOP,
                                  message_id_being_responded_to=5,
                                  command_data_set_type=0x0001, status=0xFF00))


def _pnd_encode():
    prim = P.C_FIND()
    prim.AffectedSOPClassUID = SOP
    prim.MessageIDBeingRespondedTo = 5
    prim.Status = 0xFF00
    prim.Identifier = IDENT
    msg = M.C_FIND_RSP()
    msg.primitive_to_message(prim)
    return pnd_encode(msg.command_set, True, True)


def test_same_bytes():
    assert _ours_encode() == _pnd_encode() == ENCODED


@pytest.mark.benchmark(group="dimse-encode-c-find-rsp")
def test_encode_chromanet(benchmark):
    assert benchmark(_ours_encode) == ENCODED


@pytest.mark.benchmark(group="dimse-encode-c-find-rsp")
def test_encode_pynetdicom(benchmark):
    assert benchmark(_pnd_encode) == ENCODED


def _ours_decode():
    c = decode_command(ENCODED)
    return (c.command_field, c.affected_sop_class_uid, c.message_id_being_responded_to,
            c.command_data_set_type, c.status)


def _pnd_decode():
    ds = pnd_decode(BytesIO(ENCODED), True, True)
    return (ds.CommandField, ds.AffectedSOPClassUID, ds.MessageIDBeingRespondedTo,
            ds.CommandDataSetType, ds.Status)


EXPECTED = (0x8020, SOP, 5, 1, 0xFF00)


@pytest.mark.benchmark(group="dimse-decode-c-find-rsp")
def test_decode_chromanet(benchmark):
    assert benchmark(_ours_decode) == EXPECTED


@pytest.mark.benchmark(group="dimse-decode-c-find-rsp")
def test_decode_pynetdicom(benchmark):
    assert benchmark(_pnd_decode) == EXPECTED


# The status Dataset an SCU call returns for each response, made from the
# decoded response and read as callers read it ("Status" in it, its Status).
# pynetdicom's way is its own ``Association._check_received_status`` on the
# response primitive (``self`` is used only to abort on an invalid one).
from pynetdicom.association import Association  # noqa: E402

from chromanet.services.answers import response_to_dataset  # noqa: E402

_RESPONSE = decode_command(ENCODED)
_PRIMITIVE = P.C_FIND()
_PRIMITIVE.MessageIDBeingRespondedTo = 5
_PRIMITIVE.AffectedSOPClassUID = SOP
_PRIMITIVE.Status = 0xFF00


def _ours_status():
    status = response_to_dataset(_RESPONSE)
    return "Status" in status and status.Status


def _pnd_status():
    status = Association._check_received_status(None, _PRIMITIVE)
    return "Status" in status and status.Status


@pytest.mark.benchmark(group="dimse-status-dataset")
def test_status_dataset_chromanet(benchmark):
    assert benchmark(_ours_status) == 0xFF00


@pytest.mark.benchmark(group="dimse-status-dataset")
def test_status_dataset_pynetdicom(benchmark):
    assert benchmark(_pnd_status) == 0xFF00
