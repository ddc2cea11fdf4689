"""chromanet over TLS (PS3.15 B.1) against foreign peers, both directions:

- DCMTK's tools with their default profile (BCP 195 Non-downgrading):
  echoscu, storescu and findscu with ``+tls`` against a chromanet TLS SCP
  (mutual TLS), DCMTK's anonymous TLS (``+tla``, no client certificate)
  refused by it; storescp ``+tls`` as the target of ``chromanet store
  --tls`` and as the C-MOVE destination chromanet reaches over TLS.
  DCMTK's Q/R tools know no Color Palette model, so the Q/R SCP here
  serves the Patient Root model (Secondary Capture instances); DCMTK
  3.6.7's getscu and movescu have no TLS, so pynetdicom asks for the
  C-GET and C-MOVE over TLS.
- pynetdicom with an ``ssl`` context: as SCU (``tls_args``) to chromanet,
  and as SCP (``start_server(ssl_context=...)``) for chromanet's SCU.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from chromanet import evt, uids
from helpers.dcmtk import storescp_palette_options
from helpers.servers import configure_scp_ae, free_port, scu_ae, subprocess_server
from helpers.tls import Pki, client_ssl, client_tls_flags, dcmtk_tls_options, server_ssl

pytestmark = [pytest.mark.peer, pytest.mark.timeout(120)]

TOOL_TIMEOUT = 60
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=TOOL_TIMEOUT, cwd=cwd)


def _detail(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def secondary_capture(patient_id: str) -> Dataset:
    """A small Secondary Capture image (DCMTK's getscu offers that class)."""
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName = patient_id, "TLS^TEST"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ConversionType = "OT", "WSD"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(range(64))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


# ======================================================= DCMTK SCU -> chromanet
def test_echoscu_and_storescu_over_mutual_tls(dcmtk, make_scp, pki: Pki, palette_files):
    scp = make_scp(ssl_context=server_ssl(pki, mutual=True))
    mutual = dcmtk_tls_options(pki, pki.client)
    echo = _run([dcmtk("echoscu"), *mutual, "-aec", "SRV", "127.0.0.1", str(scp.port)])
    assert echo.returncode == 0, _detail(echo)
    assert scp.recorder.wait_event("EVT_CONN_CLOSE")
    assert scp.recorder.echoes == 1
    store = _run([dcmtk("storescu"), "-R", *mutual, "-aec", "SRV", "127.0.0.1", str(scp.port),
                  *(str(p) for p in palette_files[:3])])  # fmt: skip
    assert store.returncode == 0, _detail(store)
    assert scp.recorder.wait_for(lambda: len(scp.stored) == 3)
    expected = {pydicom.dcmread(p).SOPInstanceUID for p in palette_files[:3]}
    assert {s.sop_instance_uid for s in scp.stored} == expected
    assert all(s.extra.tls.peer_subject == "CN=modality-1,O=Chromanet Tests" for s in scp.stored)


def test_dcmtk_without_client_certificate_is_refused(dcmtk, make_scp, pki: Pki):
    scp = make_scp(ssl_context=server_ssl(pki, mutual=True))
    failures: list[tuple[Any, str]] = []
    scp.server.on_handshake_failed = lambda peer, reason: failures.append((peer, reason))
    anonymous = _run([dcmtk("echoscu"), *dcmtk_tls_options(pki, None), "-aec", "SRV", "127.0.0.1", str(scp.port)])
    assert anonymous.returncode != 0, _detail(anonymous)
    plain = _run([dcmtk("echoscu"), "-aec", "SRV", "127.0.0.1", str(scp.port)])
    assert plain.returncode != 0, _detail(plain)
    assert scp.recorder.wait_for(lambda: len(failures) == 2)
    assert scp.recorder.echoes == 0 and scp.server.pending_handshakes == 0
    # and a good one still gets through
    ok = _run([dcmtk("echoscu"), *dcmtk_tls_options(pki, pki.client), "-aec", "SRV", "127.0.0.1", str(scp.port)])
    assert ok.returncode == 0, _detail(ok)


@contextlib.contextmanager
def patient_root_scp(pki: Pki, destination_port: int) -> Iterator[Any]:
    """A chromanet Patient Root FIND/GET/MOVE SCP over mutual TLS with two
    Secondary Capture instances of patient TLS-1; C-MOVE sends them over
    TLS to 127.0.0.1:``destination_port`` (any destination AE title)."""
    instances = [secondary_capture("TLS-1") for _ in range(2)]

    def on_find(event: Any) -> Any:
        match = Dataset()
        match.QueryRetrieveLevel = "PATIENT"
        match.PatientID, match.PatientName = "TLS-1", "TLS^TEST"
        yield 0xFF00, match

    def on_get(event: Any) -> Any:
        yield len(instances)
        for instance in instances:
            yield 0xFF00, instance

    def on_move(event: Any) -> Any:
        yield "127.0.0.1", destination_port, {"tls_args": (client_ssl(pki, pki.server), None)}
        yield len(instances)
        for instance in instances:
            yield 0xFF00, instance

    handlers = [(evt.EVT_C_FIND, on_find), (evt.EVT_C_GET, on_get), (evt.EVT_C_MOVE, on_move)]
    ae = configure_scp_ae("QRSCP")
    for model in (PATIENT_FIND, PATIENT_GET, PATIENT_MOVE):
        ae.add_supported_context(model)
    ae.add_supported_context(SECONDARY_CAPTURE, scu_role=True, scp_role=True)
    ae.add_requested_context(SECONDARY_CAPTURE)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers,
                             ssl_context=server_ssl(pki, mutual=True))
    assert server is not None
    try:
        yield SimpleNamespace(port=server.server_address[1], instances=instances)
    finally:
        server.shutdown()


