"""The supervisor's shared committer (``archive/shared_commit.py``), in one
process: a ``CommitService`` thread and workers' ``RemoteCommitter`` links
on an event loop.

- Stores that several links send while a commit runs are committed
  together, in one batch; each link gets its own results, in order.
- A store refused in a shared batch (a palette another owner stored) fails
  alone.
- A frame whose length lies (over ``MAX_FRAME``), or that is not a request,
  ends that link only: nothing of it is held, the others go on.
- A failed transaction fails the batch (``SharedCommitFailed``); a service
  that is gone makes the worker's ``IngestQueue`` commit those stores itself.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
import uvloop

from chromanet import dsutil, uids
from chromanet.archive import PaletteArchive
from chromanet.archive.group_commit import IngestQueue
from chromanet.archive.shared_commit import MAX_FRAME, CommitService, RemoteCommitter, SharedCommitFailed
from chromanet.archive.store import PreparedStore
from helpers.data import hot_iron_copy
from helpers.waits import WAIT_TIMEOUT, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

_TEMPLATE: dict[str, bytes] = {}


def new_data_set() -> tuple[str, bytes]:
    """A new Hot Iron palette's data set bytes (Explicit VR LE) and its UID."""
    if not _TEMPLATE:
        placeholder = "2.25." + "1" * 38
        ds = hot_iron_copy(placeholder, "SHARED")
        _TEMPLATE.update(placeholder=placeholder.encode(), body=dsutil.encode_dataset(ds, uids.ExplicitVRLittleEndian))
    uid = f"2.25.{10**37 + secrets.randbelow(9 * 10**37)}"
    return uid, _TEMPLATE["body"].replace(_TEMPLATE["placeholder"], uid.encode())


def prepared(archive: PaletteArchive, owner: str = "A", uid_and_data: tuple[str, bytes] | None = None) -> PreparedStore:
    uid, data = uid_and_data or new_data_set()
    store = archive.prepare_data(data, uids.ExplicitVRLittleEndian, uids.ColorPaletteStorage, uid, owner=owner)
    assert isinstance(store, PreparedStore) and store.source is None, store
    return store


@pytest.fixture
def archive(tmp_path: Path):
    archive = PaletteArchive.open(tmp_path / "data", seed=False)
    archive.share()  # as the supervisor's: the workers' locks
    yield archive
    archive.close()


@pytest.fixture
def service(archive: PaletteArchive):
    service = CommitService(archive)
    service.start()
    yield service
    service.stop(timeout=WAIT_TIMEOUT)


