"""The node's access control (chromanet.apps.access): verified user
identity, the peers table, the default for unknown peers, the called AE
title, and who may replace a stored palette.

Unit tests for the pieces (passcode hashes, JWTs, rule matching, the config
tables), then a node in this process on a loopback port, driven by chromanet
SCUs and by raw A-ASSOCIATE-RQs where the AC itself is checked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import sys
import time
import types
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any, Iterator

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from chromanet import AE, _pdu, evt, loopthread, uids
from chromanet.apps.access import (
    AccessConfigError,
    AccessPolicy,
    IdentityVerifier,
    JwtSettings,
    hash_passcode,
    policy_from_settings,
    verify_passcode,
)
from chromanet.apps.node import NodeConfig, PaletteNode
from chromanet.ul.acse import AdmissionRequest
from chromanet.ul.negotiation import ContextSpec, build_associate_rq
from chromanet.ul.tls import TlsInfo
from helpers.data import palette_paths
from helpers.rawpeer import recv_pdu
from helpers.servers import free_port

EXPLICIT = uids.ExplicitVRLittleEndian
HOT_IRON = "1.2.840.10008.1.5.1"


# ------------------------------------------------------------ passcodes
def test_passcode_hash_round_trip() -> None:
    stored = hash_passcode("correct horse")
    assert "correct horse" not in stored and stored.startswith("scrypt$")
    assert verify_passcode(stored, b"correct horse")
    assert not verify_passcode(stored, b"correct horsf")
    assert not verify_passcode(stored, b"")
    assert hash_passcode("correct horse") != stored  # a new salt each time


def test_clear_passcodes_are_refused_in_the_config() -> None:
    with pytest.raises(AccessConfigError, match="hashed"):
        policy_from_settings(None, None, None, {"alice": {"passcode": "secret"}})
    with pytest.raises(AccessConfigError, match="hash-passcode"):
        policy_from_settings(None, None, None, {"alice": {"passcode_hash": "secret"}})


def test_config_errors_are_named() -> None:
    with pytest.raises(AccessConfigError, match="unknown operation 'delete'"):
        policy_from_settings(None, [{"ae_title": "A", "operations": ["delete"]}], None, None)
    with pytest.raises(AccessConfigError, match="unknown keys"):
        policy_from_settings(None, [{"ae_title": "A", "operation": ["echo"]}], None, None)
    with pytest.raises(AccessConfigError, match="not an address"):
        policy_from_settings(None, [{"address": "10.0.0.300/8", "operations": ["echo"]}], None, None)
    with pytest.raises(AccessConfigError, match="unknown keys"):
        policy_from_settings({"default": "allow"}, None, None, None)
    with pytest.raises(AccessConfigError, match="require_user_identity needs"):
        policy_from_settings({"require_user_identity": True}, None, None, None)
    with pytest.raises(AccessConfigError, match="key_file or key_env"):
        policy_from_settings(None, None, {"jwt": {"key": "in clear"}}, None)


# ------------------------------------------------------------------ JWT
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims: dict[str, Any], key: bytes, alg: str = "HS256") -> bytes:
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims).encode())
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}.get(alg, hashlib.sha256)
    signature = _b64(hmac.new(key, f"{header}.{payload}".encode(), digest).digest())
    if alg == "none":
        signature = ""
    return f"{header}.{payload}.{signature}".encode()


def test_jwt_verification() -> None:
    key = b"k" * 32
    settings = JwtSettings(key=key, issuer="idp", audience="CHROMANET")
    now = time.time()
    good = {"sub": "alice", "iss": "idp", "aud": "CHROMANET", "exp": now + 60}
    assert settings.verify(make_jwt(good, key)) == "alice"
    assert settings.verify(make_jwt(good, key, "HS512")) == "alice"
    assert settings.verify(make_jwt({**good, "aud": ["X", "CHROMANET"]}, key)) == "alice"
    refused = {
        "wrong key": make_jwt(good, b"other"),
        "expired": make_jwt({**good, "exp": now - 3600}, key),
        "no exp": make_jwt({k: v for k, v in good.items() if k != "exp"}, key),
        "not yet": make_jwt({**good, "nbf": now + 3600}, key),
        "issuer": make_jwt({**good, "iss": "evil"}, key),
        "audience": make_jwt({**good, "aud": "OTHER"}, key),
        "alg none": make_jwt(good, key, "none"),
        "no user": make_jwt({k: v for k, v in good.items() if k != "sub"}, key),
        "garbage": b"not.a.token",
        "not ascii": b"\xff\xfe.\x00.\x01",
    }
    for why, token in refused.items():
        assert settings.verify(token) is None, why


# ----------------------------------------------------------------- rules
def _request(calling: str = "PEER", host: str = "127.0.0.1", identity: Any = None,
             subject: str | None = None) -> AdmissionRequest:
    rq = build_associate_rq("CHROMANET", calling, [ContextSpec(uids.Verification, [EXPLICIT])],
                            max_pdu_length=16382, user_identity=identity)
    tls = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", subject) if subject is not None else None
    return AdmissionRequest(rq, (host, 40000), tls)


def _admit(policy: AccessPolicy, **request: Any) -> Any:
    return loopthread.run(policy.admit(_request(**request)))


def test_first_matching_rule_decides() -> None:
    policy = policy_from_settings(
        {"default_operations": ["echo"]},
        [
            {"name": "ct", "ae_title": "CT1", "address": ["10.1.0.0/16"], "operations": ["find", "store"]},
            {"name": "tls-ct", "tls_subject": "CN=ct2.example", "operations": ["all"], "move_destinations": ["PACS"]},
            {"name": "anyone-ct1", "ae_title": "CT1", "operations": ["echo", "find"]},
            {"name": "blocked", "ae_title": "BAD", "operations": []},
        ],
        None,
        None,
    )
    grant = _admit(policy, calling="CT1", host="10.1.2.3").grant
    assert grant.rule == "ct" and grant.peer == "peer:ct" and grant.operations == {"find", "store"}
    # IPv4 in IPv6 clothing is the same host.
    assert _admit(policy, calling="CT1", host="::ffff:10.1.2.3").grant.rule == "ct"
    # Another network: the next rule naming CT1.
    assert _admit(policy, calling="CT1", host="10.2.0.1").grant.rule == "anyone-ct1"
    # A certificate subject matches when it holds the rule's parts.
    tls_grant = _admit(policy, calling="X", subject="CN=ct2.example,O=Hospital").grant
    assert tls_grant.rule == "tls-ct" and tls_grant.allows("move")
    assert tls_grant.allows_destination("PACS") and not tls_grant.allows_destination("ELSEWHERE")
    assert _admit(policy, calling="X", subject="CN=ct3.example").grant.rule is None
    # No certificate (plain TCP) never matches a subject rule.
    assert _admit(policy, calling="X").grant.rule is None
    # Unknown peers get the default, owned by their calling AE title.
    default = _admit(policy, calling="STRANGER").grant
    assert default.rule is None and default.peer == "ae:STRANGER" and default.operations == {"echo"}
    # A rule granting nothing rejects: calling AE title not recognised.
    refused = _admit(policy, calling="BAD")
    assert refused.rejection == (1, 1, 3) and "grants nothing" in refused.reason


def test_default_nothing_rejects_unknown_peers() -> None:
    policy = policy_from_settings({"default_operations": []}, [{"ae_title": "KNOWN", "operations": ["echo"]}],
                                  None, None)
    assert _admit(policy, calling="STRANGER").rejection == (1, 1, 3)
    assert _admit(policy, calling="KNOWN").rejection is None


# -------------------------------------------------------------- identity
def _identity(kind: int, primary: bytes, secondary: bytes = b"", positive: bool = False) -> Any:
    return _pdu.UserIdentityRQ(kind, primary, secondary, positive)


@pytest.fixture(scope="module")
def alice_hash() -> str:
    return hash_passcode("wonderland")


def test_identity_checks(alice_hash: str) -> None:
    policy = policy_from_settings(
        None,
        [{"name": "alice-anywhere", "user": "alice", "operations": ["all"]}],
        None,
        {"alice": {"passcode_hash": alice_hash}, "scanner": {}},
    )
    ok = _admit(policy, identity=_identity(2, b"alice", b"wonderland"), host="10.9.0.1")
    assert ok.rejection is None and ok.grant.user == "alice" and ok.grant.rule == "alice-anywhere"
    assert ok.identity_response == b""
    # A user known by name only identifies with its username.
    by_name = _admit(policy, identity=_identity(1, b"scanner"), host="10.9.0.1")
    assert by_name.rejection is None and by_name.grant.user == "scanner" and by_name.grant.rule is None
    for why, item in {
        "wrong passcode": _identity(2, b"alice", b"looking-glass"),
        "username only for a user with a passcode": _identity(1, b"alice"),
        "unknown user": _identity(2, b"mallory", b"wonderland"),
        "unsupported type (SAML, no verifier)": _identity(4, b"<saml/>"),
        "not UTF-8": _identity(2, b"\xff\xfe", b"x"),
    }.items():
        refused = _admit(policy, identity=item, host="10.9.0.2")
        assert refused.rejection == (1, 1, 1), why
    # No identity at all: admitted (identity is not required), without a user.
    assert _admit(policy, host="10.9.0.1").grant.user is None


def test_repeated_failures_lock_a_host_out(alice_hash: str) -> None:
    policy = policy_from_settings(None, None, None, {"alice": {"passcode_hash": alice_hash}})
    for _ in range(5):
        assert _admit(policy, identity=_identity(2, b"alice", b"guess"), host="10.7.0.1").rejection == (1, 1, 1)
    locked = _admit(policy, identity=_identity(2, b"alice", b"wonderland"), host="10.7.0.1")
    assert locked.rejection == (1, 1, 1) and "too many" in locked.reason
    # Another host is not affected.
    assert _admit(policy, identity=_identity(2, b"alice", b"wonderland"), host="10.7.0.2").rejection is None


def test_identity_ignored_without_identity_settings() -> None:
    """PS3.7 D.3.3.7: an acceptor that does not do user identity ignores it."""
    policy = policy_from_settings(None, None, None, None)
    admitted = _admit(policy, identity=_identity(2, b"anyone", b"anything", positive=True))
    assert admitted.rejection is None and admitted.grant.user is None and admitted.identity_response is None


def test_required_identity() -> None:
    policy = policy_from_settings({"require_user_identity": True}, None, None, {"scanner": {}})
    assert _admit(policy).rejection == (1, 1, 1)
    assert _admit(policy, identity=_identity(1, b"scanner")).rejection is None


def test_pluggable_verifier(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("site_saml_check")

    async def check(kind: int, primary: bytes, secondary: bytes) -> Any:
        if kind == 4 and primary == b"<assertion user='bob'/>":
            return "bob", b"<response/>"
        return None

    module.check = check  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "site_saml_check", module)
    policy = policy_from_settings(None, None, {"verifier": "site_saml_check:check"}, None)
    ok = _admit(policy, identity=_identity(4, b"<assertion user='bob'/>", positive=True))
    assert ok.rejection is None and ok.grant.user == "bob" and ok.identity_response == b"<response/>"
    assert _admit(policy, identity=_identity(4, b"<forged/>")).rejection == (1, 1, 1)
    with pytest.raises(AccessConfigError, match="cannot load"):
        policy_from_settings(None, None, {"verifier": "site_saml_check:missing"}, None)


def test_jwt_identity_from_a_key_file(tmp_path: Path) -> None:
    key = b"0123456789abcdef0123456789abcdef"
    (tmp_path / "jwt.key").write_bytes(key + b"\n")
    policy = policy_from_settings(None, [{"user": "carol", "operations": ["find"]}],
                                  {"jwt": {"key_file": "jwt.key", "audience": "CHROMANET"}}, None, base=tmp_path)
    token = make_jwt({"sub": "carol", "aud": "CHROMANET", "exp": time.time() + 60}, key)
    assert _admit(policy, identity=_identity(5, token)).grant.user == "carol"
    assert _admit(policy, identity=_identity(5, make_jwt({"sub": "carol", "exp": 1}, key))).rejection == (1, 1, 1)


def test_verifier_without_users_checks_every_type() -> None:
    seen = []

    def check(kind: int, primary: bytes, secondary: bytes) -> str | None:
        seen.append(kind)
        return "dave" if secondary == b"ok" else None

    verifier = IdentityVerifier(verifier=check)
    assert loopthread.run(verifier.verify(2, b"dave", b"ok")).name == "dave"
    assert loopthread.run(verifier.verify(2, b"dave", b"no")) is None
    assert seen == [2, 2]


# --------------------------------------------------- the node, over TCP
@contextmanager
def running_node(tmp_path: Path, policy: AccessPolicy, **settings: Any) -> Iterator[tuple[PaletteNode, int]]:
    port = free_port()
    destinations = settings.pop("move_destinations", {})
    config = NodeConfig(port=port, bind_address="127.0.0.1", data_dir=tmp_path / "data", access=policy,
                        move_destinations=destinations, **settings)

    async def start() -> PaletteNode:
        node = PaletteNode(config)
        await node.start()
        return node

    node = loopthread.run(start())
    try:
        yield node, port
    finally:
        loopthread.run(node.close())


@contextmanager
def storage_scp() -> Iterator[tuple[int, list[str]]]:
    """A chromanet Storage SCP that records what it receives."""
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    ae = AE("DEST")
    ae.add_supported_context(uids.ColorPaletteStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield port, received
    finally:
        server.shutdown()


def scu(calling: str, get: bool = False) -> AE:
    """Echo, find, move and store; or, with ``get``, C-GET (the storage
    context then has the SCP role for us, so no C-STORE of ours)."""
    ae = AE(calling)
    retrieve = uids.ColorPaletteInformationModelGet if get else uids.ColorPaletteStorage
    for context in (uids.Verification, uids.ColorPaletteInformationModelFind,
                    uids.ColorPaletteInformationModelMove, retrieve):
        ae.add_requested_context(context)
    return ae


def query(**keys: str) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = keys.get("SOPInstanceUID", HOT_IRON)
    return ds


def new_palette(uid: str | None = None, label: str = "MINE") -> Dataset:
    ds = dcmread(palette_paths()[0])
    ds.SOPInstanceUID = uid or generate_uid()
    ds.ContentLabel = label
    return ds


def final_status(responses: Any) -> int:
    last = None
    for status, _identifier in responses:
        last = status
    assert last is not None
    return int(last.Status)


def test_each_operation_is_granted_or_refused(tmp_path: Path) -> None:
    policy = policy_from_settings(
        {"default_operations": ["echo"]},
        [
            {"name": "reader", "ae_title": "READER", "operations": ["echo", "find"]},
            {"name": "writer", "ae_title": "WRITER", "operations": ["store", "get", "move"],
             "move_destinations": ["DEST"]},
        ],
        None,
        None,
    )
    with storage_scp() as (dest_port, received), running_node(
        tmp_path, policy, move_destinations={"DEST": ("127.0.0.1", dest_port), "OTHER": ("127.0.0.1", dest_port)}
    ) as (_node, port):
        reader = scu("READER").associate("127.0.0.1", port, ae_title="CHROMANET")
        assert reader.is_established
        assert reader.send_c_echo().Status == 0x0000
        assert final_status(reader.send_c_find(query(), uids.ColorPaletteInformationModelFind)) == 0x0000
        assert final_status(reader.send_c_move(query(), "DEST", uids.ColorPaletteInformationModelMove)) == 0x0124
        refused = reader.send_c_store(new_palette())
        assert refused.Status == 0x0124 and "not authorised to store" in refused.ErrorComment
        reader.release()
        reader = scu("READER", get=True).associate("127.0.0.1", port, ae_title="CHROMANET")
        assert final_status(reader.send_c_get(query(), uids.ColorPaletteInformationModelGet)) == 0x0124
        reader.release()

        writer = scu("WRITER").associate("127.0.0.1", port, ae_title="CHROMANET")
        assert writer.send_c_echo().Status == 0x0124
        assert final_status(writer.send_c_find(query(), uids.ColorPaletteInformationModelFind)) == 0x0124
        assert writer.send_c_store(new_palette()).Status == 0x0000
        assert final_status(writer.send_c_move(query(), "DEST", uids.ColorPaletteInformationModelMove)) == 0x0000
        assert received == [HOT_IRON]
        # A configured destination this peer may not use.
        assert final_status(writer.send_c_move(query(), "OTHER", uids.ColorPaletteInformationModelMove)) == 0x0124
        assert received == [HOT_IRON]
        writer.release()
        writer = scu("WRITER", get=True).associate("127.0.0.1", port, ae_title="CHROMANET",
                                                   evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
        assert final_status(writer.send_c_get(query(), uids.ColorPaletteInformationModelGet)) == 0x0000
        writer.release()

        stranger = scu("STRANGER").associate("127.0.0.1", port, ae_title="CHROMANET")
        assert stranger.send_c_echo().Status == 0x0000
        assert final_status(stranger.send_c_find(query(), uids.ColorPaletteInformationModelFind)) == 0x0124
        stranger.release()


def test_unknown_peers_and_called_titles_are_rejected(tmp_path: Path) -> None:
    policy = policy_from_settings({"default_operations": []}, [{"ae_title": "KNOWN", "operations": ["echo"]}],
                                  None, None)
    with running_node(tmp_path, policy) as (_node, port):
        stranger = scu("STRANGER").associate("127.0.0.1", port, ae_title="CHROMANET")
        assert stranger.is_rejected
        # The called AE title is checked by default.
        known_wrong_title = scu("KNOWN").associate("127.0.0.1", port, ae_title="SOMEONE-ELSE")
        assert known_wrong_title.is_rejected
        known = scu("KNOWN").associate("127.0.0.1", port, ae_title="CHROMANET")
        assert known.is_established and known.send_c_echo().Status == 0x0000
        known.release()
    for calling, called, reason in (("STRANGER", "CHROMANET", 3), ("KNOWN", "SOMEONE-ELSE", 7)):
        with running_node(tmp_path / calling, policy) as (_node, port):
            rj = _raw_answer(port, calling, called)
            assert isinstance(rj, _pdu.AssociateRJ) and (rj.result, rj.source, rj.reason) == (1, 1, reason)


def _raw_answer(port: int, calling: str, called: str = "CHROMANET", identity: Any = None) -> Any:
    rq = build_associate_rq(called, calling, [ContextSpec(uids.Verification, [EXPLICIT])], max_pdu_length=16382,
                            user_identity=identity)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_pdu.encode_pdu(rq))
        return recv_pdu(sock)


def test_identity_over_the_wire(tmp_path: Path, alice_hash: str) -> None:
    policy = policy_from_settings({"default_operations": [], "require_user_identity": True},
                                  [{"user": "alice", "operations": ["echo"]}], None,
                                  {"alice": {"passcode_hash": alice_hash}})
    with running_node(tmp_path, policy) as (_node, port):
        ac = _raw_answer(port, "ANY", identity=_identity(2, b"alice", b"wonderland", positive=True))
        assert isinstance(ac, _pdu.AssociateAC)
        # The positive response asked for (empty for username and passcode, PS3.7 D.3.3.7.2).
        assert ac.user_information.user_identity_ac is not None
        assert ac.user_information.user_identity_ac.server_response == b""
        ac = _raw_answer(port, "ANY", identity=_identity(2, b"alice", b"wonderland", positive=False))
        assert isinstance(ac, _pdu.AssociateAC) and ac.user_information.user_identity_ac is None
        rj = _raw_answer(port, "ANY", identity=_identity(2, b"alice", b"wrong", positive=True))
        assert isinstance(rj, _pdu.AssociateRJ) and (rj.result, rj.source, rj.reason) == (1, 1, 1)
        rj = _raw_answer(port, "ANY")
        assert isinstance(rj, _pdu.AssociateRJ) and (rj.result, rj.source, rj.reason) == (1, 1, 1)
        # Through the API's ext_neg, as a pynetdicom program sends it.
        ae = scu("ANY")
        good = ae.associate("127.0.0.1", port, ae_title="CHROMANET",
                            ext_neg=[_identity(2, b"alice", b"wonderland")])
        assert good.is_established and good.send_c_echo().Status == 0x0000
        good.release()
        bad = ae.associate("127.0.0.1", port, ae_title="CHROMANET", ext_neg=[_identity(2, b"alice", b"nope")])
        assert bad.is_rejected


def test_store_ownership_over_the_wire(tmp_path: Path) -> None:
    policy = policy_from_settings(
        {"default_operations": ["echo", "find", "store"]},
        [{"name": "curator", "ae_title": "CURATOR", "operations": ["store"], "may_replace_others": True}],
        None,
        None,
    )
    uid = generate_uid()
    with running_node(tmp_path, policy) as (node, port):
        first = scu("PEER-A").associate("127.0.0.1", port, ae_title="CHROMANET")
        assert first.send_c_store(new_palette(uid, "A1")).Status == 0x0000
        assert first.send_c_store(new_palette(uid, "A2")).Status == 0x0000  # its own: replaced
        # A well-known palette is read-only: the status says it was not stored.
        refused = first.send_c_store(new_palette(HOT_IRON, "EVIL"))
        assert refused.Status == 0x0124 and "not stored" in refused.ErrorComment
        first.release()
        other = scu("PEER-B").associate("127.0.0.1", port, ae_title="CHROMANET")
        refused = other.send_c_store(new_palette(uid, "B"))
        assert refused.Status == 0x0124 and "another peer" in refused.ErrorComment
        other.release()
        assert node.archive.get(uid) is not None
        assert dcmread(BytesIO(node.archive.read(uid))).ContentLabel == "A2"
        curator = scu("CURATOR").associate("127.0.0.1", port, ae_title="CHROMANET")
        assert curator.send_c_store(new_palette(uid, "C")).Status == 0x0000
        curator.release()
        assert dcmread(BytesIO(node.archive.read(uid))).ContentLabel == "C"
        assert node.archive.index.get(uid).owner == "ae:PEER-A"
        assert dcmread(BytesIO(node.archive.read(HOT_IRON))).ContentLabel != "EVIL"
        assert node.archive.verify().ok
        assert list(node.spool_directory.iterdir()) == []


def test_a_refused_large_store_is_never_spooled(tmp_path: Path) -> None:
    """A peer that may not store has a large C-STORE refused on its command:
    the data set is read and dropped as it comes, nothing reaches the spool."""
    policy = policy_from_settings({"default_operations": ["echo"]}, None, None, None)
    big = new_palette()
    big.add_new(0x00091010, "OB", b"\x00" * (8 * 1024 * 1024))  # well past the streaming threshold
    with running_node(tmp_path, policy) as (node, port):
        answers: list[Any] = []
        original = node.ae.request_gate
        assert original is not None

        def watching_gate(assoc: Any, command: Any) -> Any:
            answer = original(assoc, command)
            answers.append((command.command_field, answer, list(node.spool_directory.iterdir())))
            return answer

        node.ae.request_gate = watching_gate
        assoc = scu("STRANGER").associate("127.0.0.1", port, ae_title="CHROMANET")
        refused = assoc.send_c_store(big)
        assert refused.Status == 0x0124 and "not authorised to store" in refused.ErrorComment
        assert assoc.send_c_echo().Status == 0x0000  # the association goes on
        assoc.release()
        # Refused on the command (before any of the data set), asked once for it.
        assert answers == [(0x0001, (0x0124, "not authorised to store"), []), (0x0030, None, [])]
        assert list(node.spool_directory.iterdir()) == []
        assert node.archive.get(big.SOPInstanceUID) is None


def test_audit_records_say_who_was_verified(tmp_path: Path, alice_hash: str) -> None:
    """The association records of the audit trail carry what the admission
    found: the verified user and the peer rule, or why it refused."""
    policy = policy_from_settings({"default_operations": []},
                                  [{"name": "alice-rule", "user": "alice", "operations": ["echo"]}], None,
                                  {"alice": {"passcode_hash": alice_hash}})
    audit = tmp_path / "audit.jsonl"
    with running_node(tmp_path, policy, audit_file=audit) as (_node, port):
        ae = scu("ANY")
        good = ae.associate("127.0.0.1", port, ae_title="CHROMANET", ext_neg=[_identity(2, b"alice", b"wonderland")])
        assert good.send_c_echo().Status == 0x0000
        good.release()
        bad = ae.associate("127.0.0.1", port, ae_title="CHROMANET", ext_neg=[_identity(2, b"alice", b"guess")])
        assert bad.is_rejected
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    associations = [r for r in records if r["record"] == "association"]
    assert [r["result"] for r in associations] == ["released", "rejected"]
    accepted, refused = associations
    assert accepted["username"] == "alice" and accepted["user_verified"] is True
    assert accepted["details"]["rule"] == "alice-rule" and accepted["details"]["peer"] == "peer:alice-rule"
    assert refused["username"] == "alice" and refused["user_verified"] is False
    assert (refused["reject_result"], refused["reject_source"], refused["reject_reason"]) == (1, 1, 1)
    assert "refused" in refused["details"]["refused"]
    assert "wonderland" not in audit.read_text() and "guess" not in audit.read_text()


def test_hash_passcode_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from chromanet.apps import cli

    monkeypatch.setattr(sys, "stdin", io.StringIO("wonderland\n"))
    assert cli.main(["hash-passcode", "--passcode-stdin"]) == 0
    stored = capsys.readouterr().out.strip()
    assert verify_passcode(stored, b"wonderland") and "wonderland" not in stored
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert cli.main(["hash-passcode", "--passcode-stdin"]) == 2  # an empty passcode is a usage error


def test_serve_settings_from_toml(tmp_path: Path) -> None:
    from chromanet.apps.cli import build_parser, load_node_config

    config = tmp_path / "node.toml"
    config.write_text(
        "[access]\ndefault_operations = []\n"
        '[[peers]]\nname = "ct"\nae_title = "CT1"\noperations = ["store", "find"]\n'
        f'[users]\nalice = {{ passcode_hash = "{hash_passcode("x")}" }}\n'
    )
    loaded = load_node_config(build_parser().parse_args(["serve", "--config", str(config)]))
    assert loaded.require_called_aet is True
    assert loaded.access.default_operations == frozenset()
    assert [(r.name, r.ae_title, r.operations) for r in loaded.access.rules] == [("ct", "CT1", {"store", "find"})]
    assert set(loaded.access.identity.users) == {"alice"}
    flags = load_node_config(build_parser().parse_args(
        ["serve", "--config", str(config), "--default-access", "echo,store", "--no-require-called-aet"]))
    assert flags.access.default_operations == {"echo", "store"} and flags.require_called_aet is False
    default = load_node_config(build_parser().parse_args(["serve"]))
    assert default.access.default_operations == {"echo", "find", "get"}


def test_failure_memory_is_bounded(alice_hash: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Failures are remembered per host, for a bounded number of hosts: a
    guesser with many addresses cannot grow the node's memory."""
    import chromanet.apps.access as access

    monkeypatch.setattr(access, "_FAILING_HOSTS_KEPT", 8)
    policy = policy_from_settings(None, None, None, {"scanner": {}})
    for n in range(20):
        assert _admit(policy, identity=_identity(1, b"nobody"), host=f"10.8.0.{n}").rejection == (1, 1, 1)
    assert len(policy._failures) <= 8  # noqa: SLF001 (the bound itself is what is tested)
    assert "10.8.0.19" in policy._failures  # noqa: SLF001 (the newest kept)


def test_passcodes_are_hashed_on_their_own_threads(alice_hash: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not on the event loop, and not in the default executor that ingests
    C-STOREs: a login storm must not delay stores."""
    import threading

    import chromanet.apps.access as access

    threads: list[str] = []
    real = access.verify_passcode

    def recording(stored: str, passcode: bytes) -> bool:
        threads.append(threading.current_thread().name)
        return real(stored, passcode)

    monkeypatch.setattr(access, "verify_passcode", recording)
    policy = policy_from_settings(None, None, None, {"alice": {"passcode_hash": alice_hash}})
    assert _admit(policy, identity=_identity(2, b"alice", b"wonderland"), host="10.6.0.1").rejection is None
    assert len(threads) == 1 and threads[0].startswith("chromanet-kdf")