KEYS = ["-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=TLS-1"]


def _identifier() -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel, identifier.PatientID = "PATIENT", "TLS-1"
    return identifier


def _pynetdicom_qr_ae(pynetdicom: Any) -> Any:
    ae = pynetdicom.AE("PYTLS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for model in (PATIENT_GET, PATIENT_MOVE):
        ae.add_requested_context(model)
    ae.add_requested_context(SECONDARY_CAPTURE)
    return ae


def test_findscu_over_tls(dcmtk, pki: Pki, tmp_path: Path):
    with patient_root_scp(pki, free_port()) as scp:
        found = _run([dcmtk("findscu"), "-P", *dcmtk_tls_options(pki, pki.client), *KEYS, "-k", "PatientName", "-X",
                      "-aec", "QRSCP", "127.0.0.1", str(scp.port)], cwd=tmp_path)  # fmt: skip
        assert found.returncode == 0, _detail(found)
    (response,) = sorted(tmp_path.glob("rsp*.dcm"))
    assert pydicom.dcmread(response).PatientName == "TLS^TEST"


def test_get_and_move_over_tls_into_storescp(dcmtk, pynetdicom, pki: Pki, tmp_path: Path):
    """DCMTK 3.6.7's getscu and movescu have no TLS: pynetdicom asks over
    TLS; the C-MOVE's sub-association goes to storescp over TLS (mutual,
    chromanet presenting its own certificate)."""
    destination_port = free_port()
    moved_dir = tmp_path / "moved"
    moved_dir.mkdir()
    storescp = [dcmtk("storescp"), *dcmtk_tls_options(pki, pki.server), "-aet", "STORESCP", "-od", str(moved_dir),
                str(destination_port)]  # fmt: skip
    got: list[str] = []

    def on_store(event: Any) -> int:
        got.append(str(event.dataset.SOPInstanceUID))
        return 0

    with patient_root_scp(pki, destination_port) as scp, subprocess_server(storescp, destination_port):
        expected = {ds.SOPInstanceUID for ds in scp.instances}
        ae = _pynetdicom_qr_ae(pynetdicom)
        assoc = ae.associate(
            "127.0.0.1", scp.port, ae_title="QRSCP", tls_args=(client_ssl(pki, pki.client), "localhost"),
            ext_neg=[pynetdicom.build_role(SECONDARY_CAPTURE, scp_role=True)],
            evt_handlers=[(pynetdicom.evt.EVT_C_STORE, on_store)],
        )
        assert assoc.is_established
        try:
            get_final = list(assoc.send_c_get(_identifier(), PATIENT_GET))[-1][0]
            move_final = list(assoc.send_c_move(_identifier(), "STORESCP", PATIENT_MOVE))[-1][0]
        finally:
            assoc.release()
    assert get_final.Status == 0 and set(got) == expected
    assert move_final.Status == 0 and move_final.NumberOfCompletedSuboperations == 2
    assert {pydicom.dcmread(p).SOPInstanceUID for p in moved_dir.iterdir()} == expected


# ======================================================= chromanet SCU -> DCMTK
def test_chromanet_store_command_to_storescp_over_tls(dcmtk, pki: Pki, palette_files, tmp_path: Path):
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    storescp = [dcmtk("storescp"), *dcmtk_tls_options(pki, pki.server), *storescp_palette_options(),
                "-od", str(out), str(port)]  # fmt: skip
    files = [str(p) for p in palette_files[:2]]
    with subprocess_server(storescp, port):
        stored = _run([sys.executable, "-m", "chromanet.apps.cli", "store", "127.0.0.1", str(port),
                       "-aec", "STORESCP", *client_tls_flags(pki, pki.client), *files])  # fmt: skip
        assert stored.returncode == 0, _detail(stored)
        # storescp requires a client certificate (its default): without one, refused.
        refused = _run([sys.executable, "-m", "chromanet.apps.cli", "echo", "127.0.0.1", str(port),
                        "-aec", "STORESCP", *client_tls_flags(pki)])  # fmt: skip
        assert refused.returncode == 1 and "TLS" in refused.stderr, _detail(refused)
    assert {pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()} == {pydicom.dcmread(f).SOPInstanceUID
                                                                          for f in files}


# ======================================================= pynetdicom
def test_pynetdicom_scu_to_chromanet_over_tls(pynetdicom, make_scp, pki: Pki, palette_files):
    scp = make_scp(ssl_context=server_ssl(pki, mutual=True))
    ae = pynetdicom.AE("PYTLS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(uids.Verification)
    ae.add_requested_context(uids.ColorPaletteStorage)
    # pynetdicom passes server_hostname on as it is: it must be given.
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="SRV", tls_args=(client_ssl(pki, pki.client), "127.0.0.1"))
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_store(pydicom.dcmread(palette_files[0])).Status == 0
    finally:
        assoc.release()
    assert scp.recorder.wait_for(lambda: len(scp.stored) == 1)
    assert scp.stored[0].extra.tls.peer_subject == "CN=modality-1,O=Chromanet Tests"


def test_chromanet_scu_to_pynetdicom_scp_over_tls(make_pynetdicom_scp, pki: Pki, palette_files):
    scp = make_pynetdicom_scp(ssl_context=server_ssl(pki, mutual=True))
    ae = scu_ae()
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="PYSCP", tls_args=(client_ssl(pki, pki.client), None))
    assert assoc.is_established
    try:
        assert assoc.tls is not None and assoc.tls.peer_subject == "CN=chromanet-test-server,O=Chromanet Tests"
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_store(palette_files[0]).Status == 0
    finally:
        assoc.release()
    assert [s.sop_instance_uid for s in scp.stored] == [pydicom.dcmread(palette_files[0]).SOPInstanceUID]
    # No client certificate: pynetdicom's server (mutual TLS) refuses.
    refused = ae.associate("127.0.0.1", scp.port, ae_title="PYSCP", tls_args=(client_ssl(pki), None))
    assert not refused.is_established
