"""``DimseChannel.start_request``: a request with one response, sent at
once and answered through a callback (the C-STORE sub-operations of a
retrieve in a window, ``services/suboperations.py``).

Checked on a real loop against a stand-in for the association below the
channel (no sockets): the callback gets the response, or the DIMSE
timeout, or the association's end, exactly once, and the slot of the
asynchronous operations window (PS3.7 D.3.3.3) is given back each time;
the request is not sent at all (False) when the window is full, the
transport's buffer is, the data set is large enough to be paced out, or
the association has ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chromanet import _dimse
from chromanet._dimse import Command
from chromanet.dimse_channel import DimseChannel, DimseTimeout, IncomingMessage
from chromanet.ul.acse import AssociationAborted
from chromanet.ul.connection import PACING_SLICE
from helpers.waits import run_async

pytestmark = pytest.mark.timeout(30)


class StandIn:
    """What the channel uses of the association below it."""

    def __init__(self) -> None:
        self.message_sink: Any = None
        self.writing_paused = False
        self.sent: list[tuple[int, bool]] = []
        self.aborted = False
        self.addresses = (("127.0.0.1", 104), ("127.0.0.1", 40000))

    def send_message(self, context_id: int, command: Command, dataset: Any = None, *, hold: bool = False) -> None:
        self.sent.append((command.message_id, hold))

    def abort(self) -> None:
        self.aborted = True


def store_rq() -> Command:
    return Command(
        _dimse.C_STORE_RQ, affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.39.1",
        affected_sop_instance_uid="1.2.3", priority=0, command_data_set_type=_dimse.DATASET_PRESENT,
    )  # fmt: skip


def store_rsp(message_id: int) -> IncomingMessage:
    command = Command(_dimse.C_STORE_RSP, message_id_being_responded_to=message_id, status=0x0000,
                      command_data_set_type=_dimse.NO_DATASET)
    return IncomingMessage(1, command, None)


def test_the_response_the_timeout_and_the_end_each_call_back_once():
    async def main() -> None:
        ul = StandIn()
        channel = DimseChannel(ul, dimse_timeout=0.3, max_operations_invoked=2)  # type: ignore[arg-type]
        outcomes: dict[str, list[Any]] = {"a": [], "b": [], "c": []}
        assert channel.start_request(1, store_rq(), b"\x00" * 10, outcomes["a"].append, hold=True)
        assert channel.start_request(1, store_rq(), b"\x00" * 10, outcomes["b"].append)
        assert not channel.start_request(1, store_rq(), None, outcomes["c"].append)  # the window is full
        assert ul.sent == [(1, True), (2, False)]
        channel._route(store_rsp(1))
        assert [o.command.message_id_being_responded_to for o in outcomes["a"]] == [1]
        assert not channel.is_outstanding(1)
        assert channel.start_request(1, store_rq(), None, outcomes["c"].append)  # its slot came back
        assert ul.sent[-1] == (3, False)
        await asyncio.sleep(0.5)  # past the DIMSE timeout of both outstanding
        assert [type(o) for o in outcomes["b"]] == [DimseTimeout]
        assert [type(o) for o in outcomes["c"]] == [DimseTimeout]
        channel._route(store_rsp(2))  # too late: nobody waits for it any more
        assert len(outcomes["b"]) == 1
        assert channel.start_request(1, store_rq(), None, outcomes["c"].append)
        channel.on_association_end(AssociationAborted(2, 0))
        assert [type(o) for o in outcomes["c"]] == [DimseTimeout, AssociationAborted]
        assert len(outcomes["a"]) == 1 and not ul.aborted
        assert not channel.start_request(1, store_rq(), None, outcomes["c"].append)  # ended: not sent
        assert len(ul.sent) == 4

    run_async(main())


def test_not_sent_when_it_cannot_go_at_once():
    async def main() -> None:
        ul = StandIn()
        channel = DimseChannel(ul, max_operations_invoked=0)  # type: ignore[arg-type]
        called: list[Any] = []
        assert not channel.start_request(1, store_rq(), bytes(PACING_SLICE + 1), called.append)  # paced out
        ul.writing_paused = True
        assert not channel.start_request(1, store_rq(), None, called.append)
        ul.writing_paused = False
        assert channel.start_request(1, store_rq(), bytes(PACING_SLICE), called.append)
        assert len(ul.sent) == 1 and not called

    run_async(main())
