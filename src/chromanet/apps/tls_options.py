"""TLS settings of the applications: ``chromanet serve``'s ``[tls]`` table
and flags, the TLS flags of the SCU commands and ``chromanet bench``, and
the C-MOVE destinations reached over TLS.

Every context is built by ``chromanet.tls_context`` (TLS 1.2+, the BCP 195
Non-downgrading suites of PS3.15 B.9). The settings themselves are plain
paths and flags (picklable: ``chromanet bench`` hands them to its worker
processes, each building its own context).
"""

from __future__ import annotations

import argparse
import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from chromanet.tls_context import DICOM_TLS_PORT, client_context, server_context

__all__ = [
    "ClientTls",
    "MoveDestination",
    "NodeTls",
    "add_client_tls_arguments",
    "add_serve_tls_arguments",
    "apply_serve_tls_arguments",
    "client_tls_from_args",
    "move_destination_from_flag",
    "move_destination_from_toml",
    "node_tls_from_table",
]


@contextlib.contextmanager
def _loading() -> Iterator[None]:
    """A certificate, key or CA file that cannot be read or does not fit is
    a configuration error (ValueError: the commands say it in one line)."""
    try:
        yield
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TLS certificate, key or CA bundle: {exc}") from exc


# ------------------------------------------------------------ requestors
@dataclass
class ClientTls:
    """How an SCU command connects over TLS."""

    ca_bundle: str | None = None
    certificate: str | None = None
    private_key: str | None = None
    server_name: str | None = None  # None: the host connected to
    check_hostname: bool = True

    def tls_args(self) -> tuple[ssl.SSLContext, str | None]:
        """``associate(..., tls_args=...)``'s (context, server_hostname)."""
        with _loading():
            context = client_context(self.ca_bundle, self.certificate, self.private_key, self.check_hostname)
        return context, self.server_name


def add_client_tls_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS (PS3.15 Secure Transport Connection, BCP 195 profile)")
    group.add_argument("--tls", action="store_true", help="connect over TLS (the peer's TLS port, usually 2762)")
    group.add_argument("--tls-ca", metavar="FILE", help="CA certificates (PEM) that verify the peer (implies --tls; "
                       "default: the system's)")
    group.add_argument("--tls-certificate", metavar="FILE",
                       help="our certificate (PEM), for peers that require one (mutual TLS; implies --tls)")
    group.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-certificate (default: in it)")
    group.add_argument("--tls-server-name", metavar="NAME",
                       help="the name the peer's certificate must carry (default: HOST)")
    group.add_argument("--no-hostname-check", action="store_true",
                       help="verify the peer's certificate chain but not the name in it")


def client_tls_from_args(args: argparse.Namespace) -> ClientTls | None:
    """The TLS settings the flags ask for, or None for plain TCP."""
    wanted = args.tls or args.tls_ca or args.tls_certificate
    if not wanted:
        if args.tls_key or args.tls_server_name or args.no_hostname_check:
            raise ValueError("--tls-key, --tls-server-name and --no-hostname-check need --tls")
        return None
    if args.tls_key and not args.tls_certificate:
        raise ValueError("--tls-key needs --tls-certificate")
    return ClientTls(args.tls_ca, args.tls_certificate, args.tls_key, args.tls_server_name,
                     not args.no_hostname_check)


# ------------------------------------------------------------------ node
@dataclass
class NodeTls:
    """``chromanet serve``'s TLS: a listener when ``certificate`` is set, and
    the client side of C-MOVE sub-associations to destinations marked tls.

    ``ca_bundle`` verifies client certificates (mandatory ones with
    ``require_client_certificate``) and the move destinations' server
    certificates; the node presents ``certificate`` both ways.
    """

    port: int = DICOM_TLS_PORT
    certificate: Path | None = None
    private_key: Path | None = None
    ca_bundle: Path | None = None
    require_client_certificate: bool = False
    handshake_timeout: float = 30.0
    # C-MOVE destinations' certificates must name the host connected to.
    check_hostname: bool = True

    @property
    def listening(self) -> bool:
        return self.certificate is not None

    def server_context(self) -> ssl.SSLContext:
        if self.certificate is None:
            raise ValueError("a TLS listener needs a certificate ([tls] certificate, --tls-certificate)")
        with _loading():
            return server_context(self.certificate, self.private_key, self.ca_bundle,
                                  self.require_client_certificate)

    def client_context(self) -> ssl.SSLContext:
        """For C-MOVE destinations marked tls."""
        with _loading():
            return client_context(self.ca_bundle, self.certificate, self.private_key, self.check_hostname)


