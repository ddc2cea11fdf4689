"""Several nodes, one archive: ``chromanet serve --index postgresql://...``.

Two ``PaletteNode`` instances on different ports share one PostgreSQL
database (a throwaway cluster, ``helpers.postgres``) and behave as one
archive: a palette stored through node A is found (C-FIND, PS3.4 X.4.1) and
retrieved (C-GET, X.4.2) through node B at once; stores of one SOP Instance
UID racing through both from two peers leave exactly one owner (the other
is refused 0x0124, PS3.7 C); losing the database answers C-FIND and C-GET
with a failure (0xC000 "unable to process") and C-STORE with 0xA700 (PS3.4
B.2.3 "out of resources"), and the node serves again once the database is
back, without a restart; a node killed in the middle of a store leaves
nothing behind. Also the command line: ``--index`` and the TOML ``index``
key, and a ``chromanet serve`` subprocess on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import pydicom
import pytest
import uvloop
from pydicom import Dataset
from pydicom.uid import generate_uid

from chromanet import _pdu, dsutil, evt, uids
from chromanet.apps.access import OPERATIONS, AccessPolicy
from chromanet.apps.cli import build_parser, load_node_config
from chromanet.apps.node import NodeConfig, PaletteNode
from chromanet.archive.postgres import PgArchive
from chromanet.services.spool import SPOOL_PREFIX

from helpers.data import hot_iron_copy
from helpers.postgres import PgCluster
from helpers.qr import FIND, GET, MOVE, qr_scu_ae
from helpers.rawpeer import partial_store
from helpers.servers import async_scp, free_port, wait_listening
from helpers.waits import WAIT_TIMEOUT, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")


def run(body: Any) -> None:
    uvloop.run(asyncio.wait_for(body(), 120))


def config(data_dir: Path, url: str) -> NodeConfig:
    return NodeConfig(
        port=0, bind_address="127.0.0.1", data_dir=data_dir, index=url, log_level="WARNING",
        access=AccessPolicy(default_operations=frozenset(OPERATIONS)),
    )  # fmt: skip


class Received:
    """The EVT_C_STORE handler of a C-GET SCU: the data sets it was sent."""

    def __init__(self) -> None:
        self.datasets: dict[str, bytes] = {}

    def __call__(self, event: Any) -> int:
        self.datasets[str(event.request.AffectedSOPInstanceUID)] = bytes(event.encoded_dataset(include_meta=False))
        return 0x0000


def association(port: int, calling: str, received: Received | None = None) -> Any:
    ae = qr_scu_ae(calling, (FIND, GET, MOVE))
    ae.add_requested_context(uids.ColorPaletteStorage)
    handlers = [(evt.EVT_C_STORE, received)] if received is not None else None
    both_roles = _pdu.RoleSelection(uids.ColorPaletteStorage, True, True)
    return ae.associate_async("127.0.0.1", port, ae_title="CHROMANET", ext_neg=[both_roles], evt_handlers=handlers)


async def final(responses: AsyncIterator[tuple[Dataset, Any]]) -> tuple[int, list[Dataset]]:
    identifiers = []
    status = None
    async for status, identifier in responses:
        if identifier is not None:
            identifiers.append(identifier)
    assert status is not None
    return int(status.Status), identifiers


def query(**keys: Any) -> Dataset:
    ds = Dataset()
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def new_palette(label: str) -> Dataset:
    ds = hot_iron_copy(generate_uid(), label)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uids.ExplicitVRLittleEndian
    return ds


def port_of(node: PaletteNode) -> int:
    assert node.server is not None
    return int(node.server.server_address[1])


def test_stored_through_a_found_and_retrieved_through_b(pg_url: str, tmp_path: Path) -> None:
    async def body() -> None:
        a, b = PaletteNode(config(tmp_path / "a", pg_url)), PaletteNode(config(tmp_path / "b", pg_url))
        await a.start()
        await b.start()
        try:
            palette = new_palette("SHARED_LUT")
            async with association(port_of(a), "ALICE") as assoc:
                assert (await assoc.send_c_store(palette)).Status == 0x0000
            received = Received()
            async with association(port_of(b), "BOB", received) as assoc:
                status, found = await final(
                    assoc.send_c_find(query(ContentLabel="SHARED*", SOPInstanceUID=""), FIND)
                )
                assert status == 0x0000 and [str(ds.SOPInstanceUID) for ds in found] == [palette.SOPInstanceUID]
                wanted = f"{palette.SOPInstanceUID}\\1.2.840.10008.1.5.1\\1.2.3.4"
                status, _ = await final(assoc.send_c_get(query(SOPInstanceUID=wanted), GET))
                assert status == 0xB000  # two sent, one not stored
            assert set(received.datasets) == {palette.SOPInstanceUID, "1.2.840.10008.1.5.1"}
            back = pydicom.dcmread(pydicom.filebase.DicomBytesIO(received.datasets[palette.SOPInstanceUID]),
                                   force=True)  # fmt: skip
            back.file_meta = pydicom.dataset.FileMetaDataset()
            back.file_meta.TransferSyntaxUID = uids.ImplicitVRLittleEndian
            assert back.ContentLabel == "SHARED_LUT"
            assert back.RedPaletteColorLookupTableData == palette.RedPaletteColorLookupTableData
        finally:
            await a.close()
            await b.close()

    run(body)


def test_racing_stores_through_two_nodes_one_owner(pg_url: str, tmp_path: Path) -> None:
    async def body() -> None:
        a, b = PaletteNode(config(tmp_path / "a", pg_url)), PaletteNode(config(tmp_path / "b", pg_url))
        await a.start()
        await b.start()
        archive = await PgArchive.open(pg_url, seed=False)
        try:
            async with association(port_of(a), "ALICE") as alice, association(port_of(b), "BOB") as bob:
                for _ in range(6):
                    uid = generate_uid()
                    mine, theirs = new_palette("ALICE"), new_palette("BOB")
                    for ds in (mine, theirs):
                        ds.SOPInstanceUID = uid
                    got = await asyncio.gather(alice.send_c_store(mine), bob.send_c_store(theirs))
                    statuses = [int(r.Status) for r in got]
                    assert sorted(statuses) == [0x0000, 0x0124], statuses
                    winner = "ae:ALICE" if statuses[0] == 0 else "ae:BOB"
                    assert (await archive.get(uid)).owner == winner
                    status, found = await final(bob.send_c_find(query(SOPInstanceUID=uid, ContentLabel=""), FIND))
                    assert [str(ds.ContentLabel) for ds in found] == [winner[3:]]
        finally:
            await archive.close()
            await a.close()
            await b.close()

    run(body)


def test_get_of_more_than_one_read_batch(pg_url: str, tmp_path: Path) -> None:
    """A C-GET of 40 palettes (the node reads them from the database a few
    per query) and one missing UID: all 40 arrive, in request order."""

    async def body() -> None:
        archive = await PgArchive.open(pg_url)
        node = PaletteNode(config(tmp_path / "a", pg_url))
        await node.start()
        try:
            stored = []
            for n in range(40):
                ds = new_palette(f"BATCH_{n:02d}")
                assert (await archive.ingest_dataset(ds)).status == 0x0000
                stored.append(str(ds.SOPInstanceUID))
            received = Received()
            async with association(port_of(node), "BOB", received) as assoc:
                wanted = "\\".join(stored[:20] + ["1.2.3.4"] + stored[20:])
                status, _ = await final(assoc.send_c_get(query(SOPInstanceUID=wanted), GET))
            assert status == 0xB000
            assert list(received.datasets) == stored
        finally:
            await archive.close()
            await node.close()

    run(body)


def test_moved_through_b_after_a_store_through_a(pg_url: str, tmp_path: Path) -> None:
    """C-MOVE (X.4.3) through node B of a palette stored through node A:
    B's sub-association delivers the stored bytes to the destination."""

    async def body() -> None:
        async with async_scp("DEST") as dest:
            b_config = config(tmp_path / "b", pg_url)
            b_config.move_destinations = {"DEST": ("127.0.0.1", dest.port)}
            a, b = PaletteNode(config(tmp_path / "a", pg_url)), PaletteNode(b_config)
            await a.start()
            await b.start()
            try:
                palette = new_palette("MOVED_LUT")
                async with association(port_of(a), "ALICE") as assoc:
                    assert (await assoc.send_c_store(palette)).Status == 0x0000
                async with association(port_of(b), "BOB") as assoc:
                    wanted = f"{palette.SOPInstanceUID}\\1.2.3.4"
                    status, _ = await final(assoc.send_c_move(query(SOPInstanceUID=wanted), "DEST", MOVE))
                    assert status == 0xB000  # one moved, one not stored
                assert [s.sop_instance_uid for s in dest.stored] == [palette.SOPInstanceUID]
            finally:
                await a.close()
                await b.close()

    run(body)


