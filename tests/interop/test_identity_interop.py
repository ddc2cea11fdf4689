"""User identity and per-peer permissions against a real peer: DCMTK's
storescu sends User Identity negotiation (username and passcode, a JWT) to
``chromanet serve`` configured from TOML, and chromanet's own CLI does the
same. What a peer may do follows the [[peers]] rule its verified user
matches; a refused identity rejects the association."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pydicom
import pytest
from pydicom.uid import generate_uid

from chromanet.apps.access import hash_passcode
from helpers.dcmtk import require_dcmtk
from helpers.servers import free_port, subprocess_server

JWT_KEY = b"0123456789abcdef0123456789abcdef"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(user: str) -> str:
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps({"sub": user, "aud": "CHROMANET", "exp": time.time() + 600}).encode())
    signature = _b64(hmac.new(JWT_KEY, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A node that lets unknown peers only echo; alice (by passcode) and
    carol (by JWT) may do everything."""
    base = tmp_path_factory.mktemp("identity-node")
    (base / "jwt.key").write_bytes(JWT_KEY)
    port = free_port()
    (base / "node.toml").write_text(
        f'port = {port}\nbind_address = "127.0.0.1"\ndata_dir = "{base / "data"}"\n'
        '[access]\ndefault_operations = ["echo"]\n'
        '[[peers]]\nname = "alice"\nuser = "alice"\noperations = ["all"]\n'
        '[[peers]]\nname = "carol"\nuser = "carol"\noperations = ["find", "store"]\n'
        f'[users]\nalice = {{ passcode_hash = "{hash_passcode("wonderland")}" }}\n'
        '[identity.jwt]\nkey_file = "jwt.key"\naudience = "CHROMANET"\n'
    )
    args = [sys.executable, "-m", "chromanet.apps.cli", "serve", "--config", str(base / "node.toml")]
    with subprocess_server(args, port):
        yield port


def _palette(tmp_path: Path, label: str) -> tuple[Path, str]:
    ds = pydicom.dcmread(pydicom.data.get_palette_files("hotiron.dcm")[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.ContentLabel = label
    path = tmp_path / f"{label}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, ds.SOPInstanceUID


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chromanet.apps.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})  # fmt: skip


def _found(port: int, label: str) -> list[str]:
    found = _cli("find", "127.0.0.1", str(port), "--username", "alice", "--passcode-env", "PW",
                 "-k", f"ContentLabel={label}", env={"PW": "wonderland"})  # fmt: skip
    assert found.returncode == 0, found.stderr
    return [line.split()[0] for line in found.stdout.splitlines()]


def test_dcmtk_storescu_with_username_and_passcode(node: int, tmp_path: Path) -> None:
    storescu = require_dcmtk("storescu")
    path, uid = _palette(tmp_path, "BY_ALICE")
    stored = subprocess.run([storescu, "-R", "-aec", "CHROMANET", "--user", "alice", "--password", "wonderland",
                             "--pos-response", "127.0.0.1", str(node), str(path)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert _found(node, "BY_ALICE") == [uid]

    wrong = subprocess.run([storescu, "-R", "-aec", "CHROMANET", "--user", "alice", "--password", "looking-glass",
                            "127.0.0.1", str(node), str(_palette(tmp_path, "WRONG")[0])],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert wrong.returncode != 0 and "Reject" in wrong.stdout + wrong.stderr
    assert _found(node, "WRONG") == []

    # No identity: an unknown peer, which may only echo; the store is refused (0x0124).
    anonymous = subprocess.run([storescu, "-R", "-aec", "CHROMANET", "127.0.0.1", str(node),
                                str(_palette(tmp_path, "ANONYMOUS")[0])],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
    assert anonymous.returncode != 0  # storescu exits 1 on a failure status
    assert _found(node, "ANONYMOUS") == []


def test_dcmtk_storescu_with_a_jwt(node: int, tmp_path: Path) -> None:
    storescu = require_dcmtk("storescu")
    token = tmp_path / "token.jwt"
    token.write_text(_jwt("carol"))
    path, uid = _palette(tmp_path, "BY_CAROL")
    stored = subprocess.run([storescu, "-R", "-aec", "CHROMANET", "--jwt", str(token), "127.0.0.1", str(node), str(path)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert _found(node, "BY_CAROL") == [uid]
    forged = tmp_path / "forged.jwt"
    forged.write_text(_jwt("carol")[:-4] + "AAAA")
    refused = subprocess.run([storescu, "-R", "-aec", "CHROMANET", "--jwt", str(forged), "127.0.0.1", str(node),
                              str(_palette(tmp_path, "FORGED")[0])], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0


def test_chromanet_cli_identity_and_permissions(node: int, tmp_path: Path) -> None:
    alice = ["--username", "alice", "--passcode-env", "PW", "--identity-response"]
    assert _cli("echo", "127.0.0.1", str(node), *alice, env={"PW": "wonderland"}).returncode == 0
    refused = _cli("echo", "127.0.0.1", str(node), *alice, env={"PW": "nope"})
    assert refused.returncode == 1 and "rejected" in refused.stderr
    # Carol may find and store, not get; an unknown peer may echo, not find.
    token = tmp_path / "carol.jwt"
    token.write_text(_jwt("carol"))
    assert _cli("find", "127.0.0.1", str(node), "--jwt", str(token), "-k", "ContentLabel=HOT*").returncode == 0
    got = _cli("get", "127.0.0.1", str(node), "--jwt", str(token), "-k", "SOPInstanceUID=1.2.840.10008.1.5.1",
               "-od", str(tmp_path / "got"))
    assert got.returncode == 1 and "0x0124" in got.stdout + got.stderr
    assert _cli("echo", "127.0.0.1", str(node)).returncode == 0
    stranger = _cli("find", "127.0.0.1", str(node), "-k", "ContentLabel=HOT*")
    assert stranger.returncode == 1 and "0x0124" in stranger.stdout + stranger.stderr
