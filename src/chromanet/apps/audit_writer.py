"""Writing audit records out of the event loop: JSON lines to a file, or
RFC 5424 messages to syslog.

``AuditWriter.write(record)`` is what the event loop calls: it puts the
record (a dict, or a function building it) on a bounded queue and returns;
records written on a loop go to the thread in batches, every
``batch_delay`` (50 ms). A writer thread turns each record into one line of
JSON and hands it to the sinks:

- ``FileSink``: appends to a file opened with ``O_APPEND``, each batch of
  whole lines in one ``write(2)`` (no record sits in a buffer while the
  writer is idle). Several processes (the workers of ``chromanet serve
  --workers``) may append to one file: each write lands at the end as one
  piece, so lines never interleave (Linux serialises writes to a file;
  only a short write, on a full disk, is finished by a second one);
  reopened on ``reopen()`` (the node calls it on SIGHUP) and when the path
  no longer names the open file (logrotate moved it away).
- ``SyslogSink``: one RFC 5424 message per record over a UNIX datagram
  socket (``/dev/log``) or UDP (``host:port``), through
  ``logging.handlers.SysLogHandler``.

Writing never blocks the loop on a slow disk and never stops the node: a
sink that fails (a full disk, a read-only file, no syslog daemon) logs one
warning, its records are counted as lost, it is tried again on later
records (at most every ``RETRY_INTERVAL`` seconds), and when it works again
an ``audit-gap`` record says how many records it lost. A full queue (the
sinks slower than the traffic for long) drops records the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Union

LOGGER = logging.getLogger("chromanet.audit")

#: Records waiting for the writer thread at most; past it they are dropped.
QUEUE_SIZE = 100_000
#: A failed sink is tried again at most this often (seconds).
RETRY_INTERVAL = 5.0
#: Lines written per batch before a flush.
_BATCH = 256
#: Keys whose values are time.time() seconds, written as ISO-8601 UTC.
TIME_KEYS = ("time", "started")

FACILITIES = dict(logging.handlers.SysLogHandler.facility_names)


def iso_utc(seconds: float) -> str:
    """2025-01-31T12:34:56.789Z"""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + ".%03dZ" % int((seconds - whole) * 1000)


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def to_json(record: dict[str, Any]) -> str:
    """One record as one line of JSON (times as ISO-8601 UTC strings)."""
    for key in TIME_KEYS:
        value = record.get(key)
        if isinstance(value, float):
            record[key] = iso_utc(value)
    return _ENCODER.encode(record)


class Sink(Protocol):
    name: str

    def write(self, records: list[tuple[dict[str, Any], str]]) -> None:
        """Write (record, JSON line) pairs; OSError when it cannot."""

    def reopen(self) -> None: ...

    def close(self) -> None: ...


class FileSink:
    """Appends JSON lines to ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self._file: Any = None
        self._inode: tuple[int, int] | None = None
        self._checked = 0.0

    def _open(self) -> None:
        handle = open(self.path, "ab", buffering=0)  # O_APPEND, no buffer: one write a batch
        stat = os.fstat(handle.fileno())
        self._file, self._inode = handle, (stat.st_dev, stat.st_ino)

    def _moved(self) -> bool:
        """True when the path no longer names our file (rotated away);
        looked at no more than once a second."""
        now = time.monotonic()
        if now - self._checked < 1.0:
            return False
        self._checked = now
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (stat.st_dev, stat.st_ino) != self._inode

    def write(self, records: list[tuple[dict[str, Any], str]]) -> None:
        if self._file is not None and self._moved():
            self.close()
        if self._file is None:
            self._open()
        try:
            data = memoryview("".join(line + "\n" for _, line in records).encode("utf-8"))
            while data:
                written = self._file.write(data)
                data = data[written:]
        except OSError:
            self.close()
            raise

    def reopen(self) -> None:
        self.close()

    def close(self) -> None:
        handle, self._file = self._file, None
        if handle is not None:
            try:
                handle.close()
            except OSError:
                pass


