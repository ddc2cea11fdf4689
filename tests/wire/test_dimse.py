"""Byte-vector, cross-check and property tests for chromanet._dimse (command sets)."""

from io import BytesIO
import struct

import pytest
from hypothesis import given, settings, strategies as st

from chromanet import _dimse as d
from chromanet._dimse import Command, decode_command, encode_command
from chromanet.errors import CommandSetError

# --------------------------------------------------------------------------
# Hand-written vectors (PS3.7 section 9.3 tables, Annex E data dictionary).
# Each element: group (2, LE) element (2, LE) value length (4, LE) value.

C_ECHO_RQ_BYTES = (
    b"\x00\x00\x00\x00" b"\x04\x00\x00\x00" b"\x38\x00\x00\x00"  # (0000,0000) UL group length 56
    b"\x00\x00\x02\x00" b"\x12\x00\x00\x00" b"1.2.840.10008.1.1\x00"  # (0000,0002) UI, 17 + NUL pad
    b"\x00\x00\x00\x01" b"\x02\x00\x00\x00" b"\x30\x00"  # (0000,0100) Command Field C-ECHO-RQ
    b"\x00\x00\x10\x01" b"\x02\x00\x00\x00" b"\x01\x00"  # (0000,0110) Message ID 1
    b"\x00\x00\x00\x08" b"\x02\x00\x00\x00" b"\x01\x01"  # (0000,0800) Data Set Type 0x0101 (none)
)
C_ECHO_RQ = Command(
    0x0030, affected_sop_class_uid="1.2.840.10008.1.1", message_id=1, command_data_set_type=0x0101
)

C_STORE_RQ_BYTES = (
    b"\x00\x00\x00\x00" b"\x04\x00\x00\x00" b"\x76\x00\x00\x00"  # group length 118
    b"\x00\x00\x02\x00" b"\x1a\x00\x00\x00" b"1.2.840.10008.5.1.4.1.1.2\x00"  # CT Image Storage, 25+NUL
    b"\x00\x00\x00\x01" b"\x02\x00\x00\x00" b"\x01\x00"  # Command Field C-STORE-RQ
    b"\x00\x00\x10\x01" b"\x02\x00\x00\x00" b"\x07\x00"  # Message ID 7
    b"\x00\x00\x00\x07" b"\x02\x00\x00\x00" b"\x01\x00"  # (0000,0700) Priority HIGH
    b"\x00\x00\x00\x08" b"\x02\x00\x00\x00" b"\x00\x00"  # Data Set Type 0x0000: a data set follows
    b"\x00\x00\x00\x10" b"\x0a\x00\x00\x00" b"1.2.3.4.5\x00"  # (0000,1000) Affected SOP Instance UID
    b"\x00\x00\x30\x10" b"\x08\x00\x00\x00" b"MOVESCU "  # (0000,1030) AE, space padded
    b"\x00\x00\x31\x10" b"\x02\x00\x00\x00" b"\x03\x00"  # (0000,1031) Move Originator Message ID 3
)
C_STORE_RQ = Command(
    0x0001,
    affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    message_id=7,
    priority=d.PRIORITY_HIGH,
    command_data_set_type=0x0000,
    affected_sop_instance_uid="1.2.3.4.5",
    move_originator_application_entity_title="MOVESCU",
    move_originator_message_id=3,
)

C_FIND_RSP_BYTES = (
    b"\x00\x00\x00\x00" b"\x04\x00\x00\x00" b"\x4c\x00\x00\x00"  # group length 76
    b"\x00\x00\x02\x00" b"\x1c\x00\x00\x00" b"1.2.840.10008.5.1.4.1.2.2.1\x00"  # Study Root FIND
    b"\x00\x00\x00\x01" b"\x02\x00\x00\x00" b"\x20\x80"  # Command Field C-FIND-RSP
    b"\x00\x00\x20\x01" b"\x02\x00\x00\x00" b"\x05\x00"  # (0000,0120) Message ID Being Responded To 5
    b"\x00\x00\x00\x08" b"\x02\x00\x00\x00" b"\x01\x00"  # Data Set Type 0x0001: identifier follows
    b"\x00\x00\x00\x09" b"\x02\x00\x00\x00" b"\x00\xff"  # (0000,0900) Status 0xFF00 Pending
)
C_FIND_RSP = Command(
    0x8020,
    affected_sop_class_uid="1.2.840.10008.5.1.4.1.2.2.1",
    message_id_being_responded_to=5,
    command_data_set_type=0x0001,
    status=0xFF00,
)

