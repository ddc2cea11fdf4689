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


def _move_response() -> Command:
    return Command(
        _dimse.C_MOVE_RSP, message_id_being_responded_to=2, command_data_set_type=_dimse.NO_DATASET, status=0xB000,
        number_of_remaining_suboperations=0, number_of_completed_suboperations=3,
        number_of_failed_suboperations=1, number_of_warning_suboperations=0, error_comment="one failed",
    )  # fmt: skip


def _eager(command: Command) -> Dataset:
    """The status Dataset as it was made before its elements waited for
    first use: every element made at once."""
    ds = Dataset()
    for tag, vr, value in (
        (0x00000900, "US", command.status), (0x00000902, "LO", command.error_comment),
        (0x00001020, "US", 0), (0x00001021, "US", 3), (0x00001022, "US", 1), (0x00001023, "US", 0),
    ):  # fmt: skip
        ds[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)
    return ds


@pytest.mark.parametrize("first_use", [
    "repr", "keys", "len", "get", "keyword", "tag", "set-status", "delete-status", "pickle", "deepcopy", "copy",
    "equality", "json",
])  # fmt: skip
def test_a_status_dataset_makes_its_elements_on_first_use_as_they_were_made_at_once(first_use):
    """Reading Status (or asking whether it is there) uses the response
    command and makes nothing; anything else makes the elements then, the
    same elements as made at once, and drops the command."""
    ds = response_to_dataset(_move_response())
    assert "_dict" not in vars(ds) and "Status" in ds and ds.Status == 0xB000
    assert "_dict" not in vars(ds)  # still nothing made
    expected = _eager(_move_response())
    if first_use == "repr":
        assert repr(ds) == repr(expected)
    elif first_use == "keys":
        assert list(ds.keys()) == list(expected.keys())
    elif first_use == "len":
        assert len(ds) == 6
    elif first_use == "get":
        assert ds.get("NumberOfFailedSuboperations") == 1
    elif first_use == "keyword":
        assert (ds.ErrorComment, "NumberOfCompletedSuboperations" in ds, "ErrorID" in ds) == ("one failed", True, False)
    elif first_use == "tag":
        assert ds[0x00001021].value == 3 and 0x00000902 in ds
    elif first_use == "set-status":
        ds.Status = 0x0000
        expected.Status = 0x0000
        assert ds.Status == 0x0000 and ds[0x00000900].value == 0x0000
    elif first_use == "delete-status":
        del ds.Status
        del expected.Status
        assert "Status" not in ds
        with pytest.raises(AttributeError):
            ds.Status
    elif first_use == "pickle":
        ds = pickle.loads(pickle.dumps(ds))
    elif first_use == "deepcopy":
        ds = copy.deepcopy(ds)
    elif first_use == "copy":
        ds = copy.copy(ds)
    elif first_use == "equality":
        assert ds == expected and expected == ds
    elif first_use == "json":
        assert ds.to_json_dict() == expected.to_json_dict()
    assert "_command" not in vars(ds) and "_dict" in vars(ds)
    assert ds == expected
    for elem in ds:
        assert vars(elem) == vars(expected[elem.tag])


def test_status_datasets_made_by_two_threads_at_once_share_one_set_of_elements():
    """Two threads making a status Dataset's elements at the same moment
    (a blocking caller and another thread it handed the Dataset to) end up
    with the one dict kept, never a dict each, and no error."""
    import threading

    for _ in range(200):
        ds = response_to_dataset(_move_response())
        seen: list[object] = []
        start = threading.Barrier(2)

        def touch() -> None:
            start.wait()
            seen.append(ds._dict)  # noqa: SLF001 - the very attribute pydicom reads

        threads = [threading.Thread(target=touch) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert seen[0] is seen[1] is vars(ds)["_dict"] and len(seen[0]) == 6
