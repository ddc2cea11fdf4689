"""C-FIND served by a plain generator handler that runs inline (on the loop).

Such a handler is served without a task of its own until something has to
be waited for (``query_retrieve.serve_find``): every 32 responses, or a
full write buffer, the rest goes on in a coroutine. Checked here, against
PS3.4 C.4.1 (one pending response per match, then the final one; C-CANCEL
answered with 0xFE00) and the engine's own statuses: a one-match find; a
find long enough to be handed on, in order and complete; an endless find
stopped by C-CANCEL, with the handler's generator closed and the
association usable after; a handler that raises half way (0xC311) or
yields a failure status; a handler whose identifier cannot be read; and the
same answers from the coroutine path (a handler in a worker thread), so the
two paths are one protocol.
"""

from __future__ import annotations

import itertools
import threading
import warnings
from typing import Any

import pytest
from pydicom import Dataset

from chromanet import evt
from chromanet.status import Status
from helpers.qr import FIND, qr_association, statuses
from helpers.waits import WAIT_TIMEOUT

pytestmark = pytest.mark.timeout(60)


def query(label: str) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.ContentLabel = label
    return ds


def match(n: int) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.{n + 1}"
    ds.ContentLabel = f"MATCH{n}"
    return ds


class Finds:
    """One generator function answering by Content Label: ``N<n>`` gets n
    matches, ``ENDLESS`` matches until cancelled, ``RAISE`` two matches then
    an exception, ``FAIL`` one match then 0xA700. Counts calls and closes."""

    def __init__(self) -> None:
        self.calls = 0
        self.closed = threading.Event()

    def results(self, event: Any) -> Any:
        self.calls += 1
        label = str(event.identifier.ContentLabel)
        try:
            if label == "ENDLESS":
                for n in itertools.count():
                    yield 0xFF00, match(n)
            elif label == "RAISE":
                yield 0xFF00, match(0)
                yield 0xFF00, match(1)
                raise RuntimeError("the handler fails half way")
            elif label == "FAIL":
                yield 0xFF00, match(0)
                yield 0xA700, None
            else:
                for n in range(int(label[1:])):
                    yield 0xFF00, match(n)
        finally:
            self.closed.set()


@pytest.fixture(params=["inline", "thread"])
def finds(request, make_qr_scp):
    """(the handler state, the SCP's port): the handler inline on the loop
    (the task-free path) or in the association's worker thread (the
    coroutine path)."""
    state = Finds()
    if request.param == "inline":

        @evt.inline
        def on_find(event: Any) -> Any:
            yield from state.results(event)

    else:

        def on_find(event: Any) -> Any:
            yield from state.results(event)

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    return state, scp.port


def labels(responses: list[tuple[Dataset, Any]]) -> list[str]:
    return [str(found.ContentLabel) for _, found in responses if found is not None]


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 200])
def test_all_matches_in_order_then_success(finds, n):
    state, port = finds
    with qr_association(port) as assoc:
        responses = list(assoc.send_c_find(query(f"N{n}"), FIND))
    assert statuses(responses) == [0xFF00] * n + [0x0000]
    assert labels(responses) == [f"MATCH{k}" for k in range(n)]
    assert state.closed.wait(WAIT_TIMEOUT)


def test_many_finds_on_one_association(finds):
    state, port = finds
    with qr_association(port) as assoc:
        for n in (1, 40, 1, 0, 70):
            assert statuses(list(assoc.send_c_find(query(f"N{n}"), FIND))) == [0xFF00] * n + [0x0000]
    assert state.calls == 5


def test_cancel_stops_an_endless_find(finds):
    state, port = finds
    with qr_association(port) as assoc:
        responses = []
        for status, identifier in assoc.send_c_find(query("ENDLESS"), FIND, msg_id=7):
            responses.append((status, identifier))
            if len(responses) == 50:
                assoc.send_c_cancel(7)
        assert responses[-1][0].Status == 0xFE00
        assert set(statuses(responses[:-1])) == {0xFF00}
        assert state.closed.wait(WAIT_TIMEOUT)
        assert statuses(list(assoc.send_c_find(query("N3"), FIND))) == [0xFF00] * 3 + [0x0000]


def test_handler_raising_half_way(finds):
    state, port = finds
    with qr_association(port) as assoc:
        responses = list(assoc.send_c_find(query("RAISE"), FIND))
        assert statuses(responses) == [0xFF00, 0xFF00, int(Status.FIND_HANDLER_RAISED)]
        assert state.closed.wait(WAIT_TIMEOUT)
        assert statuses(list(assoc.send_c_find(query("N1"), FIND))) == [0xFF00, 0x0000]


def test_failure_status_ends_the_find(finds):
    state, port = finds
    with qr_association(port) as assoc:
        assert statuses(list(assoc.send_c_find(query("FAIL"), FIND))) == [0xFF00, 0xA700]
    assert state.closed.wait(WAIT_TIMEOUT)


@pytest.mark.parametrize("observed", [False, True])
def test_pending_responses_share_one_command_unless_something_keeps_them(make_qr_scp, monkeypatch, observed):
    """The pending C-FIND responses of one request carry the same command
    (only the identifier differs), so an archive's matches are answered
    with one Command made for the operation. Bound EVT_DIMSE_SENT handlers
    keep what they are shown: each response is then a Command of its own.
    The peer reads the same responses either way."""
    from chromanet import _dimse
    from chromanet.dimse_channel import DimseChannel

    sent: list[Any] = []
    original = DimseChannel.send

    def send(self: Any, context_id: int, command: Any, dataset: Any = None, **kwargs: Any) -> None:
        if command.command_field == _dimse.C_FIND_RSP:
            sent.append((command, command.status))
        original(self, context_id, command, dataset, **kwargs)

    monkeypatch.setattr(DimseChannel, "send", send)
    state = Finds()

    @evt.inline
    def on_find(event: Any) -> Any:
        yield from state.results(event)

    handlers = [(evt.EVT_C_FIND, on_find)]
    if observed:
        handlers.append((evt.EVT_DIMSE_SENT, lambda event: None))
    scp = make_qr_scp(handlers)
    with qr_association(scp.port) as assoc:
        for n in (40, 5):
            responses = list(assoc.send_c_find(query(f"N{n}"), FIND))
            assert statuses(responses) == [0xFF00] * n + [0x0000]
            assert labels(responses) == [f"MATCH{k}" for k in range(n)]
    assert [status for _, status in sent] == [0xFF00] * 40 + [0x0000] + [0xFF00] * 5 + [0x0000]
    first, second = sent[:40], sent[41:46]
    if observed:
        assert len({id(command) for command, _ in sent}) == len(sent)
    else:
        assert len({id(command) for command, _ in first}) == 1
        assert len({id(command) for command, _ in second}) == 1
        assert first[0][0] is not second[0][0]  # one per request
