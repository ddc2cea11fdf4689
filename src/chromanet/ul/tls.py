"""What a TLS connection tells about its peer (PS3.15 Annex B).

The Upper Layer runs on TCP or on TLS alike; ``TlsInfo`` is what the layers
above may know of the secure transport: the protocol version and cipher
negotiated, and the peer's certificate subject when it presented one (a
server always does; a client only when asked, in mutual TLS). The access
policy matches the subject, the audit trail records it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TlsInfo:
    """The negotiated TLS parameters of one connection."""

    version: str
    cipher: str
    #: The peer certificate's subject as an RFC 4514 style string
    #: ("CN=modality-1,O=Hospital"), or None without a peer certificate.
    peer_subject: str | None = None
    #: The peer certificate as ``ssl.SSLSocket.getpeercert()`` returns it.
    peer_certificate: dict[str, Any] | None = None


def subject_text(certificate: dict[str, Any] | None) -> str | None:
    """The subject of a ``getpeercert()`` dict, most specific part first
    (the RFC 4514 order: "CN=node,O=Hospital,C=NL")."""
    if not certificate:
        return None
    parts = []
    for rdn in reversed(certificate.get("subject", ())):
        for key, value in rdn:
            parts.append(f"{_SHORT_NAMES.get(key, key)}={value}")
    return ",".join(parts) or None


_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "emailAddress": "emailAddress",
    "domainComponent": "DC",
}


def tls_info_of(transport: Any) -> TlsInfo | None:
    """The TlsInfo of an asyncio transport, or None for plain TCP."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    certificate = ssl_object.getpeercert() or None
    return TlsInfo(
        version=str(ssl_object.version()),
        cipher=str(cipher[0]) if cipher else "",
        peer_subject=subject_text(certificate),
        peer_certificate=certificate,
    )


__all__ = ["TlsInfo", "subject_text", "tls_info_of"]