C_GET_RSP_BYTES = (
    b"\x00\x00\x00\x00" b"\x04\x00\x00\x00" b"\x74\x00\x00\x00"  # group length 116
    b"\x00\x00\x02\x00" b"\x1c\x00\x00\x00" b"1.2.840.10008.5.1.4.1.2.2.3\x00"  # Study Root GET
    b"\x00\x00\x00\x01" b"\x02\x00\x00\x00" b"\x10\x80"  # Command Field C-GET-RSP
    b"\x00\x00\x20\x01" b"\x02\x00\x00\x00" b"\x02\x00"  # Message ID Being Responded To 2
    b"\x00\x00\x00\x08" b"\x02\x00\x00\x00" b"\x01\x01"  # no data set
    b"\x00\x00\x00\x09" b"\x02\x00\x00\x00" b"\x00\xff"  # Status Pending
    b"\x00\x00\x20\x10" b"\x02\x00\x00\x00" b"\x0a\x00"  # (0000,1020) remaining 10
    b"\x00\x00\x21\x10" b"\x02\x00\x00\x00" b"\x05\x00"  # (0000,1021) completed 5
    b"\x00\x00\x22\x10" b"\x02\x00\x00\x00" b"\x01\x00"  # (0000,1022) failed 1
    b"\x00\x00\x23\x10" b"\x02\x00\x00\x00" b"\x02\x00"  # (0000,1023) warning 2
)
C_GET_RSP = Command(
    0x8010,
    affected_sop_class_uid="1.2.840.10008.5.1.4.1.2.2.3",
    message_id_being_responded_to=2,
    command_data_set_type=0x0101,
    status=0xFF00,
    number_of_remaining_suboperations=10,
    number_of_completed_suboperations=5,
    number_of_failed_suboperations=1,
    number_of_warning_suboperations=2,
)

C_MOVE_RQ_BYTES = (
    b"\x00\x00\x00\x00" b"\x04\x00\x00\x00" b"\x5c\x00\x00\x00"  # group length 92
    b"\x00\x00\x02\x00" b"\x1c\x00\x00\x00" b"1.2.840.10008.5.1.4.1.2.2.2\x00"  # Study Root MOVE
    b"\x00\x00\x00\x01" b"\x02\x00\x00\x00" b"\x21\x00"  # Command Field C-MOVE-RQ
    b"\x00\x00\x10\x01" b"\x02\x00\x00\x00" b"\x09\x00"  # Message ID 9
    b"\x00\x00\x00\x06" b"\x08\x00\x00\x00" b"STORESCP"  # (0000,0600) Move Destination, even: no pad
    b"\x00\x00\x00\x07" b"\x02\x00\x00\x00" b"\x02\x00"  # Priority LOW
    b"\x00\x00\x00\x08" b"\x02\x00\x00\x00" b"\x01\x00"  # identifier follows
)
C_MOVE_RQ = Command(
    0x0021,
    affected_sop_class_uid="1.2.840.10008.5.1.4.1.2.2.2",
    message_id=9,
    move_destination="STORESCP",
    priority=d.PRIORITY_LOW,
    command_data_set_type=0x0001,
)

C_CANCEL_RQ_BYTES = (
    b"\x00\x00\x00\x00" b"\x04\x00\x00\x00" b"\x1e\x00\x00\x00"  # group length 30
    b"\x00\x00\x00\x01" b"\x02\x00\x00\x00" b"\xff\x0f"  # Command Field C-CANCEL-RQ 0x0FFF
    b"\x00\x00\x20\x01" b"\x02\x00\x00\x00" b"\x09\x00"  # Message ID Being Responded To 9
    b"\x00\x00\x00\x08" b"\x02\x00\x00\x00" b"\x01\x01"  # no data set
)
C_CANCEL_RQ = Command(0x0FFF, message_id_being_responded_to=9, command_data_set_type=0x0101)

C_STORE_RSP_ERROR_BYTES = (
    b"\x00\x00\x00\x00" b"\x04\x00\x00\x00" b"\x66\x00\x00\x00"  # group length 102
    b"\x00\x00\x00\x01" b"\x02\x00\x00\x00" b"\x01\x80"  # C-STORE-RSP (no Affected SOP Class: U(=))
    b"\x00\x00\x20\x01" b"\x02\x00\x00\x00" b"\x07\x00"  # responding to 7
    b"\x00\x00\x00\x08" b"\x02\x00\x00\x00" b"\x01\x01"  # no data set
    b"\x00\x00\x00\x09" b"\x02\x00\x00\x00" b"\x00\xc0"  # Status 0xC000 failure
    b"\x00\x00\x01\x09" b"\x08\x00\x00\x00"  # (0000,0901) AT, two tags
    b"\x10\x00\x10\x00"  # (0010,0010): group LE, element LE
    b"\x10\x00\x20\x00"  # (0010,0020)
    b"\x00\x00\x02\x09" b"\x0a\x00\x00\x00" b"Bad value "  # (0000,0902) LO, space padded
    b"\x00\x00\x03\x09" b"\x02\x00\x00\x00" b"\x34\x12"  # (0000,0903) Error ID 0x1234
    b"\x00\x00\x00\x10" b"\x0a\x00\x00\x00" b"1.2.3.4.5\x00"  # Affected SOP Instance UID
)
C_STORE_RSP_ERROR = Command(
    0x8001,
    message_id_being_responded_to=7,
    command_data_set_type=0x0101,
    status=0xC000,
    offending_element=[0x00100010, 0x00100020],
    error_comment="Bad value",
    error_id=0x1234,
    affected_sop_instance_uid="1.2.3.4.5",
)

