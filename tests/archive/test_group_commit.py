"""The group commit batcher (``archive/group_commit.GroupCommit``), alone:
how batches form (a lone item at once, what piled up meanwhile next, the
size bound, the wait bound beside a commit still running), results in
submission order, failures and cancellations. The commit here is a fake
that the test releases by hand; no disk, no archive."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chromanet.archive.group_commit import GroupCommit
from helpers.waits import WAIT_TIMEOUT


class FakeCommit:
    """Records each batch; a batch ends when the test releases it."""

    def __init__(self, hold: bool = True) -> None:
        self.batches: list[list[Any]] = []
        self.gates: list[asyncio.Event] = []
        self.hold = hold
        self.fail: set[int] = set()  # batch numbers that raise

    async def __call__(self, items: list[Any]) -> list[Any]:
        number = len(self.batches)
        self.batches.append(list(items))
        gate = asyncio.Event()
        self.gates.append(gate)
        if self.hold:
            await asyncio.wait_for(gate.wait(), WAIT_TIMEOUT)
        if number in self.fail:
            raise OSError(28, "No space left on device")
        return [f"done {item}" for item in items]

    async def started(self, count: int) -> None:
        """Until ``count`` batches have begun (bounded)."""
        async with asyncio.timeout(WAIT_TIMEOUT):
            while len(self.batches) < count:
                await asyncio.sleep(0.001)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, WAIT_TIMEOUT * 2))


def test_a_lone_item_commits_at_once_and_alone() -> None:
    async def main() -> None:
        commit = FakeCommit(hold=False)
        group = GroupCommit(commit, max_batch=64, max_wait=60.0)
        # A max_wait of a minute would show if a lone item waited for company.
        assert await asyncio.wait_for(group.submit("a"), 5) == "done a"
        assert commit.batches == [["a"]]
        assert await group.submit("b") == "done b"
        assert commit.batches == [["a"], ["b"]]

    run(main())


def test_what_arrives_during_a_commit_is_the_next_batch() -> None:
    async def main() -> None:
        commit = FakeCommit()
        group = GroupCommit(commit, max_batch=64, max_wait=60.0, max_inflight=2)
        first = asyncio.ensure_future(group.submit("a"))
        await commit.started(1)
        rest = [asyncio.ensure_future(group.submit(x)) for x in "bcd"]
        await asyncio.sleep(0.01)
        assert len(commit.batches) == 1 and group.queued == 3  # waiting for "a"'s commit
        commit.gates[0].set()
        await commit.started(2)
        assert commit.batches[1] == ["b", "c", "d"]
        commit.gates[1].set()
        assert await first == "done a"
        assert await asyncio.gather(*rest) == ["done b", "done c", "done d"]

    run(main())


def test_batches_are_bounded_in_size() -> None:
    async def main() -> None:
        commit = FakeCommit(hold=False)
        group = GroupCommit(commit, max_batch=2, max_wait=60.0, max_inflight=1)
        results = await asyncio.gather(*(group.submit(x) for x in "abcde"))
        assert results == [f"done {x}" for x in "abcde"]
        # "a" alone at once, then at most two at a time, in order.
        assert commit.batches == [["a"], ["b", "c"], ["d", "e"]]

    run(main())


def test_a_full_batch_starts_beside_a_running_commit() -> None:
    async def main() -> None:
        commit = FakeCommit()
        group = GroupCommit(commit, max_batch=2, max_wait=60.0, max_inflight=2)
        first = asyncio.ensure_future(group.submit("a"))
        await commit.started(1)
        pair = [asyncio.ensure_future(group.submit(x)) for x in "bc"]
        await commit.started(2)
        assert commit.batches == [["a"], ["b", "c"]] and group.inflight == 2
        for gate in commit.gates:
            gate.set()
        assert await first == "done a" and await asyncio.gather(*pair) == ["done b", "done c"]

    run(main())


def test_max_wait_bounds_the_wait_behind_a_slow_commit() -> None:
    async def main() -> None:
        commit = FakeCommit()
        group = GroupCommit(commit, max_batch=64, max_wait=0.05, max_inflight=2)
        first = asyncio.ensure_future(group.submit("a"))
        await commit.started(1)
        second = asyncio.ensure_future(group.submit("b"))
        # "a" is still committing: "b" starts beside it once it waited max_wait.
        await commit.started(2)
        assert not commit.gates[0].is_set() and commit.batches[1] == ["b"]
        # With max_inflight reached, "c" waits for one of them to end.
        third = asyncio.ensure_future(group.submit("c"))
        await asyncio.sleep(0.1)
        assert len(commit.batches) == 2
        commit.gates[1].set()
        await commit.started(3)
        commit.gates[2].set()
        commit.gates[0].set()
        assert [await first, await second, await third] == ["done a", "done b", "done c"]

    run(main())


def test_results_come_back_in_submission_order() -> None:
    async def main() -> None:
        commit = FakeCommit()
        group = GroupCommit(commit, max_batch=1, max_wait=0.0, max_inflight=2)
        order: list[str] = []

        async def one(x: str) -> None:
            order.append(await group.submit(x))

        tasks = [asyncio.ensure_future(one(x)) for x in "ab"]
        await commit.started(2)
        commit.gates[1].set()  # the second batch ends first ...
        await asyncio.sleep(0.02)
        assert order == []  # ... but is not delivered before the first
        commit.gates[0].set()
        await asyncio.gather(*tasks)
        assert order == ["done a", "done b"]

    run(main())


def test_an_item_not_yet_ready_keeps_its_place() -> None:
    async def main() -> None:
        commit = FakeCommit(hold=False)
        group = GroupCommit(commit, max_batch=64, max_wait=0.0)
        slow: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        first = asyncio.ensure_future(group.submit(slow))
        second = asyncio.ensure_future(group.submit("b"))
        await asyncio.sleep(0.02)
        assert commit.batches == []  # "b" is ready but "a" is ahead of it
        slow.set_result("a")
        assert [await first, await second] == ["done a", "done b"]
        assert commit.batches == [["a", "b"]]

    run(main())


def test_a_failed_commit_fails_its_batch_only() -> None:
    async def main() -> None:
        commit = FakeCommit(hold=False)
        commit.fail = {1}
        group = GroupCommit(commit, max_batch=1, max_inflight=1)
        results = await asyncio.gather(*(group.submit(x) for x in "abc"), return_exceptions=True)
        assert results[0] == "done a" and results[2] == "done c"
        assert isinstance(results[1], OSError)

    run(main())


def test_a_failed_preparation_fails_that_item_only() -> None:
    async def main() -> None:
        commit = FakeCommit(hold=False)
        group = GroupCommit(commit)

        async def broken() -> str:
            raise ValueError("cannot read")

        results = await asyncio.gather(group.submit("a"), group.submit(broken()), group.submit("c"),
                                       return_exceptions=True)  # fmt: skip
        assert results[0] == "done a" and results[2] == "done c" and isinstance(results[1], ValueError)
        assert ["a"] in commit.batches and all("cannot" not in str(b) for b in commit.batches)

    run(main())


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def main() -> None:
        commit = FakeCommit()
        group = GroupCommit(commit, max_inflight=1)
        first = asyncio.ensure_future(group.submit("a"))
        await commit.started(1)
        gone = asyncio.ensure_future(group.submit("b"))
        kept = asyncio.ensure_future(group.submit("c"))
        await asyncio.sleep(0.01)
        gone.cancel()
        commit.gates[0].set()
        await commit.started(2)
        assert commit.batches[1] == ["c"]
        commit.gates[1].set()
        assert await first == "done a" and await kept == "done c"
        with pytest.raises(asyncio.CancelledError):
            await gone
        await group.drain()

    run(main())


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        GroupCommit(FakeCommit(), max_batch=0)
    with pytest.raises(ValueError):
        GroupCommit(FakeCommit(), max_wait=-1)
