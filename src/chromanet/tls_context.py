"""TLS contexts for DICOM's Secure Transport Connection Profiles (PS3.15 Annex B).

``server_context`` and ``client_context`` build ``ssl.SSLContext`` objects
that follow the "BCP 195 Non-downgrading" profile of PS3.15 (B.9): TLS 1.2
or later only (no fallback to TLS 1.0/1.1 or SSL), and for TLS 1.2 only
forward-secret AEAD suites, ECDHE or DHE key exchange with AES-GCM (the four
RSA suites the profile lists, plus their ECDSA twins so that an ECDSA
certificate works too). TLS 1.3 uses OpenSSL's suites, all AEAD. Compression
and renegotiation are off.

The contexts are ordinary ``ssl.SSLContext`` objects: pass them where
pynetdicom takes one (``AE.start_server(..., ssl_context=ctx)``,
``AE.associate(..., tls_args=(ctx, server_name))``) and adjust them as any
other (``load_dh_params`` to enable the DHE suites on a server, for one).
The conventional port of DICOM over TLS is 2762 (``DICOM_TLS_PORT``).
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["BCP195_TLS12_CIPHERS", "DICOM_TLS_PORT", "client_context", "server_context"]

#: IANA's port for DICOM over TLS ("dicom-tls").
DICOM_TLS_PORT = 2762

#: The TLS 1.2 cipher suites (OpenSSL names) of the BCP 195 Non-downgrading
#: profile: TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
#: TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_DHE_RSA_WITH_AES_128_GCM_SHA256,
#: TLS_DHE_RSA_WITH_AES_256_GCM_SHA384, and the ECDHE_ECDSA variants.
BCP195_TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    ]
)

PathLike = str | Path


def _apply_profile(context: ssl.SSLContext) -> ssl.SSLContext:
    """TLS 1.2+, the BCP 195 suites, no compression, no renegotiation."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return context


def server_context(
    certificate: PathLike,
    private_key: PathLike | None = None,
    ca_bundle: PathLike | None = None,
    require_client_certificate: bool = False,
    password: str | None = None,
) -> ssl.SSLContext:
    """A context for an acceptor (``start_server(..., ssl_context=...)``).

    ``certificate`` is the PEM certificate (chain) the node presents,
    ``private_key`` its key (None: in the certificate file). With
    ``ca_bundle`` a client certificate is checked against those CAs when
    the client sends one; ``require_client_certificate`` (mutual TLS) makes
    one mandatory: a client without a certificate signed by ``ca_bundle``
    fails the handshake.
    """
    if require_client_certificate and ca_bundle is None:
        raise ValueError("requiring client certificates needs a CA bundle to verify them against")
    context = _apply_profile(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(str(certificate), str(private_key) if private_key is not None else None, password)
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    return context


def client_context(
    ca_bundle: PathLike | None = None,
    certificate: PathLike | None = None,
    private_key: PathLike | None = None,
    check_hostname: bool = True,
    password: str | None = None,
) -> ssl.SSLContext:
    """A context for a requestor (``associate(..., tls_args=(ctx, name))``).

    The server's certificate is always verified: against ``ca_bundle``, or
    the system's CAs without one. ``check_hostname`` also requires it to
    name the host connected to (or the ``server_hostname`` given with the
    context); turn it off for peers known by a certificate that does not
    carry their address. ``certificate`` (and ``private_key``) is ours, for
    servers that require client certificates (mutual TLS).
    """
    context = _apply_profile(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = check_hostname
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if certificate is not None:
        context.load_cert_chain(str(certificate), str(private_key) if private_key is not None else None, password)
    elif private_key is not None:
        raise ValueError("a private key without its certificate")
    return context