VECTORS = [
    pytest.param(C_ECHO_RQ_BYTES, C_ECHO_RQ, id="C-ECHO-RQ"),
    pytest.param(C_STORE_RQ_BYTES, C_STORE_RQ, id="C-STORE-RQ-move-originator"),
    pytest.param(C_FIND_RSP_BYTES, C_FIND_RSP, id="C-FIND-RSP-pending"),
    pytest.param(C_GET_RSP_BYTES, C_GET_RSP, id="C-GET-RSP-subops"),
    pytest.param(C_MOVE_RQ_BYTES, C_MOVE_RQ, id="C-MOVE-RQ"),
    pytest.param(C_CANCEL_RQ_BYTES, C_CANCEL_RQ, id="C-CANCEL-RQ"),
    pytest.param(C_STORE_RSP_ERROR_BYTES, C_STORE_RSP_ERROR, id="C-STORE-RSP-error"),
]


@pytest.mark.parametrize("data, expected", VECTORS)
def test_vector_decode(data, expected):
    assert decode_command(data) == expected
    assert decode_command(bytearray(data)) == expected
    assert decode_command(memoryview(data)) == expected


@pytest.mark.parametrize("data, expected", VECTORS)
def test_vector_encode(data, expected):
    assert encode_command(expected) == data


def test_vector_group_lengths_are_right():
    for param in VECTORS:
        data = param.values[0]
        assert struct.unpack_from("<I", data, 8)[0] == len(data) - 12


# ------------------------------------------------------------------ Command


def test_constants():
    assert (d.C_STORE_RQ, d.C_STORE_RSP, d.C_GET_RQ, d.C_GET_RSP) == (0x0001, 0x8001, 0x0010, 0x8010)
    assert (d.C_FIND_RQ, d.C_FIND_RSP, d.C_MOVE_RQ, d.C_MOVE_RSP) == (0x0020, 0x8020, 0x0021, 0x8021)
    assert (d.C_ECHO_RQ, d.C_ECHO_RSP, d.C_CANCEL_RQ) == (0x0030, 0x8030, 0x0FFF)
    assert (d.NO_DATASET, d.DATASET_PRESENT) == (0x0101, 0x0001)
    assert (d.PRIORITY_MEDIUM, d.PRIORITY_HIGH, d.PRIORITY_LOW) == (0, 1, 2)


def test_command_construction_and_defaults():
    c = Command()
    assert c.command_field is None and c.status is None and c.other_elements == {}
    c = Command(d.C_ECHO_RSP, status=0, message_id_being_responded_to=3)
    assert c.command_field == 0x8030 and c.status == 0 and c.message_id_being_responded_to == 3
    assert c.affected_sop_class_uid is None
    with pytest.raises(TypeError):
        Command(1, no_such_field=1)
    with pytest.raises(TypeError):
        Command(1, command_field=2)  # duplicate of the positional


def test_command_eq_repr_flags():
    a = Command(d.C_STORE_RQ, message_id=1, command_data_set_type=1)
    b = Command(d.C_STORE_RQ, message_id=1, command_data_set_type=1)
    assert a == b and not (a != b)
    b.message_id = 2
    assert a != b
    assert a != "C-STORE-RQ"
    assert Command(1, other_elements={5: b"x"}) != Command(1)
    r = repr(a)
    assert "C-STORE-RQ" in r and "message_id=1" in r and "status" not in r
    assert a.has_dataset and a.is_request
    assert not Command(d.C_ECHO_RQ, command_data_set_type=0x0101).has_dataset
    assert not Command(d.C_ECHO_RQ).has_dataset
    assert Command(d.C_FIND_RSP, command_data_set_type=0xFEFE).has_dataset
    assert not Command(d.C_FIND_RSP).is_request
    assert Command(d.C_CANCEL_RQ).is_request
    assert not Command().is_request
    with pytest.raises(TypeError):
        hash(a)