class HeldCommits:
    """``commit_batch`` of ``archive`` made to wait, on its first call, until
    released: what the links send meanwhile queues behind it."""

    def __init__(self, archive: PaletteArchive, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.sizes: list[int] = []
        real = archive.commit_batch

        def commit_batch(batch: list[Any]) -> Any:
            self.sizes.append(len(batch))
            if len(self.sizes) == 1:
                self.started.set()
                assert self.release.wait(WAIT_TIMEOUT)
            return real(batch)

        monkeypatch.setattr(archive, "commit_batch", commit_batch)


def test_stores_of_several_workers_commit_in_one_batch(archive, service, monkeypatch):
    held = HeldCommits(archive, monkeypatch)

    async def run() -> None:
        links = [await RemoteCommitter.connect(service.connect(f"w{k}")) for k in range(3)]
        first = links[0].commit([prepared(archive)])
        await asyncio.get_running_loop().run_in_executor(None, held.started.wait, WAIT_TIMEOUT)
        # While the first batch commits, each link sends one of 2 stores.
        stores = [[prepared(archive), prepared(archive)] for _ in links]
        later = [link.commit(batch) for link, batch in zip(links, stores)]
        await asyncio.sleep(0.2)  # every request has reached the service's socket
        held.release.set()
        assert [r.status for r in await first] == [0x0000]
        for batch, results in zip(stores, await asyncio.gather(*later)):
            assert [r.status for r in results] == [0x0000, 0x0000]
            assert [r.sop_instance_uid for r in results] == [s.uid for s in batch]
        for link in links:
            link.close()
        assert sum(1 for batch in stores for s in batch if archive.get(s.uid) is not None) == 6

    uvloop.run(run())
    assert held.sizes == [1, 6], held.sizes
    assert (service.batches, service.stores) == (2, 7)


def test_a_refused_store_fails_alone_in_a_shared_batch(archive, service, monkeypatch):
    taken = new_data_set()
    archive.commit_batch([prepared(archive, owner="FIRST", uid_and_data=taken)])
    held = HeldCommits(archive, monkeypatch)

    async def run() -> list[Any]:
        a = await RemoteCommitter.connect(service.connect("a"))
        b = await RemoteCommitter.connect(service.connect("b"))
        first = a.commit([prepared(archive)])
        await asyncio.get_running_loop().run_in_executor(None, held.started.wait, WAIT_TIMEOUT)
        other = a.commit([prepared(archive, owner="SECOND", uid_and_data=taken), prepared(archive, owner="SECOND")])
        mine = b.commit([prepared(archive, owner="SECOND")])
        await asyncio.sleep(0.2)
        held.release.set()
        results = [await first, await other, await mine]
        a.close()
        b.close()
        return results

    first, other, mine = uvloop.run(run())
    assert held.sizes[1] == 3
    assert [r.status for r in first] == [0x0000]
    assert [r.status for r in other] == [0x0124, 0x0000]  # Refused: Not Authorized, then stored
    assert [r.status for r in mine] == [0x0000]
    assert archive.index.get(taken[0]).owner == "FIRST"


def test_a_lying_length_ends_that_link_only(archive, service):
    async def run() -> None:
        good = await RemoteCommitter.connect(service.connect("good"))
        liar = service.connect("liar")
        # A header claiming more than MAX_FRAME, then a few bytes: nothing
        # is allocated for it, the link is closed.
        liar.sendall(struct.pack("<I", MAX_FRAME + 1) + b"x" * 16)
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, liar.recv, 1) == b""  # closed by the service
        liar.close()
        garbage = service.connect("garbage")
        garbage.sendall(struct.pack("<I", 5) + b"hello")  # not a pickle of a request
        assert await loop.run_in_executor(None, garbage.recv, 1) == b""
        garbage.close()
        store = prepared(archive)
        assert [r.status for r in await good.commit([store])] == [0x0000]
        good.close()
        assert archive.get(store.uid) is not None

    uvloop.run(run())
    assert service._thread.is_alive()


def test_a_failed_transaction_fails_the_batch(archive, service, monkeypatch):
    def broken(batch: list[Any]) -> Any:
        raise OSError("disk on fire")

    monkeypatch.setattr(archive, "commit_batch", broken)

    async def run() -> None:
        link = await RemoteCommitter.connect(service.connect("w"))
        with pytest.raises(SharedCommitFailed, match="disk on fire"):
            await link.commit([prepared(archive)])
        link.close()

    uvloop.run(run())
    assert service._thread.is_alive()


def test_without_the_service_a_worker_commits_its_own_stores(archive, service, caplog):
    async def run() -> list[Any]:
        link = await RemoteCommitter.connect(service.connect("w"))
        queue = IngestQueue(archive, remote=link)
        uid, data = new_data_set()
        first = await queue.submit_data(data, uids.ExplicitVRLittleEndian, uids.ColorPaletteStorage, uid, owner="A")
        before = service.stores
        service.stop(timeout=WAIT_TIMEOUT)  # the supervisor is gone: its end of every link closes
        assert await asyncio.get_running_loop().run_in_executor(None, wait_until, lambda: not link.usable)
        assert service.connect("a worker started later") is None  # it will commit its own
        results = [first]
        for _ in range(3):
            uid, data = new_data_set()
            results.append(
                await queue.submit_data(data, uids.ExplicitVRLittleEndian, uids.ColorPaletteStorage, uid, owner="A")
            )
        await queue.close()
        assert service.stores == before == 1
        return results

    results = uvloop.run(run())
    assert [r.status for r in results] == [0x0000] * 4
    assert all(archive.get(r.sop_instance_uid) is not None for r in results)
    assert "committing in this process from now on" in caplog.text


