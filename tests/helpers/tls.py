"""TLS set-up: throw-away X.509 certificates made with the openssl CLI, the
contexts and the peers' TLS options built on them.

``make_pki(directory)`` writes, into a temporary directory, a CA, a server
certificate for 127.0.0.1 and localhost (subjectAltName) signed by it, a
client certificate signed by it, and a second, unrelated CA with a client
certificate of its own (a peer the first CA does not know). Keys are RSA
2048 (what every peer here, DCMTK's BCP 195 profile included, accepts) and
are never written outside the test's directory.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from chromanet.tls_context import client_context, server_context
from helpers.peers import missing_peer


@dataclass(frozen=True)
class KeyPair:
    certificate: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate that signed server and client
    server: KeyPair  # CN=chromanet-test-server, SAN 127.0.0.1 and localhost
    client: KeyPair  # CN=modality-1,O=Chromanet Tests
    other_ca: Path  # an unrelated CA
    stranger: KeyPair  # a client certificate signed by other_ca


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str, subject: str) -> KeyPair:
    pair = KeyPair(directory / f"{name}.pem", directory / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
        "-subj", subject, "-keyout", str(pair.key), "-out", str(pair.certificate),
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    return pair


def _leaf(directory: Path, name: str, subject: str, ca: KeyPair, extensions: str) -> KeyPair:
    pair = KeyPair(directory / f"{name}.pem", directory / f"{name}.key")
    request = directory / f"{name}.csr"
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions)
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
             "-keyout", str(pair.key), "-out", str(request), cwd=directory)
    _openssl("x509", "-req", "-in", str(request), "-CA", str(ca.certificate), "-CAkey", str(ca.key),
             "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(ext_file), "-out", str(pair.certificate),
             cwd=directory)
    return pair


def make_pki(directory: Path) -> Pki:
    """The CAs and certificates described in the module docstring."""
    if shutil.which("openssl") is None:
        missing_peer("the openssl command is not installed (it makes the test certificates)")
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "ca", "/O=Chromanet Tests/CN=Chromanet Test CA")
    server = _leaf(
        directory, "server", "/O=Chromanet Tests/CN=chromanet-test-server", ca,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    client = _leaf(
        directory, "client", "/O=Chromanet Tests/CN=modality-1", ca,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
    other = _ca(directory, "other-ca", "/O=Somebody Else/CN=Unrelated CA")
    stranger = _leaf(
        directory, "stranger", "/O=Somebody Else/CN=stranger", other,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
    return Pki(ca=ca.certificate, server=server, client=client, other_ca=other.certificate, stranger=stranger)


# ---------------------------------------------------------------- contexts
def server_ssl(pki: Pki, mutual: bool = False) -> ssl.SSLContext:
    """The test server's context (BCP 195 profile); ``mutual``: client
    certificates signed by ``pki.ca`` required."""
    return server_context(pki.server.certificate, pki.server.key, pki.ca, require_client_certificate=mutual)


def client_ssl(pki: Pki, identity: KeyPair | None = None, ca: Path | None = None) -> ssl.SSLContext:
    """A client context trusting ``ca`` (default ``pki.ca``), presenting
    ``identity`` when given."""
    certificate, key = (identity.certificate, identity.key) if identity is not None else (None, None)
    return client_context(ca or pki.ca, certificate, key)


def client_tls_flags(pki: Pki, identity: KeyPair | None = None) -> list[str]:
    """The chromanet SCU commands' flags for a TLS association."""
    flags = ["--tls", "--tls-ca", str(pki.ca)]
    if identity is not None:
        flags += ["--tls-certificate", str(identity.certificate), "--tls-key", str(identity.key)]
    return flags


def dcmtk_tls_options(pki: Pki, identity: KeyPair | None) -> list[str]:
    """DCMTK's TLS options (its default profile, BCP 195 Non-downgrading):
    ``+tls key cert`` with ``identity``, anonymous (``+tla``) without;
    the peer is verified against ``pki.ca``."""
    if identity is None:
        return ["+tla", "+cf", str(pki.ca)]
    return ["+tls", str(identity.key), str(identity.certificate), "+cf", str(pki.ca)]
