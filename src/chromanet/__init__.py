"""chromanet: a fast DICOM networking (DIMSE) engine for Python.

The wire work (PDU framing and codecs, P-DATA fragmentation, DIMSE command
sets) is done by Cython modules; the association state machine, services and
API run on an asyncio event loop (uvloop when available).
"""

__version__ = "0.1.0"
