"""The extended negotiation items a requestor passes in ``ext_neg``, under
pynetdicom's names (``pynetdicom.pdu_primitives``).

A pynetdicom program builds them attribute by attribute::

    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field = b"user"
    item.secondary_field = b"secret"
    assoc = ae.associate(addr, port, ext_neg=[item])

``AE.associate`` turns each into the User Information sub-item of PS3.7
Annex D.3.3 (``to_item``). The attributes are checked when they are set,
so a wrong type or value fails where the program made the mistake; an item
missing a required value fails in ``associate`` (ValueError).

Only the items a requestor may propose are here; the maximum length,
implementation class UID and version name come from the AE's settings.
"""

from __future__ import annotations

from typing import Any

from chromanet import _pdu, uids

__all__ = [
    "AsynchronousOperationsWindowNegotiation",
    "SCP_SCU_RoleSelectionNegotiation",
    "SOPClassCommonExtendedNegotiation",
    "SOPClassExtendedNegotiation",
    "UserIdentityNegotiation",
]


def _uid(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a UID (str), not {type(value).__name__}")
    value = value.rstrip("\0 ")
    if not uids.validate_uid(value):
        raise ValueError(f"{name} {value!r} is not a valid UID")
    return value


def _bytes(value: Any, name: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    return bytes(value)


def _required(value: Any, item: str, name: str) -> Any:
    if value is None:
        raise ValueError(f"{item}: {name} must be set before the association is requested")
    return value


class UserIdentityNegotiation:
    """User Identity (sub-item 0x58): type 1 username, 2 username and
    passcode, 3 Kerberos ticket, 4 SAML assertion, 5 JSON Web Token."""

    def __init__(self) -> None:
        self._user_identity_type: int | None = None
        self._positive_response_requested = False
        self._primary_field: bytes | None = None
        self._secondary_field: bytes | None = b""
        self._server_response: bytes | None = None

    @property
    def user_identity_type(self) -> int | None:
        return self._user_identity_type

    @user_identity_type.setter
    def user_identity_type(self, value: int | None) -> None:
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 5):
            raise ValueError(f"user_identity_type must be 1 to 5, not {value!r}")
        self._user_identity_type = value

    @property
    def positive_response_requested(self) -> bool:
        return self._positive_response_requested

    @positive_response_requested.setter
    def positive_response_requested(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError("positive_response_requested must be a bool")
        self._positive_response_requested = value

    @property
    def primary_field(self) -> bytes | None:
        return self._primary_field

    @primary_field.setter
    def primary_field(self, value: bytes | None) -> None:
        self._primary_field = _bytes(value, "primary_field")

    @property
    def secondary_field(self) -> bytes | None:
        return self._secondary_field

    @secondary_field.setter
    def secondary_field(self, value: bytes | None) -> None:
        self._secondary_field = _bytes(value, "secondary_field")

    @property
    def server_response(self) -> bytes | None:
        """The acceptor's answer (sub-item 0x59), when there was one."""
        return self._server_response

    @server_response.setter
    def server_response(self, value: bytes | None) -> None:
        self._server_response = _bytes(value, "server_response")

    def to_item(self) -> _pdu.UserIdentityRQ:
        kind = _required(self._user_identity_type, "UserIdentityNegotiation", "user_identity_type")
        primary = _required(self._primary_field, "UserIdentityNegotiation", "primary_field")
        secondary = self._secondary_field or b""
        if kind == 2 and not secondary:
            raise ValueError("UserIdentityNegotiation: user_identity_type 2 needs a secondary_field (the passcode)")
        return _pdu.UserIdentityRQ(kind, primary, secondary, self._positive_response_requested)


class SOPClassExtendedNegotiation:
    """SOP Class Extended Negotiation (sub-item 0x56): service-class
    specific application information for one SOP class."""

    def __init__(self) -> None:
        self._sop_class_uid: str | None = None
        self._service_class_application_information: bytes | None = None

    @property
    def sop_class_uid(self) -> str | None:
        return self._sop_class_uid

    @sop_class_uid.setter
    def sop_class_uid(self, value: str | None) -> None:
        self._sop_class_uid = _uid(value, "sop_class_uid")

    @property
    def service_class_application_information(self) -> bytes | None:
        return self._service_class_application_information

    @service_class_application_information.setter
    def service_class_application_information(self, value: bytes | None) -> None:
        self._service_class_application_information = _bytes(value, "service_class_application_information")

    def to_item(self) -> _pdu.SOPClassExtendedNegotiation:
        name = "SOPClassExtendedNegotiation"
        return _pdu.SOPClassExtendedNegotiation(
            _required(self._sop_class_uid, name, "sop_class_uid"),
            _required(self._service_class_application_information, name, "service_class_application_information"),
        )


class SOPClassCommonExtendedNegotiation:
    """SOP Class Common Extended Negotiation (sub-item 0x57): the service
    class of a SOP class and its related general SOP classes."""

    def __init__(self) -> None:
        self._sop_class_uid: str | None = None
        self._service_class_uid: str | None = None
        self._related_general_sop_class_identification: list[str] = []

    @property
    def sop_class_uid(self) -> str | None:
        return self._sop_class_uid

    @sop_class_uid.setter
    def sop_class_uid(self, value: str | None) -> None:
        self._sop_class_uid = _uid(value, "sop_class_uid")

    @property
    def service_class_uid(self) -> str | None:
        return self._service_class_uid

    @service_class_uid.setter
    def service_class_uid(self, value: str | None) -> None:
        self._service_class_uid = _uid(value, "service_class_uid")

    @property
    def related_general_sop_class_identification(self) -> list[str]:
        return self._related_general_sop_class_identification

    @related_general_sop_class_identification.setter
    def related_general_sop_class_identification(self, value: list[str]) -> None:
        if not isinstance(value, list):
            raise TypeError("related_general_sop_class_identification must be a list of UIDs")
        self._related_general_sop_class_identification = [
            uid for uid in (_uid(item, "related general SOP class") for item in value) if uid is not None
        ]

    def to_item(self) -> _pdu.SOPClassCommonExtendedNegotiation:
        name = "SOPClassCommonExtendedNegotiation"
        return _pdu.SOPClassCommonExtendedNegotiation(
            _required(self._sop_class_uid, name, "sop_class_uid"),
            _required(self._service_class_uid, name, "service_class_uid"),
            list(self._related_general_sop_class_identification),
        )


class SCP_SCU_RoleSelectionNegotiation:
    """SCP/SCU Role Selection (sub-item 0x54) for one SOP class. A role left
    None is proposed as False; at least one must be set."""

    def __init__(self) -> None:
        self._sop_class_uid: str | None = None
        self._scu_role: bool | None = None
        self._scp_role: bool | None = None

    @property
    def sop_class_uid(self) -> str | None:
        return self._sop_class_uid

    @sop_class_uid.setter
    def sop_class_uid(self, value: str | None) -> None:
        self._sop_class_uid = _uid(value, "sop_class_uid")

    @property
    def scu_role(self) -> bool | None:
        return self._scu_role

    @scu_role.setter
    def scu_role(self, value: bool | None) -> None:
        if value is not None and not isinstance(value, bool):
            raise TypeError("scu_role must be a bool or None")
        self._scu_role = value

    @property
    def scp_role(self) -> bool | None:
        return self._scp_role

    @scp_role.setter
    def scp_role(self, value: bool | None) -> None:
        if value is not None and not isinstance(value, bool):
            raise TypeError("scp_role must be a bool or None")
        self._scp_role = value

    def to_item(self) -> _pdu.RoleSelection:
        uid = _required(self._sop_class_uid, "SCP_SCU_RoleSelectionNegotiation", "sop_class_uid")
        if self._scu_role is None and self._scp_role is None:
            raise ValueError("SCP_SCU_RoleSelectionNegotiation: set scu_role or scp_role")
        return _pdu.RoleSelection(uid, bool(self._scu_role), bool(self._scp_role))


class AsynchronousOperationsWindowNegotiation:
    """Asynchronous Operations Window (sub-item 0x53): how many operations
    each side may have outstanding (0 = unlimited; 1, 1 is the default)."""

    def __init__(self) -> None:
        self._invoked = 1
        self._performed = 1

    @staticmethod
    def _count(value: int, name: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
            raise ValueError(f"{name} must be 0 to 65535, not {value!r}")
        return value

    @property
    def maximum_number_operations_invoked(self) -> int:
        return self._invoked

    @maximum_number_operations_invoked.setter
    def maximum_number_operations_invoked(self, value: int) -> None:
        self._invoked = self._count(value, "maximum_number_operations_invoked")

    @property
    def maximum_number_operations_performed(self) -> int:
        return self._performed

    @maximum_number_operations_performed.setter
    def maximum_number_operations_performed(self, value: int) -> None:
        self._performed = self._count(value, "maximum_number_operations_performed")

    def to_item(self) -> _pdu.AsyncOperationsWindow:
        return _pdu.AsyncOperationsWindow(self._invoked, self._performed)