def test_database_lost_under_a_running_node(private_cluster: PgCluster, tmp_path: Path) -> None:
    url = private_cluster.create_database()

    async def body() -> None:
        node = PaletteNode(config(tmp_path / "a", url))
        await node.start()
        loop = asyncio.get_running_loop()
        try:
            async with association(port_of(node), "ALICE", Received()) as assoc:
                labels = query(ContentLabel="*")
                assert (await final(assoc.send_c_find(labels, FIND)))[0] == 0x0000
                await loop.run_in_executor(None, private_cluster.stop)
                status, found = await final(assoc.send_c_find(labels, FIND))
                assert status == 0xC000 and found == []
                status, _ = await final(assoc.send_c_get(query(SOPInstanceUID="1.2.840.10008.1.5.1"), GET))
                assert status == 0xC000
                assert (await assoc.send_c_store(new_palette("DURING"))).Status == 0xA700
                await loop.run_in_executor(None, private_cluster.start)
                # The node was not restarted: its pool reconnects by itself.
                deadline = loop.time() + WAIT_TIMEOUT
                while (status := (await final(assoc.send_c_find(labels, FIND)))[0]) != 0x0000:
                    assert loop.time() < deadline, f"still 0x{status:04X} after the database came back"
                    await asyncio.sleep(0.05)
                assert (await assoc.send_c_store(new_palette("AFTER"))).Status == 0x0000
        finally:
            await node.close()

    run(body)