class _RaisingSysLogHandler(logging.handlers.SysLogHandler):
    """SysLogHandler whose failures reach the caller (the writer counts them)
    instead of a traceback on stderr."""

    def handleError(self, record: logging.LogRecord) -> None:
        raise  # noqa: PLE0704 - re-raises the error emit() caught

    def mapPriority(self, levelName: str) -> str:
        # The records name their syslog severity ("info", "notice", "warning").
        return levelName if levelName in self.priority_names else super().mapPriority(levelName)


class _Rfc5424(logging.Formatter):
    """VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG (RFC 5424
    6.2; SysLogHandler puts the <PRI> in front)."""

    def __init__(self) -> None:
        super().__init__()
        self.hostname = socket.gethostname() or "-"
        self.pid = str(os.getpid())

    def format(self, record: logging.LogRecord) -> str:
        timestamp = getattr(record, "audit_time", None) or iso_utc(record.created)
        msgid = getattr(record, "audit_kind", "-") or "-"
        return f"1 {timestamp} {self.hostname} chromanet {self.pid} {msgid} - {record.getMessage()}"


def parse_syslog_address(address: str) -> str | tuple[str, int]:
    """A UNIX socket path ("/dev/log") or a UDP "host:port" ("[::1]:514")."""
    if address.startswith("/"):
        return address
    target = address.removeprefix("udp://")
    host, colon, port = target.rpartition(":")
    if not colon or not port.isdigit() or not host:
        raise ValueError(f"bad syslog address {address!r}: use /path/to/socket or HOST:PORT (UDP)")
    return host.strip("[]"), int(port)


class SyslogSink:
    """One RFC 5424 syslog message per record."""

    def __init__(self, address: str, facility: str = "authpriv") -> None:
        if facility not in FACILITIES:
            raise ValueError(f"unknown syslog facility {facility!r}: one of {', '.join(sorted(FACILITIES))}")
        self.address = parse_syslog_address(address)
        self.facility = FACILITIES[facility]
        self.name = f"syslog {address}"
        self._handler: _RaisingSysLogHandler | None = None

    def _open(self) -> _RaisingSysLogHandler:
        handler = _RaisingSysLogHandler(address=self.address, facility=self.facility)
        handler.append_nul = False
        handler.setFormatter(_Rfc5424())
        return handler

    def write(self, records: list[tuple[dict[str, Any], str]]) -> None:
        if self._handler is None:
            self._handler = self._open()
        for record, line in records:
            entry = logging.LogRecord("chromanet.audit", logging.INFO, __file__, 0, "%s", (line,), None)
            entry.levelname = record.get("severity") or "info"
            entry.audit_time = record.get("time")
            entry.audit_kind = record.get("record")
            try:
                self._handler.emit(entry)
            except OSError:
                self.close()
                raise

    def reopen(self) -> None:
        self.close()

    def close(self) -> None:
        handler, self._handler = self._handler, None
        if handler is not None:
            handler.close()


