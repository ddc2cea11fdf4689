"""C-STORE between chromanet AEs over loopback (PS3.4 Annex B, through the
public API): the eight palettes stored byte for byte from every form the SCU
takes (Dataset, path, str, bytes), transfer syntax conversion, the blocking
and async APIs, every kind of handler answer and the status it becomes,
spooling received data sets to files, and a data set cut off mid-transfer.

The association life cycle around it is in tests/ul/test_association.py."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset

from chromanet import evt, uids
from chromanet.presentation import build_context
from chromanet.ul.negotiation import build_associate_rq
from helpers.data import dataset_bytes, pydicom_decode, pydicom_encode
from helpers.rawpeer import pdata, raw_associate
from helpers.servers import async_scp, scu_ae
from helpers.waits import run_async

pytestmark = pytest.mark.timeout(90)


# ------------------------------------------------------------------ C-STORE
def _as_form(path: Path, form: str) -> Any:
    if form == "dataset":
        return pydicom.dcmread(path)
    if form == "path":
        return path
    if form == "str":
        return str(path)
    return path.read_bytes()


@pytest.mark.parametrize("form", ["dataset", "path", "str", "bytes"])
def test_store_palettes_byte_for_byte(chromanet_scp, palette_files, form):
    # Offer only the files' own syntax so that nothing needs re-encoding.
    ae = scu_ae(palette_syntaxes=[uids.ExplicitVRLittleEndian])
    assoc = ae.associate(*chromanet_scp.address, ae_title="SRV")
    assert assoc.is_established
    for msg_id, path in enumerate(palette_files, start=1):
        rsp = assoc.send_c_store(_as_form(path, form), msg_id=msg_id)
        assert rsp.Status == 0x0000, path
    assoc.release()
    assert assoc.is_released

    stored = chromanet_scp.stored
    assert len(stored) == 8
    for item, path in zip(stored, palette_files):
        source = pydicom.dcmread(path)
        assert item.sop_class_uid == uids.ColorPaletteStorage
        assert item.sop_instance_uid == source.SOPInstanceUID
        assert item.transfer_syntax == uids.ExplicitVRLittleEndian
        if form == "dataset":
            # A Dataset is encoded by pydicom: equal to pydicom's own encoding
            # (winter.dcm has a duplicated element that pydicom drops).
            expected = pydicom_encode(source, uids.ExplicitVRLittleEndian)
        else:
            # Files and bytes go on the wire as they are.
            expected = dataset_bytes(path)
        assert item.encoded == expected, path.name
        received = pydicom_decode(item.encoded, item.transfer_syntax)
        assert received == source, path.name


@pytest.mark.parametrize("form", ["dataset", "path", "bytes"])
def test_store_converts_transfer_syntax(make_scp, palette_files, form):
    """The files are Explicit VR LE; the SCP takes Implicit VR LE only."""
    scp = make_scp(transfer_syntaxes=[uids.ImplicitVRLittleEndian])
    assoc = scu_ae().associate(*scp.address, ae_title="SRV")
    (ctx,) = [c for c in assoc.accepted_contexts if c.abstract_syntax == uids.ColorPaletteStorage]
    assert ctx.transfer_syntax == [uids.ImplicitVRLittleEndian]
    for path in palette_files:
        assert assoc.send_c_store(_as_form(path, form)).Status == 0
    assoc.release()

    assert len(scp.stored) == 8
    for item, path in zip(scp.stored, palette_files):
        source = pydicom.dcmread(path)
        assert item.transfer_syntax == uids.ImplicitVRLittleEndian
        assert item.encoded != dataset_bytes(path)  # really re-encoded
        received = pydicom_decode(item.encoded, uids.ImplicitVRLittleEndian)
        assert received == source, path.name
        # Implicit VR: the same bytes pydicom writes for the source data set.
        assert item.encoded == pydicom_encode(source, uids.ImplicitVRLittleEndian), path.name


@pytest.mark.parametrize("form", ["dataset", "path", "bytes", "no-meta"])
def test_store_never_relabels_compressed_data(make_scp, palette_files, form, tmp_path):
    """A data set in an encapsulated syntax, as a Dataset, a file, a Part 10
    image or a Dataset with encapsulated Pixel Data and no file meta, on an
    association that accepted only native syntaxes: ValueError, nothing sent,
    and the association still usable. The same data set where the peer
    accepts its syntax goes out unchanged."""
    jpeg2000 = "1.2.840.10008.1.2.4.90"
    ds = pydicom.dcmread(palette_files[0])
    ds.file_meta.TransferSyntaxUID = jpeg2000
    if form == "no-meta":
        ds.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # an empty Basic Offset Table item
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        del ds.file_meta
        subject: Any = ds
    else:
        path = tmp_path / "j2k.dcm"
        ds.save_as(path)
        subject = _as_form(path, form)
    scp = make_scp(transfer_syntaxes=[uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian])
    assoc = scu_ae().associate(*scp.address, ae_title="SRV")
    with pytest.raises(ValueError, match="without conversion loss|encapsulated"):
        assoc.send_c_store(subject)
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    assert scp.stored == []


def test_transfer_syntax_conversion_rules():
    from chromanet import dsutil

    native = [uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian, uids.ExplicitVRBigEndian,
              uids.DeflatedExplicitVRLittleEndian]
    jpeg2000, jpeg_ls = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80"
    for source in native + [None]:
        for target in native:
            assert dsutil.may_send_in(source, target)
        assert not dsutil.may_send_in(source, jpeg2000)
    assert dsutil.may_send_in(jpeg2000, jpeg2000)
    for target in native + [jpeg_ls]:
        assert not dsutil.may_send_in(jpeg2000, target)


def test_store_async_api(palette_files):
    async def main() -> None:
        async with async_scp() as scp:
            async with scu_ae().associate_async(*scp.address, ae_title="SRV") as assoc:
                statuses = [(await assoc.send_c_store(p)).Status for p in palette_files]
            assert statuses == [0] * 8
            assert [s.sop_instance_uid for s in scp.stored] == [
                str(pydicom.dcmread(p).SOPInstanceUID) for p in palette_files
            ]

    run_async(main())


def _raise(event: Any) -> Any:
    raise RuntimeError("handler failure (expected by the test)")


def _status_ds(**kw: Any) -> Dataset:
    ds = Dataset()
    for key, value in kw.items():
        setattr(ds, key, value)
    return ds


@pytest.mark.parametrize(
    "handler, status, comment",
    [
        pytest.param(lambda e: 0x0000, 0x0000, None, id="int-success"),
        pytest.param(lambda e: 0xB000, 0xB000, None, id="int-warning"),
        pytest.param(lambda e: 0xA700, 0xA700, None, id="int-failure"),
        pytest.param(
            lambda e: _status_ds(Status=0xC000, ErrorComment="disk full"), 0xC000, "disk full", id="dataset-comment"
        ),
        pytest.param(lambda e: _status_ds(ErrorComment="no status"), 0xC001, None, id="dataset-without-status"),
        pytest.param(lambda e: "Success", 0xC002, None, id="wrong-type-str"),
        pytest.param(lambda e: None, 0xC002, None, id="wrong-type-none"),
        pytest.param(lambda e: True, 0xC002, None, id="wrong-type-bool"),
        pytest.param(_raise, 0xC211, None, id="handler-raises"),
        pytest.param(None, 0xC211, None, id="no-handler"),  # as pynetdicom
    ],
)
def test_store_handler_status(make_scp, palette_files, handler, status, comment):
    if handler is None:
        scp = make_scp(store=False)
    else:
        scp = make_scp(store=False, handlers=[(evt.EVT_C_STORE, handler)])
    assoc = scu_ae().associate(*scp.address, ae_title="SRV")
    rsp = assoc.send_c_store(palette_files[0])
    assert rsp.Status == status
    if comment is None:
        assert "ErrorComment" not in rsp
    else:
        assert rsp.ErrorComment == comment
    # The association survives any handler answer.
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    assert assoc.is_released


def test_async_store_handler(palette_files):
    seen: list[str] = []

    async def on_store(event: Any) -> Dataset:
        await asyncio.sleep(0)
        seen.append(str(event.dataset.SOPInstanceUID))
        return _status_ds(Status=0xB000, ErrorComment="coerced")

    async def main() -> None:
        async with async_scp(handlers=[(evt.EVT_C_STORE, on_store)]) as scp:
            async with scu_ae().associate_async(*scp.address, ae_title="SRV") as assoc:
                rsp = await assoc.send_c_store(palette_files[1])
        assert (rsp.Status, rsp.ErrorComment) == (0xB000, "coerced")

    run_async(main())
    assert seen == [str(pydicom.dcmread(palette_files[1]).SOPInstanceUID)]


def test_inline_store_handler_answering_with_a_future(palette_files):
    """An inline handler may return an asyncio.Future of its status (as the
    node's C-STORE does while its group commit runs): each response leaves
    when its future is done, with its status, and a future that fails or is
    cancelled answers 0xC211 (the handler's exception status), the
    association going on."""
    answered: list[int] = []
    handed: asyncio.Queue[asyncio.Future[Any]] = asyncio.Queue()

    @evt.inline
    def on_store(event: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        handed.put_nowait(future)
        return future

    async def main() -> None:
        async with async_scp(handlers=[(evt.EVT_C_STORE, on_store)]) as scp:
            async with scu_ae().associate_async(*scp.address, ae_title="SRV") as assoc:
                first = asyncio.ensure_future(assoc.send_c_store(palette_files[0]))
                future = await handed.get()
                await asyncio.sleep(0.05)
                assert not first.done()  # no answer before the future is done
                future.set_result(_status_ds(Status=0xB000, ErrorComment="later"))
                rsp = await first
                answered.append(rsp.Status)
                assert rsp.ErrorComment == "later"
                second = asyncio.ensure_future(assoc.send_c_store(palette_files[1]))
                (await handed.get()).set_exception(RuntimeError("commit failed"))
                answered.append((await second).Status)
                third = asyncio.ensure_future(assoc.send_c_store(palette_files[2]))
                (await handed.get()).cancel()
                answered.append((await third).Status)
                answered.append((await assoc.send_c_echo()).Status)

    run_async(main())
    assert answered == [0xB000, 0xC211, 0xC211, 0x0000]


# ------------------------------------------------------------------ spooling
def test_spool_handler_keeps_files(make_scp, palette_files, tmp_path):
    spool = tmp_path / "spool"
    keep = tmp_path / "keep"
    spool.mkdir()
    keep.mkdir()

    def keep_it(event: Any) -> int:
        path = Path(event.dataset_path)
        assert path.parent == spool and path.exists()
        os.replace(path, keep / f"{event.request.AffectedSOPInstanceUID}.dcm")
        return 0

    scp = make_scp(store=False, handlers=[(evt.EVT_C_STORE, keep_it)], store_spool_directory=spool)
    assoc = scu_ae(palette_syntaxes=[uids.ExplicitVRLittleEndian]).associate(*scp.address, ae_title="SRV")
    for path in palette_files:
        assert assoc.send_c_store(path).Status == 0
    assoc.release()

    assert os.listdir(spool) == []
    assert len(os.listdir(keep)) == 8
    for path in palette_files:
        source = pydicom.dcmread(path)
        kept = keep / f"{source.SOPInstanceUID}.dcm"
        received = pydicom.dcmread(kept)  # a valid Part 10 file
        meta = received.file_meta
        assert meta.TransferSyntaxUID == uids.ExplicitVRLittleEndian
        assert meta.MediaStorageSOPClassUID == uids.ColorPaletteStorage
        assert meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
        assert received == source
        assert dataset_bytes(kept) == dataset_bytes(path)


def _spool_and_palette(tmp_path: Path, palette_files: Any, extra: int) -> tuple[Path, Any]:
    """An empty spool directory, and a palette made ``extra`` bytes larger
    by a private OB element (0: as shipped)."""
    spool = tmp_path / "spool"
    spool.mkdir()
    ds = pydicom.dcmread(palette_files[0])
    if extra:
        ds.add_new(0x00091010, "OB", bytes(range(256)) * (extra // 256))
        ds.add_new(0x00090010, "LO", "CHROMANET TEST")
    return spool, ds


@pytest.mark.parametrize("extra", [0, 200_000, 900_000], ids=["small", "200k", "900k"])
def test_spool_file_and_event_agree_at_any_size(make_scp, palette_files, tmp_path, extra):
    """A spooled data set of any size: the file on disk (dataset_path),
    event.dataset and event.encoded_dataset() all hold the bytes sent."""
    spool, ds = _spool_and_palette(tmp_path, palette_files, extra)
    seen: list[tuple[bytes, bytes, str]] = []

    def on_store(event: Any) -> int:
        on_disk = Path(event.dataset_path).read_bytes()
        seen.append((on_disk, event.encoded_dataset(include_meta=True), str(event.dataset.SOPInstanceUID)))
        return 0

    scp = make_scp(store=False, handlers=[(evt.EVT_C_STORE, on_store)], store_spool_directory=spool)
    assoc = scu_ae(palette_syntaxes=[uids.ExplicitVRLittleEndian]).associate(*scp.address, ae_title="SRV")
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    (on_disk, from_event, uid), = seen
    assert on_disk == from_event
    assert uid == str(ds.SOPInstanceUID)
    sent = pydicom_encode(ds, uids.ExplicitVRLittleEndian)
    assert on_disk.endswith(sent)
    assert pydicom.dcmread(io.BytesIO(on_disk)) == ds
    assert os.listdir(spool) == []


@pytest.mark.parametrize("extra", [0, 200_000], ids=["in-memory", "over-the-limit"])
def test_spool_memory_limit(make_scp, palette_files, tmp_path, extra):
    """``store_spool_memory_limit``: a data set up to the limit reaches the
    handler in memory (no dataset_path, no file ever made), a larger one is
    spooled as before; the handler sees the bytes sent either way."""
    spool, ds = _spool_and_palette(tmp_path, palette_files, extra)
    seen: list[tuple[Any, bytes, list[str]]] = []

    def on_store(event: Any) -> int:
        path = getattr(event, "dataset_path", None)
        seen.append((path, event.encoded_dataset(include_meta=False), os.listdir(spool)))
        return 0

    scp = make_scp(store=False, handlers=[(evt.EVT_C_STORE, on_store)], store_spool_directory=spool,
                   store_spool_memory_limit=64 * 1024)  # fmt: skip
    assoc = scu_ae(palette_syntaxes=[uids.ExplicitVRLittleEndian]).associate(*scp.address, ae_title="SRV")
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    (path, received, listed), = seen
    assert received == pydicom_encode(ds, uids.ExplicitVRLittleEndian)
    if extra:
        assert path is not None and listed == [Path(path).name]
    else:
        assert path is None and listed == []
    assert os.listdir(spool) == []


def test_spool_file_removed_when_not_moved(make_scp, palette_files, tmp_path):
    seen: list[tuple[Path, bool, str]] = []

    def look_only(event: Any) -> int:
        path = Path(event.dataset_path)
        seen.append((path, path.exists(), str(event.dataset.SOPInstanceUID)))
        return 0

    scp = make_scp(store=False, handlers=[(evt.EVT_C_STORE, look_only)], store_spool_directory=tmp_path)
    assoc = scu_ae().associate(*scp.address, ae_title="SRV")
    for path in palette_files[:3]:
        assert assoc.send_c_store(path).Status == 0
    assoc.release()
    assert [(exists, uid) for _, exists, uid in seen] == [
        (True, str(pydicom.dcmread(p).SOPInstanceUID)) for p in palette_files[:3]
    ]
    assert all(not path.exists() for path, _, _ in seen)
    assert os.listdir(tmp_path) == []


def test_spool_file_removed_when_handler_raises(make_scp, palette_files, tmp_path):
    scp = make_scp(store=False, handlers=[(evt.EVT_C_STORE, _raise)], store_spool_directory=tmp_path)
    assoc = scu_ae().associate(*scp.address, ae_title="SRV")
    assert assoc.send_c_store(palette_files[0]).Status == 0xC211
    assoc.release()
    assert os.listdir(tmp_path) == []


# ------------------------------------- the requestor drops the connection
def test_peer_closes_during_store_with_spool(make_scp, palette_files, tmp_path):
    """A data set cut off mid-transfer leaves no spool file behind."""
    scp = make_scp(store_spool_directory=tmp_path)
    rq = build_associate_rq(
        "SRV", "RAW", [build_context(uids.ColorPaletteStorage, uids.ExplicitVRLittleEndian).to_spec()],
        max_pdu_length=16382,
    )
    sock = raw_associate(scp.address, rq)
    try:
        from chromanet._dimse import Command, encode_command

        command = Command(
            0x0001,
            affected_sop_class_uid=uids.ColorPaletteStorage,
            affected_sop_instance_uid="1.2.3.4",
            message_id=1,
            priority=2,
            command_data_set_type=0x0000,
        )
        sock.sendall(pdata(1, 0x03, encode_command(command)))
        part = dataset_bytes(palette_files[0])[:1000]
        sock.sendall(pdata(1, 0x00, part))  # not the last fragment
    finally:
        sock.close()
    assert scp.recorder.wait_event("EVT_CONN_CLOSE")
    assert "EVT_ABORTED" in scp.recorder.names()
    assert scp.stored == []
    assert scp.recorder.wait_for(lambda: os.listdir(tmp_path) == [])