def test_index_flag_and_toml(tmp_path: Path) -> None:
    url = "postgresql://chromanet@db.example:5432/palettes"
    parse = lambda *argv: load_node_config(build_parser().parse_args(["serve", *argv]))  # noqa: E731
    assert parse().index is None
    assert parse("--index", url).index == url
    toml = tmp_path / "node.toml"
    toml.write_text(f'index = "{url}"\n')
    assert parse("--config", str(toml)).index == url
    with pytest.raises(ValueError, match="postgresql"):
        PaletteNode(NodeConfig(data_dir=tmp_path / "d", index="mysql://x/y"))


def serve(data_dir: Path, port: int, url: str, *extra: str) -> subprocess.Popen[str]:
    """``chromanet serve --index URL`` in a subprocess, listening: one
    process (a node killed mid-store is one process killed; workers on
    PostgreSQL are tests/apps/test_workers.py's)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "chromanet.apps.cli", "serve", "--data-dir", str(data_dir), "--workers", "1",
         "--port", str(port), "--bind", "127.0.0.1", "--index", url, "--default-access", "all", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_listening(port, process, timeout=30)
    except BaseException:
        process.kill()
        process.communicate(timeout=WAIT_TIMEOUT)
        raise
    return process


def test_node_killed_mid_store_leaves_nothing(pg_url: str, tmp_path: Path) -> None:
    """A node killed while a C-STORE's data set is arriving: the database
    never saw it, and the restarted node removes the partial spool file
    (every data set spooled, ``--store-memory-limit 0``: the spool is
    what this test watches)."""
    data_dir, port = tmp_path / "data", free_port()
    palette = new_palette("KILLED")
    process = serve(data_dir, port, pg_url, "--store-memory-limit", "0")
    try:
        sock = partial_store(port, dsutil.encode_dataset(palette, uids.ExplicitVRLittleEndian),
                             palette.SOPInstanceUID)  # fmt: skip
        spooled = lambda: list((data_dir / "incoming").glob(f"{SPOOL_PREFIX}*"))  # noqa: E731
        assert wait_until(lambda: bool(spooled())), "the partial data set was never spooled"
        process.kill()
        process.communicate(timeout=WAIT_TIMEOUT)
        sock.close()
        process = serve(data_dir, port, pg_url)
        assert spooled() == []
    finally:
        process.terminate()
        process.communicate(timeout=WAIT_TIMEOUT)

    async def stored() -> Any:
        archive = await PgArchive.open(pg_url, seed=False)
        try:
            return await archive.get(palette.SOPInstanceUID), await archive.count()
        finally:
            await archive.close()

    assert uvloop.run(asyncio.wait_for(stored(), 60)) == (None, 8)


def test_serve_subprocess_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    port = free_port()
    process = serve(tmp_path / "data", port, pg_url)
    try:
        found = subprocess.run(
            [sys.executable, "-m", "chromanet.apps.cli", "find", "127.0.0.1", str(port), "-k", "ContentLabel=HOT*"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert found.returncode == 0, found.stderr
        assert {line.split()[1] for line in found.stdout.splitlines()} == {"HOT_IRON", "HOT_METAL_BLUE"}
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=WAIT_TIMEOUT)
    assert "listening" in output and "postgresql://" in output
