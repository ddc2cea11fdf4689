"""chromanet with peers as they are usually run: Nagle's algorithm on
(DCMTK's tools without ``TCP_NODELAY=1`` in their environment, pynetdicom as
it comes), both roles, with chromanet's ``tcp_quickack`` on and off.

Correctness only: every operation succeeds and every data set arrives
intact whether or not our quick ACKs spare the peer its ~40 ms waits; how
fast is measured by ``benches/e2e.py --nagle``, never asserted here. (The
other interop tests run the same peers the same way; these make the
environment explicit and run each pairing with the setting off too.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest

from chromanet import uids
from helpers.data import pydicom_decode
from helpers.dcmtk import storescp_palette_options
from helpers.servers import free_port, scu_ae, subprocess_server
from helpers.waits import NETWORK_TIMEOUT

pytestmark = [pytest.mark.peer, pytest.mark.timeout(120)]

ROUNDS = 3  # the eight palettes this many times on one association
QUICKACK = pytest.mark.parametrize("quickack", [True, False], ids=["quickack", "no-quickack"])


@pytest.fixture(autouse=True)
def nagle_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    """DCMTK sets TCP_NODELAY only when its environment says so."""
    monkeypatch.delenv("TCP_NODELAY", raising=False)


def _store_all(assoc: Any, palette_files: list[Path], echo: bool = True) -> None:
    """On an established association (chromanet's or pynetdicom's): a C-ECHO,
    then every palette ROUNDS times, each answered Success; then released."""
    assert assoc.is_established
    if echo:
        assert assoc.send_c_echo().Status == 0x0000
    for path in palette_files * ROUNDS:
        assert assoc.send_c_store(path).Status == 0x0000, path
    assoc.release()
    assert assoc.is_released


def _sources(palette_files: list[Path]) -> dict[str, Any]:
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in palette_files)}


# ------------------------------------------------------- peer -> chromanet
def _assert_received_as_sent(scp, palette_files) -> None:
    """Every palette arrived ROUNDS times, each decoding to its source file."""
    assert len(scp.stored) == 8 * ROUNDS
    sources = _sources(palette_files)
    for item in scp.stored:
        assert pydicom_decode(item.encoded, item.transfer_syntax) == sources[item.sop_instance_uid]


@QUICKACK
def test_default_storescu_into_chromanet(dcmtk, make_scp, palette_files, quickack):
    scp = make_scp(tcp_quickack=quickack)
    args = [dcmtk("storescu"), "-R", "-aec", "SRV", "127.0.0.1", str(scp.port)]
    result = subprocess.run(args + [str(p) for p in palette_files] * ROUNDS, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert scp.recorder.wait_event("EVT_CONN_CLOSE")
    assert "EVT_RELEASED" in scp.recorder.names() and "EVT_ABORTED" not in scp.recorder.names()
    _assert_received_as_sent(scp, palette_files)


@QUICKACK
def test_default_pynetdicom_scu_into_chromanet(pynetdicom, make_scp, palette_files, quickack):
    scp = make_scp(tcp_quickack=quickack)
    ae = pynetdicom.AE("PYSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT
    ae.add_requested_context(uids.Verification)
    ae.add_requested_context(uids.ColorPaletteStorage)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="SRV")
    _store_all(assoc, palette_files)
    _assert_received_as_sent(scp, palette_files)


# ------------------------------------------------------- chromanet -> peer
@QUICKACK
def test_chromanet_into_default_storescp(dcmtk, tmp_path, palette_files, quickack):
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    args = [dcmtk("storescp"), "-aet", "STORESCP", *storescp_palette_options(), "-od", str(out), str(port)]
    with subprocess_server(args, port):
        ae = scu_ae()
        ae.tcp_quickack = quickack
        assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
        _store_all(assoc, palette_files)
    received = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(f) for f in out.iterdir())}
    assert received == _sources(palette_files)


@QUICKACK
def test_chromanet_into_default_pynetdicom_scp(pynetdicom_scp, palette_files, quickack):
    ae = scu_ae()
    ae.tcp_quickack = quickack
    assoc = ae.associate("127.0.0.1", pynetdicom_scp.port, ae_title="PYSCP")
    _store_all(assoc, palette_files, echo=False)
    assert len(pynetdicom_scp.stored) == 8 * ROUNDS
    sources = _sources(palette_files)
    for item in pynetdicom_scp.stored:
        assert item.extra == sources[item.sop_instance_uid]
