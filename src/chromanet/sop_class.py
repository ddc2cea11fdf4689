"""SOP Class UIDs by name, as ``pynetdicom.sop_class`` offers them.

Every value is a :class:`pydicom.uid.UID` (a ``str``), so it can be passed
wherever a UID string is accepted (``ae.add_requested_context``,
``send_c_find(..., query_model)``, ``build_role``…).

Covered here: Verification, the Color Palette Query/Retrieve information
models and Color Palette Storage, and every storage SOP class that pydicom's
UID dictionary knows (name ending in "Storage", type "SOP Class"), under
pydicom's keyword. pynetdicom spells the Color Palette Q/R models without
"QueryRetrieve" (``ColorPaletteInformationModelFind``); those spellings are
the ones exported, pydicom's longer keywords are aliases.

A pynetdicom name for a service chromanet does not implement (N-services,
Modality Worklist, Patient Root Q/R…) raises an error that is both
``NotImplementedError`` and ``AttributeError`` (so ``hasattr`` still works),
naming it.
"""

from __future__ import annotations

from typing import Any

from pydicom._uid_dict import UID_dictionary
from pydicom.uid import UID

from chromanet import uids as _uids


class NotImplementedName(NotImplementedError, AttributeError):
    """A name pynetdicom has and chromanet does not implement."""


def _storage_classes() -> dict[str, UID]:
    """{keyword: UID} of every storage SOP class in pydicom's dictionary."""
    found: dict[str, UID] = {}
    for uid, (name, kind, _info, _retired, keyword) in UID_dictionary.items():
        if kind == "SOP Class" and name.endswith("Storage") and keyword:
            found[keyword] = UID(uid)
    return found


def _is_retired(uid: str) -> bool:
    return UID_dictionary[uid][3] == "Retired"


#: {keyword: UID} for every storage SOP class pydicom knows (retired included).
STORAGE_CLASSES: dict[str, UID] = _storage_classes()

Verification = UID(_uids.Verification)
ColorPaletteStorage = UID(_uids.ColorPaletteStorage)
ColorPaletteInformationModelFind = UID(_uids.ColorPaletteInformationModelFind)
ColorPaletteInformationModelMove = UID(_uids.ColorPaletteInformationModelMove)
ColorPaletteInformationModelGet = UID(_uids.ColorPaletteInformationModelGet)
# pydicom's keywords for the same three.
ColorPaletteQueryRetrieveInformationModelFind = ColorPaletteInformationModelFind
ColorPaletteQueryRetrieveInformationModelMove = ColorPaletteInformationModelMove
ColorPaletteQueryRetrieveInformationModelGet = ColorPaletteInformationModelGet

globals().update(STORAGE_CLASSES)

#: Verification and the Color Palette service's SOP classes.
COLOR_PALETTE_CLASSES: dict[str, UID] = {
    "ColorPaletteStorage": ColorPaletteStorage,
    "ColorPaletteInformationModelFind": ColorPaletteInformationModelFind,
    "ColorPaletteInformationModelMove": ColorPaletteInformationModelMove,
    "ColorPaletteInformationModelGet": ColorPaletteInformationModelGet,
}

# How many storage contexts StoragePresentationContexts holds: a request has
# room for 128 contexts (PS3.8 9.3.2.2, odd IDs 1-255); like pynetdicom we keep
# 8 of them free for Verification and the Color Palette Q/R models.
STORAGE_CONTEXT_LIMIT = 120


def select_storage_classes() -> list[UID]:
    """The storage SOP classes behind ``StoragePresentationContexts``.

    The rule (deterministic, from pydicom's dictionary only):

    1. Color Palette Storage (this project's service) first;
    2. every current (not retired) class whose name ends in "Image Storage",
       in UID order: images are what a generic storage SCP receives most;
    3. the other current storage classes in UID order (SR, waveforms,
       presentation states, RT, encapsulated documents, ...),

    cut at ``STORAGE_CONTEXT_LIMIT``. Retired classes are never included.
    """
    current = {k: u for k, u in STORAGE_CLASSES.items() if not _is_retired(u)}
    ordered = sorted(current.values(), key=lambda u: tuple(int(p) for p in u.split(".")))
    chosen: list[UID] = [ColorPaletteStorage]
    images = [u for u in ordered if UID_dictionary[u][0].endswith("Image Storage")]
    others = [u for u in ordered if u not in images]
    for uid in images + others:
        if uid not in chosen:
            chosen.append(uid)
    return chosen[:STORAGE_CONTEXT_LIMIT]


def uid_to_name(uid: str) -> str:
    """The keyword of a SOP class UID known here ('' when unknown)."""
    for name, value in _KNOWN.items():
        if value == uid:
            return name
    return ""


_KNOWN: dict[str, UID] = {"Verification": Verification, **COLOR_PALETTE_CLASSES, **STORAGE_CLASSES}

# pynetdicom names (functions and service families) that chromanet does not
# provide: asking for one says so instead of a bare AttributeError.
_NOT_IMPLEMENTED = {
    "uid_to_sop_class": "SOP class objects with a service_class attribute",
    "uid_to_service_class": "service class objects",
    "SOPClass": "SOPClass objects (the names here are plain pydicom UIDs)",
    "register_uid": "registering private SOP classes",
}


def __getattr__(name: str) -> Any:
    if name in _NOT_IMPLEMENTED:
        raise NotImplementedName(f"chromanet.sop_class does not implement {name} ({_NOT_IMPLEMENTED[name]})")
    if name[:1].isupper():
        raise NotImplementedName(
            f"chromanet.sop_class has no {name}: only Verification, the Color Palette service "
            "and the storage SOP classes are implemented"
        )
    raise AttributeError(f"module 'chromanet.sop_class' has no attribute {name!r}")


__all__ = sorted(["Verification", "STORAGE_CLASSES", "COLOR_PALETTE_CLASSES", "uid_to_name", *_KNOWN])