def test_other_elements_round_trip():
    c = Command(
        d.C_ECHO_RSP,
        message_id_being_responded_to=1,
        command_data_set_type=0x0101,
        status=0,
        other_elements={0x0005: b"ab", 0x1005: b"\x10\x00\x10\x00", 0x0801: b""},
    )
    data = encode_command(c)
    # Unknown tags are interleaved in ascending order with the known ones.
    tags = []
    pos = 0
    while pos < len(data):
        group, elem, vlen = struct.unpack_from("<HHI", data, pos)
        tags.append(elem)
        pos += 8 + vlen
    assert tags == sorted(tags)
    assert 0x0005 in tags and 0x0801 in tags and 0x1005 in tags
    assert decode_command(data) == c


def test_string_padding_and_stripping():
    c = Command(d.C_MOVE_RQ, affected_sop_class_uid="1.2.3", message_id=1, priority=0,
                command_data_set_type=1, move_destination="ODD")
    data = encode_command(c)
    assert b"1.2.3\x00" in data and b"ODD " in data
    # leading spaces in an AE are not significant; a trailing NUL in an AE is tolerated
    raw = data.replace(b"\x04\x00\x00\x00ODD ", b"\x06\x00\x00\x00 ODD\x00 ")
    raw = raw[:8] + struct.pack("<I", len(raw) - 12) + raw[12:]
    assert decode_command(raw).move_destination == "ODD"


def test_decode_latin1_error_comment():
    c = encode_command(Command(d.C_ECHO_RSP, message_id_being_responded_to=1,
                               command_data_set_type=0x101, status=0x0110, error_comment="ab"))
    raw = c.replace(b"ab", b"\xe9t")
    assert decode_command(raw).error_comment == "\xe9t"


# ------------------------------------------------------------ encode errors


@pytest.mark.parametrize(
    "fields",
    [
        {"message_id": 65536},
        {"message_id": -1},
        {"status": 0x10000},
        {"priority": -5},
        {"affected_sop_class_uid": "1" * 65},
        {"move_destination": "A" * 17},
        {"error_comment": "x" * 65},
        {"affected_sop_class_uid": "1.2.\u00e9"},
        {"offending_element": [0x1_0000_0000]},
        {"offending_element": [-1]},
        {"other_elements": {0x0000: b"\0\0\0\0"}},
        {"other_elements": {0x0110: b"\1\0"}},  # Message ID belongs in message_id
        {"other_elements": {0x00080018: b"x"}},  # not group 0000
    ],
)
def test_encode_value_errors(fields):
    with pytest.raises(ValueError):
        encode_command(Command(d.C_ECHO_RQ, **fields))


def test_encode_requires_command_field():
    with pytest.raises(ValueError):
        encode_command(Command(message_id=1))


def test_encode_type_errors():
    with pytest.raises(TypeError):
        encode_command(Command(d.C_ECHO_RQ, affected_sop_class_uid=b"1.2"))
    with pytest.raises(TypeError):
        encode_command(Command(d.C_ECHO_RQ, message_id="1"))


# ------------------------------------------------------------ decode errors


def _el(elem, value):
    return struct.pack("<HHI", 0, elem, len(value)) + value


def _cs(*elements, group_length=None):
    body = b"".join(elements)
    gl = len(body) if group_length is None else group_length
    return _el(0, struct.pack("<I", gl)) + body


def _us(v):
    return struct.pack("<H", v)


ECHO_ELEMENTS = [
    _el(0x0002, b"1.2\x00"),
    _el(0x0100, _us(0x0030)),
    _el(0x0110, _us(1)),
    _el(0x0800, _us(0x0101)),
]


def test_decode_helpers_make_a_valid_command():
    assert decode_command(_cs(*ECHO_ELEMENTS)).command_field == 0x0030


def _raises(data, tag=None, offset=None):
    with pytest.raises(CommandSetError) as info:
        decode_command(data)
    if tag is not None:
        assert info.value.tag == tag, str(info.value)
    if offset is not None:
        assert info.value.offset == offset, str(info.value)
    return info.value


def test_error_truncated_header():
    data = _cs(*ECHO_ELEMENTS)
    _raises(data + b"\x00\x00\x05\x10", offset=len(data), tag=0x1005)


def test_error_value_overruns():
    data = _cs(*ECHO_ELEMENTS)
    _raises(data[:-1], tag=0x0800, offset=len(data) - 10)


def test_error_non_0000_group():
    bad = struct.pack("<HHI", 0x0008, 0x0018, 2) + b"1\x00"
    _raises(_cs(*ECHO_ELEMENTS, bad), tag=0x00080018, offset=12 + sum(map(len, ECHO_ELEMENTS)))


