"""Presentation contexts as the API shows them (pynetdicom's names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from pydicom.uid import UID

from chromanet import _pdu, uids
from chromanet.ul.negotiation import ContextSpec, NegotiatedContext

DEFAULT_TRANSFER_SYNTAXES: list[str] = list(uids.DEFAULT_TRANSFER_SYNTAXES)


class PresentationContextTuple(NamedTuple):
    """An accepted context as handlers see it (``event.context``), as in
    pynetdicom: the one transfer syntax agreed, as a UID (not a list)."""

    context_id: int
    abstract_syntax: UID
    transfer_syntax: UID


@dataclass
class PresentationContext:
    """A requested, supported or negotiated presentation context.

    Before negotiation ``transfer_syntax`` is the list offered or supported;
    after it, ``accepted_contexts`` hold the one agreed in a one-item list,
    with ``result`` 0 and the local roles in ``as_scu``/``as_scp``.
    """

    abstract_syntax: str
    transfer_syntax: list[str] = field(default_factory=lambda: list(DEFAULT_TRANSFER_SYNTAXES))
    context_id: int | None = None
    result: int | None = None
    scu_role: bool | None = None
    scp_role: bool | None = None
    as_scu: bool | None = None
    as_scp: bool | None = None

    def add_transfer_syntax(self, syntax: str) -> None:
        if syntax not in self.transfer_syntax:
            self.transfer_syntax.append(syntax)

    @property
    def as_tuple(self) -> tuple[int | None, str, str | None]:
        return (self.context_id, self.abstract_syntax, self.transfer_syntax[0] if self.transfer_syntax else None)

    def to_spec(self) -> ContextSpec:
        return ContextSpec(self.abstract_syntax, list(self.transfer_syntax), self.scu_role, self.scp_role)

    @classmethod
    def from_negotiated(cls, ctx: NegotiatedContext) -> PresentationContext:
        return cls(
            abstract_syntax=ctx.abstract_syntax,
            transfer_syntax=[ctx.transfer_syntax] if ctx.transfer_syntax else [],
            context_id=ctx.context_id,
            result=ctx.result,
            as_scu=ctx.as_scu,
            as_scp=ctx.as_scp,
        )


def build_context(abstract_syntax: str, transfer_syntax: str | list[str] | None = None) -> PresentationContext:
    if transfer_syntax is None:
        syntaxes = list(DEFAULT_TRANSFER_SYNTAXES)
    elif isinstance(transfer_syntax, str):
        syntaxes = [transfer_syntax]
    else:
        syntaxes = list(transfer_syntax)
    if not uids.validate_uid(str(abstract_syntax)):
        raise ValueError(f"invalid abstract syntax UID {abstract_syntax!r}")
    # A transfer syntax given twice is offered once (as pynetdicom does).
    return PresentationContext(str(abstract_syntax), list(dict.fromkeys(str(s) for s in syntaxes)))


VerificationPresentationContexts = [build_context(uids.Verification)]


def build_role(sop_class_uid: str, scu_role: bool = False, scp_role: bool = False) -> _pdu.RoleSelection:
    """An SCP/SCU Role Selection item for ``ext_neg`` (pynetdicom's
    ``build_role``, which ``chromanet.ae`` re-exports as pynetdicom does)."""
    return _pdu.RoleSelection(str(sop_class_uid), bool(scu_role), bool(scp_role))


def _contexts(abstract_syntaxes: list[str]) -> list[PresentationContext]:
    return [build_context(uid) for uid in abstract_syntaxes]


# The Color Palette Q/R information models, FIND, MOVE and GET (as in
# pynetdicom, the Storage SOP class is not part of this list).
ColorPalettePresentationContexts = _contexts(
    [
        uids.ColorPaletteInformationModelFind,
        uids.ColorPaletteInformationModelMove,
        uids.ColorPaletteInformationModelGet,
    ]
)


def _storage_contexts() -> list[PresentationContext]:
    # Imported here: sop_class reads pydicom's UID dictionary, which the
    # engine layers below do not need.
    from chromanet.sop_class import select_storage_classes

    return _contexts(select_storage_classes())


#: At most 120 storage contexts (see chromanet.sop_class.select_storage_classes
#: for the choice), leaving 8 of a request's 128 for other services.
StoragePresentationContexts = _storage_contexts()
