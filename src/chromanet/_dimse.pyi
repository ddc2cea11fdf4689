"""DIMSE command sets: group 0000, Implicit VR Little Endian (Cython)."""

from typing import Final

# Command Field values (PS3.7 E.1)
C_STORE_RQ: Final[int]  # 0x0001
C_STORE_RSP: Final[int]  # 0x8001
C_GET_RQ: Final[int]  # 0x0010
C_GET_RSP: Final[int]  # 0x8010
C_FIND_RQ: Final[int]  # 0x0020
C_FIND_RSP: Final[int]  # 0x8020
C_MOVE_RQ: Final[int]  # 0x0021
C_MOVE_RSP: Final[int]  # 0x8021
C_ECHO_RQ: Final[int]  # 0x0030
C_ECHO_RSP: Final[int]  # 0x8030
C_CANCEL_RQ: Final[int]  # 0x0FFF

NO_DATASET: Final[int]  # 0x0101, Command Data Set Type when nothing follows
DATASET_PRESENT: Final[int]  # 0x0001, what we send when a data set follows

# Priority
PRIORITY_MEDIUM: Final[int]  # 0
PRIORITY_HIGH: Final[int]  # 1
PRIORITY_LOW: Final[int]  # 2

class Command:
    """One command set. Absent elements are None.

    Only ``command_field`` is needed to build one; ``encode_command`` writes the
    elements that are not None, in tag order, after a computed Command Group
    Length. ``decode_command`` fills the fields and checks that the elements
    PS3.7 makes mandatory for that command are present.
    """

    command_field: int | None  # (0000,0100) US
    affected_sop_class_uid: str | None  # (0000,0002) UI
    requested_sop_class_uid: str | None  # (0000,0003) UI
    message_id: int | None  # (0000,0110) US
    message_id_being_responded_to: int | None  # (0000,0120) US
    move_destination: str | None  # (0000,0600) AE, stripped
    priority: int | None  # (0000,0700) US
    command_data_set_type: int | None  # (0000,0800) US
    status: int | None  # (0000,0900) US
    offending_element: list[int] | None  # (0000,0901) AT, tags as (group << 16) | element
    error_comment: str | None  # (0000,0902) LO, stripped
    error_id: int | None  # (0000,0903) US
    affected_sop_instance_uid: str | None  # (0000,1000) UI
    requested_sop_instance_uid: str | None  # (0000,1001) UI
    number_of_remaining_suboperations: int | None  # (0000,1020) US
    number_of_completed_suboperations: int | None  # (0000,1021) US
    number_of_failed_suboperations: int | None  # (0000,1022) US
    number_of_warning_suboperations: int | None  # (0000,1023) US
    move_originator_application_entity_title: str | None  # (0000,1030) AE, stripped
    move_originator_message_id: int | None  # (0000,1031) US
    other_elements: dict[int, bytes]  # any other group-0000 tag: raw value, kept for round trip

    def __init__(self, command_field: int | None = None, **fields: object) -> None: ...
    @property
    def has_dataset(self) -> bool:
        """True when Command Data Set Type says a data set follows (not 0x0101, not None)."""
    @property
    def is_request(self) -> bool: ...

def encode_command(command: Command) -> bytes: ...
def decode_command(data: bytes | bytearray | memoryview) -> Command:
    """Raises chromanet.errors.CommandSetError naming the tag/offset at fault."""
