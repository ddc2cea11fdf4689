"""Who may do what on the node: verified user identity and per-peer rules.

The node's admission check (``AccessPolicy.admit``) runs for every
A-ASSOCIATE-RQ after the standard's checks (titles, contexts, the called AE
title) and before the A-ASSOCIATE-AC:

1. **User identity** (PS3.7 D.3.3.7). With users or a verifier configured,
   an identity item is checked: a username (type 1) against the users table,
   a username and passcode (type 2) against its salted scrypt hash, a JSON
   Web Token (type 5) against a shared HMAC key, and anything else (Kerberos,
   SAML, or all types when it is the only verifier) by a pluggable verifier.
   A failed check rejects the association (1, 1, 1); the positive response
   is sent when the requestor asked for it. Without any identity
   configuration the item is ignored, as PS3.7 tells an acceptor that does
   not support user identity to do. Password hashing runs off the event loop
   on two threads of its own, and a host that fails too often is refused
   without hashing for a while.
2. **Peer rules**, in the order written: the first rule whose every given
   criterion matches (calling AE title, address or network, TLS certificate
   subject, verified user) decides what the peer may do (echo, find, get,
   move, store), where it may move to, and whether its stores may replace
   palettes another peer stored. A peer no rule matches gets the default
   policy. A peer that may do nothing is rejected (1, 1, 3: calling AE title
   not recognised).

The result is a ``Grant``, kept on the association (``assoc.admission``);
the node's handlers consult it and answer an operation it does not allow
with 0x0124 (Refused: Not Authorized, PS3.7 Annex C).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import importlib
import inspect
import ipaddress
import json
import logging
import os
import secrets
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from chromanet.logutil import peer_log
from chromanet.ul.acse import Admission, AdmissionRequest

LOGGER = logging.getLogger("chromanet.access")

OPERATIONS = ("echo", "find", "get", "move", "store")

# A-ASSOCIATE-RJ answers (result, source, reason): permanent, service user.
REJECT_IDENTITY = (1, 1, 1)  # no reason given: the user identity failed
REJECT_UNKNOWN_PEER = (1, 1, 3)  # calling AE title not recognised

# User identity types (PS3.7 D.3.3.7.1).
USERNAME, USERNAME_AND_PASSCODE, KERBEROS, SAML, JWT = 1, 2, 3, 4, 5

# scrypt cost (RFC 7914): 2^14 x 8 takes ~16 MiB and some tens of ms, which
# is what an offline attack on a stolen config has to pay per guess.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_HASH_SCHEME = "scrypt"

# Failed identity checks: at most this many per host per window, then the
# host's further attempts are refused without checking until the window
# has passed (no CPU spent on a guesser).
_FAILURES_PER_HOST = 5
_FAILURE_WINDOW = 60.0
_REMEMBERED_SUCCESSES = 256
# Hosts whose recent failures are remembered at most (memory stays bounded
# whatever number of addresses a guesser uses).
_FAILING_HOSTS_KEPT = 10_000


class AccessConfigError(ValueError):
    """The access or identity settings are not valid."""


# ------------------------------------------------------------ passcodes
def hash_passcode(passcode: str, *, salt: bytes | None = None) -> str:
    """The stored form of ``passcode``: ``scrypt$N$r$p$salt$hash`` (base64).
    What the config holds instead of the passcode (``chromanet hash-passcode``)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(passcode.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    encoded = [base64.b64encode(part).decode("ascii") for part in (salt, digest)]
    return f"{_HASH_SCHEME}${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${encoded[0]}${encoded[1]}"


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != _HASH_SCHEME:
            raise ValueError(scheme)
        return int(n), int(r), int(p), base64.b64decode(salt, validate=True), base64.b64decode(digest, validate=True)
    except ValueError as exc:
        raise AccessConfigError(f"not a passcode hash from 'chromanet hash-passcode': {stored[:20]!r}…") from exc


def verify_passcode(stored: str, passcode: bytes) -> bool:
    """Whether ``passcode`` (as received, UTF-8) matches the stored hash."""
    n, r, p, salt, digest = _parse_hash(stored)
    try:
        candidate = hashlib.scrypt(passcode, salt=salt, n=n, r=r, p=p, dklen=len(digest), maxmem=256 * 1024 * 1024)
    except ValueError:
        return False
    return hmac.compare_digest(candidate, digest)


# ------------------------------------------------------------------ JWT
def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


_JWT_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


@dataclass(frozen=True)
class JwtSettings:
    """A JSON Web Token (RFC 7519) signed with a shared key (HS256/384/512).

    ``user_claim`` names the claim holding the username; ``issuer`` and
    ``audience``, when set, must match. ``exp`` is required.
    """

    key: bytes
    issuer: str | None = None
    audience: str | None = None
    user_claim: str = "sub"
    leeway: float = 30.0

    def verify(self, token: bytes, now: float | None = None) -> str | None:
        """The username the token asserts, or None when it does not verify."""
        try:
            header_b64, payload_b64, signature_b64 = token.decode("ascii").split(".")
            header = json.loads(_b64url(header_b64))
            digest = _JWT_HASHES.get(header.get("alg"))
            if digest is None:  # "none", RS256…: not ours to accept
                return None
            expected = hmac.new(self.key, f"{header_b64}.{payload_b64}".encode("ascii"), digest).digest()
            if not hmac.compare_digest(expected, _b64url(signature_b64)):
                return None
            claims = json.loads(_b64url(payload_b64))
        except (ValueError, UnicodeError, AttributeError, TypeError):
            return None
        if not isinstance(claims, dict):
            return None
        now = time.time() if now is None else now
        expires = claims.get("exp")
        if not isinstance(expires, (int, float)) or now > expires + self.leeway:
            return None
        not_before = claims.get("nbf")
        if isinstance(not_before, (int, float)) and now + self.leeway < not_before:
            return None
        if self.issuer is not None and claims.get("iss") != self.issuer:
            return None
        if self.audience is not None:
            audience = claims.get("aud")
            if audience != self.audience and not (isinstance(audience, list) and self.audience in audience):
                return None
        user = claims.get(self.user_claim)
        return user if isinstance(user, str) and user else None


# -------------------------------------------------------------- verifier
#: A pluggable identity verifier: (identity type, primary field, secondary
#: field) -> the verified username, or (username, server response bytes), or
#: None to refuse. May be a coroutine function.
Verifier = Callable[[int, bytes, bytes], Any]


def load_verifier(spec: str) -> Verifier:
    """``"package.module:function"`` -> the function."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise AccessConfigError(f"identity verifier must be 'module:function', not {spec!r}")
    try:
        verifier = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise AccessConfigError(f"cannot load identity verifier {spec!r}: {exc}") from exc
    if not callable(verifier):
        raise AccessConfigError(f"identity verifier {spec!r} is not callable")
    return verifier  # type: ignore[no-any-return]


_KDF_THREADS = 2
_kdf_executor: ThreadPoolExecutor | None = None


def _kdf_pool() -> ThreadPoolExecutor:
    """The threads passcode hashes run on: their own few, so that a storm
    of logins neither waits behind nor delays the C-STORE ingest of the
    default executor, and at most a few scrypt buffers (16 MiB each) exist."""
    global _kdf_executor
    if _kdf_executor is None:
        _kdf_executor = ThreadPoolExecutor(max_workers=_KDF_THREADS, thread_name_prefix="chromanet-kdf")
    return _kdf_executor


@dataclass(frozen=True)
class VerifiedUser:
    name: str
    response: bytes = b""


class IdentityVerifier:
    """Checks user identity items against the users table, a JWT key and a
    pluggable verifier (whichever are configured)."""

    def __init__(
        self,
        users: Mapping[str, str | None] | None = None,
        jwt: JwtSettings | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        #: username -> passcode hash, or None for a user known by name only
        #: (identity type 1 accepted).
        self.users = dict(users or {})
        for stored in self.users.values():
            if stored is not None:
                _parse_hash(stored)
        self.jwt = jwt
        self.verifier = verifier
        self._key = secrets.token_bytes(32)
        # (user, keyed digest of the passcode) of recent successes: a peer
        # that associates often pays the hash once, not per association.
        self._recent: OrderedDict[tuple[str, bytes], None] = OrderedDict()

    @property
    def configured(self) -> bool:
        return bool(self.users) or self.jwt is not None or self.verifier is not None

    async def verify(self, identity_type: int, primary: bytes, secondary: bytes) -> VerifiedUser | None:
        if identity_type in (USERNAME, USERNAME_AND_PASSCODE) and self.users:
            return await self._verify_user(identity_type, primary, secondary)
        if identity_type == JWT and self.jwt is not None:
            name = self.jwt.verify(primary)
            return VerifiedUser(name) if name else None
        if self.verifier is not None:
            answer = self.verifier(identity_type, primary, secondary)
            if inspect.isawaitable(answer):
                answer = await answer
            if isinstance(answer, tuple):
                name, response = answer
                return VerifiedUser(str(name), bytes(response or b"")) if name else None
            return VerifiedUser(str(answer)) if answer else None
        return None

    async def _verify_user(self, identity_type: int, primary: bytes, secondary: bytes) -> VerifiedUser | None:
        try:
            name = primary.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if name not in self.users:
            return None
        stored = self.users[name]
        if stored is None:
            # Known by name only: a username identifies, a passcode sent along is not asked for.
            return VerifiedUser(name)
        if identity_type != USERNAME_AND_PASSCODE:
            return None  # this user must give its passcode
        remembered = (name, hmac.new(self._key, stored.encode() + b"\0" + secondary, hashlib.sha256).digest())
        if remembered in self._recent:
            self._recent.move_to_end(remembered)
            return VerifiedUser(name)
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(_kdf_pool(), verify_passcode, stored, secondary):
            return None
        self._recent[remembered] = None
        while len(self._recent) > _REMEMBERED_SUCCESSES:
            self._recent.popitem(last=False)
        return VerifiedUser(name)


# ----------------------------------------------------------------- rules
def _network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise AccessConfigError(f"not an address or network: {value!r}") from exc


def _host_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _subject_parts(subject: str) -> set[tuple[str, str]]:
    """"CN=a, O=b" -> {("cn", "a"), ("o", "b")} (keys case-insensitive)."""
    parts = set()
    for piece in subject.split(","):
        key, sep, value = piece.partition("=")
        if sep:
            parts.add((key.strip().lower(), value.strip()))
    return parts


def _operations(values: Iterable[str], where: str) -> frozenset[str]:
    chosen = set()
    for value in values:
        value = str(value).strip().lower()
        if value == "all":
            chosen.update(OPERATIONS)
        elif value in OPERATIONS:
            chosen.add(value)
        else:
            raise AccessConfigError(f"{where}: unknown operation {value!r} (one of {', '.join(OPERATIONS)}, all)")
    return frozenset(chosen)


def _destinations(values: Iterable[str] | None) -> frozenset[str] | None:
    if values is None:
        return None
    chosen = frozenset(str(v).strip() for v in values)
    return None if "*" in chosen else chosen


@dataclass(frozen=True)
class PeerRule:
    """One entry of the peers table: criteria, and what a match may do."""

    name: str
    operations: frozenset[str]
    ae_title: str | None = None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    tls_subject: str | None = None
    user: str | None = None
    #: Move destinations this peer may use; None: every configured one.
    move_destinations: frozenset[str] | None = None
    may_replace_others: bool = False

    def matches(self, calling: str, host: str, tls_subject: str | None, user: str | None) -> bool:
        if self.ae_title is not None and calling != self.ae_title:
            return False
        if self.networks:
            address = _host_address(host)
            if address is None or not any(address in network for network in self.networks):
                return False
        if self.tls_subject is not None:
            if tls_subject is None or not _subject_parts(self.tls_subject) <= _subject_parts(tls_subject):
                return False
        if self.user is not None and user != self.user:
            return False
        return True


@dataclass(frozen=True)
class Grant:
    """What one association's peer may do (kept on ``assoc.admission``)."""

    #: The peer's name as the archive records it as an owner:
    #: "peer:<rule name>" or, for a peer no rule matched, "ae:<calling AE>".
    peer: str
    operations: frozenset[str]
    move_destinations: frozenset[str] | None = None
    may_replace_others: bool = False
    #: The verified user, or None.
    user: str | None = None
    #: The rule that matched, or None for the default policy.
    rule: str | None = None

    def allows(self, operation: str) -> bool:
        return operation in self.operations

    def allows_destination(self, ae_title: str) -> bool:
        return self.move_destinations is None or ae_title in self.move_destinations


#: What the library-level default (no policy) grants: everything.
OPEN_GRANT = Grant(peer="", operations=frozenset(OPERATIONS), may_replace_others=True)


@dataclass
class AccessPolicy:
    """The node's admission check: identity, then the peers table."""

    rules: list[PeerRule] = field(default_factory=list)
    #: What a peer no rule matches may do (empty: it is rejected).
    default_operations: frozenset[str] = frozenset(OPERATIONS)
    default_move_destinations: frozenset[str] | None = None
    default_may_replace_others: bool = False
    identity: IdentityVerifier = field(default_factory=IdentityVerifier)
    #: Reject associations without a verified user identity.
    require_user_identity: bool = False

    def __post_init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}

    # -- admission -------------------------------------------------------
    async def admit(self, request: AdmissionRequest) -> Admission:
        rq = request.rq
        host = request.peer_address[0]
        calling = rq.calling_ae_title.strip(" ")
        item = rq.user_information.user_identity_rq
        user: str | None = None
        response: bytes | None = None
        if item is not None and self.identity.configured:
            if self._locked_out(host):
                return self._refuse(host, calling, REJECT_IDENTITY, "too many failed user identity checks",
                                    user_verified=False)
            verified = await self.identity.verify(item.identity_type, bytes(item.primary_field),
                                                  bytes(item.secondary_field or b""))
            if verified is None:
                self._count_failure(host)
                return self._refuse(host, calling, REJECT_IDENTITY,
                                    f"user identity (type {item.identity_type}) refused", user_verified=False)
            user, response = verified.name, verified.response
        if user is None and self.require_user_identity:
            return self._refuse(host, calling, REJECT_IDENTITY, "no verified user identity", user_verified=False)
        tls_subject = request.tls.peer_subject if request.tls is not None else None
        grant = self.grant_for(calling, host, tls_subject, user)
        verified_flag = True if user is not None else None
        if not grant.operations:
            why = f"rule {grant.rule!r} grants nothing" if grant.rule else "unknown peer, and the default grants nothing"
            return self._refuse(host, calling, REJECT_UNKNOWN_PEER, why, user_verified=verified_flag, user=user)
        LOGGER.debug("%s from %s admitted as %s: %s", calling, host, grant.peer, sorted(grant.operations))
        details = {"user_verified": verified_flag, "user": user, "peer": grant.peer, "rule": grant.rule,
                   "operations": sorted(grant.operations)}
        return Admission(identity_response=response, grant=grant, details=details)

    def grant_for(self, calling: str, host: str, tls_subject: str | None, user: str | None) -> Grant:
        for rule in self.rules:
            if rule.matches(calling, host, tls_subject, user):
                return Grant(
                    peer=f"peer:{rule.name}",
                    operations=rule.operations,
                    move_destinations=rule.move_destinations,
                    may_replace_others=rule.may_replace_others,
                    user=user,
                    rule=rule.name,
                )
        return Grant(
            peer=f"ae:{calling}",
            operations=self.default_operations,
            move_destinations=self.default_move_destinations,
            may_replace_others=self.default_may_replace_others,
            user=user,
        )

    @staticmethod
    def _refuse(host: str, calling: str, rejection: tuple[int, int, int], why: str, *,
                user_verified: bool | None = None, user: str | None = None) -> Admission:
        peer_log(LOGGER, logging.WARNING, host, "refusing %s from %s: %s", calling, host, why)
        details = {"user_verified": user_verified, "user": user, "refused": why}
        return Admission(rejection=rejection, reason=why, details=details)

    def _locked_out(self, host: str) -> bool:
        failures = self._failures.get(host)
        if not failures:
            return False
        horizon = time.monotonic() - _FAILURE_WINDOW
        while failures and failures[0] < horizon:
            failures.popleft()
        if not failures:
            del self._failures[host]
        return len(failures) >= _FAILURES_PER_HOST

    def _count_failure(self, host: str) -> None:
        now = time.monotonic()
        if host not in self._failures and len(self._failures) >= _FAILING_HOSTS_KEPT:
            # Many hosts failing (addresses are cheap in IPv6): forget those
            # whose failures are past the window, else the oldest.
            horizon = now - _FAILURE_WINDOW
            for stale in [h for h, times in self._failures.items() if times[-1] < horizon]:
                del self._failures[stale]
            if len(self._failures) >= _FAILING_HOSTS_KEPT:
                del self._failures[min(self._failures, key=lambda h: self._failures[h][-1])]
        self._failures.setdefault(host, deque(maxlen=_FAILURES_PER_HOST)).append(now)