def test_error_descending_tags():
    e = ECHO_ELEMENTS
    _raises(_cs(e[0], e[2], e[1], e[3]), tag=0x0100, offset=12 + len(e[0]) + len(e[2]))


def test_error_repeated_tag():
    e = ECHO_ELEMENTS
    err = _raises(_cs(e[0], e[1], e[1], e[2], e[3]), tag=0x0100)
    assert "repeated" in str(err)


def test_error_group_length_not_first_is_order_error():
    e = ECHO_ELEMENTS
    body = e[0] + _el(0, struct.pack("<I", 0)) + b"".join(e[1:])
    _raises(body, tag=0x0000, offset=len(e[0]))


@pytest.mark.parametrize(
    "element, tag",
    [
        (_el(0x0110, b"\x01\x00\x00"), 0x0110),  # US of 3 bytes
        (_el(0x0900, b""), 0x0900),  # US of 0 bytes
        (_el(0x0901, b"\x10\x00\x10\x00\x10"), 0x0901),  # AT not a multiple of 4
    ],
)
def test_error_value_length_for_vr(element, tag):
    e = ECHO_ELEMENTS
    elements = sorted([e[0], e[1], e[3], element] + ([e[2]] if tag != 0x0110 else []),
                      key=lambda x: struct.unpack_from("<H", x, 2)[0])
    _raises(_cs(*elements), tag=tag)


def test_error_group_length_vr():
    _raises(_el(0, b"\x00\x00\x00") + b"".join(ECHO_ELEMENTS), tag=0)  # UL of 3 bytes


@pytest.mark.parametrize("off_by", [2, -10, 1 << 20])
def test_group_length_value_off_is_accepted(off_by):
    # The P-DATA framing bounds the command set; a wrong value (as in some
    # peers' C-ECHO-RQ: 58 for 56 bytes) decides nothing and is not an error.
    body_len = sum(map(len, ECHO_ELEMENTS))
    wrong = decode_command(_cs(*ECHO_ELEMENTS, group_length=body_len + off_by))
    assert wrong == decode_command(_cs(*ECHO_ELEMENTS))


def test_error_missing_group_length():
    _raises(b"".join(ECHO_ELEMENTS), tag=0x0000)


def test_error_missing_command_field():
    e = ECHO_ELEMENTS
    _raises(_cs(e[0], e[2], e[3]), tag=0x0100)


def test_error_unknown_command_field():
    e = ECHO_ELEMENTS
    err = _raises(_cs(e[0], _el(0x0100, _us(0x0130)), e[2], e[3]), tag=0x0100,
                  offset=12 + len(e[0]))
    assert "0x0130" in str(err)


def test_error_non_ascii_uid():
    e = ECHO_ELEMENTS
    _raises(_cs(_el(0x0002, b"1.\xff\x00"), *e[1:]), tag=0x0002)


MANDATORY = {
    "C-ECHO-RQ": (C_ECHO_RQ, [0x0002, 0x0100, 0x0110, 0x0800], []),
    "C-STORE-RQ": (C_STORE_RQ, [0x0002, 0x0110, 0x0700, 0x0800, 0x1000], [0x1030, 0x1031]),
    "C-FIND-RSP": (C_FIND_RSP, [0x0120, 0x0800, 0x0900], [0x0002]),
    "C-GET-RSP": (C_GET_RSP, [0x0120, 0x0900], [0x0002, 0x1020, 0x1021, 0x1022, 0x1023]),
    "C-MOVE-RQ": (C_MOVE_RQ, [0x0002, 0x0110, 0x0600, 0x0700, 0x0800], []),
    "C-CANCEL-RQ": (C_CANCEL_RQ, [0x0120, 0x0800], []),
    "C-STORE-RSP": (C_STORE_RSP_ERROR, [0x0120, 0x0900], [0x0901, 0x0902, 0x0903, 0x1000]),
}


def _drop(data, drop_elem):
    """Re-encode ``data`` without one element, with a fixed group length."""
    out = []
    pos = 12
    while pos < len(data):
        _, elem, vlen = struct.unpack_from("<HHI", data, pos)
        if elem != drop_elem:
            out.append(data[pos:pos + 8 + vlen])
        pos += 8 + vlen
    return _cs(*out)


@pytest.mark.parametrize("name", sorted(MANDATORY))
def test_mandatory_elements(name):
    command, required, optional = MANDATORY[name]
    data = encode_command(command)
    for elem in required:
        _raises(_drop(data, elem), tag=elem)
    for elem in optional:
        decoded = decode_command(_drop(data, elem))
        assert decoded.command_field == command.command_field


