"""The processes ``benches/e2e.py`` launches: one SCP, or one client.

Each runs in its own process (own GIL), started by the harness in its own
session so that the harness can kill the whole process group.

SCP::

    python benches/e2e_peers.py scp --impl chromanet|pynetdicom [--nodelay] --port P

  Listens on 127.0.0.1:P with Verification and Color Palette Storage. Its
  C-STORE handler returns Success without decoding the data set (we measure
  the engine, not pydicom). It exits when its stdin closes (so an SCP never
  outlives a harness that died), or on SIGTERM.

Client::

    python benches/e2e_peers.py client --impl chromanet-async|chromanet-blocking|pynetdicom
        [--nodelay] --port P --workload echo|assoc|store --n N [--warmup W]

  Sets up (imports, AE, data sets, an untimed warm-up run of size W), prints ``ready``, then per ``go`` line on
  stdin runs the workload once and prints one JSON line
  ``{"t0": ..., "t1": ..., "n": ..., "errors": ...}``, with ``t0``/``t1`` from
  ``time.monotonic()`` (one system-wide clock on Linux, so the harness can
  combine parallel clients). ``quit`` or EOF ends it.

pynetdicom and TCP_NODELAY
--------------------------
pynetdicom 3.0 has no socket-options setting (``_config`` has none;
``AssociationSocket._create_socket`` sets only SO_REUSEADDR and the timeout,
``AssociationServer.server_bind`` likewise, and accepted sockets are used as
they come). It writes each PDU with its own ``send()``, so a request that
is more than one segment, or two PDUs in a row (C-STORE: command, then data
set), meets Nagle's algorithm on one side and delayed ACK on the other and
stalls ~40 ms on Linux loopback.

The hook used here is public API: a handler for ``evt.EVT_CONN_OPEN``,
bound on the requestor through ``ae.associate(..., evt_handlers=...)`` and
on the acceptor through ``ae.start_server(..., evt_handlers=...)``. pynetdicom
triggers it right after ``connect()`` (requestor, before the
A-ASSOCIATE-RQ is sent) and right after ``accept()`` (acceptor, before the
reactor starts), and ``event.assoc.dul.socket.socket`` is the live
``socket.socket``: the handler sets TCP_NODELAY on it. The client checks
with ``getsockopt`` that it took effect. No pynetdicom code is patched.

chromanet (asyncio/uvloop transports) sets TCP_NODELAY itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import socket
import sys
import time
from typing import Any, Callable

HOST = "127.0.0.1"
VERIFICATION = "1.2.840.10008.1.1"
COLOR_PALETTE_STORAGE = "1.2.840.10008.5.1.4.39.1"


def _set_nodelay(event: Any) -> None:
    """pynetdicom EVT_CONN_OPEN handler: TCP_NODELAY on the association's socket."""
    sock = event.assoc.dul.socket.socket
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# ----------------------------------------------------------------------------- SCP
def run_scp(impl: str, port: int, nodelay: bool) -> None:
    if impl == "chromanet":
        from chromanet import evt, uids  # noqa: F401
        from chromanet.ae import AE

        ae = AE("BENCH-SCP")
        ae.maximum_associations = 64
        ae.add_supported_context(VERIFICATION)
        ae.add_supported_context(COLOR_PALETTE_STORAGE)
        handlers = [(evt.EVT_C_STORE, lambda event: 0x0000)]
        server = ae.start_server((HOST, port), block=False, evt_handlers=handlers)
    elif impl == "pynetdicom":
        import pynetdicom
        from pynetdicom import evt

        ae = pynetdicom.AE("BENCH-SCP")
        ae.maximum_associations = 64
        ae.add_supported_context(VERIFICATION)
        ae.add_supported_context(COLOR_PALETTE_STORAGE)
        handlers = [(evt.EVT_C_STORE, lambda event: 0x0000)]
        if nodelay:
            handlers.append((evt.EVT_CONN_OPEN, _set_nodelay))
        server = ae.start_server((HOST, port), block=False, evt_handlers=handlers)
    else:
        raise SystemExit(f"unknown SCP impl {impl!r}")
    print(f"listening {server.server_address[1]}", flush=True)
    # Serve until stdin closes (the watcher thread exits the process).
    try:
        while sys.stdin.readline():
            pass
    finally:
        os._exit(0)


