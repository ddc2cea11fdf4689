"""chromanet: a fast DICOM networking (DIMSE) engine for Python.

The wire work (PDU framing and codecs, P-DATA fragmentation, DIMSE command
sets) is done by Cython modules; the association state machine, services and
API run on an asyncio event loop (uvloop when available).

The public names follow pynetdicom's, so that ``from chromanet import AE,
evt`` can replace ``from pynetdicom import AE, evt``; every blocking method
has a coroutine twin for asyncio programs (``associate_async``,
``start_server_async``).
"""

from chromanet import evt, uids
from chromanet.ae import AE, Association, build_role
from chromanet.association import AsyncAssociation
from chromanet.presentation import PresentationContext, VerificationPresentationContexts, build_context

__version__ = "0.1.0"

__all__ = [
    "AE",
    "Association",
    "AsyncAssociation",
    "PresentationContext",
    "VerificationPresentationContexts",
    "build_context",
    "build_role",
    "evt",
    "uids",
]
