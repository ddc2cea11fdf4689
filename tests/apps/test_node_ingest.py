"""The node's C-STOREs through group commit (``archive/group_commit.py``):
what a peer was answered with success (0x0000, PS3.4 B.2.3) is durable.

- ``chromanet serve --workers 1`` killed with SIGKILL in the middle of a
  burst from 8 associations, three rounds over one data directory, with
  the data sets received in memory (the default for palettes: kept in the
  index, ``archive/store.py``; the third round with
  ``--store-inline-max 0``, in files) and with every one spooled
  (``--store-memory-limit 0``, in files), the second round with
  ``--store-durability fsync`` and the others with the default (``auto``:
  syncfs where supported, ``archive/durability.py``): every
  store answered 0x0000 is in the archive after the restart, its data set
  the bytes that were sent; between rounds no row names a missing or
  shorter file, and at the end ``verify()`` finds nothing (no temporary,
  no file without a row). The same on PostgreSQL (``--index``), where the
  palette bytes are in the row. And with ``--workers 2``, the supervisor
  and both workers killed at once while the supervisor's shared committer
  (``archive/shared_commit.py``) commits the workers' stores.
- With workers, the acknowledged stores are committed by the supervisor's
  shared committer, several a batch (a worker left storing alone may
  commit its own at the end); every one is in the archive;
  ``--store-committer worker`` leaves the shared committer out.
- Responses of one association leave in the order of its requests, even
  when the peer pipelines them (asynchronous operations window, PS3.7
  D.3.3.3) and a slower store is ahead of quicker ones.
- Concurrent associations share batches: fewer commits than stores.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
from pathlib import Path
from typing import Any

import pytest
import uvloop

from chromanet import _pdu, dsutil, uids
from chromanet.apps.access import OPERATIONS, AccessPolicy
from chromanet.apps.node import NodeConfig, PaletteNode
from chromanet.archive import PaletteArchive
from chromanet.archive.postgres import PgArchive
from helpers.data import hot_iron_copy
from helpers.nodeproc import ServeProcess
from helpers.servers import scu_ae
from helpers.waits import WAIT_TIMEOUT, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

ASSOCIATIONS = 8
ROUNDS = 3
# Acknowledged stores (all associations) after which the node is killed.
KILL_AFTER = 60

_TEMPLATE: dict[str, Any] = {}


def new_store() -> tuple[str, bytes, bytes]:
    """A new palette: (SOP Instance UID, Part 10 bytes, data set bytes).
    Hot Iron encoded once with a placeholder UID that each copy replaces
    by a new one of the same length (PS3.5 B.2 "2.25." UIDs)."""
    if not _TEMPLATE:
        placeholder = "2.25." + "1" * 38
        ds = hot_iron_copy(placeholder, "DURABLE")
        meta = dsutil.build_file_meta(ds.SOPClassUID, placeholder, uids.ExplicitVRLittleEndian)
        body = dsutil.encode_dataset(ds, uids.ExplicitVRLittleEndian)
        _TEMPLATE.update(placeholder=placeholder.encode(), header=dsutil.encode_file_header(meta), body=body)
    uid = f"2.25.{10**37 + secrets.randbelow(9 * 10**37)}"
    body = _TEMPLATE["body"].replace(_TEMPLATE["placeholder"], uid.encode())
    header = _TEMPLATE["header"].replace(_TEMPLATE["placeholder"], uid.encode())
    return uid, header + body, body


async def burst(port: int, acked: dict[str, bytes], kill: Any) -> None:
    """ASSOCIATIONS associations storing new palettes until the node dies;
    ``acked`` gets each store answered 0x0000. ``kill`` is called once
    KILL_AFTER stores were acknowledged in this burst."""
    ae = scu_ae("DURABLE")
    start = len(acked)
    killed = asyncio.Event()

    async def one_association() -> None:
        try:
            assoc = await ae.associate_async("127.0.0.1", port, ae_title="CHROMANET")
        except Exception:  # noqa: BLE001 - the node is already gone
            return
        try:
            while assoc.is_established:
                uid, part10, body = new_store()
                rsp = await assoc.send_c_store(part10)
                if "Status" not in rsp:
                    return  # the association ended: no answer for this one
                assert int(rsp.Status) == 0x0000, f"0x{int(rsp.Status):04X}"
                acked[uid] = body
                if len(acked) - start >= KILL_AFTER and not killed.is_set():
                    killed.set()
                    kill()
        except (ConnectionError, OSError):
            return
        finally:
            assoc.abort()

    await asyncio.wait_for(asyncio.gather(*(one_association() for _ in range(ASSOCIATIONS))), 60)
    assert killed.is_set(), "the node died before the burst was under way"


def node_args() -> list[str]:
    return ["--workers", "1", "--default-access", "all"]


def kill_all(node: ServeProcess) -> None:
    """SIGKILL to the supervisor and to every worker at once (a whole node
    killed, its shared committer in the middle of a batch)."""
    for pid in [node.process.pid, *node.worker_pids().values()]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize(
    "receive", [[], ["--store-memory-limit", "0"], ["--workers", "2"]], ids=["in-memory", "spooled", "workers"]
)
def test_acknowledged_stores_survive_kill_9(tmp_path: Path, receive: list[str]) -> None:
    data_dir = tmp_path / "data"
    acked: dict[str, bytes] = {}
    workers = 2 if "--workers" in receive else 1
    for round_ in range(ROUNDS):
        durability = ["--store-durability", "fsync"] if round_ == 1 else []
        layout = ["--store-inline-max", "0"] if round_ == 2 else []
        node = ServeProcess(data_dir, node_args() + receive + durability + layout)
        try:
            node.wait_ready(workers=workers)
            kill = (lambda: kill_all(node)) if workers > 1 else (lambda: node.process.send_signal(signal.SIGKILL))
            uvloop.run(burst(node.port, acked, kill))
        finally:
            node.stop(signal.SIGKILL)
            if workers > 1:
                kill_all(node)
                assert wait_until(lambda: not any(_alive(pid) for pid in node.worker_pids().values()))
        # What the kill left, before any recovery: no row without its whole file.
        with PaletteArchive(data_dir, shared=True) as archive:
            report = archive.verify()
            assert not report.rows_without_file and not report.size_mismatches, report
    # A last start recovers (removes what was never acknowledged) and stops cleanly.
    node = ServeProcess(data_dir, node_args())
    with node:
        node.wait_ready()
    assert len(acked) >= ROUNDS * KILL_AFTER
    with PaletteArchive.open(data_dir, seed=False) as archive:
        assert archive.verify().ok, archive.verify()
        for uid, body in acked.items():
            data = archive.read(uid)
            assert data is not None, f"{uid} was acknowledged but is not stored"
            part = dsutil.parse_part10(memoryview(data))
            assert bytes(part.dataset_bytes()) == body, f"{uid}: not the bytes sent"
        assert not list((data_dir / "incoming").glob(".incoming-*"))


def test_acknowledged_stores_survive_kill_9_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    acked: dict[str, bytes] = {}
    for _ in range(ROUNDS):
        node = ServeProcess(data_dir, [*node_args(), "--index", pg_url])
        try:
            node.wait_ready()
            uvloop.run(burst(node.port, acked, lambda: node.process.send_signal(signal.SIGKILL)))
        finally:
            node.stop(signal.SIGKILL)
    assert len(acked) >= ROUNDS * KILL_AFTER

    async def check() -> None:
        archive = await PgArchive.open(pg_url, seed=False)
        try:
            stored = await archive.read_many(list(acked))
        finally:
            await archive.close()
        missing = set(acked) - set(stored)
        assert not missing, f"{len(missing)} acknowledged stores missing"
        for uid, data in stored.items():
            part = dsutil.parse_part10(memoryview(data))
            assert bytes(part.dataset_bytes()) == acked[uid], f"{uid}: not the bytes sent"

    uvloop.run(asyncio.wait_for(check(), 60))


def part10_bytes(ds: Any) -> bytes:
    meta = dsutil.build_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, uids.ExplicitVRLittleEndian)
    return dsutil.encode_file_header(meta) + dsutil.encode_dataset(ds, uids.ExplicitVRLittleEndian)


def node_config(data_dir: Path) -> NodeConfig:
    return NodeConfig(
        port=0, bind_address="127.0.0.1", data_dir=data_dir, log_level="WARNING",
        access=AccessPolicy(default_operations=frozenset(OPERATIONS)),
    )  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def store_many(port: int, per_association: int, acked: dict[str, bytes]) -> None:
    """ASSOCIATIONS associations storing ``per_association`` new palettes
    each, every one to be answered 0x0000."""
    ae = scu_ae("DURABLE")

    async def one_association() -> None:
        assoc = await ae.associate_async("127.0.0.1", port, ae_title="CHROMANET")
        try:
            for _ in range(per_association):
                uid, part10, body = new_store()
                rsp = await assoc.send_c_store(part10)
                assert int(rsp.Status) == 0x0000, rsp
                acked[uid] = body
        finally:
            await assoc.release()

    await asyncio.wait_for(asyncio.gather(*(one_association() for _ in range(ASSOCIATIONS))), 60)


@pytest.mark.parametrize(
    ("workers", "committer", "shared"),
    [(2, "auto", True), (2, "worker", False), (1, "supervisor", True)],
    ids=["2-workers", "2-workers-own-commits", "1-worker-and-supervisor"],
)
def test_workers_share_one_committer(tmp_path: Path, workers: int, committer: str, shared: bool) -> None:
    """With workers, the stores every worker keeps in the index commit in
    the supervisor (``archive/shared_commit.py``), each acknowledged one
    stored; ``--store-committer worker`` keeps them in each worker;
    ``--workers 1 --store-committer supervisor`` is a supervisor and one
    worker that commits through it."""
    data_dir = tmp_path / "data"
    acked: dict[str, bytes] = {}
    node = ServeProcess(
        data_dir, ["--workers", str(workers), "--default-access", "all", "--store-committer", committer]
    )
    with node:
        node.wait_ready(workers=workers)
        assert len(node.worker_pids()) == workers  # a supervisor started them
        uvloop.run(store_many(node.port, 25, acked))
        assert node.stop() == 0
    assert len(acked) == 25 * ASSOCIATIONS
    shared_lines = [line for line in node.lines if "shared committer:" in line and "batches" in line]
    if shared:
        assert len(shared_lines) == 1, node.output
        stores, batches = map(int, re.search(r"(\d+) stores in (\d+) batches", shared_lines[0]).groups())
        # Stores that met went to the supervisor, several a batch; a worker
        # left with one association storing alone may commit its own at the
        # end (group_commit.LONE_BATCHES_BEFORE_LOCAL).
        assert 0 < stores <= len(acked) and batches < stores, shared_lines
    else:
        assert not shared_lines, node.output
    with PaletteArchive.open(data_dir, seed=False) as archive:
        assert archive.verify().ok
        for uid, body in acked.items():
            data = archive.read(uid)
            assert data is not None and bytes(dsutil.parse_part10(memoryview(data)).dataset_bytes()) == body


def test_responses_keep_the_order_of_requests(tmp_path: Path) -> None:
    """One association pipelines stores (window 8): a palette slow to
    validate first, quick ones behind it; the responses come back in
    request order."""

    async def body() -> None:
        node = PaletteNode(node_config(tmp_path / "data"))
        server = await node.start()
        try:
            assoc = await scu_ae("ORDER").associate_async(
                "127.0.0.1", server.server_address[1], ae_title="CHROMANET", ext_neg=[_pdu.AsyncOperationsWindow(8, 8)]
            )
            assert assoc.is_established
            big = hot_iron_copy("2.25.1" + "0" * 20, "BIG")
            # Many alternate descriptions: slower to validate than the stores behind it.
            item = big.AlternateContentDescriptionSequence[0]
            big.AlternateContentDescriptionSequence = [item] * 400
            datasets = [big] + [hot_iron_copy(f"2.25.2{n:020d}", f"SMALL{n}") for n in range(7)]
            # Encoded beforehand: the requests leave back to back.
            stores = [(ds.SOPInstanceUID, part10_bytes(ds)) for ds in datasets]
            answered: list[str] = []

            async def store(uid: str, part10: bytes) -> None:
                rsp = await assoc.send_c_store(part10)
                assert int(rsp.Status) in (0x0000, 0xB007)
                answered.append(uid)

            for _ in range(3):
                answered.clear()
                await asyncio.wait_for(asyncio.gather(*(store(*s) for s in stores)), WAIT_TIMEOUT)
                assert answered == [uid for uid, _ in stores]
            await assoc.release()
        finally:
            await node.close()

    uvloop.run(asyncio.wait_for(body(), 120))


def test_concurrent_associations_share_commits(tmp_path: Path) -> None:
    async def body() -> None:
        node = PaletteNode(node_config(tmp_path / "data"))
        server = await node.start()
        try:
            ae = scu_ae("SHARE")
            port = server.server_address[1]

            async def one() -> None:
                assoc = await ae.associate_async("127.0.0.1", port, ae_title="CHROMANET")
                for _ in range(10):
                    uid, part10, _ = new_store()
                    assert int((await assoc.send_c_store(part10)).Status) == 0x0000
                await assoc.release()

            await asyncio.gather(*(one() for _ in range(ASSOCIATIONS)))
            group = node.ingest_queue.group
            assert group.items == 10 * ASSOCIATIONS
            assert group.batches < group.items  # stores that waited shared a commit
            assert len(node.archive) == 8 + 10 * ASSOCIATIONS and node.archive.verify().ok
        finally:
            await node.close()

    uvloop.run(asyncio.wait_for(body(), 120))


def test_batch_flags_and_toml(tmp_path: Path) -> None:
    from chromanet.apps.cli import build_parser, load_node_config
    from chromanet.archive.group_commit import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT

    parse = lambda *argv: load_node_config(build_parser().parse_args(["serve", *argv]))  # noqa: E731
    default = parse()
    assert (default.store_batch_size, default.store_batch_wait) == (DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT)
    flags = parse("--store-batch-size", "16", "--store-batch-wait", "0.005")
    assert (flags.store_batch_size, flags.store_batch_wait) == (16, 0.005)
    toml = tmp_path / "node.toml"
    toml.write_text("store_batch_size = 8\nstore_batch_wait = 0.002\n")
    from_file = parse("--config", str(toml))
    assert (from_file.store_batch_size, from_file.store_batch_wait) == (8, 0.002)
    from chromanet.archive.group_commit import DEFAULT_MAX_INFLIGHT

    assert default.store_batch_inflight == DEFAULT_MAX_INFLIGHT
    assert parse("--store-batch-inflight", "1").store_batch_inflight == 1
    toml.write_text("store_batch_inflight = 3\n")
    assert parse("--config", str(toml)).store_batch_inflight == 3
    with pytest.raises(ValueError, match="store_batch_inflight"):
        PaletteNode(NodeConfig(data_dir=tmp_path / "d", store_batch_inflight=0))
    node = PaletteNode(NodeConfig(data_dir=tmp_path / "i", store_batch_inflight=1))
    try:
        assert node.ingest_queue.group.max_inflight == 1
        asyncio.run(node.ingest_queue.close())  # its commit threads end
    finally:
        node.archive.close()
    with pytest.raises(ValueError, match="store_batch_size"):
        PaletteNode(NodeConfig(data_dir=tmp_path / "d", store_batch_size=0))
    assert default.store_committer == "auto"
    assert parse("--store-committer", "worker").store_committer == "worker"
    # Who commits: a supervisor for several workers, or when asked for.
    for workers, committer, index, uses_supervisor, shared in (
        (1, "auto", None, False, False),
        (2, "auto", None, True, True),
        (2, "worker", None, True, False),
        (1, "supervisor", None, True, True),
        (1, "supervisor", "postgresql://db.example/palettes", False, False),
        (2, "auto", "postgresql://db.example/palettes", True, False),
    ):
        config = NodeConfig(workers=workers, store_committer=committer, index=index)
        assert (config.uses_supervisor, config.shared_committer) == (uses_supervisor, shared), config
    toml.write_text('store_committer = "worker"\n')
    assert parse("--config", str(toml)).store_committer == "worker"
    with pytest.raises(ValueError, match="store_committer"):
        PaletteNode(NodeConfig(data_dir=tmp_path / "d", store_committer="elsewhere"))
    from chromanet.apps.node import DEFAULT_STORE_MEMORY_LIMIT

    assert default.store_memory_limit == DEFAULT_STORE_MEMORY_LIMIT
    assert parse("--store-memory-limit", "0").store_memory_limit == 0
    toml.write_text("store_memory_limit = 1024\n")
    assert parse("--config", str(toml)).store_memory_limit == 1024
    with pytest.raises(ValueError, match="store_memory_limit"):
        PaletteNode(NodeConfig(data_dir=tmp_path / "d", store_memory_limit=-1))
    assert default.store_durability == "auto"
    assert parse("--store-durability", "fsync").store_durability == "fsync"
    assert parse("--store-durability", "syncfs").store_durability == "syncfs"
    with pytest.raises(SystemExit):
        parse("--store-durability", "sometimes")
    toml.write_text('store_durability = "fsync"\n')
    assert parse("--config", str(toml)).store_durability == "fsync"
    with pytest.raises(ValueError, match="store durability 'sometimes'"):
        PaletteNode(NodeConfig(data_dir=tmp_path / "d", store_durability="sometimes"))
    node = PaletteNode(NodeConfig(data_dir=tmp_path / "f", store_durability="fsync"))
    try:
        assert node.archive.durability == "fsync"
    finally:
        node.archive.close()
    # docs/serve.toml, the documented example, names every key.
    example = (Path(__file__).resolve().parents[2] / "docs" / "serve.toml").read_text()
    assert "store_batch_size =" in example and "store_batch_wait =" in example and "store_memory_limit =" in example
    assert "store_durability =" in example and "store_batch_inflight =" in example
