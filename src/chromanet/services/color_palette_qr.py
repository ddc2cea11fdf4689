"""The Color Palette Query/Retrieve Service Class (PS3.4 Annex X).

Its three information models (FIND, GET, MOVE) retrieve Color Palette
Storage instances; the operations themselves are the Query/Retrieve
operations of ``query_retrieve`` (PS3.4 Annex C, which Annex X refers to),
with the same statuses. A next Q/R service class (Patient/Study Root,
Worklist…) is a module like this one, declaring its SOP classes.
"""

from __future__ import annotations

from chromanet import _dimse, uids
from chromanet.services import query_retrieve
from chromanet.services.base import ServiceClass

#: The information models of Annex X: C-FIND, C-GET and C-MOVE.
INFORMATION_MODELS = (
    uids.ColorPaletteInformationModelFind,
    uids.ColorPaletteInformationModelGet,
    uids.ColorPaletteInformationModelMove,
)

SERVICE_CLASS = ServiceClass(
    name="Color Palette Query/Retrieve",
    sop_classes=INFORMATION_MODELS,
    scp={
        _dimse.C_FIND_RQ: query_retrieve.serve_find,
        _dimse.C_GET_RQ: query_retrieve.serve_get,
        _dimse.C_MOVE_RQ: query_retrieve.serve_move,
    },
)
