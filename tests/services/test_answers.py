"""Handler answers into response commands (services/answers.py): the
optional status elements a handler gives must never cost the response.
Error Comment is LO (PS3.5 6.2): 64 characters of the default repertoire at
most, no backslash (the value delimiter), no control characters."""

from __future__ import annotations

from pydicom import Dataset

from chromanet import _dimse
from chromanet._dimse import Command
from chromanet.services.answers import apply_handler_status, lo_text


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
