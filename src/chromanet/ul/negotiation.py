"""Association negotiation: pure functions from PDU objects to PDU objects.

Nothing here touches a socket, a loop or a clock. The requestor builds its
A-ASSOCIATE-RQ with :func:`build_associate_rq` and checks the peer's answer
with :func:`negotiate_as_requestor`; the acceptor turns a received RQ into the
A-ASSOCIATE-AC to send with :func:`negotiate_as_acceptor`, or learns from an
:class:`AssociationRejected` which A-ASSOCIATE-RJ to send instead. Both sides
end with a :class:`NegotiationResult`, which says what the *local* side may
do: which contexts, which transfer syntax and roles on each, how large a PDU
the peer takes, how many operations may be outstanding.

References: PS3.8 7.1 and 9.3 (the A-ASSOCIATE service and PDUs), PS3.7
Annex D.3 (presentation contexts, maximum length, implementation
identification, asynchronous operations window, SCP/SCU role selection,
SOP class extended and common extended negotiation, user identity).

Where the standard leaves a choice, this module behaves as pynetdicom does
unless a comment says otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from chromanet._pdu import (
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    AsyncOperationsWindow,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
)
from chromanet.errors import ABORT_REASON_INVALID_PDU_PARAMETER_VALUE, ChromanetError
from chromanet.uids import (
    APPLICATION_CONTEXT_NAME,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    validate_ae_title,
    validate_uid,
)

__all__ = [
    "ContextSpec",
    "NegotiatedContext",
    "NegotiationResult",
    "AssociationRejected",
    "NegotiationError",
    "REJECT_REASONS",
    "merge_context_specs",
    "build_associate_rq",
    "negotiate_as_requestor",
    "negotiate_as_acceptor",
]

LOGGER = logging.getLogger("chromanet.ul")

# Presentation context results (PS3.8 Table 9-18).
RESULT_ACCEPTANCE = 0
RESULT_USER_REJECTION = 1
RESULT_NO_REASON = 2
RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

# A-ASSOCIATE-RJ fields (PS3.8 Table 9-21).
RJ_PERMANENT = 1
RJ_TRANSIENT = 2
RJ_SOURCE_USER = 1
RJ_SOURCE_ACSE = 2
RJ_SOURCE_PRESENTATION = 3

#: A-ASSOCIATE-RJ (source, reason) -> what it means (PS3.8 Table 9-21).
REJECT_REASONS: dict[tuple[int, int], str] = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognized",
    (1, 7): "called AE title not recognized",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}
_RJ_SOURCES = {1: "service user", 2: "service provider (ACSE)", 3: "service provider (presentation)"}
_RJ_RESULTS = {1: "rejected permanently", 2: "rejected transiently"}

MAX_CONTEXTS = 128  # odd context IDs 1..255
# The smallest Maximum Length we accept from a peer (0 means unlimited).
MIN_PEER_MAX_PDU_LENGTH = 512
_MAX_UINT32 = 0xFFFFFFFF
_MAX_UINT16 = 0xFFFF

# A requestor's roles when no role selection says otherwise (PS3.7 D.3.3.4).
_DEFAULT_REQUESTOR_SCU = True
_DEFAULT_REQUESTOR_SCP = False

IdentityHandler = Callable[[UserIdentityRQ], tuple[bool, bytes | None]]
SOPExtendedHandler = Callable[[list[SOPClassExtendedNegotiation]], list[SOPClassExtendedNegotiation]]


# --------------------------------------------------------------------- types
@dataclass
class ContextSpec:
    """A presentation context the local side proposes (requestor) or supports
    (acceptor): one abstract syntax and the transfer syntaxes for it, in order
    of preference.

    ``scu_role`` / ``scp_role`` configure SCP/SCU role selection and, as in
    pynetdicom, always speak of the *requestor's* roles:

    - requestor: the roles we propose for ourselves. If either is set, a role
      selection item is sent for the abstract syntax; a ``None`` side takes
      its default (SCU True, SCP False).
    - acceptor: whether we grant the requestor the SCU / SCP role when it
      proposes it. Only when both are set do we answer role selection for the
      abstract syntax; otherwise the defaults apply (requestor SCU, us SCP).
    """

    abstract_syntax: str
    transfer_syntaxes: list[str]
    scu_role: bool | None = None
    scp_role: bool | None = None

    def __post_init__(self) -> None:
        # Accept any sequence (e.g. uids.DEFAULT_TRANSFER_SYNTAXES, a tuple).
        if isinstance(self.transfer_syntaxes, str):
            self.transfer_syntaxes = [self.transfer_syntaxes]
        else:
            self.transfer_syntaxes = list(self.transfer_syntaxes)


@dataclass
class NegotiatedContext:
    """The outcome of one proposed presentation context."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str | None  # None when rejected
    result: int  # 0 accepted, else the PS3.8 result/reason (1-4)
    as_scu: bool  # may the local side send requests on this context
    as_scp: bool  # may the local side serve requests on this context

    @property
    def accepted(self) -> bool:
        return self.result == RESULT_ACCEPTANCE


