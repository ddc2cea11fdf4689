"""One committer for the worker processes of a node: the supervisor commits
the stores every worker keeps in the SQLite index, in shared batches.

Why: with ``chromanet serve --workers N`` each worker used to commit its own
batches in commit threads of its own. Two things were lost that way:

* the workers' batches never met: two workers storing at once each paid a
  transaction and a WAL fsync of their own, queued one behind the other on
  SQLite's write lock, so more workers made smaller batches;
* a commit thread shares its process's GIL with the event loop. Every call
  into SQLite gives the GIL up and takes it back; behind a busy loop that
  wait, not the disk, was most of a commit's time (at 8 associations the
  node ran as fast with the WAL fsync switched off as with it on).

So the supervisor, which does no DICOM itself and has a GIL nobody else
wants, runs a ``CommitService``: one thread that takes the prepared stores
of every worker that arrived while its last commit ran and commits them
as one batch (``PaletteArchive.commit_batch``: one transaction, one WAL
fsync), then answers each worker. A worker's ``RemoteCommitter`` sends a
batch and awaits its results on the worker's event loop, without a thread.

What crosses: only stores that are validated and kept in the index (their
Part 10 bytes and index fields, ``PreparedStore`` with ``source`` None),
and only while stores meet: a worker storing one at a time (a lone
association) commits its own after a few such batches, since the trip to
the supervisor and back costs each store about half a millisecond here
(``IngestQueue._worth_sharing``). A
store written to a file of its own is committed by its worker as before:
its temporary file, the syncfs epoch it was written in and its fsyncs
belong to that worker. Both paths take the same cross-process stripe locks
and SQLite's write lock (``store.py``), so they stay exact when they meet.

The link is a ``socketpair`` per worker, made by the supervisor and handed
to the worker as it is spawned: nobody else can connect. Frames are a
4-byte little-endian length and a pickle (both ends are this package, in
processes of one node; the length is checked before anything is held).
The link is not a trust boundary: a worker runs as the same user as the
supervisor, with the same data directory open.

Failure: a worker that dies leaves its end closed; the service forgets it
(a batch of it already committing commits, and its answer is dropped, as a
store answered to nobody). A service that is gone (the supervisor killed)
closes the workers' ends: the stores waiting for it are committed by their
worker instead (``IngestQueue``), which stores each once whether or not the
lost batch had committed: an index-kept store of the same bytes by the same
owner replaces itself.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import selectors
import socket
import struct
import threading
import time
from typing import Any

from chromanet.archive.store import PaletteArchive, PreparedStore
from chromanet.archive.validation import IngestResult

__all__ = ["CommitService", "RemoteCommitter", "SharedCommitError", "SharedCommitFailed", "MAX_FRAME"]

LOGGER = logging.getLogger("chromanet.archive")

_HEADER = struct.Struct("<I")
#: The largest frame either end accepts: a batch of the largest group
#: commit (a few hundred stores) of index-kept instances (64 KiB each by
#: default) fits many times over. A longer one is a broken peer: its link
#: is closed, nothing of it held.
MAX_FRAME = 256 * 1024 * 1024
#: Stores committed in one transaction at most; what arrived beyond that
#: waits for the next one.
SERVICE_MAX_BATCH = 256
#: Seconds the service waits for a worker to take an answer before it
#: gives that worker up (a worker that reads nothing is stuck). The other
#: workers' stores wait meanwhile: answers are small, so it takes a worker
#: that stopped reading for thousands of them to fill its socket first.
SEND_TIMEOUT = 30.0


class SharedCommitError(ConnectionError):
    """The shared committer cannot be reached (its process is gone): the
    worker commits the batch itself."""


class SharedCommitFailed(RuntimeError):
    """The shared committer's transaction for a batch raised: the batch
    fails (each store answered with 0xA700), as a local commit's would."""


