"""Association negotiation (chromanet.ul.negotiation) and UID helpers (chromanet.uids).

Expected values are written out from PS3.7 D.3 / PS3.8 9.3, not computed by
the code under test. The last section checks acceptor choices against
pynetdicom's own ``negotiate_as_acceptor`` (pynetdicom is a test dependency).
"""

from __future__ import annotations

import pytest

from chromanet import _pdu, uids
from chromanet._pdu import (
    AssociateAC,
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
from chromanet.ul.negotiation import (
    AssociationRejected,
    ContextSpec,
    NegotiatedContext,
    NegotiationError,
    build_associate_rq,
    merge_context_specs,
    negotiate_as_acceptor,
    negotiate_as_requestor,
)

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG = "1.2.840.10008.1.2.2"
JPEG = "1.2.840.10008.1.2.4.50"
ECHO = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
FIND = "1.2.840.10008.5.1.4.1.2.1.1"
DICOM_CONTEXT = "1.2.840.10008.3.1.1.1"


def info(**kw) -> UserInformation:
    values = dict(
        max_length=32768,
        implementation_class_uid="1.2.826.0.1.3680043.9.3811.3.0.4",
        implementation_version_name="PEER_1",
        async_ops_window=None,
        role_selections=[],
        sop_class_extended=[],
        sop_class_common_extended=[],
        user_identity_rq=None,
        user_identity_ac=None,
        unknown_items=[],
    )
    values.update(kw)
    return UserInformation(**values)


def make_rq(contexts, *, called="STORESCP", calling="STORESCU", app=DICOM_CONTEXT, version=1, **kw) -> AssociateRQ:
    pcs = [PresentationContextRQ(cid, abstract, list(tss)) for cid, abstract, tss in contexts]
    return AssociateRQ(
        called,
        calling,
        presentation_contexts=pcs,
        user_information=info(**kw),
        application_context_name=app,
        protocol_version=version,
    )


def accept(rq, supported, **kw):
    kw.setdefault("ae_title", "STORESCP")
    kw.setdefault("max_pdu_length", 16384)
    return negotiate_as_acceptor(rq, supported, **kw)


# ======================================================================= uids
def test_uid_constants():
    assert uids.APPLICATION_CONTEXT_NAME == DICOM_CONTEXT == _pdu.APPLICATION_CONTEXT_NAME
    assert (uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian) == (IMPLICIT, EXPLICIT)
    assert (uids.DeflatedExplicitVRLittleEndian, uids.ExplicitVRBigEndian) == (DEFLATED, BIG)
    assert uids.Verification == ECHO
    assert uids.ColorPaletteStorage == "1.2.840.10008.5.1.4.39.1"
    assert uids.ColorPaletteInformationModelFind == "1.2.840.10008.5.1.4.39.2"
    assert uids.ColorPaletteInformationModelMove == "1.2.840.10008.5.1.4.39.3"
    assert uids.ColorPaletteInformationModelGet == "1.2.840.10008.5.1.4.39.4"


def test_default_transfer_syntaxes_match_pynetdicom():
    from pynetdicom._globals import DEFAULT_TRANSFER_SYNTAXES

    assert list(uids.DEFAULT_TRANSFER_SYNTAXES) == [IMPLICIT, EXPLICIT, DEFLATED, BIG]
    assert list(uids.DEFAULT_TRANSFER_SYNTAXES) == list(DEFAULT_TRANSFER_SYNTAXES)


def test_implementation_identification():
    assert uids.IMPLEMENTATION_CLASS_UID.startswith("2.25.")
    assert uids.validate_uid(uids.IMPLEMENTATION_CLASS_UID)
    assert len(uids.IMPLEMENTATION_CLASS_UID) <= 64
    assert uids.IMPLEMENTATION_VERSION_NAME == "CHROMANET_010"
    assert 1 <= len(uids.IMPLEMENTATION_VERSION_NAME) <= 16


@pytest.mark.parametrize(
    "uid, valid",
    [
        ("1.2.840.10008.1.1", True),
        ("0", True),
        ("1.0.2", True),
        ("2.25.0", True),
        ("1" * 64, True),
        ("1." + "2" * 62, True),  # 64 characters
        ("1." + "2" * 63, False),  # 65 characters
        ("", False),
        ("1..2", False),
        (".1.2", False),
        ("1.2.", False),
        ("1.02", False),
        ("00", False),
        ("1.2a", False),
        ("1.2 ", False),
        ("1.2\x00", False),
        ("1.-2", False),
        ("1.\u0663", False),  # ARABIC-INDIC DIGIT THREE: a digit, but not 0-9
        (b"1.2", False),
        (None, False),
        (12, False),
    ],
)
def test_validate_uid(uid, valid):
    assert uids.validate_uid(uid) is valid


@pytest.mark.parametrize(
    "title, stripped",
    [
        ("ANY-SCP", "ANY-SCP"),
        ("  PADDED  ", "PADDED"),
        ("MY AE", "MY AE"),
        ("A" * 16, "A" * 16),
        ("A" * 16 + "    ", "A" * 16),
        ("~!@#$%^&*()_+{}", "~!@#$%^&*()_+{}"),
    ],
)
def test_validate_ae_title_valid(title, stripped):
    assert uids.validate_ae_title(title) == stripped


@pytest.mark.parametrize(
    "title",
    ["", " " * 16, "A" * 17, "BAD\\AE", "TAB\tAE", "NUL\x00", "NEWLINE\n", "DEL\x7f", "CAF\u00c9"],
)
def test_validate_ae_title_invalid(title):
    with pytest.raises(ValueError):
        uids.validate_ae_title(title)


def test_validate_ae_title_type():
    with pytest.raises(TypeError):
        uids.validate_ae_title(b"AE")


# ============================================================= acceptor: contexts
def test_accept_uses_requestor_order_by_default():
    rq = make_rq([(1, CT, [EXPLICIT, IMPLICIT])])
    ac, result = accept(rq, [ContextSpec(CT, [IMPLICIT, EXPLICIT])])
    assert result.contexts == [NegotiatedContext(1, CT, EXPLICIT, 0, False, True)]
    assert [(pc.context_id, pc.result, pc.transfer_syntax) for pc in ac.presentation_contexts] == [(1, 0, EXPLICIT)]


def test_accept_can_use_acceptor_order():
    rq = make_rq([(1, CT, [EXPLICIT, IMPLICIT])])
    ac, result = accept(rq, [ContextSpec(CT, [IMPLICIT, EXPLICIT])], transfer_syntax_order="acceptor")
    assert result.contexts[0].transfer_syntax == IMPLICIT
    assert ac.presentation_contexts[0].transfer_syntax == IMPLICIT


def test_accept_skips_unsupported_transfer_syntaxes():
    rq = make_rq([(1, CT, [JPEG, BIG, IMPLICIT, EXPLICIT])])
    _, result = accept(rq, [ContextSpec(CT, [EXPLICIT, IMPLICIT])])
    assert result.contexts[0].transfer_syntax == IMPLICIT


def test_abstract_syntax_not_supported_is_result_3():
    rq = make_rq([(1, MR, [JPEG, IMPLICIT])])
    ac, result = accept(rq, [ContextSpec(CT, [IMPLICIT])])
    assert result.contexts == [NegotiatedContext(1, MR, None, 3, False, False)]
    assert not result.contexts[0].accepted
    assert ac.presentation_contexts[0].result == 3
    # The transfer syntax sub-item is not significant; we echo the first proposed.
    assert ac.presentation_contexts[0].transfer_syntax == JPEG


def test_no_common_transfer_syntax_is_result_4():
    rq = make_rq([(1, CT, [JPEG, BIG])])
    ac, result = accept(rq, [ContextSpec(CT, [IMPLICIT, EXPLICIT])])
    assert result.contexts == [NegotiatedContext(1, CT, None, 4, False, False)]
    assert ac.presentation_contexts[0].result == 4


def test_nothing_supported_rejects_every_context():
    rq = make_rq([(1, CT, [IMPLICIT]), (3, ECHO, [IMPLICIT])])
    _, result = accept(rq, [])
    assert [ctx.result for ctx in result.contexts] == [3, 3]


def test_many_contexts_sorted_by_id():
    rq = make_rq([(5, ECHO, [IMPLICIT]), (1, CT, [JPEG]), (3, MR, [EXPLICIT]), (7, CT, [EXPLICIT])])
    ac, result = accept(rq, [ContextSpec(ECHO, [IMPLICIT]), ContextSpec(CT, [IMPLICIT, EXPLICIT])])
    assert [(c.context_id, c.result, c.transfer_syntax) for c in result.contexts] == [
        (1, 4, None),
        (3, 3, None),
        (5, 0, IMPLICIT),
        (7, 0, EXPLICIT),
    ]
    assert [pc.context_id for pc in ac.presentation_contexts] == [1, 3, 5, 7]
    assert [c.context_id for c in result.accepted_contexts] == [5, 7]


def test_supported_specs_for_one_abstract_syntax_are_merged():
    rq = make_rq([(1, CT, [EXPLICIT]), (3, CT, [DEFLATED, IMPLICIT])])
    supported = [ContextSpec(CT, [IMPLICIT]), ContextSpec(CT, [EXPLICIT, IMPLICIT])]
    _, result = accept(rq, supported)
    assert [(c.result, c.transfer_syntax) for c in result.contexts] == [(0, EXPLICIT), (0, IMPLICIT)]


def test_merge_context_specs():
    merged = merge_context_specs(
        [
            ContextSpec(CT, [IMPLICIT, EXPLICIT]),
            ContextSpec(ECHO, (IMPLICIT,)),
            ContextSpec(CT, [JPEG, IMPLICIT], scu_role=True),
            ContextSpec(CT, [EXPLICIT], scp_role=False, scu_role=True),
        ]
    )
    assert merged == [ContextSpec(CT, [IMPLICIT, EXPLICIT, JPEG], True, False), ContextSpec(ECHO, [IMPLICIT])]
    with pytest.raises(ValueError, match="SCP role"):
        merge_context_specs([ContextSpec(CT, [IMPLICIT], scp_role=True), ContextSpec(CT, [IMPLICIT], scp_role=False)])
    with pytest.raises(ValueError, match="no transfer syntax"):
        merge_context_specs([ContextSpec(CT, [])])


def test_rq_with_duplicate_context_ids_is_an_error():
    rq = make_rq([(1, CT, [IMPLICIT]), (1, ECHO, [IMPLICIT])])
    with pytest.raises(NegotiationError, match="twice"):
        accept(rq, [ContextSpec(CT, [IMPLICIT])])


# ========================================================= acceptor: rejections
@pytest.mark.parametrize(
    "rq_kw, accept_kw, expected",
    [
        ({"app": "1.2.3.4"}, {}, (1, 1, 2)),
        ({"called": "OTHER"}, {"require_called_aet": True}, (1, 1, 7)),
        ({"calling": "STRANGER"}, {"require_calling_aet": ["STORESCU", "FRIEND"]}, (1, 1, 3)),
        ({"version": 2}, {}, (1, 2, 2)),
        # Both AE titles wrong: the called AE title is reported (as pynetdicom).
        ({"called": "OTHER", "calling": "STRANGER"}, {"require_called_aet": True, "require_calling_aet": ["X"]}, (1, 1, 7)),
        # A wrong application context is found before the AE titles.
        ({"app": "1.2.3.4", "called": "OTHER"}, {"require_called_aet": True}, (1, 1, 2)),
    ],
)
def test_association_rejections(rq_kw, accept_kw, expected):
    rq = make_rq([(1, ECHO, [IMPLICIT])], **rq_kw)
    with pytest.raises(AssociationRejected) as info_:
        accept(rq, [ContextSpec(ECHO, [IMPLICIT])], **accept_kw)
    exc = info_.value
    assert (exc.result, exc.source, exc.reason) == expected
    rj = exc.pdu
    assert (rj.result, rj.source, rj.reason) == expected


def test_ae_titles_not_checked_unless_required():
    rq = make_rq([(1, ECHO, [IMPLICIT])], called="OTHER", calling="ANYONE")
    _, result = accept(rq, [ContextSpec(ECHO, [IMPLICIT])])
    assert result.contexts[0].accepted
    assert (result.called_ae_title, result.calling_ae_title, result.peer_ae_title) == ("OTHER", "ANYONE", "ANYONE")


def test_ae_title_checks_ignore_padding():
    rq = make_rq([(1, ECHO, [IMPLICIT])], called="STORESCP", calling="STORESCU")
    _, result = accept(
        rq, [ContextSpec(ECHO, [IMPLICIT])], ae_title="STORESCP  ", require_called_aet=True, require_calling_aet=[" STORESCU "]
    )
    assert result.contexts[0].accepted


def test_ac_fields():
    rq = make_rq([(1, ECHO, [IMPLICIT])], called="STORESCP", calling="ME", max_length=0)
    ac, result = accept(rq, [ContextSpec(ECHO, [IMPLICIT])], max_pdu_length=65536)
    assert (ac.called_ae_title, ac.calling_ae_title) == ("STORESCP", "ME")
    assert ac.application_context_name == DICOM_CONTEXT
    assert ac.user_information.max_length == 65536
    assert ac.user_information.implementation_class_uid == uids.IMPLEMENTATION_CLASS_UID
    assert ac.user_information.implementation_version_name == uids.IMPLEMENTATION_VERSION_NAME
    assert ac.user_information.role_selections == []
    assert ac.user_information.async_ops_window is None
    assert ac.user_information.user_identity_ac is None
    assert result.peer_max_pdu_length == 0
    assert result.max_pdu_length == 65536
    assert result.peer_implementation_class_uid == "1.2.826.0.1.3680043.9.3811.3.0.4"
    assert result.peer_implementation_version_name == "PEER_1"
    assert result.is_requestor is False
    # The AC can be encoded and decoded back unchanged.
    assert _pdu.decode_pdu_bytes(_pdu.encode_pdu(ac)) == ac


def test_ac_carries_custom_implementation():
    rq = make_rq([(1, ECHO, [IMPLICIT])], max_length=None)
    ac, result = accept(rq, [ContextSpec(ECHO, [IMPLICIT])], implementation_class_uid="1.2.3.4", implementation_version_name="X")
    assert ac.user_information.implementation_class_uid == "1.2.3.4"
    assert ac.user_information.implementation_version_name == "X"
    assert result.peer_max_pdu_length == 0  # no maximum length item: unlimited


def test_invalid_local_settings():
    rq = make_rq([(1, ECHO, [IMPLICIT])])
    with pytest.raises(ValueError):
        accept(rq, [ContextSpec(ECHO, [IMPLICIT])], implementation_class_uid="1.02")
    with pytest.raises(ValueError):
        accept(rq, [ContextSpec(ECHO, [IMPLICIT])], implementation_version_name="X" * 17)
    with pytest.raises(ValueError):
        accept(rq, [ContextSpec(ECHO, [IMPLICIT])], max_pdu_length=-1)
    with pytest.raises(ValueError):
        accept(rq, [ContextSpec(ECHO, [IMPLICIT])], async_ops_window=(1, 70000))


# ===================================================== acceptor: role selection
T, F = True, False

# (proposed SCU, proposed SCP) x (our scu_role, our scp_role) -> reply item (or
# None) and the context outcome. Written out from PS3.7 D.3.3.4: the reply may
# say 1 only where the requestor proposed 1 and we agree; the requestor's SCU
# role is our SCP role and the other way round; with no role left the context
# is refused with result 1 (user rejection), as pynetdicom does.
ROLE_TABLE = [
    # proposed  configured  reply       result as_scu as_scp
    ((T, T), (T, T), (T, T), 0, T, T),
    ((T, T), (T, F), (T, F), 0, F, T),
    ((T, T), (F, T), (F, T), 0, T, F),
    ((T, T), (F, F), None, 1, F, F),
    ((T, F), (T, T), (T, F), 0, F, T),
    ((T, F), (T, F), (T, F), 0, F, T),
    ((T, F), (F, T), None, 1, F, F),
    ((T, F), (F, F), None, 1, F, F),
    ((F, T), (T, T), (F, T), 0, T, F),
    ((F, T), (T, F), None, 1, F, F),
    ((F, T), (F, T), (F, T), 0, T, F),
    ((F, T), (F, F), None, 1, F, F),
    ((F, F), (T, T), None, 1, F, F),
    ((F, F), (T, F), None, 1, F, F),
    ((F, F), (F, T), None, 1, F, F),
    ((F, F), (F, F), None, 1, F, F),
]


@pytest.mark.parametrize("proposed, configured, reply, result, as_scu, as_scp", ROLE_TABLE)
def test_role_selection_as_acceptor(proposed, configured, reply, result, as_scu, as_scp):
    rq = make_rq([(1, CT, [IMPLICIT])], role_selections=[RoleSelection(CT, *proposed)])
    ac, res = accept(rq, [ContextSpec(CT, [IMPLICIT], *configured)])
    ctx = res.contexts[0]
    assert (ctx.result, ctx.as_scu, ctx.as_scp) == (result, as_scu, as_scp)
    assert ac.presentation_contexts[0].result == result
    expected_items = [] if reply is None else [RoleSelection(CT, *reply)]
    assert ac.user_information.role_selections == expected_items


CONFIGURED_WITH_NONE = [(None, None), (None, T), (None, F), (T, None), (F, None)]
ALL_PROPOSALS = [None, (T, T), (T, F), (F, T), (F, F)]


@pytest.mark.parametrize("proposed", ALL_PROPOSALS)
@pytest.mark.parametrize("configured", CONFIGURED_WITH_NONE)
def test_roles_unconfigured_use_defaults(proposed, configured):
    # Our roles not (fully) configured: no reply item; requestor SCU, us SCP.
    roles = [] if proposed is None else [RoleSelection(CT, *proposed)]
    rq = make_rq([(1, CT, [IMPLICIT])], role_selections=roles)
    ac, res = accept(rq, [ContextSpec(CT, [IMPLICIT], *configured)])
    assert res.contexts[0] == NegotiatedContext(1, CT, IMPLICIT, 0, False, True)
    assert ac.user_information.role_selections == []


@pytest.mark.parametrize("configured", [(T, T), (T, F), (F, T), (F, F)])
def test_roles_not_proposed_use_defaults(configured):
    rq = make_rq([(1, CT, [IMPLICIT])])
    ac, res = accept(rq, [ContextSpec(CT, [IMPLICIT], *configured)])
    assert res.contexts[0] == NegotiatedContext(1, CT, IMPLICIT, 0, False, True)
    assert ac.user_information.role_selections == []


def test_role_replies_only_for_accepted_classes():
    roles = [RoleSelection(MR, T, T), RoleSelection(CT, T, T), RoleSelection(ECHO, T, T), RoleSelection(FIND, T, T)]
    rq = make_rq([(1, CT, [IMPLICIT]), (3, MR, [IMPLICIT]), (5, ECHO, [JPEG])], role_selections=roles)
    supported = [ContextSpec(CT, [IMPLICIT], T, T), ContextSpec(MR, [IMPLICIT], T, T), ContextSpec(ECHO, [IMPLICIT], T, T)]
    ac, res = accept(rq, supported)
    # ECHO: rejected (transfer syntax); FIND: no context proposed. Replies sorted by UID.
    assert ac.user_information.role_selections == [RoleSelection(CT, T, T), RoleSelection(MR, T, T)]
    assert [(c.result, c.as_scu, c.as_scp) for c in res.contexts] == [(0, T, T), (0, T, T), (4, F, F)]


# ====================================================== acceptor: async window
@pytest.mark.parametrize(
    "asked, ours, reply, local",
    [
        # asked = requestor's (invoked, performed); ours = (invoked, performed)
        # for us. reply = what the requestor may (invoke, perform); local =
        # what we may (invoke, perform). 0 is unlimited.
        ((5, 3), (2, 4), (4, 2), (2, 4)),
        ((1, 1), (1, 1), (1, 1), (1, 1)),
        ((0, 0), (0, 0), (0, 0), (0, 0)),
        ((0, 7), (3, 0), (0, 3), (3, 0)),
        ((2, 2), (0, 0), (2, 2), (2, 2)),
        ((0, 0), (1, 1), (1, 1), (1, 1)),
        ((10, 10), (20, 30), (10, 10), (10, 10)),
    ],
)
def test_async_window_as_acceptor(asked, ours, reply, local):
    rq = make_rq([(1, ECHO, [IMPLICIT])], async_ops_window=AsyncOperationsWindow(*asked))
    ac, res = accept(rq, [ContextSpec(ECHO, [IMPLICIT])], async_ops_window=ours)
    window = ac.user_information.async_ops_window
    assert (window.max_operations_invoked, window.max_operations_performed) == reply
    assert (res.max_operations_invoked, res.max_operations_performed) == local


def test_async_window_absent_as_acceptor():
    rq = make_rq([(1, ECHO, [IMPLICIT])])
    ac, res = accept(rq, [ContextSpec(ECHO, [IMPLICIT])], async_ops_window=(0, 0))
    assert ac.user_information.async_ops_window is None
    assert (res.max_operations_invoked, res.max_operations_performed) == (1, 1)


# ======================================================= acceptor: user identity
def test_user_identity_without_handler_is_accepted_silently():
    item = UserIdentityRQ(2, b"alice", b"secret", True)
    rq = make_rq([(1, ECHO, [IMPLICIT])], user_identity_rq=item)
    ac, res = accept(rq, [ContextSpec(ECHO, [IMPLICIT])])
    assert ac.user_information.user_identity_ac is None
    assert res.user_identity == item


@pytest.mark.parametrize(
    "identity_type, wants_response, handler_response, expected",
    [
        (3, True, b"kerberos-ticket", UserIdentityAC(b"kerberos-ticket")),
        (4, True, b"<saml/>", UserIdentityAC(b"<saml/>")),
        (5, True, b"jwt", UserIdentityAC(b"jwt")),
        (3, False, b"kerberos-ticket", None),  # no response asked for
        (4, True, None, None),  # handler gives none
        (1, True, b"ignored", UserIdentityAC(b"")),  # empty for types 1 and 2
        (2, True, b"ignored", UserIdentityAC(b"")),
    ],
)
def test_user_identity_accepted(identity_type, wants_response, handler_response, expected):
    item = UserIdentityRQ(identity_type, b"primary", b"pass" if identity_type == 2 else b"", wants_response)
    seen = []

    def handler(rq_item):
        seen.append(rq_item)
        return True, handler_response

    rq = make_rq([(1, ECHO, [IMPLICIT])], user_identity_rq=item)
    ac, res = accept(rq, [ContextSpec(ECHO, [IMPLICIT])], identity_handler=handler)
    assert seen == [item]
    assert ac.user_information.user_identity_ac == expected
    assert res.user_identity == item


def test_user_identity_refused():
    rq = make_rq([(1, ECHO, [IMPLICIT])], user_identity_rq=UserIdentityRQ(1, b"mallory"))
    with pytest.raises(AssociationRejected) as info_:
        accept(rq, [ContextSpec(ECHO, [IMPLICIT])], identity_handler=lambda item: (False, None))
    assert (info_.value.result, info_.value.source, info_.value.reason) == (1, 1, 1)


def test_user_identity_handler_error_rejects():
    def broken(item):
        raise RuntimeError("directory down")

    rq = make_rq([(1, ECHO, [IMPLICIT])], user_identity_rq=UserIdentityRQ(1, b"bob"))
    with pytest.raises(AssociationRejected) as info_:
        accept(rq, [ContextSpec(ECHO, [IMPLICIT])], identity_handler=broken)
    assert (info_.value.result, info_.value.source, info_.value.reason) == (1, 1, 1)


def test_identity_handler_not_called_without_identity():
    calls = []
    rq = make_rq([(1, ECHO, [IMPLICIT])])
    _, res = accept(rq, [ContextSpec(ECHO, [IMPLICIT])], identity_handler=lambda item: calls.append(item) or (False, None))
    assert calls == [] and res.user_identity is None


# ================================================ acceptor: extended negotiation
def test_sop_class_extended_replies():
    asked = [SOPClassExtendedNegotiation(FIND, b"\x01\x01"), SOPClassExtendedNegotiation(CT, b"\x01")]
    got = []

    def handler(items):
        got.append(list(items))
        return [
            SOPClassExtendedNegotiation(FIND, b"\x01\x00"),
            SOPClassExtendedNegotiation(MR, b"\x01"),  # not asked: dropped
            SOPClassExtendedNegotiation(FIND, b"\x00"),  # second reply for FIND: dropped
        ]

    rq = make_rq([(1, FIND, [IMPLICIT])], sop_class_extended=asked)
    ac, res = accept(rq, [ContextSpec(FIND, [IMPLICIT])], sop_extended_handler=handler)
    assert got == [asked]
    assert ac.user_information.sop_class_extended == [SOPClassExtendedNegotiation(FIND, b"\x01\x00")]
    assert res.sop_class_extended == asked


def test_sop_class_extended_without_handler_or_items():
    asked = [SOPClassExtendedNegotiation(FIND, b"\x01")]
    rq = make_rq([(1, FIND, [IMPLICIT])], sop_class_extended=asked)
    ac, _ = accept(rq, [ContextSpec(FIND, [IMPLICIT])])
    assert ac.user_information.sop_class_extended == []

    calls = []
    rq = make_rq([(1, FIND, [IMPLICIT])])
    ac, _ = accept(rq, [ContextSpec(FIND, [IMPLICIT])], sop_extended_handler=lambda items: calls.append(items) or [])
    assert calls == [] and ac.user_information.sop_class_extended == []


def test_sop_class_extended_handler_error_sends_nothing():
    def broken(items):
        raise KeyError("bug")

    rq = make_rq([(1, FIND, [IMPLICIT])], sop_class_extended=[SOPClassExtendedNegotiation(FIND, b"\x01")])
    ac, res = accept(rq, [ContextSpec(FIND, [IMPLICIT])], sop_extended_handler=broken)
    assert ac.user_information.sop_class_extended == []
    assert res.contexts[0].accepted


def test_common_extended_recorded_not_answered():
    common = [SOPClassCommonExtendedNegotiation("1.2.840.10008.5.1.4.1.1.88.40", "1.2.840.10008.4.2", ["1.2.840.10008.5.1.4.1.1.88.22"])]
    rq = make_rq([(1, ECHO, [IMPLICIT])], sop_class_common_extended=common)
    ac, res = accept(rq, [ContextSpec(ECHO, [IMPLICIT])])
    assert ac.user_information.sop_class_common_extended == []
    assert res.sop_class_common_extended == common


# ============================================================== requestor: RQ
def test_build_associate_rq():
    rq = build_associate_rq(
        " STORESCP ",
        "STORESCU",
        [ContextSpec(ECHO, [IMPLICIT]), ContextSpec(CT, [EXPLICIT, IMPLICIT]), ContextSpec(CT, [JPEG])],
        max_pdu_length=16382,
    )
    assert (rq.called_ae_title, rq.calling_ae_title) == ("STORESCP", "STORESCU")
    assert rq.application_context_name == DICOM_CONTEXT
    assert rq.protocol_version == 1
    assert rq.presentation_contexts == [
        PresentationContextRQ(1, ECHO, [IMPLICIT]),
        PresentationContextRQ(3, CT, [EXPLICIT, IMPLICIT]),
        PresentationContextRQ(5, CT, [JPEG]),
    ]
    ui = rq.user_information
    assert ui.max_length == 16382
    assert ui.implementation_class_uid == uids.IMPLEMENTATION_CLASS_UID
    assert ui.implementation_version_name == "CHROMANET_010"
    assert ui.role_selections == []
    assert ui.async_ops_window is None
    assert ui.user_identity_rq is None
    assert _pdu.decode_pdu_bytes(_pdu.encode_pdu(rq)) == rq


def test_build_associate_rq_roles_and_extras():
    identity = UserIdentityRQ(2, b"alice", b"secret", True)
    ext = [SOPClassExtendedNegotiation(FIND, b"\x01")]
    common = [SOPClassCommonExtendedNegotiation(CT, "1.2.840.10008.4.2", [])]
    rq = build_associate_rq(
        "SCP",
        "SCU",
        [
            ContextSpec(CT, [IMPLICIT], scp_role=True),  # SCU defaults to 1
            ContextSpec(MR, [IMPLICIT], scu_role=False),  # SCP defaults to 0
            ContextSpec(FIND, [IMPLICIT], scu_role=True, scp_role=True),
            ContextSpec(FIND, [EXPLICIT]),  # same class: one item only
            ContextSpec(ECHO, [IMPLICIT]),  # no roles: no item
        ],
        max_pdu_length=0,
        implementation_class_uid="1.2.3",
        implementation_version_name="MINE",
        async_ops_window=(0, 4),
        user_identity=identity,
        sop_class_extended=ext,
        sop_class_common_extended=common,
    )
    ui = rq.user_information
    assert ui.role_selections == [RoleSelection(CT, T, T), RoleSelection(MR, F, F), RoleSelection(FIND, T, T)]
    assert ui.async_ops_window == AsyncOperationsWindow(0, 4)
    assert (ui.implementation_class_uid, ui.implementation_version_name, ui.max_length) == ("1.2.3", "MINE", 0)
    assert ui.user_identity_rq == identity
    assert ui.sop_class_extended == ext
    assert ui.sop_class_common_extended == common
    assert [pc.context_id for pc in rq.presentation_contexts] == [1, 3, 5, 7, 9]


def test_build_associate_rq_limits():
    specs = [ContextSpec(ECHO, [IMPLICIT])] * 128
    rq = build_associate_rq("SCP", "SCU", specs, max_pdu_length=16382)
    assert [pc.context_id for pc in rq.presentation_contexts][-2:] == [253, 255]
    with pytest.raises(ValueError, match="128"):
        build_associate_rq("SCP", "SCU", specs + [ContextSpec(CT, [IMPLICIT])], max_pdu_length=16382)
    with pytest.raises(ValueError):
        build_associate_rq("SCP", "SCU", [ContextSpec(CT, [])], max_pdu_length=16382)
    with pytest.raises(ValueError):
        build_associate_rq("BAD\\AE", "SCU", [ContextSpec(CT, [IMPLICIT])], max_pdu_length=16382)
    with pytest.raises(ValueError):
        build_associate_rq("SCP", "SCU", [ContextSpec(CT, [IMPLICIT])], max_pdu_length=2**32)
    with pytest.raises(ValueError, match="SCU role"):
        build_associate_rq(
            "SCP", "SCU", [ContextSpec(CT, [IMPLICIT], scu_role=True), ContextSpec(CT, [IMPLICIT], scu_role=False)],
            max_pdu_length=16382,
        )


# ========================================================= requestor: the AC
def make_ac(contexts, **kw) -> AssociateAC:
    return AssociateAC(
        "STORESCP",
        "STORESCU",
        presentation_contexts=[PresentationContextAC(cid, result, ts) for cid, result, ts in contexts],
        user_information=info(**kw),
        application_context_name=DICOM_CONTEXT,
    )


def requested(*specs, **kw):
    return build_associate_rq("STORESCP", "STORESCU", list(specs), max_pdu_length=16382, **kw)


def test_requestor_matches_contexts_by_id():
    rq = requested(ContextSpec(ECHO, [IMPLICIT]), ContextSpec(CT, [EXPLICIT, IMPLICIT]), ContextSpec(MR, [JPEG]))
    ac = make_ac([(3, 0, IMPLICIT), (1, 0, IMPLICIT), (5, 4, "")], max_length=65536)
    res = negotiate_as_requestor(rq, ac)
    assert res.contexts == [
        NegotiatedContext(1, ECHO, IMPLICIT, 0, True, False),
        NegotiatedContext(3, CT, IMPLICIT, 0, True, False),
        NegotiatedContext(5, MR, None, 4, False, False),
    ]
    assert res.peer_max_pdu_length == 65536
    assert res.max_pdu_length == 16382
    assert (res.max_operations_invoked, res.max_operations_performed) == (1, 1)
    assert res.peer_implementation_class_uid == "1.2.826.0.1.3680043.9.3811.3.0.4"
    assert res.peer_implementation_version_name == "PEER_1"
    assert res.is_requestor and res.peer_ae_title == "STORESCP"


def test_requestor_missing_answer_is_rejected_no_reason():
    rq = requested(ContextSpec(ECHO, [IMPLICIT]), ContextSpec(CT, [IMPLICIT]))
    res = negotiate_as_requestor(rq, make_ac([(1, 0, IMPLICIT)], max_length=None))
    assert res.contexts[1] == NegotiatedContext(3, CT, None, 2, False, False)
    assert res.peer_max_pdu_length == 0


@pytest.mark.parametrize(
    "answers, message",
    [
        ([(1, 0, IMPLICIT), (7, 0, IMPLICIT)], "not proposed"),  # unknown ID
        ([(1, 0, IMPLICIT), (1, 0, IMPLICIT)], "twice"),
        ([(1, 0, EXPLICIT)], "transfer syntax"),  # accepted with a syntax we did not offer for it
        ([(1, 7, "")], "unknown result"),
    ],
)
def test_requestor_inconsistent_ac(answers, message):
    rq = requested(ContextSpec(ECHO, [IMPLICIT]), ContextSpec(CT, [EXPLICIT]))
    with pytest.raises(NegotiationError, match=message) as info_:
        negotiate_as_requestor(rq, make_ac(answers))
    assert info_.value.abort_reason == 6


@pytest.mark.parametrize(
    "configured, reply, as_scu, as_scp",
    [
        # configured = our spec's (scu_role, scp_role); reply = the AC's item or None.
        ((None, None), None, T, F),
        ((None, None), (T, T), T, F),  # we proposed nothing: the answer is ignored
        ((T, T), (T, T), T, T),
        ((T, T), (T, F), T, F),
        ((T, T), (F, T), F, T),
        ((T, T), (F, F), F, F),
        ((T, T), None, T, F),  # no answer: defaults
        ((None, T), (T, T), T, T),  # SCU proposed by default
        ((F, T), (T, T), F, T),  # SCU not proposed: an answer of 1 is ignored
        ((F, T), (F, T), F, T),
        ((F, T), None, T, F),
        ((T, None), (T, T), T, F),  # SCP not proposed
        ((T, F), (T, F), T, F),
    ],
)
def test_role_selection_as_requestor(configured, reply, as_scu, as_scp):
    rq = requested(ContextSpec(CT, [IMPLICIT], *configured))
    roles = [] if reply is None else [RoleSelection(CT, *reply)]
    res = negotiate_as_requestor(rq, make_ac([(1, 0, IMPLICIT)], role_selections=roles))
    assert (res.contexts[0].as_scu, res.contexts[0].as_scp) == (as_scu, as_scp)


@pytest.mark.parametrize(
    "proposed, granted, local",
    [
        (None, None, (1, 1)),
        ((5, 5), None, (1, 1)),
        ((5, 5), (3, 2), (3, 2)),
        ((0, 0), (0, 0), (0, 0)),
        ((0, 4), (9, 0), (9, 4)),  # the acceptor may not raise a limit: capped
        ((2, 2), (0, 0), (2, 2)),
        (None, (4, 4), (1, 1)),  # an answer to no proposal does not raise the default
    ],
)
def test_async_window_as_requestor(proposed, granted, local):
    rq = requested(ContextSpec(ECHO, [IMPLICIT]), async_ops_window=proposed)
    window = None if granted is None else AsyncOperationsWindow(*granted)
    res = negotiate_as_requestor(rq, make_ac([(1, 0, IMPLICIT)], async_ops_window=window))
    assert (res.max_operations_invoked, res.max_operations_performed) == local


def test_requestor_records_identity_and_extended():
    rq = requested(ContextSpec(FIND, [IMPLICIT]), user_identity=UserIdentityRQ(3, b"ticket", b"", True))
    ext = [SOPClassExtendedNegotiation(FIND, b"\x01")]
    res = negotiate_as_requestor(
        rq, make_ac([(1, 0, IMPLICIT)], user_identity_ac=UserIdentityAC(b"server-ticket"), sop_class_extended=ext)
    )
    assert res.user_identity == b"server-ticket"
    assert res.sop_class_extended == ext
    res = negotiate_as_requestor(rq, make_ac([(1, 0, IMPLICIT)]))
    assert res.user_identity is None and res.sop_class_extended == []


def test_round_trip_requestor_and_acceptor():
    """Our RQ through our acceptor and back through our requestor."""
    rq = requested(
        ContextSpec(CT, [EXPLICIT, IMPLICIT], scu_role=True, scp_role=True),
        ContextSpec(MR, [JPEG]),
        ContextSpec(ECHO, [IMPLICIT]),
        async_ops_window=(3, 0),
    )
    ac, acc = accept(
        rq,
        [ContextSpec(CT, [IMPLICIT, EXPLICIT], scu_role=False, scp_role=True), ContextSpec(ECHO, [IMPLICIT])],
        async_ops_window=(0, 2),
    )
    req = negotiate_as_requestor(rq, ac)
    assert [(c.context_id, c.result, c.transfer_syntax) for c in req.contexts] == [(1, 0, EXPLICIT), (3, 3, None), (5, 0, IMPLICIT)]
    # CT: requestor SCP only (C-GET style), acceptor SCU only.
    assert (req.contexts[0].as_scu, req.contexts[0].as_scp) == (F, T)
    assert (acc.contexts[0].as_scu, acc.contexts[0].as_scp) == (T, F)
    assert (req.contexts[2].as_scu, req.contexts[2].as_scp) == (T, F)
    assert (acc.contexts[2].as_scu, acc.contexts[2].as_scp) == (F, T)
    # Requestor asked to invoke 3 / perform unlimited; acceptor performs 2 at
    # most and invokes without limit.
    assert (req.max_operations_invoked, req.max_operations_performed) == (2, 0)
    assert (acc.max_operations_invoked, acc.max_operations_performed) == (0, 2)
    assert req.peer_max_pdu_length == 16384 and acc.peer_max_pdu_length == 16382


# ================================================== cross-check with pynetdicom
def _pynetdicom_accept(rq_contexts, supported, roles):
    from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor as pnd_accept

    rq_cx = []
    for cid, abstract, tss in rq_contexts:
        cx = PresentationContext()
        cx.context_id = cid
        cx.abstract_syntax = abstract
        cx.transfer_syntax = list(tss)
        rq_cx.append(cx)
    ac_cx = []
    for spec in supported:
        cx = PresentationContext()
        cx.abstract_syntax = spec.abstract_syntax
        cx.transfer_syntax = list(spec.transfer_syntaxes)
        cx.scu_role = spec.scu_role
        cx.scp_role = spec.scp_role
        ac_cx.append(cx)
    role_map = {uid: (scu, scp) for uid, scu, scp in roles}
    results, replies = pnd_accept(rq_cx, ac_cx, role_map or None)
    contexts = [
        (cx.context_id, cx.result, cx.transfer_syntax[0] if cx.result == 0 else None, cx.as_scu, cx.as_scp)
        for cx in results
    ]
    return contexts, [(str(r.sop_class_uid), r.scu_role, r.scp_role) for r in replies]


CROSS_CASES = [
    # (proposed contexts, supported specs, proposed roles)
    ([(1, CT, [EXPLICIT, IMPLICIT]), (3, MR, [IMPLICIT])], [ContextSpec(CT, [IMPLICIT, EXPLICIT])], []),
    ([(1, CT, [JPEG]), (3, ECHO, [IMPLICIT, EXPLICIT]), (5, FIND, [BIG])],
     [ContextSpec(CT, [IMPLICIT]), ContextSpec(ECHO, [EXPLICIT, IMPLICIT]), ContextSpec(FIND, [BIG, IMPLICIT])], []),
    ([(1, CT, [IMPLICIT]), (3, MR, [IMPLICIT]), (5, FIND, [IMPLICIT]), (7, ECHO, [IMPLICIT])],
     [ContextSpec(CT, [IMPLICIT], T, T), ContextSpec(MR, [IMPLICIT], F, T), ContextSpec(FIND, [IMPLICIT], T, F),
      ContextSpec(ECHO, [IMPLICIT], F, F)],
     [(CT, T, T), (MR, T, T), (FIND, F, T), (ECHO, T, F)]),
    ([(1, CT, [IMPLICIT]), (3, MR, [EXPLICIT])],
     [ContextSpec(CT, [IMPLICIT], None, None), ContextSpec(MR, [IMPLICIT], T, T)],
     [(CT, F, T), (MR, T, T)]),
    ([(1, CT, [IMPLICIT]), (3, CT, [EXPLICIT]), (5, MR, [IMPLICIT])],
     [ContextSpec(CT, [EXPLICIT, IMPLICIT], T, T), ContextSpec(MR, [IMPLICIT], T, T)],
     [(CT, F, T), (MR, F, F)]),
]


@pytest.mark.parametrize("proposed, supported, roles", CROSS_CASES)
def test_acceptor_matches_pynetdicom(proposed, supported, roles):
    expected_contexts, expected_replies = _pynetdicom_accept(proposed, supported, roles)
    rq = make_rq(proposed, role_selections=[RoleSelection(uid, scu, scp) for uid, scu, scp in roles])
    # pynetdicom picks the transfer syntax in the acceptor's order.
    ac, res = accept(rq, supported, transfer_syntax_order="acceptor")
    ours = [(c.context_id, c.result, c.transfer_syntax, c.as_scu, c.as_scp) for c in res.contexts]
    assert ours == expected_contexts
    assert [(r.sop_class_uid, r.scu_role, r.scp_role) for r in ac.user_information.role_selections] == expected_replies


def test_transfer_syntax_order_is_where_we_differ_from_pynetdicom():
    proposed = [(1, CT, [EXPLICIT, IMPLICIT])]
    supported = [ContextSpec(CT, [IMPLICIT, EXPLICIT])]
    (pnd,), _ = _pynetdicom_accept(proposed, supported, [])
    assert pnd[2] == IMPLICIT  # pynetdicom: acceptor's order
    _, res = accept(make_rq(proposed), supported)
    assert res.contexts[0].transfer_syntax == EXPLICIT  # chromanet default: requestor's order