@dataclass
class NegotiationResult:
    """Everything the association needs to know once it is established.

    ``max_operations_invoked`` / ``max_operations_performed`` are what the
    local side may have outstanding as invoker / as performer (1 synchronous,
    0 unlimited). ``user_identity`` is, for an acceptor, the requestor's
    (accepted) identity item and, for a requestor, the server response bytes
    from the AC. ``sop_class_extended`` holds the peer's SOP class extended
    negotiation items; ``sop_class_common_extended`` the RQ's common extended
    items (they have no reply, PS3.7 D.3.3.6).
    """

    is_requestor: bool
    contexts: list[NegotiatedContext]
    calling_ae_title: str
    called_ae_title: str
    max_pdu_length: int  # ours: the largest P-DATA-TF we accept; 0 unlimited
    peer_max_pdu_length: int  # the peer's; 0 unlimited
    max_operations_invoked: int = 1
    max_operations_performed: int = 1
    peer_implementation_class_uid: str | None = None
    peer_implementation_version_name: str | None = None
    user_identity: UserIdentityRQ | bytes | None = None
    sop_class_extended: list[SOPClassExtendedNegotiation] = field(default_factory=list)
    sop_class_common_extended: list[SOPClassCommonExtendedNegotiation] = field(default_factory=list)

    @property
    def accepted_contexts(self) -> list[NegotiatedContext]:
        return [ctx for ctx in self.contexts if ctx.accepted]

    @property
    def peer_ae_title(self) -> str:
        return self.called_ae_title if self.is_requestor else self.calling_ae_title


class AssociationRejected(ChromanetError):
    """An association was refused with an A-ASSOCIATE-RJ.

    Raised by :func:`negotiate_as_acceptor` with the RJ to send, and by the
    association layer when the peer sent one. ``result``, ``source`` and
    ``reason`` are the PS3.8 Table 9-21 values; ``pdu`` builds the RJ.
    """

    def __init__(self, result: int, source: int, reason: int, detail: str | None = None) -> None:
        self.result = result
        self.source = source
        self.reason = reason
        text = (
            f"association {_RJ_RESULTS.get(result, f'rejected (result {result})')} by the "
            f"{_RJ_SOURCES.get(source, f'source {source}')}: "
            f"{REJECT_REASONS.get((source, reason), f'reason {reason}')}"
        )
        super().__init__(f"{text} ({detail})" if detail else text)

    @property
    def pdu(self) -> AssociateRJ:
        return AssociateRJ(self.result, self.source, self.reason)


class NegotiationError(ChromanetError):
    """The peer's A-ASSOCIATE PDU breaks the negotiation rules (an AC that does
    not answer our RQ, an RQ with duplicate context IDs): the association
    cannot go on and the engine aborts it with ``abort_reason``."""

    abort_reason: int = ABORT_REASON_INVALID_PDU_PARAMETER_VALUE