def test_a_batch_mixing_files_and_index_stores_keeps_its_order(archive, service, tmp_path):
    """A store handed over as a file (spooled) is committed by the worker
    itself, beside the shared committer's part of the same batch; every
    result comes back in its place."""
    uid, data = new_data_set()
    meta = dsutil.build_file_meta(uids.ColorPaletteStorage, uid, uids.ExplicitVRLittleEndian)
    spooled = tmp_path / "spooled.dcm"
    spooled.write_bytes(dsutil.encode_file_header(meta) + data)
    small = [new_data_set() for _ in range(3)]

    async def run() -> list[Any]:
        link = await RemoteCommitter.connect(service.connect("w"))
        # One batch at a time: the first store commits alone, the next
        # three queue behind it and become one mixed batch.
        queue = IngestQueue(archive, remote=link, max_inflight=1)
        ts, cls = uids.ExplicitVRLittleEndian, uids.ColorPaletteStorage
        results = await asyncio.gather(
            queue.submit_data(small[0][1], ts, cls, small[0][0], owner="A"),
            queue.submit_data(small[1][1], ts, cls, small[1][0], owner="A"),
            queue.submit_file(spooled, owner="A"),
            queue.submit_data(small[2][1], ts, cls, small[2][0], owner="A"),
        )
        await queue.close()
        link.close()
        assert queue.group.batches == 2
        return results

    results = uvloop.run(run())
    assert [r.status for r in results] == [0x0000] * 4
    assert [r.sop_instance_uid for r in results] == [small[0][0], small[1][0], uid, small[2][0]]
    assert service.stores == 3  # the three received in memory; the file was committed by the worker
    assert all(archive.get(u) is not None for u in (uid, *(u for u, _ in small)))


def test_a_lone_association_commits_in_its_worker_until_stores_meet(archive, service):
    """One store at a time (a lone association) goes to the shared committer
    for LONE_BATCHES_BEFORE_LOCAL batches, then commits in the worker (no
    trip to the supervisor and back on every store); stores that meet go
    back to the shared committer at once."""
    from chromanet.archive.group_commit import LONE_BATCHES_BEFORE_LOCAL

    ts, cls = uids.ExplicitVRLittleEndian, uids.ColorPaletteStorage

    async def run() -> list[Any]:
        link = await RemoteCommitter.connect(service.connect("w"))
        queue = IngestQueue(archive, remote=link)
        results = []
        for _ in range(LONE_BATCHES_BEFORE_LOCAL + 4):
            uid, data = new_data_set()
            results.append(await queue.submit_data(data, ts, cls, uid, owner="A"))
        assert (queue.shared_batches, queue.local_batches) == (LONE_BATCHES_BEFORE_LOCAL, 4)
        assert service.stores == LONE_BATCHES_BEFORE_LOCAL
        # Four at once: they meet (a second batch starts beside the first,
        # then a batch of several): shared again.
        together = [new_data_set() for _ in range(4)]
        results += await asyncio.gather(*(queue.submit_data(d, ts, cls, u, owner="A") for u, d in together))
        assert queue.shared_batches > LONE_BATCHES_BEFORE_LOCAL
        assert service.stores > LONE_BATCHES_BEFORE_LOCAL
        await queue.close()
        link.close()
        return results

    results = uvloop.run(run())
    assert [r.status for r in results] == [0x0000] * (LONE_BATCHES_BEFORE_LOCAL + 8)
    assert all(archive.get(r.sop_instance_uid) is not None for r in results)


def test_a_garbled_answer_ends_the_link_and_the_worker_commits_its_own(archive, caplog):
    """The worker's end of a link that receives what is not an answer (a
    broken supervisor) gives the link up: the stores waiting on it are
    committed by the worker itself, and so are the later ones."""
    import socket

    ours, theirs = socket.socketpair()
    ts, cls = uids.ExplicitVRLittleEndian, uids.ColorPaletteStorage

    async def run() -> list[Any]:
        link = await RemoteCommitter.connect(theirs)
        queue = IngestQueue(archive, remote=link)
        uid, data = new_data_set()
        waiting = queue.submit_data(data, ts, cls, uid, owner="A")
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, ours.recv, 1 << 16)  # the request reached "the supervisor"
        ours.sendall(struct.pack("<I", 3) + b"\x80\x05!")  # a truncated pickle
        results = [await waiting]
        assert not link.usable
        uid, data = new_data_set()
        results.append(await queue.submit_data(data, ts, cls, uid, owner="A"))
        await queue.close()
        link.close()
        return results

    try:
        results = uvloop.run(run())
    finally:
        ours.close()
    assert [r.status for r in results] == [0x0000, 0x0000]
    assert all(archive.get(r.sop_instance_uid) is not None for r in results)
    assert "shared committer link broken" in caplog.text
