"""``chromanet bench``: a DIMSE load generator against any DICOM node.

    chromanet bench HOST PORT [--op echo|find|get|move|store] [-c N] [-n M]
                    [--duration S] [--processes P] [--query-model MODEL] [-k KEY=VALUE ...]
                    [--move-dest AET] [--file PATH ...] [--new-uids] [--window W]
                    [--json FILE] [--histogram FILE.png]

N concurrent associations (asyncio, one event loop per process; with
``--processes P``, P processes of N each), each doing M operations; with
``--duration`` every association slot keeps opening new associations of M
operations until the time is up (an operation in flight is finished). One
operation is one complete DIMSE exchange: a C-ECHO, a C-STORE, or a whole
C-FIND / C-GET / C-MOVE up to its final response. Its latency runs from the
request to the final response; association set-up and release are measured
separately and are not part of the operation latencies.

``--window W`` (W > 1): each association proposes an Asynchronous
Operations Window of W both ways (PS3.7 D.3.3.3) and keeps up to W of its M
operations in flight (as many as the peer grants; the rest wait for a
slot); a C-GET SCP that grants it may also send W C-STORE sub-operations
at once. Without it (or W = 1) one operation at a time, and no window item.

On a terminal a tqdm status line on stderr shows progress, rate and time
left. At the end a summary goes to stdout: throughput, latency percentiles
(p50/p90/p99/p99.9/max, from an HdrHistogram: see ``latency.py``), errors by
status; ``--json FILE`` writes it as JSON (with the encoded HdrHistogram),
``--histogram FILE.png`` draws the latency histogram (needs matplotlib).
Exit status 0 when every operation succeeded, 1 when any failed, 2 on bad
usage.

Query models (``--query-model``): ``palette`` (Color Palette, the default),
``patient`` (Patient Root), ``study`` (Study Root), or a SOP Class UID. For
the Patient/Study Root models give the keys yourself, e.g.
``-k QueryRetrieveLevel=STUDY -k PatientID=``; for C-GET on them name the
storage SOP classes to accept with ``--storage-class``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from chromanet import uids
from chromanet.apps import server_view
from chromanet.apps.latency import Latencies
from chromanet.apps.tls_options import ClientTls, add_client_tls_arguments, client_tls_from_args
from chromanet.status import STATUS_WARNING, Status, code_to_category

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

OPS = ("echo", "find", "get", "move", "store")

#: --query-model aliases -> (FIND, GET, MOVE) SOP Class UIDs
MODELS: dict[str, tuple[str, str, str]] = {
    "palette": (
        uids.ColorPaletteInformationModelFind,
        uids.ColorPaletteInformationModelGet,
        uids.ColorPaletteInformationModelMove,
    ),
    "patient": ("1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.1.2"),
    "study": ("1.2.840.10008.5.1.4.1.2.2.1", "1.2.840.10008.5.1.4.1.2.2.3", "1.2.840.10008.5.1.4.1.2.2.2"),
}

WELL_KNOWN_PALETTES = "\\".join(sorted(uids.WELL_KNOWN_PALETTE_UIDS))
PENDING = (int(Status.PENDING), int(Status.PENDING_WARNING))


# --------------------------------------------------------------- arguments
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's arguments (``chromanet bench -h``)."""
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("-aet", "--calling-aet", default="CHROMANET-BENCH", help="our AE title")
    parser.add_argument("-aec", "--called-aet", default="ANY-SCP", help="the peer's AE title")
    parser.add_argument("--op", choices=OPS, default="echo", help="the operation (default echo)")
    parser.add_argument("-c", "--concurrency", type=int, default=1, metavar="N",
                        help="concurrent associations per process (default 1)")
    parser.add_argument("-n", "--count", type=int, default=100, metavar="M",
                        help="operations per association (default 100)")
    parser.add_argument("--duration", type=float, metavar="S",
                        help="run for S seconds, opening new associations of M operations as they finish")
    parser.add_argument("--processes", type=int, default=1, metavar="P",
                        help="worker processes, each with N associations (default 1)")
    parser.add_argument("--query-model", default="palette", metavar="MODEL",
                        help="palette (default), patient, study, or a Query/Retrieve SOP Class UID")
    parser.add_argument("-k", "--key", action="append", default=[], metavar="KEY=VALUE",
                        help="identifier key by keyword (repeatable), e.g. -k ContentLabel=HOT* or "
                             "-k QueryRetrieveLevel=STUDY")
    parser.add_argument("-aem", "--move-dest", metavar="AET", help="move destination AE title (--op move)")
    parser.add_argument("--file", action="append", default=[], type=Path, metavar="PATH",
                        help="file or directory to C-STORE (repeatable; default: pydicom's 8 palettes)")
    parser.add_argument("--new-uids", action="store_true",
                        help="--op store: give every store a new SOP Instance UID (a new instance each time, "
                        "not a replacement; the well-known palettes are otherwise refused by a node that has them)")
    parser.add_argument("--storage-class", action="append", default=[], metavar="UID",
                        help="C-GET: storage SOP class to accept with the SCP role (palette model: "
                             "Color Palette Storage)")
    parser.add_argument("--window", type=int, default=1, metavar="W",
                        help="propose an asynchronous operations window of W and keep up to W operations in flight "
                             "on each association (default 1: one at a time)")
    parser.add_argument("--timeout", type=float, default=30.0, help="ACSE/DIMSE/network timeout in seconds")
    parser.add_argument("--max-pdu", type=int, default=16382, help="our maximum PDU length (default 16382)")
    parser.add_argument("--tcp-quickack", action=argparse.BooleanOptionalAction, default=True,
                        help="Linux: acknowledge each receive at once, so a peer running Nagle's algorithm "
                        "does not stall on our delayed ACKs (default: on; --no-tcp-quickack to compare)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the summary as JSON")
    parser.add_argument("--histogram", type=Path, metavar="FILE.png",
                        help="draw the latency histogram (needs matplotlib)")
    parser.add_argument("--server-metrics", metavar="URL",
                        help="scrape the server's Prometheus metrics (e.g. http://HOST:9100/metrics) before "
                        "and after the run and print its view: operations, latency quantiles, errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress line, no summary on stdout")
    parser.add_argument("-v", "--verbose", action="store_true", help="engine debug logging")
    add_client_tls_arguments(parser)