# ---------------------------------------------------------------- config
def _read_key(settings: Mapping[str, Any], base: Path) -> bytes:
    if "key_file" in settings:
        path = Path(settings["key_file"])
        return (path if path.is_absolute() else base / path).read_bytes().strip()
    if "key_env" in settings:
        value = os.environ.get(str(settings["key_env"]))
        if not value:
            raise AccessConfigError(f"identity.jwt: environment variable {settings['key_env']} is not set")
        return value.encode("utf-8")
    raise AccessConfigError("identity.jwt needs key_file or key_env (the key is never written in the config)")


def policy_from_settings(
    access: Mapping[str, Any] | None,
    peers: Iterable[Mapping[str, Any]] | None,
    identity: Mapping[str, Any] | None,
    users: Mapping[str, Any] | None,
    *,
    base: Path = Path("."),
) -> AccessPolicy:
    """An AccessPolicy from the TOML tables ``[access]``, ``[[peers]]``,
    ``[identity]`` and ``[users]`` (see the README)."""
    access = dict(access or {})
    rules = []
    for number, entry in enumerate(peers or (), 1):
        entry = dict(entry)
        where = f"peers entry {number}"
        unknown = set(entry) - {"name", "ae_title", "address", "tls_subject", "user", "operations",
                                "move_destinations", "may_replace_others"}
        if unknown:
            raise AccessConfigError(f"{where}: unknown keys {sorted(unknown)}")
        addresses = entry.get("address", [])
        addresses = [addresses] if isinstance(addresses, str) else list(addresses)
        ae_title = entry.get("ae_title")
        name = entry.get("name") or ae_title or entry.get("user") or entry.get("tls_subject") or f"entry-{number}"
        rules.append(
            PeerRule(
                name=str(name),
                operations=_operations(entry.get("operations", []), where),
                ae_title=str(ae_title).strip() if ae_title else None,
                networks=tuple(_network(str(a)) for a in addresses),
                tls_subject=str(entry["tls_subject"]) if entry.get("tls_subject") else None,
                user=str(entry["user"]) if entry.get("user") else None,
                move_destinations=_destinations(entry.get("move_destinations")),
                may_replace_others=bool(entry.get("may_replace_others", False)),
            )
        )
    unknown = set(access) - {"default_operations", "default_move_destinations", "default_may_replace_others",
                             "require_user_identity"}
    if unknown:
        raise AccessConfigError(f"[access]: unknown keys {sorted(unknown)}")
    identity = dict(identity or {})
    jwt_settings = identity.get("jwt")
    jwt = None
    if jwt_settings:
        jwt = JwtSettings(
            key=_read_key(jwt_settings, base),
            issuer=jwt_settings.get("issuer"),
            audience=jwt_settings.get("audience"),
            user_claim=str(jwt_settings.get("user_claim", "sub")),
            leeway=float(jwt_settings.get("leeway", 30.0)),
        )
    verifier = load_verifier(str(identity["verifier"])) if identity.get("verifier") else None
    user_hashes: dict[str, str | None] = {}
    for name, entry in (users or {}).items():
        if isinstance(entry, Mapping):
            unknown = set(entry) - {"passcode_hash"}
            if unknown:
                raise AccessConfigError(f"users.{name}: unknown keys {sorted(unknown)} (passcodes are stored hashed)")
            stored = entry.get("passcode_hash")
        else:
            stored = entry
        user_hashes[str(name)] = str(stored) if stored else None
    verifier_set = IdentityVerifier(user_hashes, jwt, verifier)
    if access.get("require_user_identity") and not verifier_set.configured:
        raise AccessConfigError("[access] require_user_identity needs [users], [identity.jwt] or [identity] verifier")
    return AccessPolicy(
        rules=rules,
        default_operations=_operations(access.get("default_operations", OPERATIONS), "[access] default_operations"),
        default_move_destinations=_destinations(access.get("default_move_destinations")),
        default_may_replace_others=bool(access.get("default_may_replace_others", False)),
        identity=verifier_set,
        require_user_identity=bool(access.get("require_user_identity", False)),
    )


__all__ = [
    "AccessConfigError",
    "AccessPolicy",
    "Grant",
    "IdentityVerifier",
    "JwtSettings",
    "OPEN_GRANT",
    "OPERATIONS",
    "PeerRule",
    "hash_passcode",
    "load_verifier",
    "policy_from_settings",
    "verify_passcode",
]