@pytest.mark.parametrize("data, expected", VECTORS)
def test_truncation_at_every_offset(data, expected):
    # Cut inside an element: an error. Cut between elements: the command set
    # is what the framing delivered (the group length's value is not used),
    # so it decodes only when every element its command needs came before
    # the cut, and then as the same command without the elements cut off.
    boundaries, pos = set(), 0
    while pos < len(data):
        pos += 8 + struct.unpack_from("<I", data, pos + 4)[0]
        boundaries.add(pos)
    for cut in range(len(data)):
        if cut not in boundaries:
            with pytest.raises(CommandSetError):
                decode_command(data[:cut] if cut else b"")
            continue
        try:
            decoded = decode_command(data[:cut])
        except CommandSetError:
            continue
        assert decoded.command_field == expected.command_field
        assert decoded.message_id == expected.message_id
        assert decoded.message_id_being_responded_to == expected.message_id_being_responded_to


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_garbage_raises_only_command_set_error(data):
    try:
        decode_command(data)
    except CommandSetError:
        pass


@given(st.data())
@settings(max_examples=200)
def test_corrupted_vectors_raise_only_command_set_error(data):
    raw = bytearray(data.draw(st.sampled_from([p.values[0] for p in VECTORS])))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        decode_command(bytes(raw))
    except CommandSetError:
        pass


# --------------------------------------------------------- pynetdicom cross-check

pynetdicom = pytest.importorskip("pynetdicom")
from pydicom.tag import Tag  # noqa: E402
from pynetdicom import dimse_messages as M, dimse_primitives as P  # noqa: E402
from pynetdicom.dsutils import decode as pnd_decode, encode as pnd_encode  # noqa: E402

KEYWORDS = {
    "command_field": "CommandField",
    "affected_sop_class_uid": "AffectedSOPClassUID",
    "requested_sop_class_uid": "RequestedSOPClassUID",
    "message_id": "MessageID",
    "message_id_being_responded_to": "MessageIDBeingRespondedTo",
    "move_destination": "MoveDestination",
    "priority": "Priority",
    "command_data_set_type": "CommandDataSetType",
    "status": "Status",
    "offending_element": "OffendingElement",
    "error_comment": "ErrorComment",
    "error_id": "ErrorID",
    "affected_sop_instance_uid": "AffectedSOPInstanceUID",
    "requested_sop_instance_uid": "RequestedSOPInstanceUID",
    "number_of_remaining_suboperations": "NumberOfRemainingSuboperations",
    "number_of_completed_suboperations": "NumberOfCompletedSuboperations",
    "number_of_failed_suboperations": "NumberOfFailedSuboperations",
    "number_of_warning_suboperations": "NumberOfWarningSuboperations",
    "move_originator_application_entity_title": "MoveOriginatorApplicationEntityTitle",
    "move_originator_message_id": "MoveOriginatorMessageID",
}

SOP = "1.2.840.10008.5.1.4.1.2.2.1"
IDENT = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")