def _frame(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def _frames(buffer: bytearray) -> list[bytes]:
    """The whole frames at the head of ``buffer``, taken out of it. Raises
    ValueError for a length over ``MAX_FRAME`` (checked before waiting for
    the rest)."""
    out = []
    start = 0
    with memoryview(buffer) as view:  # each frame copied once, not sliced first
        while len(buffer) - start >= _HEADER.size:
            (length,) = _HEADER.unpack_from(buffer, start)
            if length > MAX_FRAME:
                raise ValueError(f"frame of {length} bytes")
            end = start + _HEADER.size + length
            if end > len(buffer):
                break
            out.append(bytes(view[start + _HEADER.size : end]))
            start = end
    if start:
        del buffer[:start]
    return out


class _Link:
    """The service's end of one worker's socketpair."""

    __slots__ = ("sock", "buffer", "name")

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.name = name


class CommitService:
    """The shared committer of the supervisor (see the module docstring):
    ``connect()`` makes a worker's link, ``start()``/``stop()`` run the
    thread. ``batches`` and ``stores`` count what it committed."""

    def __init__(self, archive: PaletteArchive, *, max_batch: int = SERVICE_MAX_BATCH) -> None:
        self.archive = archive
        self.max_batch = max_batch
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._joining: list[_Link] = []
        self._ended = False  # the thread is gone: no more links
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="chromanet-shared-commit", daemon=True)
        self.batches = 0
        self.stores = 0

    def connect(self, name: str = "worker") -> socket.socket | None:
        """A new worker's end of a link (the service keeps the other), or
        None once the service has ended (the worker commits its own)."""
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        with self._lock:
            if self._ended:
                ours.close()
                theirs.close()
                return None
            self._joining.append(_Link(ours, name))
        self._wake()
        return theirs

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Let the batch that is committing end, then close every link."""
        self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._wake_write.close()

    def _wake(self) -> None:
        try:
            self._wake_write.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already woken (buffer full) or stopping

    # -- the thread --------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                requests = self._collect(self._selector.select())
                while requests:
                    now, requests = self._split(requests)
                    self._commit(now)
        except Exception:  # noqa: BLE001 - logged; the workers then commit their own
            LOGGER.exception("shared committer failed: the workers commit their own stores")
        finally:
            with self._lock:
                self._ended = True
                joining, self._joining = self._joining, []
            for link in joining:
                link.sock.close()
            for key in list(self._selector.get_map().values()):
                if key.data is not None:
                    key.data.sock.close()
            self._selector.close()
            self._wake_read.close()

    def _collect(self, events: list[tuple[selectors.SelectorKey, int]]) -> list[tuple[_Link, int, list[PreparedStore]]]:
        """Read what every ready link sent; the requests it completed."""
        requests: list[tuple[_Link, int, list[PreparedStore]]] = []
        for key, _ in events:
            link: _Link | None = key.data
            if link is None:
                try:
                    while self._wake_read.recv(4096):
                        pass
                except BlockingIOError:
                    pass
                with self._lock:
                    joining, self._joining = self._joining, []
                for new in joining:
                    self._selector.register(new.sock, selectors.EVENT_READ, new)
                continue
            # Frames are taken out as each chunk arrives, so that a length
            # over MAX_FRAME ends the link before more of it is held.
            try:
                while True:
                    chunk = link.sock.recv(1 << 20)
                    if not chunk:
                        self._drop(link, "closed")
                        break
                    link.buffer += chunk
                    for frame in _frames(link.buffer):
                        request_id, stores = pickle.loads(frame)
                        requests.append((link, int(request_id), [_prepared(store) for store in stores]))
            except BlockingIOError:
                pass
            except OSError as exc:
                self._drop(link, str(exc))
            except Exception as exc:  # noqa: BLE001 - a broken link is dropped, the service goes on
                self._drop(link, f"bad request: {exc}")
        return requests

    def _split(self, requests: list[Any]) -> tuple[list[Any], list[Any]]:
        """Whole requests up to ``max_batch`` stores (at least one), and the rest."""
        total = 0
        for k, (_, _, stores) in enumerate(requests):
            if k and total + len(stores) > self.max_batch:
                return requests[:k], requests[k:]
            total += len(stores)
        return requests, []

    def _commit(self, requests: list[tuple[_Link, int, list[PreparedStore]]]) -> None:
        batch = [store for _, _, stores in requests for store in stores]
        try:
            results: list[IngestResult] | None = self.archive.commit_batch(batch) if batch else []
            error = None
        except Exception as exc:  # noqa: BLE001 - answered to the workers, who fail those stores
            LOGGER.exception("shared commit of %d stores failed", len(batch))
            results, error = None, f"{type(exc).__name__}: {exc}"
        self.batches += 1
        self.stores += len(batch)
        start = 0
        for link, request_id, stores in requests:
            if results is None:
                answer: Any = (request_id, None, error)
            else:
                answer = (request_id, [(r.status, r.comment, r.sop_instance_uid) for r in results[start : start + len(stores)]], None)
            start += len(stores)
            if link.sock.fileno() >= 0:
                self._send(link, _frame(answer))

    def _send(self, link: _Link, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + SEND_TIMEOUT
        while view:
            try:
                sent = link.sock.send(view)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or not _writable(link.sock, left):
                    self._drop(link, "does not read its answers")
                    return
                continue
            except OSError as exc:  # gone: its stores are answered to nobody
                self._drop(link, str(exc))
                return
            view = view[sent:]

    def _drop(self, link: _Link, why: str) -> None:
        if link.sock.fileno() < 0:
            return
        LOGGER.info("shared committer: link to %s ends (%s)", link.name, why)
        try:
            self._selector.unregister(link.sock)
        except (KeyError, ValueError):
            pass
        link.sock.close()


def _writable(sock: socket.socket, timeout: float) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE)
        return bool(selector.select(timeout))


def _prepared(store: tuple[Any, ...]) -> PreparedStore:
    fields, transfer_syntax, warning, owner, may_replace_others, size, data = store
    if not isinstance(fields, dict) or not isinstance(data, bytes):
        raise TypeError("not a store kept in the index")
    return PreparedStore.kept_in_index(fields, transfer_syntax, warning, owner, bool(may_replace_others), int(size), data)


def _wire(store: PreparedStore) -> tuple[Any, ...]:
    rights = store.rights
    return (store.fields, store.transfer_syntax, store.warning, rights.owner, rights.may_replace_others, store.size,
            store.data)  # fmt: skip


class RemoteCommitter(asyncio.Protocol):
    """A worker's end of its link to the ``CommitService``, on the worker's
    event loop: ``commit(stores)`` sends a batch, the future of its results."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._pending: dict[int, asyncio.Future[list[IngestResult]]] = {}
        self._next_id = 0
        self._gone: BaseException | None = None

    @classmethod
    async def connect(cls, sock: socket.socket) -> "RemoteCommitter":
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        _, protocol = await loop.create_unix_connection(cls, sock=sock)
        return protocol

    @property
    def usable(self) -> bool:
        return self._gone is None and self._transport is not None

    def commit(self, stores: list[PreparedStore]) -> asyncio.Future[list[IngestResult]]:
        """The results of ``stores`` (kept in the index) once the service's
        batch holding them has committed; SharedCommitError if the service
        is gone before it answers."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[IngestResult]] = loop.create_future()
        if not self.usable:
            done.set_exception(SharedCommitError("the shared committer is gone"))
            return done
        self._next_id += 1
        self._pending[self._next_id] = done
        self._transport.write(_frame((self._next_id, [_wire(store) for store in stores])))  # type: ignore[union-attr]
        return done

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- asyncio.Protocol --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            frames = _frames(self._buffer)
            for frame in frames:
                request_id, results, error = pickle.loads(frame)
                done = self._pending.pop(request_id, None)
                if done is None or done.done():
                    continue
                if results is None:
                    done.set_exception(SharedCommitFailed(f"shared commit failed: {error}"))
                else:
                    done.set_result([IngestResult(status, comment, uid) for status, comment, uid in results])
        except Exception as exc:  # noqa: BLE001 - a broken link: as if the service were gone
            LOGGER.error("shared committer link broken: %s", exc)
            self._lost(exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc or SharedCommitError("the shared committer is gone"))

    def _lost(self, exc: BaseException) -> None:
        if self._gone is None:
            self._gone = exc
        pending, self._pending = self._pending, {}
        for done in pending.values():
            if not done.done():
                done.set_exception(SharedCommitError(f"the shared committer is gone: {exc}"))
