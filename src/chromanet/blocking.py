"""The blocking facade: pynetdicom's ``Association`` and
``ThreadedAssociationServer`` for code that does not use asyncio.

Each call runs the async twin on chromanet's shared background loop
(``chromanet.loopthread``) and waits for it; generators (C-FIND, C-GET,
C-MOVE) are iterated a response at a time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

from pydicom import Dataset

from chromanet import loopthread
from chromanet._dimse import C_FIND_RQ, C_GET_RQ, C_MOVE_RQ
from chromanet.association import AsyncAssociation
from chromanet.evt import check_implemented
from chromanet.server import AddressInfo, AsyncServer
from chromanet.services.answers import response_to_dataset
from chromanet.services.handler_threads import blocking_call, in_worker, taking_results

if TYPE_CHECKING:
    from chromanet.ae import AE

LOGGER = logging.getLogger("chromanet.blocking")


class ThreadedServer:
    """A server on the background loop, for blocking code (pynetdicom's
    ``ThreadedAssociationServer``: ``shutdown()``, ``server_address``)."""

    def __init__(self, server: AsyncServer) -> None:
        self._server = server
        self._stopped = threading.Event()

    @property
    def server_address(self) -> tuple[str, int]:
        return self._server.server_address

    @property
    def address_info(self) -> AddressInfo:
        return self._server.address_info

    @property
    def active_associations(self) -> list[Association]:
        return [a.sync_facade for a in self._server.active_associations]

    @property
    def ae(self) -> AE:
        return self._server.ae

    @property
    def on_handshake_failed(self) -> Callable[[tuple[str, int], str], None] | None:
        """TLS: called (on the loop's thread) with the peer's address and
        the reason when a handshake fails (``AsyncServer.on_handshake_failed``)."""
        return self._server.on_handshake_failed

    @on_handshake_failed.setter
    def on_handshake_failed(self, handler: Callable[[tuple[str, int], str], None] | None) -> None:
        self._server.on_handshake_failed = handler

    @property
    def pending_handshakes(self) -> int:
        return self._server.pending_handshakes

    def bind(self, event: Any, handler: Any, args: list[Any] | None = None) -> None:
        """Bind a handler for this server's associations, open or future."""
        check_implemented(event)
        handlers = self._server.handlers
        entry = (handler, list(args or []))
        if event.is_intervention:
            handlers[event] = [entry]
        elif all(bound is not handler for bound, _ in handlers.get(event, [])):
            handlers.setdefault(event, []).append(entry)
        self._refresh_watchers()

    def unbind(self, event: Any, handler: Any) -> None:
        handlers = self._server.handlers
        kept = [(h, a) for h, a in handlers.get(event, []) if h is not handler]
        if kept:
            handlers[event] = kept
        else:
            handlers.pop(event, None)
        self._refresh_watchers()

    def _refresh_watchers(self) -> None:
        # Open associations that share the server's handlers start or stop
        # watching the wire (EVT_DATA_* / EVT_DIMSE_*) as these changed.
        for assoc in self._server.active_associations:
            assoc.refresh_watchers()

    def get_events(self) -> list[Any]:
        return sorted(self._server.handlers, key=lambda event: event.name)

    def get_handlers(self, event: Any) -> Any:
        return self._server.get_handlers(event)

    @property
    def ae_title(self) -> str:
        return self._server.ae_title

    def serve_forever(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "chromanet does not implement serve_forever: the server already serves; use start_server(block=True) to block"
        )

    def server_close(self) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        loopthread.run(self._server.close())
        self._stopped.set()

    def wait_stopped(self) -> None:
        """Block until ``shutdown()`` (what ``start_server(block=True)`` does)."""
        self._stopped.wait()


class Association:
    """Blocking wrapper of AsyncAssociation (pynetdicom's ``Association``).

    Also what a plain ``def`` handler running in its worker thread gets as
    ``event.assoc``: then ``loop`` is the loop the association runs on (not
    necessarily the shared background one), and every method works from
    the handler (``abort``, ``release``, ``send_c_store`` back to the peer
    while the handler runs…): the loop is not waiting for the handler's
    thread, only for a future the thread completes."""

    def __init__(self, inner: AsyncAssociation, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._inner = inner
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Settings (e.g. store_directory) belong to the association itself.
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._inner, name, value)

    @property
    def is_established(self) -> bool:
        return self._inner.is_established

    def send_c_echo(self, msg_id: int = 1) -> Dataset:
        inner = self._inner
        with blocking_call():
            # Sent and answered by callbacks on the loop: one hand-off there
            # and one back, no task; the coroutine when it cannot go at once.
            started, response = loopthread.run_started(inner.start_c_echo, msg_id, loop=self._loop)
            if not started:
                return loopthread.run(inner.send_c_echo(msg_id), loop=self._loop)
        return response_to_dataset(response)

    def send_c_store(
        self,
        dataset: Dataset | str | os.PathLike[str] | bytes,
        msg_id: int = 1,
        priority: int = 2,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        # Encoded here, in the caller's thread, not on the loop's; then sent
        # as ``send_c_echo`` is (a data set to be paced out: the coroutine).
        # Once handed over, the loop closes the file opened for it, if any.
        loop = loopthread.target_loop(self._loop)
        prepared = self._inner.prepare_c_store(dataset, msg_id, priority, originator_aet, originator_id)
        with blocking_call():
            started, response = loopthread.run_started(functools.partial(prepared.start, hold=False), loop=loop)
            if not started:
                response = loopthread.run(prepared.exchange(), loop=loop)
        return response_to_dataset(response)

    def send_c_find(
        self, dataset: Dataset, query_model: str, msg_id: int = 1, priority: int = 2
    ) -> Iterator[tuple[Dataset, Dataset | None]]:
        return self._iterate(C_FIND_RQ, dataset, query_model, msg_id, priority, None)

    def send_c_get(
        self, dataset: Dataset, query_model: str, msg_id: int = 1, priority: int = 2
    ) -> Iterator[tuple[Dataset, Dataset | None]]:
        return self._iterate(C_GET_RQ, dataset, query_model, msg_id, priority, None)

    def send_c_move(
        self, dataset: Dataset, move_aet: str, query_model: str, msg_id: int = 1, priority: int = 2
    ) -> Iterator[tuple[Dataset, Dataset | None]]:
        return self._iterate(C_MOVE_RQ, dataset, query_model, msg_id, priority, move_aet)

    def send_c_cancel(self, msg_id: int, context_id: int | None = None, query_model: str | None = None) -> None:
        loopthread.call(self._inner.send_c_cancel, msg_id, context_id, query_model, loop=self._loop)

    def _iterate(
        self, field: int, dataset: Dataset, query_model: str, msg_id: int, priority: int, move_aet: str | None
    ) -> Iterator[tuple[Dataset, Dataset | None]]:
        """The request checked and its identifier encoded here (what the
        call raises is raised now), then sent on this association's loop
        before anything the caller hands over after it (a C-CANCEL), with
        no wait for that (``loopthread.iterate_started``). From a handler,
        each wait for a response is inside ``blocking_call`` (the C-STOREs
        of a C-GET come back to this association's handlers meanwhile)."""
        loop = loopthread.target_loop(self._loop)
        request = self._inner.prepare_query(field, dataset, query_model, msg_id, priority, move_aet, loop)
        responses = loopthread.iterate_started(request.responses, loop=loop)
        return _each_in_blocking_call(responses) if in_worker() else responses
    async def _after_yielded(self, results: Any) -> None:
        """From a generator handler of this association, between two yields
        (``results``: what its worker takes, ``taking_results`` in the
        calling thread): wait until the results it yielded so far were
        sent, as they are in pynetdicom before its generator runs on; or
        until the association ended. A peer that reads none of them is not
        waited for longer than the DIMSE timeout."""
        if results is None:
            return
        caught_up = asyncio.ensure_future(results.caught_up())
        closed = asyncio.ensure_future(self._inner.wait_closed())
        try:
            await asyncio.wait(
                (caught_up, closed), timeout=self._inner.dimse_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            caught_up.cancel()
            closed.cancel()

    def release(self) -> None:
        results = taking_results(getattr(self._inner, "_lane", None))

        async def release_after_yielded() -> None:
            await self._after_yielded(results)
            await self._inner.release()

        with blocking_call():
            loopthread.run(release_after_yielded(), loop=self._loop)

    def abort(self) -> None:
        """A-ABORT; returns once the connection is closed (as pynetdicom's
        does), or at once when called from a handler on the loop thread.
        From a generator handler between two yields, after the results it
        yielded before were sent (``_after_yielded``)."""
        if loopthread.in_loop_thread(self._loop):
            self._inner.abort()
            return
        results = taking_results(getattr(self._inner, "_lane", None))

        async def abort_and_wait() -> None:
            await self._after_yielded(results)
            self._inner.abort()
            try:
                await asyncio.wait_for(self._inner.wait_closed(), 5)
            except asyncio.TimeoutError:
                LOGGER.warning("the connection did not close within 5 s of the abort")

        with blocking_call():
            loopthread.run(abort_and_wait(), loop=self._loop)


def _each_in_blocking_call(responses: Iterator[Any]) -> Iterator[Any]:
    try:
        while True:
            with blocking_call():
                try:
                    item = next(responses)
                except StopIteration:
                    return
            yield item
    finally:
        with blocking_call():
            responses.close()  # left early: waits for the C-CANCEL to go out