# ------------------------------------------------------------------- helpers
def merge_context_specs(specs: Iterable[ContextSpec]) -> list[ContextSpec]:
    """One spec per abstract syntax, in first-seen order.

    Transfer syntaxes are concatenated without duplicates (earlier specs
    first); a role set in one spec is kept; two specs that set the same role
    to different values are a configuration error (ValueError). Call this at
    configuration time to find such errors early; negotiation calls it too.
    """
    merged: dict[str, ContextSpec] = {}
    for spec in specs:
        if not spec.transfer_syntaxes:
            raise ValueError(f"context for {spec.abstract_syntax} lists no transfer syntax")
        have = merged.get(spec.abstract_syntax)
        if have is None:
            merged[spec.abstract_syntax] = ContextSpec(
                spec.abstract_syntax, list(dict.fromkeys(spec.transfer_syntaxes)), spec.scu_role, spec.scp_role
            )
            continue
        for ts in spec.transfer_syntaxes:
            if ts not in have.transfer_syntaxes:
                have.transfer_syntaxes.append(ts)
        have.scu_role = _merge_role(have.scu_role, spec.scu_role, "SCU", spec.abstract_syntax)
        have.scp_role = _merge_role(have.scp_role, spec.scp_role, "SCP", spec.abstract_syntax)
    return list(merged.values())


def _merge_role(have: bool | None, new: bool | None, name: str, uid: str) -> bool | None:
    if new is None or have == new:
        return have
    if have is None:
        return new
    raise ValueError(f"contexts for {uid} set the {name} role both to {have} and to {new}")


def _min_window(a: int, b: int) -> int:
    """The smaller of two window sizes where 0 means unlimited."""
    if a == 0:
        return b
    if b == 0:
        return a
    return min(a, b)


def _check_window(window: tuple[int, int], name: str) -> tuple[int, int]:
    invoked, performed = window
    for value in (invoked, performed):
        if not 0 <= value <= _MAX_UINT16:
            raise ValueError(f"{name} values must be 0..65535 (0 unlimited), got {window!r}")
    return invoked, performed


def _valid_title(title: str) -> bool:
    """An AE title as PS3.8 allows it: not only spaces, no control
    characters or backslash, ASCII."""
    stripped = title.strip(" ")
    return bool(stripped) and all(0x20 <= ord(c) <= 0x7E and c != "\\" for c in stripped)


def _check_max_pdu(value: int) -> int:
    if not 0 <= value <= _MAX_UINT32:
        raise ValueError(f"max_pdu_length must be 0..{_MAX_UINT32} (0 unlimited), got {value}")
    return value


def _implementation(uid: str | None, version: str | None) -> tuple[str, str]:
    uid = IMPLEMENTATION_CLASS_UID if uid is None else uid
    version = IMPLEMENTATION_VERSION_NAME if version is None else version
    if not validate_uid(uid):
        raise ValueError(f"implementation class UID {uid!r} is not a valid UID")
    if not 1 <= len(version) <= 16 or not version.isascii() or not version.isprintable():
        raise ValueError(f"implementation version name {version!r} must be 1-16 printable ASCII characters")
    return uid, version


def _role_items_by_class(items: Iterable[RoleSelection]) -> dict[str, RoleSelection]:
    # One item per SOP class is allowed; if a peer repeats one, the last
    # wins (as in pynetdicom, which keeps them in a dict).
    return {item.sop_class_uid: item for item in items}


# ----------------------------------------------------------------- requestor
def build_associate_rq(
    called_ae_title: str,
    calling_ae_title: str,
    contexts: Sequence[ContextSpec],
    *,
    max_pdu_length: int,
    implementation_class_uid: str | None = None,
    implementation_version_name: str | None = None,
    async_ops_window: tuple[int, int] | None = None,
    user_identity: UserIdentityRQ | None = None,
    sop_class_extended: Iterable[SOPClassExtendedNegotiation] = (),
    sop_class_common_extended: Iterable[SOPClassCommonExtendedNegotiation] = (),
) -> AssociateRQ:
    """Build the A-ASSOCIATE-RQ for ``contexts``, given context IDs 1, 3, 5, ...
    in order.

    A role selection item is added for every abstract syntax whose specs set
    ``scu_role`` or ``scp_role``. ``async_ops_window`` is (max invoked, max
    performed) for us as requestor; None sends no window item (synchronous).
    None for the implementation UID / version name means chromanet's own.

    Raises ValueError for more than 128 contexts, a context without
    transfer syntaxes, conflicting roles for one abstract syntax, or an
    invalid AE title, UID or length.
    """
    called = validate_ae_title(called_ae_title)
    calling = validate_ae_title(calling_ae_title)
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} presentation contexts proposed; at most {MAX_CONTEXTS} fit in one association")
    uid, version = _implementation(implementation_class_uid, implementation_version_name)

    pcs = []
    for index, spec in enumerate(contexts):
        if not spec.transfer_syntaxes:
            raise ValueError(f"context for {spec.abstract_syntax} lists no transfer syntax")
        pcs.append(PresentationContextRQ(2 * index + 1, spec.abstract_syntax, list(spec.transfer_syntaxes)))

    # merge_context_specs checks that repeated abstract syntaxes agree on roles.
    roles = [
        RoleSelection(
            spec.abstract_syntax,
            _DEFAULT_REQUESTOR_SCU if spec.scu_role is None else spec.scu_role,
            _DEFAULT_REQUESTOR_SCP if spec.scp_role is None else spec.scp_role,
        )
        for spec in merge_context_specs(contexts)
        if spec.scu_role is not None or spec.scp_role is not None
    ]
    window = None
    if async_ops_window is not None:
        window = AsyncOperationsWindow(*_check_window(async_ops_window, "async_ops_window"))

    info = UserInformation(
        max_length=_check_max_pdu(max_pdu_length),
        implementation_class_uid=uid,
        implementation_version_name=version,
        async_ops_window=window,
        role_selections=roles,
        sop_class_extended=list(sop_class_extended),
        sop_class_common_extended=list(sop_class_common_extended),
        user_identity_rq=user_identity,
        user_identity_ac=None,
        unknown_items=[],
    )
    return AssociateRQ(
        called,
        calling,
        presentation_contexts=pcs,
        user_information=info,
        application_context_name=APPLICATION_CONTEXT_NAME,
        protocol_version=1,
    )


