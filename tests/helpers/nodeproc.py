"""``chromanet serve`` as a subprocess whose log is read as it comes, and
its Prometheus metrics scraped and parsed.

``ServeProcess`` starts the node on a free port, collects its output in a
thread (so a test can wait for a log line, bounded) and is always stopped
by its context manager: SIGTERM, then SIGKILL after the timeout.
``scrape`` reads /metrics with prometheus_client's own parser.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from helpers.servers import free_port, wait_listening
from helpers.waits import WAIT_TIMEOUT


class ServeProcess:
    """``chromanet serve --data-dir DIR --port P --bind 127.0.0.1 *extra``."""

    def __init__(self, data_dir: Path, extra: list[str], metrics: bool = False) -> None:
        self.port = free_port()
        self.metrics_port = free_port() if metrics else None
        args = [
            sys.executable, "-m", "chromanet.apps.cli", "serve", "--data-dir", str(data_dir),
            "--port", str(self.port), "--bind", "127.0.0.1", "--log-level", "INFO", *extra,
        ]  # fmt: skip
        if self.metrics_port is not None:
            args += ["--metrics-port", str(self.metrics_port)]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_line(self, pattern: str, count: int = 1, timeout: float = WAIT_TIMEOUT) -> list[re.Match[str]]:
        """The first ``count`` log lines matching ``pattern``, waiting for
        them up to ``timeout`` seconds (AssertionError with the log if not)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for m in map(regex.search, self.lines) if m is not None]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no {count} line(s) matching {pattern!r} in:\n" + "\n".join(self.lines))
                self._changed.wait(left)

    def wait_ready(self, workers: int = 1, timeout: float = 60) -> None:
        """Until every worker (or the single process) listens."""
        self.wait_line(r"CHROMANET listening on", count=workers, timeout=timeout)
        wait_listening(self.port, self.process, timeout=timeout)

    def worker_pids(self) -> dict[int, int]:
        """Worker index -> pid of its latest start, from the supervisor's log."""
        pids: dict[int, int] = {}
        with self._changed:
            for line in self.lines:
                match = re.search(r"worker (\d+) started \(pid (\d+)\)", line)
                if match:
                    pids[int(match[1])] = int(match[2])
        return pids

    def stop(self, sig: int = signal.SIGTERM, timeout: float = WAIT_TIMEOUT) -> int:
        """Send ``sig``, wait for the exit (kill after ``timeout``); the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(WAIT_TIMEOUT)
        self._reader.join(WAIT_TIMEOUT)
        return self.process.returncode

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample of http://127.0.0.1:port/metrics: (name, labels) -> value
    (read by ``chromanet bench --server-metrics``'s own scraper)."""
    from chromanet.apps import server_view

    return server_view.scrape(f"http://127.0.0.1:{port}/metrics", timeout=WAIT_TIMEOUT)


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent: a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)