# -------------------------------------------------------------------------- clients
def _palettes() -> list[Any]:
    import pydicom
    from pydicom.data import get_palette_files

    files = sorted(get_palette_files("*.dcm"))
    if len(files) != 8:
        raise SystemExit(f"expected the 8 pydicom palette files, found {len(files)}")
    return [pydicom.dcmread(f) for f in files]


def _check(rsp: Any) -> int:
    """0 if the response says Success, else 1."""
    try:
        return 0 if rsp is not None and rsp.Status == 0 else 1
    except AttributeError:
        return 1


def _state(assoc: Any) -> str:
    flags = ("is_established", "is_released", "is_aborted", "is_rejected")
    return ", ".join(f"{f}={getattr(assoc, f, '?')}" for f in flags)


def _blocking_workload(workload: str, assoc_factory: Callable[[], Any],
                       datasets: list[Any]) -> Callable[[int], tuple[float, float, int, int]]:
    """The same loop for pynetdicom and chromanet's blocking API."""

    def echo(n: int) -> tuple[float, float, int, int]:
        assoc = assoc_factory()
        if not assoc.is_established:
            raise RuntimeError("association not established")
        errors = 0
        t0 = time.monotonic()
        i = 0
        try:
            for i in range(n):
                errors += _check(assoc.send_c_echo())
        except Exception as exc:
            raise RuntimeError(f"echo {i + 1} of {n}, {time.monotonic() - t0:.1f} s in: {_state(assoc)}: {exc}") from exc
        t1 = time.monotonic()
        assoc.release()
        return t0, t1, n, errors

    def assoc_cycle(n: int) -> tuple[float, float, int, int]:
        errors = 0
        t0 = time.monotonic()
        for _ in range(n):
            assoc = assoc_factory()
            if not assoc.is_established:
                errors += 1
                continue
            errors += _check(assoc.send_c_echo())
            assoc.release()
        t1 = time.monotonic()
        return t0, t1, n, errors

    def store(n: int) -> tuple[float, float, int, int]:
        assoc = assoc_factory()
        if not assoc.is_established:
            raise RuntimeError("association not established")
        errors = 0
        t0 = time.monotonic()
        i = 0
        try:
            for i in range(n):
                for ds in datasets:
                    errors += _check(assoc.send_c_store(ds))
        except Exception as exc:
            raise RuntimeError(f"store round {i + 1} of {n}, {time.monotonic() - t0:.1f} s in: {_state(assoc)}: {exc}") from exc
        t1 = time.monotonic()
        assoc.release()
        return t0, t1, n * len(datasets), errors

    return {"echo": echo, "assoc": assoc_cycle, "store": store}[workload]


def _async_workload(workload: str, ae: Any, port: int,
                    datasets: list[Any]) -> Callable[[int], Any]:
    async def echo(n: int) -> tuple[float, float, int, int]:
        assoc = await ae.associate_async(HOST, port, ae_title="BENCH-SCP")
        if not assoc.is_established:
            raise RuntimeError("association not established")
        errors = 0
        t0 = time.monotonic()
        for _ in range(n):
            errors += _check(await assoc.send_c_echo())
        t1 = time.monotonic()
        await assoc.release()
        return t0, t1, n, errors

    async def assoc_cycle(n: int) -> tuple[float, float, int, int]:
        errors = 0
        t0 = time.monotonic()
        for _ in range(n):
            assoc = await ae.associate_async(HOST, port, ae_title="BENCH-SCP")
            if not assoc.is_established:
                errors += 1
                continue
            errors += _check(await assoc.send_c_echo())
            await assoc.release()
        t1 = time.monotonic()
        return t0, t1, n, errors

    async def store(n: int) -> tuple[float, float, int, int]:
        assoc = await ae.associate_async(HOST, port, ae_title="BENCH-SCP")
        if not assoc.is_established:
            raise RuntimeError("association not established")
        errors = 0
        t0 = time.monotonic()
        for _ in range(n):
            for ds in datasets:
                errors += _check(await assoc.send_c_store(ds))
        t1 = time.monotonic()
        await assoc.release()
        return t0, t1, n * len(datasets), errors

    return {"echo": echo, "assoc": assoc_cycle, "store": store}[workload]


