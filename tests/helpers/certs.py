"""Throw-away X.509 certificates for the TLS tests, made with the openssl CLI.

``make_pki(directory)`` writes, into a temporary directory, a CA, a server
certificate for 127.0.0.1 and localhost (subjectAltName) signed by it, a
client certificate signed by it, and a second, unrelated CA with a client
certificate of its own (a peer the first CA does not know). Keys are RSA
2048 (what every peer here, DCMTK's BCP 195 profile included, accepts) and
are never written outside the test's directory.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

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
