"""Color Palette Q/R (PS3.4 Annex X) between chromanet and foreign peers.

pynetdicom SCU -> chromanet SCP and chromanet SCU -> pynetdicom SCP for
C-FIND, C-GET (sub-operations on the same association, SCP role for Color
Palette Storage) and C-MOVE (to a third AE), with the eight well-known
palettes and their content checked on arrival; a chromanet SCP moving into
DCMTK's storescp; and the two chromanet SCU APIs (blocking generators,
``async for``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import inspect
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator

import pydicom
import pytest
from pydicom import Dataset

from chromanet import evt, uids
from chromanet.ae import build_role
from helpers.dcmtk import storescp_palette_options
from helpers.qr import (
    FIND,
    GET,
    MOVE,
    QR_MODELS,
    UIDS,
    StoreLog,
    configure_qr_scp_ae,
    pynetdicom_qr_association,
    qr_association,
    qr_scu_ae,
    start_pynetdicom_destination,
    statuses,
)
from helpers.servers import free_port, subprocess_server
from helpers.waits import NETWORK_TIMEOUT, WAIT_TIMEOUT, run_async, until, wait_until

pytestmark = [pytest.mark.peer, pytest.mark.timeout(90)]


# ------------------------------------------------------------ the service
def query(label: str = "*", uid: str | list[str] = "") -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = uid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom does not know '*' is a wild card for CS
        ds.ContentLabel = label
    return ds


def _requested_uids(identifier: Dataset) -> list[str]:
    value = identifier.get("SOPInstanceUID", "")
    if not value:
        return list(UIDS)
    return [str(v) for v in value] if not isinstance(value, str) else [value]


def matches(identifier: Dataset, palettes: dict[str, Any]) -> Iterator[Dataset]:
    """The Color Palette information model: SOP Instance UID (single or
    list) and Content Label (wild card) matching; return keys filled in."""
    label = str(identifier.get("ContentLabel", "") or "")
    for uid in _requested_uids(identifier):
        if uid not in palettes:
            continue
        palette = palettes[uid]
        if label and not fnmatch.fnmatchcase(str(palette.ContentLabel), label):
            continue
        match = Dataset()
        match.SOPClassUID = palette.SOPClassUID
        match.SOPInstanceUID = uid
        match.ContentLabel = palette.ContentLabel
        yield match


def handlers(palettes: dict[str, Any], destinations: dict[str, tuple[str, int]], as_files: bool) -> dict[str, Any]:
    """FIND/GET/MOVE handlers for either engine (same protocol)."""

    def item(uid: str) -> Any:
        return palettes[uid].filename if as_files else palettes[uid]

    def on_find(event):
        for match in matches(event.identifier, palettes):
            yield 0xFF00, match

    def on_get(event):
        wanted = [u for u in _requested_uids(event.identifier) if u in palettes]
        yield len(wanted)
        for uid in wanted:
            yield 0xFF00, item(uid)

    def on_move(event):
        destination = destinations.get(str(event.request.MoveDestination).strip())
        if destination is None:
            yield None, None
            return
        yield destination
        wanted = [u for u in _requested_uids(event.identifier) if u in palettes]
        yield len(wanted)
        for uid in wanted:
            yield 0xFF00, item(uid)

    return {"find": on_find, "get": on_get, "move": on_move}


class DatasetLog:
    """EVT_C_STORE handler (either engine) keeping the decoded data sets."""

    def __init__(self) -> None:
        self.datasets: dict[str, Dataset] = {}
        self.lock = threading.Lock()

    def __call__(self, event: Any) -> int:
        ds = event.dataset
        with self.lock:
            self.datasets[str(ds.SOPInstanceUID)] = ds
        return 0x0000


def both(log: StoreLog, datasets: DatasetLog) -> Any:
    """One EVT_C_STORE handler feeding a StoreLog and a DatasetLog."""

    def on_store(event: Any) -> int:
        datasets(event)
        return log(event)

    return on_store


def assert_same_palettes(received: dict[str, Dataset], palettes: dict[str, Any], wanted: list[str] = UIDS) -> None:
    assert sorted(received) == sorted(wanted)
    for uid in wanted:
        got, source = received[uid], palettes[uid]
        assert got == source, uid  # every element, LUT data included
        assert got.RedPaletteColorLookupTableDescriptor == source.RedPaletteColorLookupTableDescriptor


# ----------------------------------------------------------------- peers
@pytest.fixture
def pynetdicom_qr_scp(pynetdicom: Any, palettes: dict[str, Any]) -> Iterator[Any]:
    """A pynetdicom Color Palette Q/R SCP "PYQRSCP" serving Datasets;
    ``server.destinations`` maps move destination AE titles to (address, port)."""
    ae = pynetdicom.AE("PYQRSCP")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT
    for model in QR_MODELS:
        ae.add_supported_context(model)
    ae.add_supported_context(uids.ColorPaletteStorage, scu_role=True, scp_role=True)
    ae.add_requested_context(uids.ColorPaletteStorage)
    destinations: dict[str, tuple[str, int]] = {}
    bound = handlers(palettes, destinations, as_files=False)
    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[
            (pynetdicom.evt.EVT_C_FIND, bound["find"]),
            (pynetdicom.evt.EVT_C_GET, bound["get"]),
            (pynetdicom.evt.EVT_C_MOVE, bound["move"]),
        ],
    )
    server.destinations = destinations
    try:
        yield server
    finally:
        server.shutdown()


@pytest.fixture
def chromanet_qr_scp(make_qr_scp: Any, palettes: dict[str, Any]) -> Any:
    """A chromanet Color Palette Q/R SCP "QRSCP" serving the palette files;
    ``scp.destinations`` maps move destination AE titles to (address, port)."""
    destinations: dict[str, tuple[str, int]] = {}
    bound = handlers(palettes, destinations, as_files=True)
    scp = make_qr_scp(
        [(evt.EVT_C_FIND, bound["find"]), (evt.EVT_C_GET, bound["get"]), (evt.EVT_C_MOVE, bound["move"])]
    )
    scp.destinations = destinations
    return scp


# ==================================== pynetdicom SCU -> chromanet SCP
def test_pynetdicom_find_from_chromanet(pynetdicom, chromanet_qr_scp, palettes):
    with pynetdicom_qr_association(pynetdicom, chromanet_qr_scp.port) as assoc:
        everything = list(assoc.send_c_find(query("*"), FIND))
        one = list(assoc.send_c_find(query("", UIDS[2]), FIND))
        wild = list(assoc.send_c_find(query("*LUT"), FIND))
    assert statuses(everything) == [0xFF00] * 8 + [0x0000]
    found = {str(i.SOPInstanceUID): i for _, i in everything[:-1]}
    assert sorted(found) == UIDS
    for uid, identifier in found.items():
        assert identifier.ContentLabel == palettes[uid].ContentLabel
        assert identifier.SOPClassUID == uids.ColorPaletteStorage
    assert statuses(one) == [0xFF00, 0x0000]
    assert one[0][1].ContentLabel == palettes[UIDS[2]].ContentLabel == "HOT_METAL_BLUE"
    # SPRING/SUMMER/FALL/WINTER LUT
    assert sorted(str(i.SOPInstanceUID) for _, i in wild[:-1]) == UIDS[4:]


def test_pynetdicom_get_from_chromanet(pynetdicom, chromanet_qr_scp, palettes):
    log = DatasetLog()
    with pynetdicom_qr_association(pynetdicom, chromanet_qr_scp.port, store=log) as assoc:
        responses = list(assoc.send_c_get(query("", UIDS), GET))
        some = list(assoc.send_c_get(query("", [UIDS[0], UIDS[7]]), GET))
    assert statuses(responses) == [0xFF00] * 8 + [0x0000]
    assert responses[-1][0].NumberOfCompletedSuboperations == 8
    assert statuses(some) == [0xFF00, 0xFF00, 0x0000]
    assert_same_palettes(log.datasets, palettes)


def test_pynetdicom_move_from_chromanet_to_third_ae(pynetdicom, chromanet_qr_scp, make_scp, palettes):
    log, datasets = StoreLog(), DatasetLog()
    dest = make_scp(ae_title="THIRD", store=False, handlers=[(evt.EVT_C_STORE, both(log, datasets))])
    chromanet_qr_scp.destinations["THIRD"] = dest.address
    with pynetdicom_qr_association(pynetdicom, chromanet_qr_scp.port) as assoc:
        responses = list(assoc.send_c_move(query("", UIDS), "THIRD", MOVE, msg_id=11))
        unknown = list(assoc.send_c_move(query("", UIDS), "NOBODY", MOVE))
    assert statuses(responses) == [0xFF00] * 8 + [0x0000]
    assert statuses(unknown) == [0xA801]
    assert log.received == [(uid, "PYQRSCU", 11) for uid in UIDS]
    assert_same_palettes(datasets.datasets, palettes)
    assert wait_until(lambda: not dest.server._server.associations)


# ==================================== chromanet SCU -> pynetdicom SCP
def test_chromanet_find_from_pynetdicom(pynetdicom_qr_scp, palettes):
    with qr_association(pynetdicom_qr_scp.server_address[1], "PYQRSCP") as assoc:
        responses = list(assoc.send_c_find(query("*"), FIND))
        hot = list(assoc.send_c_find(query("HOT*"), FIND))
    assert statuses(responses) == [0xFF00] * 8 + [0x0000]
    assert responses[-1][1] is None
    found = {str(i.SOPInstanceUID): i.ContentLabel for _, i in responses[:-1]}
    assert found == {uid: palettes[uid].ContentLabel for uid in UIDS}
    assert sorted(i.ContentLabel for _, i in hot[:-1]) == ["HOT_IRON", "HOT_METAL_BLUE"]


def test_chromanet_get_from_pynetdicom(pynetdicom_qr_scp, palettes):
    log = DatasetLog()
    with qr_association(pynetdicom_qr_scp.server_address[1], "PYQRSCP", store=log) as assoc:
        responses = list(assoc.send_c_get(query("", UIDS), GET))
    # pynetdicom sends a pending response after every sub-operation, the last one included
    assert statuses(responses) == [0xFF00] * 8 + [0x0000]
    remaining = [int(s.NumberOfRemainingSuboperations) for s, _ in responses[:-1]]
    assert remaining == list(range(7, -1, -1))
    assert responses[-1][0].NumberOfCompletedSuboperations == 8
    assert_same_palettes(log.datasets, palettes)


def test_chromanet_get_from_pynetdicom_with_explicit_role(pynetdicom_qr_scp, palettes):
    """The role item given by the caller (pynetdicom's way) rather than the
    one chromanet adds by itself for the C-GET model."""
    log = DatasetLog()
    ae = qr_scu_ae()
    ae.add_requested_context(uids.ColorPaletteStorage)
    assoc = ae.associate(
        "127.0.0.1",
        pynetdicom_qr_scp.server_address[1],
        ae_title="PYQRSCP",
        ext_neg=[build_role(uids.ColorPaletteStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, log)],
    )
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_get(query("", UIDS[:3]), GET))
    finally:
        assoc.release()
    assert statuses(responses) == [0xFF00] * 3 + [0x0000]
    assert_same_palettes(log.datasets, palettes, UIDS[:3])


def test_chromanet_move_from_pynetdicom(pynetdicom_qr_scp, make_scp, palettes):
    log, datasets = StoreLog(), DatasetLog()
    dest = make_scp(ae_title="DEST", store=False, handlers=[(evt.EVT_C_STORE, both(log, datasets))])
    pynetdicom_qr_scp.destinations["DEST"] = dest.address
    with qr_association(pynetdicom_qr_scp.server_address[1], "PYQRSCP") as assoc:
        responses = list(assoc.send_c_move(query("", UIDS), "DEST", MOVE, msg_id=99))
        unknown = list(assoc.send_c_move(query("", UIDS), "NOBODY", MOVE))
    # pynetdicom sends a pending response after every sub-operation, the last one included
    assert statuses(responses) == [0xFF00] * 8 + [0x0000]
    assert responses[-1][0].NumberOfCompletedSuboperations == 8
    assert statuses(unknown) == [0xA801]
    # pynetdicom puts its own AE title in Move Originator AE Title (service_class.py:
    # originator_aet=self.ae.ae_title), not the C-MOVE SCU's; the Message ID is ours.
    assert log.received == [(uid, "PYQRSCP", 99) for uid in UIDS]
    assert_same_palettes(datasets.datasets, palettes)
    assert wait_until(lambda: not dest.server._server.associations)


# ============================== chromanet SCP C-MOVE -> DCMTK storescp
def test_move_into_dcmtk_storescp(dcmtk, tmp_path, chromanet_qr_scp, palettes):
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    args = [dcmtk("storescp"), "-aet", "STORESCP", *storescp_palette_options(), "-od", str(out), str(port)]
    with subprocess_server(args, port):
        chromanet_qr_scp.destinations["STORESCP"] = ("127.0.0.1", port)
        with qr_association(chromanet_qr_scp.port) as assoc:
            responses = list(assoc.send_c_move(query("", UIDS), "STORESCP", MOVE))
        assert statuses(responses) == [0xFF00] * 8 + [0x0000]
        assert responses[-1][0].NumberOfCompletedSuboperations == 8
        # storescp writes each file before it answers the C-STORE
        files = sorted(Path(out).iterdir())
    assert len(files) == 8, files
    received = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(f) for f in files)}
    assert_same_palettes(received, palettes)
    for ds in received.values():
        assert ds.file_meta.MediaStorageSOPClassUID == uids.ColorPaletteStorage


# ================================================ the two SCU APIs
def test_blocking_api_returns_lazy_generators(chromanet_qr_scp, palettes):
    log = DatasetLog()
    with qr_association(chromanet_qr_scp.port, store=log) as assoc:
        found = assoc.send_c_find(query("*"), FIND)
        assert inspect.isgenerator(found)
        first_status, first = next(found)
        assert first_status.Status == 0xFF00 and str(first.SOPInstanceUID) in UIDS
        rest = list(found)
        assert statuses(rest) == [0xFF00] * 7 + [0x0000]
        got = assoc.send_c_get(query("", UIDS[5]), GET)
        assert inspect.isgenerator(got)
        assert statuses(list(got)) == [0xFF00, 0x0000]
    assert_same_palettes(log.datasets, palettes, [UIDS[5]])


def test_async_api_async_for(palettes, pynetdicom):
    """The same service on one uvloop loop: chromanet SCP (async server) and
    chromanet SCU (``async with`` / ``async for``), plus a C-MOVE into a
    pynetdicom destination."""
    destination = start_pynetdicom_destination(pynetdicom, "PYDEST")
    pdest, pdest_log = destination.server, destination.log

    async def main() -> None:
        destinations = {"PYDEST": ("127.0.0.1", pdest.server_address[1])}
        bound = handlers(palettes, destinations, as_files=True)
        ae = configure_qr_scp_ae()
        server = await ae.start_server_async(
            ("127.0.0.1", 0),
            evt_handlers=[(evt.EVT_C_FIND, bound["find"]), (evt.EVT_C_GET, bound["get"]), (evt.EVT_C_MOVE, bound["move"])],
        )
        log = DatasetLog()
        try:
            async with qr_scu_ae().associate_async(
                *server.server_address, ae_title="QRSCP", evt_handlers=[(evt.EVT_C_STORE, log)]
            ) as assoc:
                labels = []
                async for status, identifier in assoc.send_c_find(query("*"), FIND):
                    if status.Status == 0xFF00:
                        labels.append(identifier.ContentLabel)
                    else:
                        assert status.Status == 0x0000 and identifier is None
                assert sorted(labels) == sorted(palettes[u].ContentLabel for u in UIDS)

                finals = [s async for s, _ in assoc.send_c_get(query("", UIDS), GET)]
                assert [s.Status for s in finals] == [0xFF00] * 8 + [0x0000]

                moves = [s async for s, _ in assoc.send_c_move(query("", UIDS[:2]), "PYDEST", MOVE, msg_id=5)]
                assert [s.Status for s in moves] == [0xFF00, 0xFF00, 0x0000]
            await asyncio.wait_for(until(lambda: not server.associations), WAIT_TIMEOUT)
        finally:
            await server.close()
        assert_same_palettes(log.datasets, palettes)

    try:
        run_async(main())
        assert pdest_log.received == [(uid, "QRSCU", 5) for uid in UIDS[:2]]
        assert wait_until(lambda: not pdest.active_associations)
    finally:
        pdest.shutdown()