_PATH_KEYS = {"certificate", "private_key", "ca_bundle"}


def node_tls_from_table(table: dict[str, Any], where: str) -> NodeTls:
    """The ``[tls]`` table of a node configuration file."""
    if not isinstance(table, dict):
        raise ValueError(f"tls in {where} must be a table ([tls])")
    settings = NodeTls()
    for key, value in table.items():
        if key in _PATH_KEYS:
            setattr(settings, key, Path(value))
        elif key in ("port", "require_client_certificate", "handshake_timeout", "check_hostname"):
            setattr(settings, key, value)
        else:
            raise ValueError(f"unknown setting {key!r} in the [tls] table of {where}")
    return settings


def add_serve_tls_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS (PS3.15 Secure Transport Connection, BCP 195 profile)")
    group.add_argument("--tls-port", type=int, metavar="N",
                       help=f"the TLS listener's port (default {DICOM_TLS_PORT}; listens when a certificate is set)")
    group.add_argument("--tls-certificate", type=Path, metavar="FILE",
                       help="the node's certificate (PEM chain): turns the TLS listener on")
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (default: in the certificate)")
    group.add_argument("--tls-ca", type=Path, metavar="FILE",
                       help="CA certificates (PEM) verifying client certificates and TLS move destinations")
    group.add_argument("--tls-require-client-certificate", action="store_true", default=None,
                       help="mutual TLS: refuse clients without a certificate signed by --tls-ca")
    group.add_argument("--tls-handshake-timeout", type=float, metavar="S",
                       help="seconds a TLS handshake may take (default 30)")
    group.add_argument("--no-hostname-check", action="store_true", default=None,
                       help="TLS move destinations: verify the certificate chain but not the name in it")
    group.add_argument("--no-plain", action="store_true", help="no plain TCP listener: TLS only")
    group.add_argument("--move-dest-tls", action="append", default=[], metavar="AET=HOST:PORT",
                       help="a C-MOVE destination reached over TLS (repeatable)")


def apply_serve_tls_arguments(tls: NodeTls, args: argparse.Namespace) -> None:
    """Flags over what the file said."""
    for flag, key in (("tls_port", "port"), ("tls_certificate", "certificate"), ("tls_key", "private_key"),
                      ("tls_ca", "ca_bundle"), ("tls_require_client_certificate", "require_client_certificate"),
                      ("tls_handshake_timeout", "handshake_timeout")):
        value = getattr(args, flag, None)
        if value is not None:
            setattr(tls, key, value)
    if getattr(args, "no_hostname_check", None):
        tls.check_hostname = False


# ------------------------------------------------------- move destinations
class MoveDestination(NamedTuple):
    """Where the node sends a C-MOVE's instances; ``tls``: over TLS."""

    host: str
    port: int
    tls: bool = False


def move_destination_from_toml(aet: str, value: Any) -> MoveDestination:
    """``AET = ["host", port]`` or ``AET = {host = "...", port = N, tls = true}``."""
    if isinstance(value, dict):
        unknown = set(value) - {"host", "port", "tls"}
        if unknown or "host" not in value or "port" not in value:
            raise ValueError(f"move destination {aet}: use {{host = \"...\", port = N, tls = true|false}}")
        return MoveDestination(str(value["host"]), int(value["port"]), bool(value.get("tls", False)))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return MoveDestination(str(value[0]), int(value[1]))
    raise ValueError(f"move destination {aet}: use [\"host\", port] or {{host = ..., port = ..., tls = ...}}")


def move_destination_from_flag(entry: str, tls: bool, flag: str) -> tuple[str, MoveDestination]:
    """``AET=HOST:PORT`` of ``--move-dest`` / ``--move-dest-tls``."""
    aet, sep, where = entry.partition("=")
    host, colon, port = where.rpartition(":")
    if not sep or not colon or not port.isdigit():
        raise ValueError(f"bad {flag} {entry!r}: use AET=HOST:PORT")
    return aet, MoveDestination(host, int(port), tls)
