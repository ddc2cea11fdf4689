"""Memory of a node under a peer that pipelines requests and never reads.

Starts ``chromanet serve`` from the given virtualenv (so the same script
measures any build, before and after a change), associates from a raw
socket, then sends C-ECHO-RQs (or one-match C-FIND-RQs) as fast as the
socket takes them for ``--seconds`` without reading a single response.
Samples the server's RSS from /proc every 0.5 s and prints the growth.

    python benches/hostile_memory.py --venv .venv --op echo --seconds 15
    python benches/hostile_memory.py --venv /work/before/.venv --op find

The peer is written with raw bytes (no chromanet import), so it is the same
peer for every build.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VERIFICATION = b"1.2.840.10008.1.1"
FIND_MODEL = b"1.2.840.10008.5.1.4.39.2"
IMPLICIT_LE = b"1.2.840.10008.1.2"
APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _uid(uid: bytes) -> bytes:
    return uid + (b"\0" if len(uid) % 2 else b"")


def associate_rq(called: bytes, abstract: bytes) -> bytes:
    context = _item(0x30, _uid(abstract)) + _item(0x40, _uid(IMPLICIT_LE))
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16)
        + b"HOSTILE".ljust(16)
        + b"\0" * 32
        + _item(0x10, APPLICATION_CONTEXT)
        + _item(0x20, struct.pack(">BBBB", 1, 0, 0, 0) + context)
        + _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, _uid(b"1.2.3.4")))
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _element(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, element, len(value)) + value


def command(field: int, sop_class: bytes, message_id: int, has_dataset: bool) -> bytes:
    elements = (
        _element(0, 0x0002, _uid(sop_class))
        + _element(0, 0x0100, struct.pack("<H", field))
        + _element(0, 0x0110, struct.pack("<H", message_id & 0xFFFF))
        + (_element(0, 0x0700, struct.pack("<H", 2)) if field == 0x0020 else b"")
        + _element(0, 0x0800, struct.pack("<H", 0x0000 if has_dataset else 0x0101))
    )
    return _element(0, 0x0000, struct.pack("<I", len(elements))) + elements


def pdata(fragment: bytes, is_command: bool) -> bytes:
    control = 0x03 if is_command else 0x02
    pdv = struct.pack(">IBB", len(fragment) + 2, 1, control) + fragment
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def request(op: str, message_id: int) -> bytes:
    if op == "echo":
        return pdata(command(0x0030, VERIFICATION, message_id, False), True)
    identifier = _element(0x0008, 0x0018, b"1.2.840.10008.1.5.1\0") + _element(0x0070, 0x0080, b"")
    return pdata(command(0x0020, FIND_MODEL, message_id, True), True) + pdata(identifier, False)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(venv: Path, op: str, seconds: float) -> dict:
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="hostile-")
    server = subprocess.Popen(
        [str(venv / "bin" / "chromanet"), "serve", "--port", str(port), "--bind", "127.0.0.1",
         "--data-dir", data_dir, "--log-level", "ERROR"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the node did not start")
                time.sleep(0.1)
        abstract = VERIFICATION if op == "echo" else FIND_MODEL
        sock.sendall(associate_rq(b"CHROMANET", abstract))
        header = sock.recv(6)
        if not header or header[0] != 0x02:
            raise RuntimeError(f"association not accepted: {header!r}")
        start_rss = rss_kib(server.pid)
        sock.setblocking(False)
        batch = b"".join(request(op, i) for i in range(1, 65))
        sent = 0
        samples = []
        start = next_sample = time.monotonic()
        while time.monotonic() - start < seconds:
            try:
                sent += sock.send(batch)
            except BlockingIOError:
                time.sleep(0.005)  # the node stopped reading: that is the point
            except OSError:
                break  # the node dropped us
            if time.monotonic() >= next_sample:
                samples.append(rss_kib(server.pid))
                next_sample += 0.5
        end_rss = rss_kib(server.pid)
        sock.close()
        return {
            "op": op,
            "seconds": seconds,
            "bytes_sent": sent,
            "rss_start_mib": round(start_rss / 1024, 1),
            "rss_end_mib": round(end_rss / 1024, 1),
            "rss_peak_mib": round(max(samples + [end_rss]) / 1024, 1),
            "growth_mib": round((max(samples + [end_rss]) - start_rss) / 1024, 1),
        }
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, action="append", required=True, help="a virtualenv with chromanet (repeatable)")
    parser.add_argument("--op", choices=["echo", "find"], action="append")
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    results = []
    for venv in args.venv:
        for op in args.op or ["echo", "find"]:
            result = {"venv": str(venv), **run(venv, op, args.seconds)}
            results.append(result)
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
