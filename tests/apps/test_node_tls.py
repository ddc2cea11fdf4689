"""`chromanet serve` over TLS (PS3.15 B.1, BCP 195 profile) as users run it:
a plain and a TLS listener side by side (set by flags), a TLS-only node
with mutual TLS (set by the TOML ``[tls]`` table), C-MOVE destinations
marked tls (table and flag forms) reached over TLS, DCMTK's TLS tools and
``chromanet bench --tls`` against the node; clients that fail the handshake
(plain TCP on the TLS port, TLS on the plain port, no or a foreign client
certificate) fail cleanly and the node keeps serving."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pydicom
import pytest

from helpers.dcmtk import require_dcmtk, storescp_palette_options
from helpers.servers import free_port, subprocess_server, wait_listening
from helpers.tls import Pki, client_tls_flags, dcmtk_tls_options
from helpers.waits import WAIT_TIMEOUT

WELL_KNOWN = {f"1.2.840.10008.1.5.{n}" for n in range(1, 9)}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chromanet.apps.cli", *args], capture_output=True, text=True,
                          timeout=60)  # fmt: skip


@contextlib.contextmanager
def node(args: list[str], wait_port: int, log: Path) -> Iterator[Path]:
    """``chromanet serve ARGS`` until the block ends (SIGTERM); its log in
    ``log``, read by the test after the block."""
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "chromanet.apps.cli", "serve", "--log-level", "INFO", *args],
                                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_listening(wait_port, process, timeout=30)
            yield log
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=WAIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, log.read_text()


def _moved(out: Path) -> set[str]:
    return {pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()}


def test_plain_and_tls_listeners_side_by_side(tmp_path: Path, pki: Pki):
    plain, tls, destination = free_port(), free_port(), free_port()
    args = ["--data-dir", str(tmp_path / "data"), "--bind", "127.0.0.1", "--port", str(plain),
            "--tls-port", str(tls), "--tls-certificate", str(pki.server.certificate),
            "--tls-key", str(pki.server.key), "--tls-ca", str(pki.ca),
            "--move-dest-tls", f"SECURE=127.0.0.1:{destination}", "--default-access", "all"]  # fmt: skip
    trust = client_tls_flags(pki)
    with node(args, plain, tmp_path / "node.log") as log:
        wait_listening(tls)
        assert cli("echo", "127.0.0.1", str(plain)).returncode == 0
        assert cli("echo", "127.0.0.1", str(tls), *trust).returncode == 0
        found = cli("find", "127.0.0.1", str(tls), *trust, "-k", "ContentLabel=*")
        assert found.returncode == 0, found.stderr
        assert {line.split()[0] for line in found.stdout.splitlines()} == WELL_KNOWN
        got = tmp_path / "got"
        fetched = cli("get", "127.0.0.1", str(tls), *trust, "-k", "SOPInstanceUID=1.2.840.10008.1.5.3", "-od", str(got))
        assert fetched.returncode == 0, fetched.stderr
        assert _moved(got) == {"1.2.840.10008.1.5.3"}

        # A plain client on the TLS port and a TLS client on the plain port
        # fail, cleanly; the node serves on.
        assert cli("echo", "127.0.0.1", str(tls), "--timeout", "5").returncode == 1
        assert cli("echo", "127.0.0.1", str(plain), "--timeout", "5", *trust).returncode == 1
        bench = cli("bench", "127.0.0.1", str(tls), "-aec", "CHROMANET", "--op", "echo", "-c", "2", "-n", "20", "-q",
                    *trust)  # fmt: skip
        assert bench.returncode == 0, bench.stdout + bench.stderr

        # The flag form of a TLS move destination: a C-MOVE asked on the
        # plain port goes to storescp over TLS.
        storescp = require_dcmtk("storescp")
        out = tmp_path / "moved"
        out.mkdir()
        with subprocess_server([storescp, *dcmtk_tls_options(pki, pki.server), *storescp_palette_options(),
                                "-od", str(out), str(destination)], destination):  # fmt: skip
            moved = cli("move", "127.0.0.1", str(plain), "-aem", "SECURE", "-k",
                        "SOPInstanceUID=1.2.840.10008.1.5.1\\1.2.840.10008.1.5.2")  # fmt: skip
            assert moved.returncode == 0, moved.stderr
        assert _moved(out) == {"1.2.840.10008.1.5.1", "1.2.840.10008.1.5.2"}
    text = log.read_text()
    assert "listening for TLS on 127.0.0.1:" in text
    assert "TLS handshake with 127.0.0.1:" in text and "WRONG_VERSION_NUMBER" in text
    assert "Traceback" not in text


def test_tls_only_node_with_mutual_tls_from_toml(tmp_path: Path, pki: Pki):
    plain, tls, destination = free_port(), free_port(), free_port()
    config = tmp_path / "node.toml"
    config.write_text(
        f'ae_title = "PALETTES"\nport = {plain}\nbind_address = "127.0.0.1"\ndata_dir = "{tmp_path / "data"}"\n'
        "listen_plain = false\n"
        "[tls]\n"
        f'port = {tls}\ncertificate = "{pki.server.certificate}"\nprivate_key = "{pki.server.key}"\n'
        f'ca_bundle = "{pki.ca}"\nrequire_client_certificate = true\n'
        "[move_destinations]\n"
        f'SECURE = {{host = "127.0.0.1", port = {destination}, tls = true}}\n'
        f'OLD_FORM = ["127.0.0.1", {free_port()}]\n'
        # The client certificate's subject is what names this peer.
        "[[peers]]\n"
        'name = "modality-1"\ntls_subject = "CN=modality-1"\noperations = ["all"]\nmove_destinations = ["SECURE"]\n'
    )
    mutual = client_tls_flags(pki, pki.client)
    with node(["--config", str(config)], tls, tmp_path / "node.log") as log:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", plain), timeout=5).close()
        assert cli("echo", "127.0.0.1", str(tls), "-aec", "PALETTES", *mutual).returncode == 0
        for refused in (client_tls_flags(pki), client_tls_flags(pki, pki.stranger)):
            result = cli("echo", "127.0.0.1", str(tls), "-aec", "PALETTES", "--timeout", "5", *refused)
            assert result.returncode == 1, result.stderr

        # DCMTK into the node over TLS.
        echoscu, storescu = require_dcmtk("echoscu"), require_dcmtk("storescu")
        dcmtk_mutual = dcmtk_tls_options(pki, pki.client)
        echo = subprocess.run([echoscu, *dcmtk_mutual, "-aec", "PALETTES", "127.0.0.1", str(tls)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert echo.returncode == 0, echo.stdout + echo.stderr
        anonymous = subprocess.run([echoscu, *dcmtk_tls_options(pki, None), "-aec", "PALETTES", "127.0.0.1", str(tls)],
                                   capture_output=True, text=True, timeout=60)  # fmt: skip
        assert anonymous.returncode != 0
        palette = pydicom.dcmread(pydicom.data.get_palette_files("hotiron.dcm")[0])
        palette.SOPInstanceUID = pydicom.uid.generate_uid()
        palette.file_meta.MediaStorageSOPInstanceUID = palette.SOPInstanceUID
        palette.ContentLabel = "OVER_TLS"
        path = tmp_path / "over-tls.dcm"
        palette.save_as(path, enforce_file_format=True)
        stored = subprocess.run([storescu, "-R", *dcmtk_mutual, "-aec", "PALETTES", "127.0.0.1", str(tls), str(path)],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert stored.returncode == 0, stored.stdout + stored.stderr
        found = cli("find", "127.0.0.1", str(tls), "-aec", "PALETTES", *mutual, "-k", "ContentLabel=OVER_TLS")
        assert found.stdout.split()[0] == palette.SOPInstanceUID

        # The table form of a TLS move destination.
        storescp = require_dcmtk("storescp")
        out = tmp_path / "moved"
        out.mkdir()
        with subprocess_server([storescp, *dcmtk_tls_options(pki, pki.server), *storescp_palette_options(),
                                "-od", str(out), str(destination)], destination):  # fmt: skip
            moved = cli("move", "127.0.0.1", str(tls), "-aec", "PALETTES", *mutual, "-aem", "SECURE",
                        "-k", "SOPInstanceUID=" + "\\".join(sorted(WELL_KNOWN)))  # fmt: skip
            assert moved.returncode == 0, moved.stderr
        assert _moved(out) == WELL_KNOWN
    text = log.read_text()
    assert "client certificates required" in text
    assert text.count("TLS handshake with 127.0.0.1:") >= 3  # the probe, no certificate, a foreign one, DCMTK's +tla


def test_tls_settings_errors_are_usage_errors(tmp_path: Path, pki: Pki):
    no_such = cli("serve", "--data-dir", str(tmp_path / "d"), "--port", str(free_port()),
                  "--tls-certificate", str(tmp_path / "missing.pem"))  # fmt: skip
    assert no_such.returncode == 2 and "cannot load the TLS certificate" in no_such.stderr
    only_key = cli("echo", "127.0.0.1", "1", "--tls-key", str(pki.client.key))
    assert only_key.returncode == 2
    mutual_without_ca = cli("serve", "--data-dir", str(tmp_path / "d"), "--port", str(free_port()),
                            "--tls-certificate", str(pki.server.certificate), "--tls-key", str(pki.server.key),
                            "--tls-require-client-certificate")  # fmt: skip
    assert mutual_without_ca.returncode == 2 and "CA bundle" in mutual_without_ca.stderr