class _SinkState:
    """A sink and how it fares: lost records, when to try again."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.lost = 0
        self.retry_at = 0.0


_STOP = object()
_REOPEN = object()


#: A record, or a function that builds it (called in the writer thread, so
#: that the event loop only queues the facts).
Record = Union[dict[str, Any], Callable[[], dict[str, Any]]]


class AuditWriter:
    """The queue and the writer thread in front of the sinks.

    On an event loop, records are gathered for ``batch_delay`` seconds and
    handed to the thread together (one wake-up of the thread per batch, not
    per record: a busy node does not pay a thread switch per operation);
    from a thread without a loop, each record is handed over at once."""

    def __init__(self, sinks: list[Sink], queue_size: int = QUEUE_SIZE, batch_delay: float = 0.05) -> None:
        self._sinks = [_SinkState(sink) for sink in sinks]
        self.queue_size = queue_size
        self.batch_delay = batch_delay
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending: list[Record] = []  # gathered on a loop, not yet handed over
        self._in_flight = 0  # records handed over, not yet written
        self._dropped = 0
        self._dropping = False
        self._thread = threading.Thread(target=self._run, name="chromanet-audit", daemon=True)
        self._thread.start()

    @property
    def sinks(self) -> list[Sink]:
        return [state.sink for state in self._sinks]

    # ------------------------------------------------ on the event loop
    def write(self, record: Record) -> None:
        """Queue one record; never blocks (past ``queue_size`` records
        waiting, it is dropped and counted)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            if self._in_flight + len(self._pending) >= self.queue_size:
                self._dropped += 1
                if not self._dropping:
                    self._dropping = True
                    LOGGER.warning("the audit trail cannot keep up: records are being dropped")
                return
            self._dropping = False
            self._pending.append(record)
            first = len(self._pending) == 1
        if loop is None:
            self._hand_over()
        elif first:
            loop.call_later(self.batch_delay, self._hand_over)

    def _hand_over(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._in_flight += len(batch)
        if batch:
            self._queue.put(batch)

    def reopen(self) -> None:
        """Close and reopen the sinks (SIGHUP after a log rotation)."""
        self._hand_over()
        self._queue.put(_REOPEN)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record written so far was handed to the sinks
        (True) or ``timeout`` passed (False). Not on the loop: it blocks."""
        self._hand_over()
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread and close the sinks."""
        if not self._thread.is_alive():
            return
        self._hand_over()
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # ----------------------------------------------- in the writer thread
    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[tuple[dict[str, Any], str]] = []
            markers: list[Any] = []
            taken = 0
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stop = True
                elif item is _REOPEN:
                    self._write(batch)
                    batch = []
                    for state in self._sinks:
                        state.sink.reopen()
                        state.retry_at = 0.0
                elif type(item) is threading.Event:
                    markers.append(item)
                else:
                    taken += len(item)
                    batch.extend(self._encode(record) for record in item)
                if stop or len(batch) >= _BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._write(batch)
            with self._lock:
                self._in_flight -= taken
            for marker in markers:
                marker.set()
        for state in self._sinks:
            state.sink.close()

    def _encode(self, record: Record) -> tuple[dict[str, Any], str]:
        try:
            if callable(record):
                record = record()
            return record, to_json(record)
        except Exception as exc:  # a value json cannot take: say so, keep going
            LOGGER.error("audit record not encodable: %s", exc)
            failure = {"time": time.time(), "record": "audit-error", "severity": "warning", "error": str(exc)[:200]}
            return failure, to_json(dict(failure))

    def _write(self, batch: list[tuple[dict[str, Any], str]]) -> None:
        with self._lock:
            dropped, self._dropped = self._dropped, 0
        if dropped:
            gap = {"time": time.time(), "record": "audit-gap", "reason": "queue full", "lost": dropped,
                   "severity": "warning"}
            batch.insert(0, (gap, to_json(gap)))
        if not batch:
            return
        now = time.monotonic()
        for state in self._sinks:
            if state.lost and now < state.retry_at:
                state.lost += len(batch)
                continue
            lines = batch
            if state.lost:
                gap = {"time": time.time(), "record": "audit-gap", "reason": f"{state.sink.name} failed",
                       "lost": state.lost, "severity": "warning"}
                lines = [(gap, to_json(gap))] + batch
            try:
                state.sink.write(lines)
            except Exception as exc:
                if not state.lost:
                    LOGGER.warning("audit trail: cannot write to %s (%s); its records are lost until it can",
                                   state.sink.name, exc)
                state.lost += len(batch)
                state.retry_at = now + RETRY_INTERVAL
            else:
                if state.lost:
                    LOGGER.warning("audit trail: writing to %s again; %d records were lost", state.sink.name,
                                   state.lost)
                    state.lost = 0


__all__ = ["AuditWriter", "FileSink", "SyslogSink", "iso_utc", "parse_syslog_address", "to_json"]