def run_client(impl: str, port: int, nodelay: bool, workload: str, n: int, warmup: int) -> None:
    datasets = _palettes() if workload == "store" else []
    contexts = [VERIFICATION] + ([COLOR_PALETTE_STORAGE] if workload == "store" else [])
    run_once: Callable[[int], tuple[float, float, int, int]]

    if impl == "pynetdicom":
        import pynetdicom
        from pynetdicom import evt

        ae = pynetdicom.AE("BENCH-SCU")
        for c in contexts:
            ae.add_requested_context(c)
        handlers = [(evt.EVT_CONN_OPEN, _set_nodelay)] if nodelay else []

        def factory() -> Any:
            return ae.associate(HOST, port, ae_title="BENCH-SCP", evt_handlers=handlers)

        # Check once, outside the timing, that the socket option is what we claim.
        probe = factory()
        if not probe.is_established:
            raise SystemExit("pynetdicom client: probe association failed")
        got = probe.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        if bool(got) != nodelay:
            raise SystemExit(f"pynetdicom client: TCP_NODELAY is {got}, wanted {int(nodelay)}")
        probe.release()
        run_once = _blocking_workload(workload, factory, datasets)
    elif impl == "chromanet-blocking":
        from chromanet.ae import AE

        ae = AE("BENCH-SCU")
        for c in contexts:
            ae.add_requested_context(c)
        run_once = _blocking_workload(
            workload, lambda: ae.associate(HOST, port, ae_title="BENCH-SCP"), datasets
        )
    elif impl == "chromanet-async":
        import asyncio

        from chromanet.ae import AE
        from chromanet.loopthread import new_event_loop

        ae = AE("BENCH-SCU")
        for c in contexts:
            ae.add_requested_context(c)
        loop = new_event_loop()  # uvloop when installed
        asyncio.set_event_loop(loop)
        coro_fn = _async_workload(workload, ae, port, datasets)

        def run_once(count: int) -> tuple[float, float, int, int]:
            return loop.run_until_complete(coro_fn(count))
    else:
        raise SystemExit(f"unknown client impl {impl!r}")

    if warmup > 0:  # untimed: first-call imports, caches, allocator
        run_once(warmup)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd != "go":
            continue
        try:
            t0, t1, count, errors = run_once(n)
            out = {"t0": t0, "t1": t1, "n": count, "errors": errors}
        except Exception as exc:  # reported to the harness, which fails the cell
            logging.getLogger("e2e").exception("workload %s failed", workload)
            out = {"error": f"{type(exc).__name__}: {exc}"}
        out["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(out), flush=True)
    os._exit(0)  # do not wait on non-daemon engine threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("scp")
    s.add_argument("--impl", required=True, choices=["chromanet", "pynetdicom"])
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--nodelay", action="store_true")
    c = sub.add_parser("client")
    c.add_argument("--impl", required=True, choices=["chromanet-async", "chromanet-blocking", "pynetdicom"])
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--nodelay", action="store_true")
    c.add_argument("--workload", required=True, choices=["echo", "assoc", "store"])
    c.add_argument("--n", type=int, required=True, help="echoes, associations, or palette rounds (x8 stores)")
    c.add_argument("--warmup", type=int, default=0, help="run the workload once with this size before 'ready'")
    args = p.parse_args()
    # Warnings and errors (aborts, timeouts) of either engine go to stderr,
    # which the harness keeps in bench-results/e2e-logs/. INFO stays off: at
    # WARNING the per-message log calls cost only a level check.
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {args.role}[{os.getpid()}] %(name)s %(levelname)s %(message)s")
    if args.role == "scp":
        run_scp(args.impl, args.port, args.nodelay)
    else:
        run_client(args.impl, args.port, args.nodelay, args.workload, args.n, args.warmup)


if __name__ == "__main__":
    main()