def _pnd_messages():
    """(pynetdicom message, expected chromanet Command) for every C- command."""
    out = []

    def add(msg_cls, prim, **expected):
        m = msg_cls()
        m.primitive_to_message(prim)
        out.append((msg_cls.__name__, m, Command(**expected)))

    p = P.C_ECHO(); p.MessageID = 1; p.AffectedSOPClassUID = "1.2.840.10008.1.1"
    add(M.C_ECHO_RQ, p, command_field=0x30, message_id=1,
        affected_sop_class_uid="1.2.840.10008.1.1", command_data_set_type=0x0101)
    p = P.C_ECHO(); p.MessageIDBeingRespondedTo = 1; p.AffectedSOPClassUID = "1.2.840.10008.1.1"
    p.Status = 0
    add(M.C_ECHO_RSP, p, command_field=0x8030, message_id_being_responded_to=1, status=0,
        affected_sop_class_uid="1.2.840.10008.1.1", command_data_set_type=0x0101)
    p = P.C_STORE(); p.MessageID = 7; p.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    p.AffectedSOPInstanceUID = "1.2.3.4"; p.Priority = 2; p.DataSet = BytesIO(b"\x08\x00")
    p.MoveOriginatorApplicationEntityTitle = "ORIGIN"; p.MoveOriginatorMessageID = 4
    add(M.C_STORE_RQ, p, command_field=1, message_id=7,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2", affected_sop_instance_uid="1.2.3.4",
        priority=2, command_data_set_type=1, move_originator_application_entity_title="ORIGIN",
        move_originator_message_id=4)
    p = P.C_STORE(); p.MessageIDBeingRespondedTo = 7; p.Status = 0xB000
    p.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"; p.AffectedSOPInstanceUID = "1.2.3.4"
    p.OffendingElement = [0x00100010, 0x00100020]; p.ErrorComment = "odd comment"
    add(M.C_STORE_RSP, p, command_field=0x8001, message_id_being_responded_to=7, status=0xB000,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2", affected_sop_instance_uid="1.2.3.4",
        command_data_set_type=0x0101, offending_element=[0x00100010, 0x00100020],
        error_comment="odd comment")
    for msg_rq, msg_rsp, prim, cf in (
        (M.C_FIND_RQ, M.C_FIND_RSP, P.C_FIND, 0x20),
        (M.C_GET_RQ, M.C_GET_RSP, P.C_GET, 0x10),
        (M.C_MOVE_RQ, M.C_MOVE_RSP, P.C_MOVE, 0x21),
    ):
        p = prim(); p.MessageID = 3; p.AffectedSOPClassUID = SOP; p.Priority = 1
        p.Identifier = IDENT
        extra = {}
        if cf == 0x21:
            p.MoveDestination = "DEST"
            extra["move_destination"] = "DEST"
        add(msg_rq, p, command_field=cf, message_id=3, affected_sop_class_uid=SOP, priority=1,
            command_data_set_type=1, **extra)
        p = prim(); p.MessageIDBeingRespondedTo = 3; p.AffectedSOPClassUID = SOP
        p.Status = 0xFF00; p.Identifier = IDENT
        extra = {}
        if cf != 0x20:
            p.NumberOfRemainingSuboperations = 3
            p.NumberOfCompletedSuboperations = 65535
            p.NumberOfFailedSuboperations = 0
            p.NumberOfWarningSuboperations = 1
            extra = dict(number_of_remaining_suboperations=3,
                         number_of_completed_suboperations=65535,
                         number_of_failed_suboperations=0, number_of_warning_suboperations=1)
        add(msg_rsp, p, command_field=0x8000 | cf, message_id_being_responded_to=3,
            affected_sop_class_uid=SOP, status=0xFF00, command_data_set_type=1, **extra)
    p = P.C_CANCEL(); p.MessageIDBeingRespondedTo = 3
    add(M.C_CANCEL_RQ, p, command_field=0x0FFF, message_id_being_responded_to=3,
        command_data_set_type=0x0101)
    return out


PND = _pnd_messages()


def test_pynetdicom_covers_every_command_field():
    fields = {cmd.command_field for _, _, cmd in PND}
    assert fields == {0x0001, 0x8001, 0x0010, 0x8010, 0x0020, 0x8020, 0x0021, 0x8021,
                      0x0030, 0x8030, 0x0FFF}


@pytest.mark.parametrize("name, msg, expected", PND, ids=[x[0] for x in PND])
def test_decode_what_pynetdicom_encodes(name, msg, expected):
    data = pnd_encode(msg.command_set, True, True)
    assert decode_command(data) == expected
    # and we produce the very same bytes
    assert encode_command(expected) == data


@pytest.mark.parametrize("name, msg, expected", PND, ids=[x[0] for x in PND])
def test_pynetdicom_decodes_what_we_encode(name, msg, expected):
    ds = pnd_decode(BytesIO(encode_command(expected)), True, True)
    assert ds.CommandGroupLength == len(encode_command(expected)) - 12
    for field, keyword in KEYWORDS.items():
        value = getattr(expected, field)
        if value is None:
            assert keyword not in ds
            continue
        got = ds[keyword].value
        if field == "offending_element":
            got = [int(Tag(t)) for t in ([got] if isinstance(got, int) else list(got))]
        elif isinstance(value, str):
            got = str(got).strip()
        assert got == value, field


# --------------------------------------------------------------- hypothesis

uid = st.from_regex(r"\A[1-9][0-9]{0,5}(\.(0|[1-9][0-9]{0,5})){0,8}\Z").filter(lambda s: len(s) <= 64)
_printable = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\")
ae = st.text(_printable, min_size=1, max_size=16)
lo = st.builds(
    lambda a, b: (a + " " + b).strip(),
    st.text(_printable, max_size=30), st.text(_printable, max_size=30),
).filter(lambda s: s != "")
us = st.integers(0, 0xFFFF)
tags = st.lists(st.integers(0, 0xFFFFFFFF), max_size=4)
others = st.dictionaries(
    st.integers(1, 0xFFFF).filter(lambda t: t not in {
        0x0002, 0x0003, 0x0100, 0x0110, 0x0120, 0x0600, 0x0700, 0x0800, 0x0900, 0x0901,
        0x0902, 0x0903, 0x1000, 0x1001, 0x1020, 0x1021, 0x1022, 0x1023, 0x1030, 0x1031}),
    st.binary(max_size=10).map(lambda b: b + b"\0" * (len(b) & 1)),
    max_size=3,
)

