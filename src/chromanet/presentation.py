"""Presentation contexts as the API shows them (pynetdicom's names)."""

from __future__ import annotations

from dataclasses import dataclass, field

from chromanet import uids
from chromanet.ul.negotiation import ContextSpec, NegotiatedContext

DEFAULT_TRANSFER_SYNTAXES: list[str] = list(uids.DEFAULT_TRANSFER_SYNTAXES)


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
    return PresentationContext(str(abstract_syntax), [str(s) for s in syntaxes])


VerificationPresentationContexts = [build_context(uids.Verification)]
