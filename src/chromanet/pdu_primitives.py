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

from typing import Any, Callable

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


def _role(value: Any, name: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool or None")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool")
    return value


def _identity_type(value: Any, name: str) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 5):
        raise ValueError(f"{name} must be 1 to 5, not {value!r}")
    return value


def _count(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} must be 0 to 65535, not {value!r}")
    return value


def _uid_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list):
        raise TypeError(f"{name} must be a list of UIDs")
    return [uid for uid in (_uid(item, name) for item in value) if uid is not None]


class _Field:
    """An item attribute, checked when set: ``check(value, name)`` raises
    or returns what is kept. ``default`` is called for the value of an
    attribute never set (so a list default is not shared)."""

    def __init__(self, check: Callable[[Any, str], Any], default: Callable[[], Any] = lambda: None) -> None:
        self.check = check
        self.default = default

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.slot = "_" + name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        try:
            return obj.__dict__[self.slot]
        except KeyError:
            value = obj.__dict__[self.slot] = self.default()
            return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.slot] = self.check(value, self.name)


class UserIdentityNegotiation:
    """User Identity (sub-item 0x58): type 1 username, 2 username and
    passcode, 3 Kerberos ticket, 4 SAML assertion, 5 JSON Web Token."""

    user_identity_type = _Field(_identity_type)
    positive_response_requested = _Field(_flag, lambda: False)
    primary_field = _Field(_bytes)
    secondary_field = _Field(_bytes, lambda: b"")
    #: The acceptor's answer (sub-item 0x59), when there was one.
    server_response = _Field(_bytes)

    def to_item(self) -> _pdu.UserIdentityRQ:
        kind = _required(self.user_identity_type, "UserIdentityNegotiation", "user_identity_type")
        primary = _required(self.primary_field, "UserIdentityNegotiation", "primary_field")
        secondary = self.secondary_field or b""
        if kind == 2 and not secondary:
            raise ValueError("UserIdentityNegotiation: user_identity_type 2 needs a secondary_field (the passcode)")
        return _pdu.UserIdentityRQ(kind, primary, secondary, self.positive_response_requested)


class SOPClassExtendedNegotiation:
    """SOP Class Extended Negotiation (sub-item 0x56): service-class
    specific application information for one SOP class."""

    sop_class_uid = _Field(_uid)
    service_class_application_information = _Field(_bytes)

    def to_item(self) -> _pdu.SOPClassExtendedNegotiation:
        name = "SOPClassExtendedNegotiation"
        return _pdu.SOPClassExtendedNegotiation(
            _required(self.sop_class_uid, name, "sop_class_uid"),
            _required(self.service_class_application_information, name, "service_class_application_information"),
        )


class SOPClassCommonExtendedNegotiation:
    """SOP Class Common Extended Negotiation (sub-item 0x57): the service
    class of a SOP class and its related general SOP classes."""

    sop_class_uid = _Field(_uid)
    service_class_uid = _Field(_uid)
    related_general_sop_class_identification = _Field(_uid_list, list)

    def to_item(self) -> _pdu.SOPClassCommonExtendedNegotiation:
        name = "SOPClassCommonExtendedNegotiation"
        return _pdu.SOPClassCommonExtendedNegotiation(
            _required(self.sop_class_uid, name, "sop_class_uid"),
            _required(self.service_class_uid, name, "service_class_uid"),
            list(self.related_general_sop_class_identification),
        )


class SCP_SCU_RoleSelectionNegotiation:
    """SCP/SCU Role Selection (sub-item 0x54) for one SOP class. A role left
    None is proposed as False; at least one must be set."""

    sop_class_uid = _Field(_uid)
    scu_role = _Field(_role)
    scp_role = _Field(_role)

    def to_item(self) -> _pdu.RoleSelection:
        uid = _required(self.sop_class_uid, "SCP_SCU_RoleSelectionNegotiation", "sop_class_uid")
        if self.scu_role is None and self.scp_role is None:
            raise ValueError("SCP_SCU_RoleSelectionNegotiation: set scu_role or scp_role")
        return _pdu.RoleSelection(uid, bool(self.scu_role), bool(self.scp_role))


class AsynchronousOperationsWindowNegotiation:
    """Asynchronous Operations Window (sub-item 0x53): how many operations
    each side may have outstanding (0 = unlimited; 1, 1 is the default)."""

    maximum_number_operations_invoked = _Field(_count, lambda: 1)
    maximum_number_operations_performed = _Field(_count, lambda: 1)

    def to_item(self) -> _pdu.AsyncOperationsWindow:
        return _pdu.AsyncOperationsWindow(self.maximum_number_operations_invoked, self.maximum_number_operations_performed)
