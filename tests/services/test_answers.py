"""Handler answers into response commands (services/answers.py): the
optional status elements a handler gives must never cost the response.
Error Comment is LO (PS3.5 6.2): 64 characters of the default repertoire at
most, no backslash (the value delimiter), no control characters. Responses
come back to SCU callers as status Datasets (``response_to_dataset``) whose
elements are those pydicom's DataElement constructor makes (PS3.7 C: Status
and the sub-operation counts are US)."""

from __future__ import annotations

import copy
import pickle

import pytest
from pydicom import Dataset, config
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.tag import BaseTag

from chromanet import _dimse
from chromanet._dimse import Command
from chromanet.services.answers import apply_handler_status, lo_text, response_to_dataset


def test_lo_text_makes_any_value_valid_lo():
    assert lo_text("plain") == "plain"
    assert lo_text("a\\b") == "a/b"
    assert lo_text(["a", "b"]) == "a/b"
    assert lo_text("tab\there\nnew") == "tab here new"
    assert lo_text("caf\xe9 \x80") == "caf? ?"
    assert lo_text(b"bytes") == "bytes"
    assert len(lo_text("x" * 200)) == 64


def _response() -> Command:
    return Command(_dimse.C_FIND_RSP, message_id_being_responded_to=1, command_data_set_type=_dimse.NO_DATASET)


def test_a_multi_valued_error_comment_still_gives_an_encodable_response():
    status = Dataset()
    status.Status = 0xA900
    status.ErrorComment = "first\\second"  # pydicom makes it a multi-value
    response = _response()
    apply_handler_status(status, response, "EVT_C_FIND")
    assert (response.status, response.error_comment) == (0xA900, "first/second")
    assert _dimse.encode_command(response)  # valid LO: it encodes


def test_a_bad_optional_element_is_dropped_not_the_response():
    status = Dataset()
    status.Status = 0xC000
    status.add_new(0x00000902, "LO", "kept")
    status.add_new(0x00000903, "US", "not a number")  # Error ID that is no US
    response = _response()
    apply_handler_status(status, response, "EVT_C_FIND")
    assert (response.status, response.error_comment, response.error_id) == (0xC000, "kept", None)
    assert _dimse.encode_command(response)


@pytest.mark.parametrize("status", [0x0000, 0xFF00, 0xFF01, 0xA700, 0xC311, 0xFE00])
def test_response_to_dataset_elements_as_pydicom_makes_them(status):
    command = Command(
        _dimse.C_GET_RSP, message_id_being_responded_to=3, command_data_set_type=_dimse.NO_DATASET, status=status,
        number_of_remaining_suboperations=7, number_of_completed_suboperations=0,
        number_of_failed_suboperations=65535, number_of_warning_suboperations=1,
        error_comment="why", offending_element=[0x00100010], affected_sop_instance_uid="1.2.3",
    )  # fmt: skip
    ds = response_to_dataset(command)
    assert ds.Status == status
    assert [int(tag) for tag in ds.keys()] == [
        0x00000900, 0x00000902, 0x00000901, 0x00001000, 0x00001020, 0x00001021, 0x00001022, 0x00001023,
    ]  # fmt: skip
    for elem in ds:
        made = DataElement(elem.tag, elem.VR, elem.value, validation_mode=config.IGNORE)
        assert vars(elem) == vars(made)
        assert elem == made
    # each response its own elements: changing one changes no other
    other = response_to_dataset(command)
    ds.Status = 0x0001
    assert other.Status == status


def test_a_status_dataset_reads_sets_and_compares_as_a_plain_dataset():
    command = Command(_dimse.C_FIND_RSP, message_id_being_responded_to=1, command_data_set_type=_dimse.NO_DATASET,
                      status=0xFF00)  # fmt: skip
    ds = response_to_dataset(command)
    assert isinstance(ds, Dataset)
    plain = Dataset()
    plain.Status = 0xFF00
    assert ds == plain and plain == ds
    assert "Status" in ds and 0x00000900 in ds and "ErrorComment" not in ds and "NoSuchKeyword" not in ds
    assert (ds.Status, ds.get("Status"), ds[0x00000900].value) == (0xFF00, 0xFF00, 0xFF00)
    ds.Status = 0xA700  # pydicom's own __setattr__: the element is changed
    assert (ds.Status, ds[0x00000900].value) == (0xA700, 0xA700)
    assert pickle.loads(pickle.dumps(ds)) == ds and copy.deepcopy(ds).Status == 0xA700
    del ds.Status
    assert "Status" not in ds
    with pytest.raises(AttributeError):
        ds.Status
    ds.add_new(0x00000900, "US", 0x0000)
    assert ds.Status == 0x0000
    # a raw element is converted when read, as pydicom converts it
    ds[0x00000900] = RawDataElement(BaseTag(0x00000900), "US", 2, b"\x01\xff", 0, False, True)
    assert ds.Status == 0xFF01 and type(ds.get_item(0x00000900)) is DataElement
