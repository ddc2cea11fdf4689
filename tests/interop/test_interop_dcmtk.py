"""chromanet <-> DCMTK (echoscu, storescu, storescp) over loopback.

DCMTK's tools are found with ``helpers.dcmtk.find_dcmtk_tool``: pynetdicom
installs console scripts with the same names, which must not stand in.
storescp has no Color Palette Storage by default: it runs with the profile
in tests/data (``helpers.dcmtk.storescp_palette_options``).
"""

from __future__ import annotations

import subprocess

import pydicom
import pytest

from chromanet import uids
from helpers.data import pydicom_decode
from helpers.dcmtk import storescp_palette_options
from helpers.servers import free_port, scu_ae, subprocess_server

pytestmark = [pytest.mark.peer, pytest.mark.timeout(120)]

TOOL_TIMEOUT = 60  # seconds for one DCMTK client run


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=TOOL_TIMEOUT)


def _detail(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


# ======================================================= DCMTK SCU -> chromanet
def test_echoscu(dcmtk, chromanet_scp):
    result = _run([dcmtk("echoscu"), "-aet", "DCMTK", "-aec", "SRV", "127.0.0.1", str(chromanet_scp.port)])
    assert result.returncode == 0, _detail(result)
    rec = chromanet_scp.recorder
    assert rec.wait_event("EVT_CONN_CLOSE")
    assert rec.echoes == 1
    assert rec.names()[-2:] == ["EVT_RELEASED", "EVT_CONN_CLOSE"]
    assert rec.events[-1][1].acse_request.calling_ae_title.strip() == "DCMTK"


def test_echoscu_rejected_calling_aet(dcmtk, make_scp):
    scp = make_scp(require_calling_aet=["GOOD"])
    result = _run([dcmtk("echoscu"), "-aet", "BAD", "-aec", "SRV", "127.0.0.1", str(scp.port)])
    assert result.returncode != 0, _detail(result)
    output = result.stdout + result.stderr
    assert "Association Rejected" in output, _detail(result)
    assert "Calling AE Title Not Recognized" in output, _detail(result)
    assert scp.recorder.wait_event("EVT_CONN_CLOSE")
    assert "EVT_REJECTED" in scp.recorder.names()
    assert scp.recorder.echoes == 0

    ok = _run([dcmtk("echoscu"), "-aet", "GOOD", "-aec", "SRV", "127.0.0.1", str(scp.port)])
    assert ok.returncode == 0, _detail(ok)


def test_echoscu_rejected_called_aet(dcmtk, make_scp):
    scp = make_scp(require_called_aet=True)
    result = _run([dcmtk("echoscu"), "-aec", "NOTSRV", "127.0.0.1", str(scp.port)])
    assert result.returncode != 0, _detail(result)
    assert "Called AE Title Not Recognized" in result.stdout + result.stderr, _detail(result)


@pytest.mark.parametrize(
    "propose, scp_syntaxes, expected",
    [
        pytest.param("-xi", None, uids.ImplicitVRLittleEndian, id="implicit"),
        pytest.param("-xe", [uids.ExplicitVRLittleEndian], uids.ExplicitVRLittleEndian, id="explicit"),
    ],
)
def test_storescu_palettes(dcmtk, make_scp, palette_files, propose, scp_syntaxes, expected):
    scp = make_scp(transfer_syntaxes=scp_syntaxes)
    # -R: propose only the SOP classes of the files (storescu's default list
    # has no Color Palette Storage).
    args = [dcmtk("storescu"), "-R", propose, "-aec", "SRV", "127.0.0.1", str(scp.port)]
    result = _run(args + [str(p) for p in palette_files])
    assert result.returncode == 0, _detail(result)
    rec = scp.recorder
    assert rec.wait_event("EVT_CONN_CLOSE")
    assert "EVT_RELEASED" in rec.names() and "EVT_ABORTED" not in rec.names()

    stored = {item.sop_instance_uid: item for item in scp.stored}
    assert len(scp.stored) == 8
    for path in palette_files:
        source = pydicom.dcmread(path)
        item = stored[str(source.SOPInstanceUID)]
        assert item.sop_class_uid == uids.ColorPaletteStorage
        assert item.transfer_syntax == expected
        # DCMTK re-encodes what it sends (sequence lengths, winter.dcm's
        # duplicated element): compare data sets, not bytes.
        assert pydicom_decode(item.encoded, item.transfer_syntax) == source, path.name


# ======================================================= chromanet -> storescp
@pytest.mark.parametrize("form", ["path", "dataset"])
def test_store_to_storescp(dcmtk, tmp_path, palette_files, form):
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    args = [dcmtk("storescp"), "-aet", "STORESCP", *storescp_palette_options(), "-od", str(out), str(port)]
    with subprocess_server(args, port):
        assoc = scu_ae().associate("127.0.0.1", port, ae_title="STORESCP")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        for path in palette_files:
            payload = path if form == "path" else pydicom.dcmread(path)
            rsp = assoc.send_c_store(payload)
            assert rsp.Status == 0x0000, path
        assoc.release()
        assert assoc.is_released

    files = sorted(out.iterdir())
    assert len(files) == 8, files
    received = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(f) for f in files)}
    for path in palette_files:
        source = pydicom.dcmread(path)
        assert str(source.SOPInstanceUID) in received, path.name
        got = received[str(source.SOPInstanceUID)]
        assert got.file_meta.MediaStorageSOPClassUID == uids.ColorPaletteStorage
        assert got == source, path.name


def test_store_to_storescp_raw_bytes_explicit(dcmtk, tmp_path, palette_files):
    """Part 10 bytes in memory, offered in the files' own syntax: sent as they
    are; storescp's files hold equal data sets (DCMTK re-encodes what it
    writes, e.g. sequence lengths, so no byte comparison here)."""
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    args = [dcmtk("storescp"), *storescp_palette_options(), "-od", str(out), str(port)]
    with subprocess_server(args, port):
        assoc = scu_ae(palette_syntaxes=[uids.ExplicitVRLittleEndian]).associate("127.0.0.1", port)
        for path in palette_files:
            assert assoc.send_c_store(path.read_bytes()).Status == 0
        assoc.release()
    written = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(f) for f in out.iterdir())}
    assert len(written) == 8
    for path in palette_files:
        source = pydicom.dcmread(path)
        got = written[str(source.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID == uids.ExplicitVRLittleEndian
        assert got == source, path.name


def test_rejected_by_storescp(dcmtk, tmp_path):
    port = free_port()
    with subprocess_server([dcmtk("storescp"), "--refuse", "-od", str(tmp_path), str(port)], port):
        assoc = scu_ae().associate("127.0.0.1", port, ae_title="STORESCP")
        assert assoc.is_rejected and not assoc.is_established
        rj = assoc.acse_response
        # DCMTK's --refuse: rejected permanent, service user, no reason given
        assert (rj.result, rj.source, rj.reason) == (1, 1, 1)


def test_storescp_abort_by_chromanet_then_next_association(dcmtk, tmp_path, palette_files):
    """An association we abort does not break storescp; the next works."""
    port = free_port()
    args = [dcmtk("storescp"), *storescp_palette_options(), "-od", str(tmp_path), str(port)]
    with subprocess_server(args, port) as process:
        ae = scu_ae()
        first = ae.associate("127.0.0.1", port)
        assert first.is_established
        first.abort()
        second = ae.associate("127.0.0.1", port)
        assert second.is_established
        assert second.send_c_store(palette_files[0]).Status == 0
        second.release()
        assert second.is_released
        assert process.poll() is None  # still running
    assert len(list(tmp_path.iterdir())) == 1
