"""PS3.8 Upper Layer PDUs: value classes and their encoder/decoder (Cython).

Every class is a mutable value object: keyword construction, ``==`` by value,
a readable ``repr``. ``decode_pdu(encode_pdu(x)) == x`` holds for every PDU, and
``encode_pdu(decode_pdu(b)) == b`` for every well-formed byte string that uses
no reserved values (unknown User Information sub-items are kept in
``UserInformation.unknown_items`` so that they round-trip too).
"""

from typing import Final, Union

# PDU types
A_ASSOCIATE_RQ: Final[int]  # 0x01
A_ASSOCIATE_AC: Final[int]  # 0x02
A_ASSOCIATE_RJ: Final[int]  # 0x03
P_DATA_TF: Final[int]  # 0x04
A_RELEASE_RQ: Final[int]  # 0x05
A_RELEASE_RP: Final[int]  # 0x06
A_ABORT: Final[int]  # 0x07

APPLICATION_CONTEXT_NAME: Final[str]  # "1.2.840.10008.3.1.1.1"

class PresentationContextRQ:
    context_id: int  # odd, 1..255
    abstract_syntax: str
    transfer_syntaxes: list[str]
    def __init__(self, context_id: int, abstract_syntax: str, transfer_syntaxes: list[str] = ...) -> None: ...

class PresentationContextAC:
    context_id: int
    result: int  # 0 accepted, 1 user rejection, 2 no reason, 3 abstract syntax, 4 transfer syntaxes
    transfer_syntax: str  # "" allowed when result != 0
    def __init__(self, context_id: int, result: int = 0, transfer_syntax: str = "") -> None: ...

class RoleSelection:  # sub-item 0x54
    sop_class_uid: str
    scu_role: bool
    scp_role: bool
    def __init__(self, sop_class_uid: str, scu_role: bool, scp_role: bool) -> None: ...

class AsyncOperationsWindow:  # sub-item 0x53; 0 = unlimited
    max_operations_invoked: int
    max_operations_performed: int
    def __init__(self, max_operations_invoked: int = 1, max_operations_performed: int = 1) -> None: ...

class SOPClassExtendedNegotiation:  # sub-item 0x56
    sop_class_uid: str
    application_information: bytes
    def __init__(self, sop_class_uid: str, application_information: bytes = b"") -> None: ...

class SOPClassCommonExtendedNegotiation:  # sub-item 0x57
    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: list[str]
    def __init__(
        self, sop_class_uid: str, service_class_uid: str, related_general_sop_classes: list[str] = ...
    ) -> None: ...

class UserIdentityRQ:  # sub-item 0x58
    identity_type: int  # 1 username, 2 username+passcode, 3 Kerberos, 4 SAML, 5 JWT
    positive_response_requested: bool
    primary_field: bytes
    secondary_field: bytes
    def __init__(
        self,
        identity_type: int,
        primary_field: bytes,
        secondary_field: bytes = b"",
        positive_response_requested: bool = False,
    ) -> None: ...

class UserIdentityAC:  # sub-item 0x59
    server_response: bytes
    def __init__(self, server_response: bytes = b"") -> None: ...

class UserInformation:  # item 0x50
    max_length: int | None  # 0x51; 0 = unlimited; None = sub-item absent
    implementation_class_uid: str | None  # 0x52
    implementation_version_name: str | None  # 0x55
    async_ops_window: AsyncOperationsWindow | None  # 0x53
    role_selections: list[RoleSelection]  # 0x54, in order
    sop_class_extended: list[SOPClassExtendedNegotiation]  # 0x56
    sop_class_common_extended: list[SOPClassCommonExtendedNegotiation]  # 0x57
    user_identity_rq: UserIdentityRQ | None  # 0x58
    user_identity_ac: UserIdentityAC | None  # 0x59
    unknown_items: list[tuple[int, bytes]]  # (sub-item type, value), kept for round trip
    def __init__(
        self,
        max_length: int | None = ...,
        implementation_class_uid: str | None = ...,
        implementation_version_name: str | None = ...,
        async_ops_window: AsyncOperationsWindow | None = ...,
        role_selections: list[RoleSelection] = ...,
        sop_class_extended: list[SOPClassExtendedNegotiation] = ...,
        sop_class_common_extended: list[SOPClassCommonExtendedNegotiation] = ...,
        user_identity_rq: UserIdentityRQ | None = ...,
        user_identity_ac: UserIdentityAC | None = ...,
        unknown_items: list[tuple[int, bytes]] = ...,
    ) -> None: ...

class AssociateRQ:
    called_ae_title: str  # stripped of padding spaces on decode, padded on encode
    calling_ae_title: str
    presentation_contexts: list[PresentationContextRQ]
    user_information: UserInformation
    application_context_name: str
    protocol_version: int
    def __init__(
        self,
        called_ae_title: str,
        calling_ae_title: str,
        presentation_contexts: list[PresentationContextRQ] = ...,
        user_information: UserInformation = ...,
        application_context_name: str = ...,
        protocol_version: int = 1,
    ) -> None: ...

class AssociateAC:
    called_ae_title: str  # echoed from the RQ, never tested
    calling_ae_title: str
    presentation_contexts: list[PresentationContextAC]
    user_information: UserInformation
    application_context_name: str
    protocol_version: int
    def __init__(
        self,
        called_ae_title: str,
        calling_ae_title: str,
        presentation_contexts: list[PresentationContextAC] = ...,
        user_information: UserInformation = ...,
        application_context_name: str = ...,
        protocol_version: int = 1,
    ) -> None: ...

class AssociateRJ:
    result: int  # 1 permanent, 2 transient
    source: int  # 1 user, 2 ACSE provider, 3 presentation provider
    reason: int
    def __init__(self, result: int, source: int, reason: int) -> None: ...

class PDV:
    context_id: int
    is_command: bool  # message control header bit 0
    is_last: bool  # message control header bit 1
    data: bytes | memoryview
    def __init__(self, context_id: int, is_command: bool, is_last: bool, data: bytes | memoryview) -> None: ...

class PDataTF:
    pdvs: list[PDV]
    def __init__(self, pdvs: list[PDV] = ...) -> None: ...

class ReleaseRQ:
    def __init__(self) -> None: ...

class ReleaseRP:
    def __init__(self) -> None: ...

class Abort:
    source: int  # 0 service user, 2 service provider
    reason: int  # meaningful when source == 2
    def __init__(self, source: int = 0, reason: int = 0) -> None: ...

PDU = Union[AssociateRQ, AssociateAC, AssociateRJ, PDataTF, ReleaseRQ, ReleaseRP, Abort]

def encode_pdu(pdu: PDU) -> bytes:
    """The whole PDU, 6-byte header included."""

def decode_pdu(pdu_type: int, body: bytes | bytearray | memoryview) -> PDU:
    """Decode a PDU from its type byte and the ``body`` after the 6-byte header.

    Raises UnrecognizedPDUError for an unknown type, MalformedPDUError /
    UnexpectedPDUParameterError / InvalidPDUParameterError (chromanet.errors)
    naming the item and offset for anything else wrong.
    """

def decode_pdu_bytes(data: bytes | bytearray | memoryview) -> PDU:
    """Decode one whole PDU, header included; its length field must match len(data)."""