OPTIONAL = {
    "affected_sop_class_uid": uid, "requested_sop_class_uid": uid, "message_id": us,
    "message_id_being_responded_to": us, "move_destination": ae, "priority": st.integers(0, 2),
    "status": us, "offending_element": tags, "error_comment": lo, "error_id": us,
    "affected_sop_instance_uid": uid, "requested_sop_instance_uid": uid,
    "number_of_remaining_suboperations": us, "number_of_completed_suboperations": us,
    "number_of_failed_suboperations": us, "number_of_warning_suboperations": us,
    "move_originator_application_entity_title": ae, "move_originator_message_id": us,
}
REQUIRED = {
    0x0001: ["affected_sop_class_uid", "message_id", "priority", "affected_sop_instance_uid"],
    0x0010: ["affected_sop_class_uid", "message_id", "priority"],
    0x0020: ["affected_sop_class_uid", "message_id", "priority"],
    0x0021: ["affected_sop_class_uid", "message_id", "priority", "move_destination"],
    0x0030: ["affected_sop_class_uid", "message_id"],
    0x0FFF: ["message_id_being_responded_to"],
}
for _cf in (0x8001, 0x8010, 0x8020, 0x8021, 0x8030):
    REQUIRED[_cf] = ["message_id_being_responded_to", "status"]


@st.composite
def commands(draw, command_field=None):
    cf = draw(st.sampled_from(sorted(REQUIRED))) if command_field is None else command_field
    fields = {name: draw(OPTIONAL[name]) for name in REQUIRED[cf]}
    for name in draw(st.sets(st.sampled_from(sorted(OPTIONAL)), max_size=6)):
        fields[name] = draw(OPTIONAL[name])
    fields["command_data_set_type"] = draw(st.sampled_from([0x0101, 0x0001, 0x0000, 0xFEFE]))
    fields["other_elements"] = draw(others)
    return Command(cf, **fields)


@given(commands())
@settings(max_examples=500)
def test_round_trip(cmd):
    data = encode_command(cmd)
    assert len(data) % 2 == 0
    assert decode_command(data) == cmd


@pytest.mark.parametrize("cf", sorted(REQUIRED), ids=lambda cf: f"0x{cf:04X}")
@given(data=st.data())
@settings(max_examples=30)
def test_round_trip_every_type(cf, data):
    cmd = data.draw(commands(cf))
    assert decode_command(encode_command(cmd)) == cmd


def test_uid_longer_than_64_characters_is_an_invalid_command_set():
    """PS3.5 9.1: a UID has at most 64 characters; a longer Affected SOP Class
    UID could not even be echoed in the response (found by the fuzzer)."""

    def element(elem: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, elem, len(value)) + value

    def echo_with(uid: bytes) -> bytes:
        body = (
            element(0x0002, uid)
            + element(0x0100, struct.pack("<H", 0x0030))
            + element(0x0110, struct.pack("<H", 1))
            + element(0x0800, struct.pack("<H", 0x0101))
        )
        return element(0x0000, struct.pack("<I", len(body))) + body

    with pytest.raises(CommandSetError, match="more than 64"):
        decode_command(echo_with(b"1." + b"2" * 64))
    assert decode_command(echo_with(b"1." + b"2" * 62)).affected_sop_class_uid == "1." + "2" * 62


@pytest.mark.parametrize("empty", ["affected_sop_class_uid", "affected_sop_instance_uid"])
def test_store_request_with_an_empty_mandatory_uid_is_invalid(empty):
    """An empty UID is as good as missing (found by the fuzzer: the spool
    file of such a C-STORE could not be given a file meta header)."""

    def element(elem: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, elem, len(value)) + value

    uids = {"affected_sop_class_uid": b"1.2.840.10008.5.1.4.39.1", "affected_sop_instance_uid": b"1.2.3.4"}
    uids[empty] = b""
    body = (
        element(0x0002, uids["affected_sop_class_uid"])
        + element(0x0100, struct.pack("<H", 0x0001))
        + element(0x0110, struct.pack("<H", 1))
        + element(0x0700, struct.pack("<H", 2))
        + element(0x0800, struct.pack("<H", 0x0000))
        + element(0x1000, uids["affected_sop_instance_uid"])
    )
    raw = element(0x0000, struct.pack("<I", len(body))) + body
    with pytest.raises(CommandSetError, match="empty"):
        decode_command(raw)
