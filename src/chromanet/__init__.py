"""chromanet: a fast DICOM networking (DIMSE) engine for Python.

The wire work (PDU framing and codecs, P-DATA fragmentation, DIMSE command
sets) is done by Cython modules; the association state machine, services and
API run on an asyncio event loop (uvloop when available).

The public names follow pynetdicom's, so that ``from chromanet import AE,
evt`` can replace ``from pynetdicom import AE, evt``; every blocking method
has a coroutine twin for asyncio programs (``associate_async``,
``start_server_async``).
"""

from typing import Any

from chromanet import evt, uids
from chromanet.ae import AE, Association, build_role
from chromanet.association import AsyncAssociation
from chromanet.presentation import (
    DEFAULT_TRANSFER_SYNTAXES,
    ColorPalettePresentationContexts,
    PresentationContext,
    StoragePresentationContexts,
    VerificationPresentationContexts,
    build_context,
)
from chromanet import pdu_primitives, sop_class, status  # noqa: E402  (pynetdicom's submodules)
from chromanet.sop_class import NotImplementedName
from chromanet.utils import debug_logger

__version__ = "0.1.0"

__all__ = [
    "AE",
    "ColorPalettePresentationContexts",
    "DEFAULT_TRANSFER_SYNTAXES",
    "StoragePresentationContexts",
    "debug_logger",
    "pdu_primitives",
    "sop_class",
    "status",
    "Association",
    "AsyncAssociation",
    "PresentationContext",
    "VerificationPresentationContexts",
    "build_context",
    "build_role",
    "evt",
    "uids",
]


# pynetdicom top-level names chromanet does not implement: asking for one
# raises an error that is both NotImplementedError and AttributeError.
_NOT_IMPLEMENTED = {
    "ALL_TRANSFER_SYNTAXES": "the full transfer syntax list",
    "AllStoragePresentationContexts": "every storage context (StoragePresentationContexts holds 120)",
    "register_uid": "registering private SOP classes",
    "PYNETDICOM_IMPLEMENTATION_UID": "pynetdicom's own UID (see uids.IMPLEMENTATION_CLASS_UID)",
    "PYNETDICOM_IMPLEMENTATION_VERSION": "pynetdicom's own version name (see uids.IMPLEMENTATION_VERSION_NAME)",
    "PYNETDICOM_UID_PREFIX": "pynetdicom's UID root",
}


def __getattr__(name: str) -> Any:
    if name in _NOT_IMPLEMENTED:
        raise NotImplementedName(f"chromanet does not implement {name} ({_NOT_IMPLEMENTED[name]})")
    if name.endswith("PresentationContexts"):
        raise NotImplementedName(
            f"chromanet does not implement {name}: only the Verification, Storage and Color Palette "
            "services are implemented"
        )
    raise AttributeError(f"module 'chromanet' has no attribute {name!r}")