def negotiate_as_requestor(rq: AssociateRQ, ac: AssociateAC) -> NegotiationResult:
    """What the acceptor's A-ASSOCIATE-AC grants us for our ``rq``.

    Contexts are matched by ID; a context the AC leaves out counts as
    rejected with result 2 (no reason). Roles follow PS3.7 D.3.3.4: a role is
    granted when we proposed it and the AC answered 1 for it; with no answer
    for the class, we are SCU only. The AC's window is capped at what we
    proposed (the acceptor may only lower it).

    Raises NegotiationError when the AC answers a context ID we did not
    propose (or one twice), accepts a context with a transfer syntax we did
    not propose, or uses an unknown result value.
    """
    proposed = {pc.context_id: pc for pc in rq.presentation_contexts}
    answers: dict[int, PresentationContextAC] = {}
    for pc in ac.presentation_contexts:
        if pc.context_id not in proposed:
            raise NegotiationError(f"A-ASSOCIATE-AC answers presentation context {pc.context_id}, which was not proposed")
        if pc.context_id in answers:
            raise NegotiationError(f"A-ASSOCIATE-AC answers presentation context {pc.context_id} twice")
        if not RESULT_ACCEPTANCE <= pc.result <= RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED:
            raise NegotiationError(f"A-ASSOCIATE-AC gives presentation context {pc.context_id} unknown result {pc.result}")
        if pc.result == RESULT_ACCEPTANCE and pc.transfer_syntax not in proposed[pc.context_id].transfer_syntaxes:
            raise NegotiationError(
                f"A-ASSOCIATE-AC accepts presentation context {pc.context_id} with transfer syntax "
                f"{pc.transfer_syntax!r}, which was not proposed for it"
            )
        answers[pc.context_id] = pc

    rq_info = rq.user_information
    ac_info = ac.user_information
    our_roles = _role_items_by_class(rq_info.role_selections)
    their_roles = _role_items_by_class(ac_info.role_selections)

    contexts = []
    for context_id, pc in proposed.items():
        answer = answers.get(context_id)
        if answer is None:
            LOGGER.debug("A-ASSOCIATE-AC does not answer context %d; taken as rejected", context_id)
            contexts.append(NegotiatedContext(context_id, pc.abstract_syntax, None, RESULT_NO_REASON, False, False))
            continue
        if answer.result != RESULT_ACCEPTANCE:
            contexts.append(NegotiatedContext(context_id, pc.abstract_syntax, None, answer.result, False, False))
            continue
        ours = our_roles.get(pc.abstract_syntax)
        theirs = their_roles.get(pc.abstract_syntax)
        if ours is None or theirs is None:
            # Nothing proposed, or no answer: the defaults (D.3.3.4). An
            # answer to a proposal we did not make is ignored.
            as_scu, as_scp = _DEFAULT_REQUESTOR_SCU, _DEFAULT_REQUESTOR_SCP
        else:
            as_scu = bool(ours.scu_role and theirs.scu_role)
            as_scp = bool(ours.scp_role and theirs.scp_role)
        contexts.append(
            NegotiatedContext(context_id, pc.abstract_syntax, answer.transfer_syntax, RESULT_ACCEPTANCE, as_scu, as_scp)
        )

    proposed_window = rq_info.async_ops_window
    asked = (
        (proposed_window.max_operations_invoked, proposed_window.max_operations_performed)
        if proposed_window is not None
        else (1, 1)
    )
    granted = ac_info.async_ops_window
    if granted is None:
        invoked, performed = 1, 1
    else:
        # The AC's numbers are what the requestor may invoke / perform.
        invoked = _min_window(granted.max_operations_invoked, asked[0])
        performed = _min_window(granted.max_operations_performed, asked[1])

    identity = ac_info.user_identity_ac
    return NegotiationResult(
        is_requestor=True,
        contexts=contexts,
        calling_ae_title=rq.calling_ae_title,
        called_ae_title=rq.called_ae_title,
        max_pdu_length=rq_info.max_length or 0,
        peer_max_pdu_length=ac_info.max_length or 0,
        max_operations_invoked=invoked,
        max_operations_performed=performed,
        peer_implementation_class_uid=ac_info.implementation_class_uid,
        peer_implementation_version_name=ac_info.implementation_version_name,
        user_identity=identity.server_response if identity is not None else None,
        sop_class_extended=list(ac_info.sop_class_extended),
        sop_class_common_extended=list(rq_info.sop_class_common_extended),
    )