# --------------------------------------------------------------- the plan
@dataclass
class Plan:
    """What every worker does; built once from the arguments (picklable)."""

    host: str
    port: int
    calling_aet: str
    called_aet: str
    op: str
    concurrency: int
    count: int
    duration: float | None
    timeout: float
    max_pdu: int
    model: str | None = None  # the SOP class of the find/get/move
    keys: list[str] = field(default_factory=list)
    move_dest: str | None = None
    files: list[str] = field(default_factory=list)
    storage_classes: list[str] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)
    tls: ClientTls | None = None  # each worker builds its own context from it
    tcp_quickack: bool = True
    new_uids: bool = False  # --op store: a fresh SOP Instance UID per store
    window: int = 1  # operations in flight per association (and the window proposed)


def _resolve_model(name: str, op: str) -> str:
    column = {"find": 0, "get": 1, "move": 2}[op]
    if name in MODELS:
        return MODELS[name][column]
    if not uids.validate_uid(name):
        raise ValueError(f"--query-model {name!r}: not palette, patient, study or a UID")
    return name


def _store_files(paths: list[Path]) -> list[str]:
    if not paths:
        from pydicom.data import get_palette_files

        return sorted(str(p) for p in get_palette_files("*.dcm"))
    files: list[str] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(str(p) for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            files.append(str(path))
        else:
            raise ValueError(f"--file {path}: no such file or directory")
    if not files:
        raise ValueError("--file: no files found")
    return files


# --new-uids: each file is re-encoded once with this SOP Instance UID (meta
# and data set), and every store replaces it by a fresh UID of the same
# length ("2.25." and 38 digits), so no length in the file changes.
_UID_DIGITS = 38
_UID_PLACEHOLDER = "2.25." + "1" + "0" * (_UID_DIGITS - 1)


def _uid_template(path: str) -> bytes:
    """The Part 10 bytes of ``path`` with its SOP Instance UID set to the placeholder."""
    import io

    from pydicom import dcmread

    ds = dcmread(path)
    ds.SOPInstanceUID = _UID_PLACEHOLDER
    ds.file_meta.MediaStorageSOPInstanceUID = _UID_PLACEHOLDER
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    if data.count(_UID_PLACEHOLDER.encode()) != 2:
        raise ValueError(f"{path}: cannot place a new SOP Instance UID")
    return data


def _fresh_uid() -> bytes:
    """A new UID (PS3.5 B.2: 2.25 and a random integer) of the placeholder's length."""
    first = 10 ** (_UID_DIGITS - 1)
    return f"2.25.{first + secrets.randbelow(9 * first)}".encode()


def build_plan(args: argparse.Namespace) -> Plan:
    if args.concurrency < 1 or args.count < 1 or args.processes < 1 or getattr(args, "window", 1) < 1:
        raise ValueError("--concurrency, --count, --processes and --window must be at least 1")
    if args.duration is not None and args.duration <= 0:
        raise ValueError("--duration must be positive")
    plan = Plan(args.host, args.port, args.calling_aet, args.called_aet, args.op, args.concurrency, args.count,
                args.duration, args.timeout, args.max_pdu, keys=list(args.key), tls=client_tls_from_args(args),
                tcp_quickack=args.tcp_quickack, new_uids=getattr(args, "new_uids", False),
                window=getattr(args, "window", 1))
    if plan.tls is not None:
        plan.tls.tls_args()  # a file that cannot be loaded is a usage error, said now
    if args.op == "echo":
        plan.contexts = [uids.Verification]
    elif args.op == "store":
        from chromanet import dsutil

        plan.files = _store_files(args.file)
        classes = []
        for path in plan.files:
            part = dsutil.open_part10(path)
            try:
                classes.append(part.sop_class_uid)
            finally:
                part.close()
        plan.contexts = list(dict.fromkeys(classes))
    else:
        plan.model = _resolve_model(args.query_model, args.op)
        plan.contexts = [plan.model]
        if args.op == "move":
            if not args.move_dest:
                raise ValueError("--op move needs --move-dest AET")
            plan.move_dest = args.move_dest
        if args.op == "get":
            palette = plan.model == uids.ColorPaletteInformationModelGet
            plan.storage_classes = list(args.storage_class) or ([uids.ColorPaletteStorage] if palette else [])
            if not plan.storage_classes:
                raise ValueError("--op get on this model needs --storage-class UID (what the SCP will send)")
        build_identifier_for(plan)  # validate the keys now
    if len(plan.contexts) > 127:
        raise ValueError("more than 127 SOP classes to propose")
    return plan


def build_identifier_for(plan: Plan) -> Any:
    from chromanet.apps.identifiers import build_identifier

    palette = plan.model in MODELS["palette"]
    defaults: dict[str, str] = {}
    if palette and plan.op == "find":
        defaults = {"SOPInstanceUID": "", "ContentLabel": ""}
    elif palette and not any(k.partition("=")[0] == "SOPInstanceUID" for k in plan.keys):
        defaults = {"SOPInstanceUID": WELL_KNOWN_PALETTES}  # retrieve needs the UID list
    return build_identifier(plan.keys, defaults)


# --------------------------------------------------------------- one worker
@dataclass
class Tally:
    """What one process measured."""

    latencies: Latencies = field(default_factory=Latencies)  # successful and failed operations
    assoc_latencies: Latencies = field(default_factory=Latencies)
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    items: int = 0  # C-FIND matches, C-GET/C-MOVE completed sub-operations
    associations: int = 0
    association_failures: int = 0
    t0: float = 0.0
    t1: float = 0.0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def _status_key(status: int) -> str:
    return f"0x{status:04X} {code_to_category(status)}"


class Worker:
    """N association slots on one event loop."""

    def __init__(self, plan: Plan, progress: Any = None) -> None:
        from chromanet import evt
        from chromanet.ae import AE, build_role
        from chromanet.pdu_primitives import AsynchronousOperationsWindowNegotiation

        self.plan = plan
        self.tally = Tally()
        self.progress = progress  # a list-like [ok, errors] updated as operations end
        ae = AE(plan.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = plan.timeout
        ae.connection_timeout = plan.timeout
        ae.tcp_quickack = plan.tcp_quickack
        for context in plan.contexts:
            ae.add_requested_context(context)
        self.ext_neg = None
        self.handlers = None
        if plan.op == "get":
            for storage in plan.storage_classes:
                if storage not in plan.contexts:
                    ae.add_requested_context(storage)
            self.ext_neg = [build_role(s, scp_role=True) for s in plan.storage_classes]
            # Quick and never blocking: run on the loop (no thread hand-off).
            self.handlers = [(evt.EVT_C_STORE, evt.inline(self._on_store))]
        if plan.window > 1:
            window = AsynchronousOperationsWindowNegotiation()
            window.maximum_number_operations_invoked = plan.window
            window.maximum_number_operations_performed = plan.window
            self.ext_neg = [*(self.ext_neg or []), window]
        self.ae = ae
        self.identifier = build_identifier_for(plan) if plan.model else None
        self.tls_args = plan.tls.tls_args() if plan.tls is not None else None
        self.deadline: float | None = None
        self.templates = [_uid_template(f) for f in plan.files] if plan.new_uids and plan.op == "store" else None

    @staticmethod
    def _on_store(event: Any) -> int:
        return Status.SUCCESS  # C-GET sub-operations: accepted, not decoded

    def _done(self, ok: bool) -> None:
        if self.progress is not None:
            self.progress[0 if ok else 1] += 1

    async def run(self) -> Tally:
        t = self.tally
        t.t0 = time.monotonic()
        if self.plan.duration is not None:
            self.deadline = t.t0 + self.plan.duration
        await asyncio.gather(*(self._slot(i) for i in range(self.plan.concurrency)))
        t.t1 = time.monotonic()
        return t

    def _time_left(self) -> bool:
        return self.deadline is None or time.monotonic() < self.deadline

    async def _slot(self, index: int) -> None:
        plan, t = self.plan, self.tally
        file_index = index
        while True:
            start = time.monotonic_ns()
            try:
                assoc = await self.ae.associate_async(
                    plan.host, plan.port, ae_title=plan.called_aet, max_pdu=plan.max_pdu,
                    ext_neg=self.ext_neg, evt_handlers=self.handlers, tls_args=self.tls_args,
                )
            except Exception as exc:  # noqa: BLE001 - any failure to connect is a result
                assoc, failure = None, f"association failed: {type(exc).__name__}"
            else:
                failure = None if assoc.is_established else (
                    "association rejected" if assoc.is_rejected else "association failed"
                )
            if failure is not None:
                t.association_failures += 1
                t.error(failure)
                self._done(False)
                if self.deadline is None:
                    return
                await asyncio.sleep(0.1)
                if not self._time_left():
                    return
                continue
            t.associations += 1
            t.assoc_latencies.record(time.monotonic_ns() - start)
            try:
                if plan.window <= 1:
                    file_index = await self._lane(assoc, plan.count, file_index, 1)
                else:
                    # W lanes share the M operations; each sends its next one
                    # when its last one is answered.
                    lanes = min(plan.window, plan.count)
                    await asyncio.gather(*(
                        self._lane(assoc, plan.count // lanes + (k < plan.count % lanes), file_index + k, lanes)
                        for k in range(lanes)
                    ))
                    file_index += plan.count
            finally:
                if assoc.is_established:
                    try:
                        await assoc.release()
                    except Exception:  # noqa: BLE001
                        assoc.abort()
            if self.deadline is None or not self._time_left():
                return

    async def _lane(self, assoc: Any, count: int, file_index: int, step: int) -> int:
        """``count`` operations one after the other on ``assoc``, the files
        (--op store) from ``file_index`` on, ``step`` apart; the next index."""
        t = self.tally
        for _ in range(count):
            if not self._time_left():
                break
            if not assoc.is_established:
                t.error("association ended")
                self._done(False)
                break
            await self._one(assoc, file_index)
            file_index += step
        return file_index

    async def _one(self, assoc: Any, file_index: int) -> int:
        plan, t = self.plan, self.tally
        start = time.monotonic_ns()
        status: int | None = None
        items = 0
        try:
            if plan.op == "echo":
                rsp = await assoc.send_c_echo()
                status = int(rsp.Status) if "Status" in rsp else None
            elif plan.op == "store":
                if self.templates is not None:
                    template = self.templates[file_index % len(self.templates)]
                    rsp = await assoc.send_c_store(template.replace(_UID_PLACEHOLDER.encode(), _fresh_uid()))
                else:
                    rsp = await assoc.send_c_store(plan.files[file_index % len(plan.files)])
                file_index += 1
                status = int(rsp.Status) if "Status" in rsp else None
            else:
                if plan.op == "find":
                    responses = assoc.send_c_find(self.identifier, plan.model)
                elif plan.op == "get":
                    responses = assoc.send_c_get(self.identifier, plan.model)
                else:
                    responses = assoc.send_c_move(self.identifier, plan.move_dest, plan.model)
                async for rsp, found in responses:
                    if "Status" not in rsp:
                        break
                    code = int(rsp.Status)
                    if code in PENDING:
                        items += plan.op == "find" and found is not None
                        continue
                    status = code
                    if plan.op != "find":
                        items = int(rsp.get("NumberOfCompletedSuboperations", 0) or 0)
        except Exception as exc:  # noqa: BLE001 - counted, not raised
            t.latencies.record(time.monotonic_ns() - start)
            t.error(f"exception: {type(exc).__name__}")
            self._done(False)
            return file_index
        t.latencies.record(time.monotonic_ns() - start)
        t.items += items
        if status is None:
            t.error("no response")
            self._done(False)
        elif status == Status.SUCCESS or (plan.op == "store" and code_to_category(status) == STATUS_WARNING):
            t.ok += 1
            self._done(True)
        else:
            t.error(_status_key(status))
            self._done(False)
        return file_index


def _run_worker(plan: Plan, progress: Any = None) -> Tally:
    from chromanet.loopthread import new_event_loop

    loop = new_event_loop()  # uvloop when installed
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(Worker(plan, progress).run())
    finally:
        loop.close()


def _process_main(plan: Plan, progress: Any, slot: int, queue: Any) -> None:
    """A worker process: its counters are progress[2*slot], progress[2*slot+1]."""
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE

    class View:
        def __getitem__(self, i: int) -> int:
            return progress[2 * slot + i]

        def __setitem__(self, i: int, value: int) -> None:
            progress[2 * slot + i] = value

    try:
        tally = _run_worker(plan, View())
        queue.put(("ok", tally))
    except BaseException as exc:  # reported to the parent
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


# --------------------------------------------------------------- progress
def _progress_bar(plan: Plan, processes: int, quiet: bool) -> tqdm:
    """The status line on stderr: a tqdm bar, shown only on a terminal and
    not with -q (the TQDM_* environment variables tune it)."""
    total = None if plan.duration else plan.concurrency * plan.count * processes
    desc = plan.op + (f" for {plan.duration:g} s" if plan.duration else "")
    return tqdm(total=total, desc=desc, unit="op", file=sys.stderr, disable=True if quiet else None,
                dynamic_ncols=True)


def _show(bar: tqdm, ok: int, errors: int) -> None:
    bar.set_postfix({"ok": str(ok), "errors": str(errors)}, refresh=False)  # as is, in this order
    bar.update(ok + errors - bar.n)


# --------------------------------------------------------------- summary
def merge(tallies: list[Tally]) -> Tally:
    out = Tally()
    for t in tallies:
        out.latencies.add(t.latencies)
        out.assoc_latencies.add(t.assoc_latencies)
        out.ok += t.ok
        out.items += t.items
        out.associations += t.associations
        out.association_failures += t.association_failures
        for key, n in t.errors.items():
            out.errors[key] = out.errors.get(key, 0) + n
    out.t0 = min(t.t0 for t in tallies)
    out.t1 = max(t.t1 for t in tallies)
    return out


def summarize(plan: Plan, processes: int, query_model: str, tally: Tally) -> dict[str, Any]:
    elapsed = max(tally.t1 - tally.t0, 1e-9)
    errors = sum(tally.errors.values())
    ops = tally.ok + errors - tally.association_failures
    return {
        "host": plan.host,
        "port": plan.port,
        "op": plan.op,
        "query_model": plan.model and query_model,
        "sop_class": plan.model,
        "concurrency": plan.concurrency,
        "processes": processes,
        "ops_per_association": plan.count,
        "window": plan.window,
        "duration_s": plan.duration,
        "elapsed_s": elapsed,
        "operations": ops,
        "ok": tally.ok,
        "errors": errors,
        "errors_by_status": dict(sorted(tally.errors.items())),
        "throughput_ops_s": tally.ok / elapsed,
        "items": tally.items,
        "items_label": {"find": "matches", "get": "instances", "move": "instances"}.get(plan.op),
        "items_per_s": tally.items / elapsed,
        "latency_ms": tally.latencies.summary_ms(),
        # HdrHistogram's V2 encoding: any HdrHistogram tool reads it; runs add up
        "latency_histogram": tally.latencies.encode().decode("ascii") if tally.latencies.count else None,
        "associations": {
            "opened": tally.associations,
            "failed": tally.association_failures,
            "latency_ms": tally.assoc_latencies.summary_ms(),
        },
    }


def format_summary(s: dict[str, Any]) -> str:
    bound = f"{s['duration_s']:g} s" if s["duration_s"] else f"{s['ops_per_association']} ops each"
    lines = [
        f"chromanet bench: {s['op']} against {s['host']}:{s['port']}"
        + (f" ({s['query_model']} model)" if s["query_model"] else "")
        + f", {s['concurrency']} association(s) x {s['processes']} process(es), {bound}"
        + (f", up to {s['window']} in flight on each" if s.get("window", 1) > 1 else ""),
        f"  operations    {s['ok']} ok, {s['errors']} error(s) in {s['elapsed_s']:.2f} s"
        f"  ->  {s['throughput_ops_s']:,.1f} ops/s",
    ]
    if s["items_label"]:
        lines.append(f"  {s['items_label']:<13} {s['items']}  ->  {s['items_per_s']:,.1f}/s")
    lat = s["latency_ms"]
    if lat:
        lines.append(
            f"  latency ms    p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  "
            f"p99.9 {lat['p99.9']:.3f}  max {lat['max']:.3f}  (mean {lat['mean']:.3f}; within 0.1 %)"
        )
    assoc = s["associations"]
    alat = assoc["latency_ms"]
    lines.append(
        f"  associations  {assoc['opened']} opened, {assoc['failed']} failed"
        + (f"; set-up p50 {alat['p50']:.2f} ms, max {alat['max']:.2f} ms" if alat else "")
    )
    if s["errors_by_status"]:
        lines.append("  errors by status:")
        lines += [f"    {key}: {n}" for key, n in s["errors_by_status"].items()]
    else:
        lines.append("  errors by status: none")
    return "\n".join(lines)


def draw_histogram(latencies: Latencies, path: Path, title: str) -> str | None:
    """Draw; None on success, else why not."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no histogram drawn"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = latencies.summary_ms()
    if summary is None:
        return "no operations: no histogram drawn"
    recorded = [(item.value_iterated_to / 1000, item.count_added_in_this_iter_step)
                for item in latencies.histogram.get_recorded_iterator()]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist([ms for ms, _ in recorded], weights=[n for _, n in recorded],
            bins=min(100, max(10, latencies.count // 20)), color="#1f77b4")
    for key, style in (("p50", "-"), ("p90", "--"), ("p99", ":")):
        value = summary[key]
        ax.axvline(value, color="#d62728", linestyle=style, linewidth=1, label=f"{key} {value:.3f} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("operations")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------------- entry point
def _run_processes(plan: Plan, processes: int, quiet: bool) -> list[Tally]:
    import multiprocessing as mp

    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    progress = ctx.Array("q", 2 * processes, lock=False)
    queue = ctx.Queue()
    children = [ctx.Process(target=_process_main, args=(plan, progress, i, queue), daemon=True)
                for i in range(processes)]
    for child in children:
        child.start()
    results: list[Tally] = []
    failures: list[str] = []
    import queue as queue_module

    try:
        with _progress_bar(plan, processes, quiet) as bar:  # after the fork: tqdm starts a thread
            while len(results) + len(failures) < processes:
                try:
                    kind, value = queue.get(timeout=0.5)
                except queue_module.Empty:
                    _show(bar, sum(progress[0::2]), sum(progress[1::2]))
                    if not any(c.is_alive() for c in children) and queue.empty():
                        failures.append("a worker process died without a result")
                        break
                    continue
                (results if kind == "ok" else failures).append(value)
            _show(bar, sum(progress[0::2]), sum(progress[1::2]))
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
    if failures:
        raise RuntimeError(f"worker process failed: {failures[0]}")
    return results


async def _run_here(plan: Plan, bar: tqdm) -> Tally:
    progress = [0, 0]
    worker = Worker(plan, progress)
    task = asyncio.ensure_future(worker.run())
    while not task.done():
        await asyncio.wait([task], timeout=0.25)
        _show(bar, progress[0], progress[1])
    return task.result()


def run(args: argparse.Namespace) -> int:
    """``chromanet bench``: returns the exit status."""
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE
    try:
        plan = build_plan(args)
    except ValueError as exc:
        print(f"chromanet bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    server_before = None
    if getattr(args, "server_metrics", None):
        try:
            server_before = server_view.scrape(args.server_metrics)
        except (OSError, ValueError) as exc:
            print(f"chromanet bench: --server-metrics: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        if args.processes == 1:
            from chromanet.loopthread import new_event_loop

            loop = new_event_loop()
            try:
                asyncio.set_event_loop(loop)
                with _progress_bar(plan, 1, args.quiet) as bar:
                    tally = loop.run_until_complete(_run_here(plan, bar))
            finally:
                loop.close()
        else:
            tally = merge(_run_processes(plan, args.processes, args.quiet))
    except KeyboardInterrupt:
        print("chromanet bench: interrupted", file=sys.stderr)
        return EXIT_FAILED
    except RuntimeError as exc:
        print(f"chromanet bench: {exc}", file=sys.stderr)
        return EXIT_FAILED
    summary = summarize(plan, args.processes, args.query_model, tally)
    if server_before is not None:
        try:
            summary["server"] = server_view.compare(server_before, server_view.scrape_settled(args.server_metrics))
        except (OSError, ValueError) as exc:
            print(f"chromanet bench: --server-metrics after the run: {exc}", file=sys.stderr)
    if not args.quiet:
        print(format_summary(summary))
        if "server" in summary:
            print(server_view.format_view(summary["server"], args.server_metrics))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.histogram is not None:
        why_not = draw_histogram(tally.latencies, args.histogram,
                                 f"chromanet bench {plan.op} {plan.host}:{plan.port}, {summary['ok']} ok")
        if why_not:
            print(f"chromanet bench: {why_not}", file=sys.stderr)
    return EXIT_OK if summary["errors"] == 0 and summary["ok"] > 0 else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chromanet bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