# ------------------------------------------------------------------ acceptor
def negotiate_as_acceptor(
    rq: AssociateRQ,
    supported: Sequence[ContextSpec],
    *,
    ae_title: str,
    max_pdu_length: int,
    require_called_aet: bool = False,
    require_calling_aet: Sequence[str] = (),
    implementation_class_uid: str | None = None,
    implementation_version_name: str | None = None,
    async_ops_window: tuple[int, int] = (1, 1),
    identity_handler: IdentityHandler | None = None,
    sop_extended_handler: SOPExtendedHandler | None = None,
    transfer_syntax_order: Literal["requestor", "acceptor"] = "requestor",
) -> tuple[AssociateAC, NegotiationResult]:
    """Answer a received A-ASSOCIATE-RQ: the AC to send and what it grants.

    Raises AssociationRejected, in this order of checks, when:
    the protocol version lacks bit 0 (1, 2, 2); the application context is
    not DICOM's (1, 1, 2); ``require_called_aet`` and the called AE title is
    not ``ae_title`` (1, 1, 7); ``require_calling_aet`` is non-empty and the
    calling AE title is not in it (1, 1, 3); ``identity_handler`` refuses the
    user identity or raises (1, 1, 1).

    Each context: abstract syntax not supported -> result 3; no common
    transfer syntax -> 4; roles leaving us neither SCU nor SCP -> 1 (user
    rejection, as pynetdicom); else accepted with the first transfer syntax,
    in the requestor's order of proposal (``transfer_syntax_order=
    "requestor"``) or in the order of our supported list ("acceptor",
    pynetdicom's rule), that both sides have.

    ``async_ops_window`` is (max invoked, max performed) for us, the local
    side; the requestor's proposal is lowered to fit it (0 = unlimited).
    ``identity_handler(item) -> (accepted, response)``; without a handler
    every identity is accepted and no response is sent.
    ``sop_extended_handler(items) -> replies`` for the RQ's SOP class
    extended negotiation items; replies for classes that were not in the RQ
    are dropped (PS3.7 D.3.3.5). Exceptions from either handler are logged;
    the identity handler's reject the association, the extended handler's
    leave the reply empty.

    Raises NegotiationError for an RQ that reuses a context ID or proposes
    none, and ValueError for invalid local settings.
    """
    if transfer_syntax_order not in ("requestor", "acceptor"):
        raise ValueError(f"transfer_syntax_order must be 'requestor' or 'acceptor', not {transfer_syntax_order!r}")
    uid, version = _implementation(implementation_class_uid, implementation_version_name)
    local_invoked, local_performed = _check_window(async_ops_window, "async_ops_window")
    _check_max_pdu(max_pdu_length)
    specs = {spec.abstract_syntax: spec for spec in merge_context_specs(supported)}
    rq_info = rq.user_information

    # --- association-level checks (A-ASSOCIATE-RJ)
    if not rq.protocol_version & 1:
        raise AssociationRejected(
            RJ_PERMANENT, RJ_SOURCE_ACSE, 2, f"protocol version 0x{rq.protocol_version:04X} lacks bit 0"
        )
    if rq.application_context_name.rstrip("\x00 ") != APPLICATION_CONTEXT_NAME:
        raise AssociationRejected(RJ_PERMANENT, RJ_SOURCE_USER, 2, repr(rq.application_context_name))
    called = rq.called_ae_title.strip(" ")
    calling = rq.calling_ae_title.strip(" ")
    # PS3.8 9.3.2: titles of the AE repertoire; an empty or control-character
    # title can name no AE ("not recognized").
    if not _valid_title(rq.called_ae_title):
        raise AssociationRejected(RJ_PERMANENT, RJ_SOURCE_USER, 7, f"invalid called AE title {rq.called_ae_title!r}")
    if not _valid_title(rq.calling_ae_title):
        raise AssociationRejected(RJ_PERMANENT, RJ_SOURCE_USER, 3, f"invalid calling AE title {rq.calling_ae_title!r}")
    peer_max = rq_info.max_length or 0
    if 0 < peer_max < MIN_PEER_MAX_PDU_LENGTH:
        # Too small to carry a DIMSE message in any sensible number of
        # PDUs: refused rather than sent a few bytes per PDU.
        raise AssociationRejected(
            RJ_PERMANENT, RJ_SOURCE_USER, 1, f"maximum PDU length {peer_max} is below {MIN_PEER_MAX_PDU_LENGTH}"
        )
    if require_called_aet and called != ae_title.strip(" "):
        raise AssociationRejected(RJ_PERMANENT, RJ_SOURCE_USER, 7, f"called {called!r}, we are {ae_title.strip()!r}")
    if require_calling_aet and calling not in {title.strip(" ") for title in require_calling_aet}:
        raise AssociationRejected(RJ_PERMANENT, RJ_SOURCE_USER, 3, f"calling {calling!r}")

    identity_reply: UserIdentityAC | None = None
    identity_rq = rq_info.user_identity_rq
    if identity_rq is not None and identity_handler is not None:
        try:
            ok, response = identity_handler(identity_rq)
        except Exception:
            LOGGER.exception("user identity handler raised; rejecting the association")
            ok, response = False, None
        if not ok:
            raise AssociationRejected(RJ_PERMANENT, RJ_SOURCE_USER, 1, "user identity refused")
        if identity_rq.positive_response_requested and response is not None:
            # PS3.7 D.3.3.7.2: the server response is empty for identity
            # types 1 (username) and 2 (username and passcode).
            identity_reply = UserIdentityAC(b"" if identity_rq.identity_type in (1, 2) else bytes(response))

    # --- presentation contexts and roles
    if not rq.presentation_contexts:
        raise NegotiationError("A-ASSOCIATE-RQ proposes no presentation context")
    if len(rq.presentation_contexts) > MAX_CONTEXTS:
        raise NegotiationError(
            f"A-ASSOCIATE-RQ proposes {len(rq.presentation_contexts)} presentation contexts, more than {MAX_CONTEXTS}"
        )
    seen: set[int] = set()
    for pc in rq.presentation_contexts:
        if pc.context_id in seen:
            raise NegotiationError(f"A-ASSOCIATE-RQ proposes presentation context {pc.context_id} twice")
        seen.add(pc.context_id)

    proposed_roles = _role_items_by_class(rq_info.role_selections)
    role_replies: dict[str, RoleSelection] = {}
    answers: list[PresentationContextAC] = []
    contexts: list[NegotiatedContext] = []
    for pc in sorted(rq.presentation_contexts, key=lambda item: item.context_id):
        spec = specs.get(pc.abstract_syntax)
        first_proposed = pc.transfer_syntaxes[0] if pc.transfer_syntaxes else ""
        if spec is None:
            result, chosen = RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED, None
        else:
            chosen = _choose_transfer_syntax(pc.transfer_syntaxes, spec.transfer_syntaxes, transfer_syntax_order)
            result = RESULT_ACCEPTANCE if chosen is not None else RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED
        as_scu = as_scp = False
        reply = None
        if spec is not None and chosen is not None:
            proposal = proposed_roles.get(pc.abstract_syntax)
            if proposal is None or spec.scu_role is None or spec.scp_role is None:
                as_scu, as_scp = False, True  # defaults: requestor SCU, us SCP
            else:
                # D.3.3.4: we may only answer 1 where the requestor proposed 1.
                reply = RoleSelection(
                    pc.abstract_syntax,
                    bool(proposal.scu_role and spec.scu_role),
                    bool(proposal.scp_role and spec.scp_role),
                )
                # The requestor as SCU means us as SCP, and the other way round.
                as_scp, as_scu = reply.scu_role, reply.scp_role
            if not (as_scu or as_scp):
                result, chosen, reply = RESULT_USER_REJECTION, None, None
        if reply is not None:
            role_replies[pc.abstract_syntax] = reply
        answers.append(PresentationContextAC(pc.context_id, result, chosen if chosen is not None else first_proposed))
        contexts.append(NegotiatedContext(pc.context_id, pc.abstract_syntax, chosen, result, as_scu, as_scp))

    # --- asynchronous operations window (D.3.3.3)
    window_reply = None
    invoked, performed = 1, 1
    asked = rq_info.async_ops_window
    if asked is not None:
        # The AC's numbers are what the *requestor* may invoke / perform: it
        # may invoke as many as we can perform, and perform as many as we
        # invoke.
        requestor_invoked = _min_window(asked.max_operations_invoked, local_performed)
        requestor_performed = _min_window(asked.max_operations_performed, local_invoked)
        window_reply = AsyncOperationsWindow(requestor_invoked, requestor_performed)
        invoked, performed = requestor_performed, requestor_invoked

    # --- SOP class extended negotiation (D.3.3.5)
    extended_replies: list[SOPClassExtendedNegotiation] = []
    asked_extended = list(rq_info.sop_class_extended)
    if asked_extended and sop_extended_handler is not None:
        try:
            replies = list(sop_extended_handler(asked_extended) or ())
        except Exception:
            LOGGER.exception("SOP class extended negotiation handler raised; sending no replies")
            replies = []
        allowed = {item.sop_class_uid for item in asked_extended}
        answered: set[str] = set()
        for item in replies:
            if item.sop_class_uid not in allowed or item.sop_class_uid in answered:
                LOGGER.warning("dropping SOP class extended reply for %s (not asked, or repeated)", item.sop_class_uid)
                continue
            answered.add(item.sop_class_uid)
            extended_replies.append(item)

    ac = AssociateAC(
        rq.called_ae_title,
        rq.calling_ae_title,
        presentation_contexts=answers,
        user_information=UserInformation(
            max_length=max_pdu_length,
            implementation_class_uid=uid,
            implementation_version_name=version,
            async_ops_window=window_reply,
            role_selections=sorted(role_replies.values(), key=lambda item: item.sop_class_uid),
            sop_class_extended=extended_replies,
            sop_class_common_extended=[],
            user_identity_rq=None,
            user_identity_ac=identity_reply,
            unknown_items=[],
        ),
        application_context_name=APPLICATION_CONTEXT_NAME,
        protocol_version=1,
    )
    result = NegotiationResult(
        is_requestor=False,
        contexts=contexts,
        calling_ae_title=calling,
        called_ae_title=called,
        max_pdu_length=max_pdu_length,
        peer_max_pdu_length=rq_info.max_length or 0,
        max_operations_invoked=invoked,
        max_operations_performed=performed,
        peer_implementation_class_uid=rq_info.implementation_class_uid,
        peer_implementation_version_name=rq_info.implementation_version_name,
        user_identity=identity_rq,
        sop_class_extended=asked_extended,
        sop_class_common_extended=list(rq_info.sop_class_common_extended),
    )
    return ac, result


def _choose_transfer_syntax(
    proposed: Sequence[str], supported: Sequence[str], order: Literal["requestor", "acceptor"]
) -> str | None:
    if order == "requestor":
        have = set(supported)
        return next((ts for ts in proposed if ts in have), None)
    offered = set(proposed)
    return next((ts for ts in supported if ts in offered), None)
