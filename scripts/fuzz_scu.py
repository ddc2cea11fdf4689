#!/usr/bin/env python3
"""Fuzz chromanet's SCU side: a hostile SCP answers its requests with
mutated PDUs.

What and why: ``scripts/fuzz_node.py`` is the hostile SCU against our node.
The other half of "a hostile peer is the normal case" is the SCP that our
SCU meets: the load tool (``chromanet bench``) pointed at any node, the
node's own C-MOVE sub-associations, a script on the async or blocking API.
Whatever such a peer sends, chromanet's requestor must end the call with a
result or one of its documented exceptions within its timeouts, never hang,
never log a traceback of its own, and leave no association behind.

How: a hostile SCP runs in a thread of this process on 127.0.0.1, over
plain blocking sockets (it must not share the event loop it is testing).
Each connection is one case, built from ``random.Random(f"{seed}:{index}")``:
the SCP reads the A-ASSOCIATE-RQ and answers with an A-ASSOCIATE-AC that
accepts every context (its first transfer syntax, the SCP role where
asked), then answers each request with the responses a Color Palette SCP
would send (C-ECHO-RSP; C-FIND-RSP pending with an identifier, then the
final one; C-STORE-RSP; C-GET: a C-STORE-RQ sub-operation, a pending
C-GET-RSP and the final one) - one of them mutated by the same mutations
as ``fuzz_node.py`` (bit flips, truncation, length lies, PDU type swaps,
P-DATA framing lies, command and data set element lies, deep sequences),
or an A-ASSOCIATE-AC/RJ mutated, or silence, an unsolicited A-RELEASE-RQ,
A-ABORT, a reset, a response to a Message ID never sent, a second
A-ASSOCIATE-AC. The client is chromanet's async API (``AE.associate_async``)
with short timeouts (ACSE, DIMSE and network 2 s), or with ``--api
blocking`` the blocking API (``AE.associate``, as a pynetdicom program
calls it, C-STORE handler in a worker thread); each case runs a few of
echo, find, store and get on one association, then releases it. With
``--via-node`` the hostile SCP is instead the C-MOVE destination of a
``chromanet serve`` started here, and each case moves palettes into it.

A case is an incident when it:
- raises anything but the API's documented outcomes (a failed or
  cancelled operation is a status; a call on an association that is gone
  raises RuntimeError; ``associate`` may raise ConnectionError/OSError);
- takes longer than its timeouts allow (a hang: ``--case-limit``);
- makes chromanet log a traceback (its ERROR lines, a peer's abort or an
  undecodable response among them, are counted in the report);
- leaves an association in ``ae.active_associations``;
- (``--via-node``) makes the node log a traceback, or die.

Run (after ``scripts/bootstrap``)::

    .venv/bin/python scripts/fuzz_scu.py --count 3000          # ~3-5 minutes
    .venv/bin/python scripts/fuzz_scu.py --replay 1234 --seed 1 # one case again, logged in full

It is a script, not a test: pytest does not collect ``scripts/``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import random
import socket
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from pydicom import Dataset

    from chromanet import _dimse, _pdu, uids
    from chromanet.ae import AE
    from chromanet.evt import EVT_C_STORE
    from chromanet.presentation import build_role
except ImportError as exc:  # pragma: no cover
    sys.exit(f"fuzz_scu.py: run me with the project's python (.venv/bin/python): {exc}")

_spec = importlib.util.spec_from_file_location("fuzz_node", Path(__file__).with_name("fuzz_node.py"))
assert _spec is not None and _spec.loader is not None
fuzz_node = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_node"] = fuzz_node  # its dataclasses look their module up
_spec.loader.exec_module(fuzz_node)
Msg, Unit, split_pdus = fuzz_node.Msg, fuzz_node.Unit, fuzz_node.split_pdus

HOST = "127.0.0.1"
I, E = uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian
VERIFY, STORE = uids.Verification, uids.ColorPaletteStorage
FIND, GET = uids.ColorPaletteInformationModelFind, uids.ColorPaletteInformationModelGet
MOVE = uids.ColorPaletteInformationModelMove
WELL_KNOWN = sorted(uids.WELL_KNOWN_PALETTE_UIDS)
TIMEOUT = 2.0
IO_TIMEOUT = 10.0
OPS = ["echo", "find", "store", "get"]
KINDS = ["response", "response", "response", "response", "unit", "unit", "ac", "silence", "release-rq",
         "abort", "reset", "stray", "second-ac", "trickle"]


# ============================================================ the hostile SCP
def _recv_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _recv_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = _recv_exact(sock, 6)
    pdu_type, _, length = struct.unpack(">BBI", header)
    if length > 1 << 24:
        raise ConnectionError(f"the client sent a PDU of {length} bytes")
    return pdu_type, _recv_exact(sock, length)


def _recv_message(sock: socket.socket) -> tuple[int, bytes, bytes | None] | None:
    """The next DIMSE message (context ID, command, data set or None); None
    for a PDU that is not P-DATA (a release, an abort)."""
    command, dataset = b"", b""
    has_dataset = False
    while True:
        pdu_type, body = _recv_pdu(sock)
        if pdu_type != 4:
            if pdu_type == 5:  # A-RELEASE-RQ: answered
                sock.sendall(_pdu.encode_pdu(_pdu.ReleaseRP()))
            return None
        pos = 0
        while pos + 6 <= len(body):
            length = struct.unpack_from(">I", body, pos)[0]
            ctx, mch = body[pos + 4], body[pos + 5]
            data = body[pos + 6 : pos + 4 + length]
            pos += 4 + length
            if mch & 1:
                command += data
                if mch & 2:
                    decoded = _dimse.decode_command(command)
                    has_dataset = decoded.command_data_set_type != _dimse.NO_DATASET
                    if not has_dataset:
                        return ctx, command, None
            else:
                dataset += data
                if mch & 2:
                    return ctx, command, dataset


@dataclass
class Plan:
    """What the SCP does in one case."""

    kind: str
    target: int  # which response message (or PDU) of the case is mutated
    what: list[str] = field(default_factory=list)


class HostileSCP:
    """Accepts connections; connection ``n`` runs case ``n`` of ``seed``."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.plans: dict[int, Plan] = {}
        self.lock = threading.Lock()
        self.next_case = 0
        self.errors: list[str] = []
        threading.Thread(target=self._accept, daemon=True, name="hostile-scp").start()

    def expect(self, index: int) -> None:
        with self.lock:
            self.next_case = index

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                index = self.next_case
            threading.Thread(target=self._serve, args=(sock, index), daemon=True).start()

    def _serve(self, sock: socket.socket, index: int) -> None:
        rng = random.Random(f"{self.seed}:{index}")
        plan = Plan(rng.choice(KINDS), rng.randrange(4))
        self.plans[index] = plan
        sock.settimeout(IO_TIMEOUT)
        try:
            self._run(sock, rng, plan)
        except (OSError, ConnectionError, ValueError):
            pass  # the client went away, or sent what we do not parse: its business
        except Exception:  # our own bug: say so, it is not the client's
            self.errors.append(f"case {index}: hostile SCP failed:\n{traceback.format_exc()}")
        finally:
            sock.close()

    def _send_units(self, sock: socket.socket, rng: random.Random, plan: Plan, units: list[bytes]) -> None:
        trickle = plan.kind == "trickle"
        for data in units:
            if trickle:
                for start in range(0, len(data), 7):
                    sock.sendall(data[start : start + 7])
            else:
                sock.sendall(data)

    def _run(self, sock: socket.socket, rng: random.Random, plan: Plan) -> None:
        pdu_type, body = _recv_pdu(sock)
        if pdu_type != 1:
            return
        rq = _pdu.decode_pdu(1, body)
        contexts = [_pdu.PresentationContextAC(pc.context_id, 0, pc.transfer_syntaxes[0]) for pc in rq.presentation_contexts]
        roles = [_pdu.RoleSelection(r.sop_class_uid, r.scu_role, r.scp_role) for r in rq.user_information.role_selections]
        ac = _pdu.encode_pdu(_pdu.AssociateAC(
            called_ae_title=rq.called_ae_title, calling_ae_title=rq.calling_ae_title, presentation_contexts=contexts,
            user_information=_pdu.UserInformation(max_length=16384, implementation_class_uid="1.2.826.0.1.3680043.8.498.77",
                                                  role_selections=roles)))  # fmt: skip
        syntax = {pc.context_id: pc.transfer_syntaxes[0] for pc in rq.presentation_contexts}
        if plan.kind == "ac":
            unit = Unit(ac, "A-ASSOCIATE-AC")
            plan.what.append(fuzz_node.mutate_unit(rng, unit))
            sock.sendall(unit.data)
        elif plan.kind == "abort" and plan.target == 0:
            sock.sendall(_pdu.encode_pdu(_pdu.Abort(source=2, reason=0)))
            plan.what.append("A-ABORT for the RQ")
            return
        else:
            sock.sendall(ac)
        if plan.kind == "second-ac":
            sock.sendall(ac)
            plan.what.append("a second A-ASSOCIATE-AC")
        count = 0
        while True:
            message = _recv_message(sock)
            if message is None:
                return
            ctx, command_bytes, dataset = message
            command = _dimse.decode_command(command_bytes)
            if not command.is_request:
                continue  # the client's C-STORE-RSP to a C-GET's sub-operation
            explicit = syntax.get(ctx) == E
            msgs = self._answers(ctx, command, dataset, syntax.get(ctx, I), rng)
            if count == plan.target or plan.target >= 3 and count >= 3:
                msgs = self._spoil(sock, rng, plan, msgs, explicit, command)
                if msgs is None:
                    return
            count += 1
            units: list[bytes] = []
            for msg in msgs:
                units.extend(msg.pdus())
            if plan.kind == "unit" and plan.what == [] and units and count - 1 == plan.target:
                k = rng.randrange(len(units))
                unit = Unit(units[k], "PDU")
                plan.what.append(fuzz_node.mutate_unit(rng, unit))
                units[k] = unit.data
            self._send_units(sock, rng, plan, units)

    def _spoil(self, sock: socket.socket, rng: random.Random, plan: Plan, msgs: list[Msg], explicit: bool,
               command: Any) -> list[Msg] | None:  # fmt: skip
        """The plan's mischief on the answers to one request; None: the
        connection ends here."""
        kind = plan.kind
        if kind == "response":
            k = rng.randrange(len(msgs))
            plan.what.append(fuzz_node.mutate_message(rng, msgs[k], explicit))
        elif kind == "silence":
            plan.what.append("no answer")
            time.sleep(TIMEOUT * 1.5)
            return None
        elif kind == "release-rq":
            plan.what.append("A-RELEASE-RQ instead of an answer")
            sock.sendall(_pdu.encode_pdu(_pdu.ReleaseRQ()))
            return []
        elif kind == "abort":
            plan.what.append("A-ABORT instead of an answer")
            sock.sendall(_pdu.encode_pdu(_pdu.Abort(source=2, reason=rng.choice([0, 1, 2, 4, 5, 6]))))
            return None
        elif kind == "reset":
            plan.what.append("reset instead of an answer")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return None
        elif kind == "stray":
            stray = Msg(msgs[0].ctx, fuzz_node._cmd(_dimse.C_ECHO_RSP, message_id_being_responded_to=(
                command.message_id + rng.choice([1, 7, 1000])) & 0xFFFF, command_data_set_type=_dimse.NO_DATASET,
                status=0, affected_sop_class_uid=VERIFY), None, None, "stray")  # fmt: skip
            plan.what.append("a response to a Message ID never sent, first")
            return [stray, *msgs]
        return msgs

    def _answers(self, ctx: int, command: Any, dataset: bytes | None, ts: str, rng: random.Random) -> list[Msg]:
        field_ = command.command_field
        mid = command.message_id
        sop = command.affected_sop_class_uid

        def rsp(field_rsp: int, status: int, data: bytes | None = None, **extra: Any) -> Msg:
            return Msg(ctx, fuzz_node._cmd(field_rsp, message_id_being_responded_to=mid, affected_sop_class_uid=sop,
                                           command_data_set_type=_dimse.NO_DATASET if data is None else 1,
                                           status=status, **extra), data, None, _dimse_name(field_rsp))  # fmt: skip

        if field_ == _dimse.C_ECHO_RQ:
            return [rsp(_dimse.C_ECHO_RSP, 0)]
        if field_ == _dimse.C_STORE_RQ:
            return [rsp(_dimse.C_STORE_RSP, 0, affected_sop_instance_uid=command.affected_sop_instance_uid)]
        if field_ == _dimse.C_FIND_RQ:
            match = fuzz_node.identifier(ts, SOPInstanceUID="1.2.826.0.1.3680043.8.498.5", ContentLabel="FUZZ")
            return [rsp(_dimse.C_FIND_RSP, 0xFF00, match), rsp(_dimse.C_FIND_RSP, 0)]
        if field_ == _dimse.C_GET_RQ:
            uid = "1.2.826.0.1.3680043.8.498.6"
            store = Msg(ctx, fuzz_node._cmd(_dimse.C_STORE_RQ, message_id=(mid + 100) & 0xFFFF, priority=0,
                                            affected_sop_class_uid=STORE, affected_sop_instance_uid=uid,
                                            command_data_set_type=1), fuzz_node.palette(ts, uid), None, "C-STORE-RQ")  # fmt: skip
            return [store, rsp(_dimse.C_GET_RSP, 0xFF00, number_of_remaining_suboperations=0,
                               number_of_completed_suboperations=1, number_of_failed_suboperations=0,
                               number_of_warning_suboperations=0),
                    rsp(_dimse.C_GET_RSP, 0, number_of_remaining_suboperations=0,
                        number_of_completed_suboperations=1, number_of_failed_suboperations=0,
                        number_of_warning_suboperations=0)]  # fmt: skip
        return [rsp(field_ | 0x8000, 0x0211)]


def _dimse_name(field_: int) -> str:
    return fuzz_node.DIMSE_NAMES.get(field_, hex(field_))


# ================================================================ the client
class Captured(logging.Handler):
    """chromanet's records with a traceback (``bad``: an incident), and a
    count of its ERROR records by message head (a peer's abort or an
    undecodable response is logged at ERROR, as pynetdicom does: expected)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []
        self.errors: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.bad.append(self.format(record) + "\n" + "".join(traceback.format_exception(*record.exc_info)))
        elif record.levelno >= logging.ERROR:
            head = record.getMessage().split(":")[0][:60]
            self.errors[head] = self.errors.get(head, 0) + 1


def _identifier() -> Dataset:
    ds = Dataset()
    ds.ContentLabel = "*"
    ds.SOPInstanceUID = ""
    return ds


def _palette() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.ContentLabel = STORE, "1.2.826.0.1.3680043.8.498.7", "FUZZ"
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = E
    for group in (0x1101, 0x1102, 0x1103):
        ds.add_new((0x0028, group), "US", [16, 0, 8])
        ds.add_new((0x0028, group + 0x100), "OW", bytes(range(0, 32, 2)))
    return ds


def make_ae() -> AE:
    ae = AE("FUZZ-CLIENT")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    for abstract in (VERIFY, FIND, GET):
        ae.add_requested_context(abstract, [I, E])
    ae.add_requested_context(STORE, [E, I])
    return ae


async def run_case(ae: AE, port: int, rng: random.Random) -> list[str]:
    """One association, a few operations; returns what the calls gave."""
    outcomes: list[str] = []

    def on_store(event: Any) -> int:
        _ = event.dataset  # decoded as a handler would
        return 0x0000

    try:
        assoc = await ae.associate_async(HOST, port, ae_title="HOSTILE", ext_neg=[build_role(STORE, scu_role=True, scp_role=True)],
                                         evt_handlers=[(EVT_C_STORE, on_store)])  # fmt: skip
    except (ConnectionError, OSError) as exc:
        return [f"associate: {type(exc).__name__}"]
    if not assoc.is_established:
        return ["not established"]
    ops = [rng.choice(OPS) for _ in range(rng.randint(1, 4))]
    for op in ops:
        try:
            if op == "echo":
                status = await assoc.send_c_echo()
                outcomes.append(f"echo {getattr(status, 'Status', None)}")
            elif op == "store":
                status = await assoc.send_c_store(_palette())
                outcomes.append(f"store {getattr(status, 'Status', None)}")
            else:
                model = FIND if op == "find" else GET
                ident = _identifier() if op == "find" else Dataset()
                if op == "get":
                    ident.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.6"
                sender = assoc.send_c_find if op == "find" else assoc.send_c_get
                seen = []
                async for status, identifier in sender(ident, model):
                    seen.append(getattr(status, "Status", None))
                    if identifier is not None:
                        list(identifier)  # every element converted, as a caller reading it would
                outcomes.append(f"{op} {seen}")
        except RuntimeError as exc:  # a call on an association that has ended
            outcomes.append(f"{op}: RuntimeError {exc}"[:80])
        except ValueError as exc:  # a received data set the caller reads: pydicom's to raise
            outcomes.append(f"{op}: {type(exc).__name__} {exc}"[:100])
    if assoc.is_established:
        await assoc.release()
    return outcomes


def run_case_blocking(ae: AE, port: int, rng: random.Random) -> list[str]:
    """``run_case`` on the blocking API (pynetdicom's calls), in a thread of its own."""
    outcomes: list[str] = []

    def on_store(event: Any) -> int:  # a plain def: runs in a handler worker thread
        _ = event.dataset
        return 0x0000

    try:
        assoc = ae.associate(HOST, port, ae_title="HOSTILE", ext_neg=[build_role(STORE, scu_role=True, scp_role=True)],
                             evt_handlers=[(EVT_C_STORE, on_store)])  # fmt: skip
    except (ConnectionError, OSError) as exc:
        return [f"associate: {type(exc).__name__}"]
    if not assoc.is_established:
        return ["not established"]
    for op in [rng.choice(OPS) for _ in range(rng.randint(1, 4))]:
        try:
            if op == "echo":
                outcomes.append(f"echo {getattr(assoc.send_c_echo(), 'Status', None)}")
            elif op == "store":
                outcomes.append(f"store {getattr(assoc.send_c_store(_palette()), 'Status', None)}")
            else:
                ident = _identifier() if op == "find" else Dataset()
                if op == "get":
                    ident.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.6"
                responses = assoc.send_c_find(ident, FIND) if op == "find" else assoc.send_c_get(ident, GET)
                seen = []
                for status, identifier in responses:
                    seen.append(getattr(status, "Status", None))
                    if identifier is not None:
                        list(identifier)
                outcomes.append(f"{op} {seen}")
        except RuntimeError as exc:
            outcomes.append(f"{op}: RuntimeError {exc}"[:80])
        except ValueError as exc:
            outcomes.append(f"{op}: {type(exc).__name__} {exc}"[:100])
    if assoc.is_established:
        assoc.release()
    return outcomes


class MovingNode:
    """``chromanet serve`` (the eight well-known palettes, timeouts of
    TIMEOUT) whose move destination HOSTILE is the hostile SCP: the node's
    own requestor, its C-MOVE sub-associations, meets it."""

    def __init__(self, scp_port: int, work: Path) -> None:
        import subprocess

        self.log_path = work / "node.log"
        self.port = fuzz_node.free_port()
        t = str(TIMEOUT)
        exe = Path(sys.executable).with_name("chromanet")
        command = [str(exe), "serve", "--port", str(self.port), "--bind", HOST, "--data-dir", str(work / "data"),
                   "--log-level", "INFO", "--workers", "1", "--network-timeout", t, "--acse-timeout", t,
                   "--dimse-timeout", t, "--default-access", "all", "--move-dest", f"HOSTILE={HOST}:{scp_port}"]  # fmt: skip
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the node did not start; see {self.log_path}")
                time.sleep(0.1)
        self._offset = 0

    def new_tracebacks(self) -> list[str]:
        text = self.log_path.read_text(errors="replace")
        fresh, self._offset = text[self._offset :], len(text)
        return [part[:1500] for part in fresh.split("\n\n") if "Traceback" in part]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except Exception:
            self.proc.kill()
        self.log.close()


async def run_move_case(ae: AE, node: MovingNode, rng: random.Random) -> list[str]:
    """One C-MOVE of 1-3 well-known palettes from the node to the hostile SCP."""
    assoc = await ae.associate_async(HOST, node.port, ae_title="CHROMANET")
    if not assoc.is_established:
        return ["not established"]
    ident = Dataset()
    ident.SOPInstanceUID = rng.sample(WELL_KNOWN, rng.randint(1, 3))
    seen = []
    async for status, _identifier in assoc.send_c_move(ident, "HOSTILE", MOVE):
        seen.append(getattr(status, "Status", None))
    if assoc.is_established:
        await assoc.release()
    return [f"move {seen}"]


async def main_async(args: argparse.Namespace) -> int:
    scp = HostileSCP(args.seed)
    captured = Captured()
    captured.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("chromanet")
    logger.addHandler(captured)
    logger.setLevel(logging.DEBUG if args.replay is not None else logging.WARNING)
    if args.replay is not None:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ae = make_ae()
    node = None
    if args.via_node:
        import tempfile

        ae.add_requested_context(MOVE, [I, E])
        node = MovingNode(scp.port, Path(tempfile.mkdtemp(prefix="fuzz-scu-node-")))
        print(f"node on port {node.port}, log {node.log_path}", flush=True)
    indices = [args.replay] if args.replay is not None else range(args.start, args.start + args.count)
    incidents: list[dict[str, Any]] = []
    kinds: dict[str, int] = {}
    started = time.monotonic()
    for done, index in enumerate(indices, 1):
        scp.expect(index)
        rng = random.Random(f"client:{args.seed}:{index}")
        captured.bad.clear()
        t0 = time.monotonic()
        problem = None
        outcomes: list[str] = []
        try:
            if node is not None:
                outcomes = await asyncio.wait_for(run_move_case(ae, node, rng), args.case_limit)
            elif args.api == "blocking":
                # A hung call cannot be cancelled: its thread is left behind, the case reported.
                outcomes = await asyncio.wait_for(asyncio.to_thread(run_case_blocking, ae, scp.port, rng),
                                                  args.case_limit)  # fmt: skip
            else:
                outcomes = await asyncio.wait_for(run_case(ae, scp.port, rng), args.case_limit)
        except asyncio.TimeoutError:
            problem = f"hang: no end within {args.case_limit} s"
        except Exception:
            problem = "raised:\n" + traceback.format_exc()
        # Whatever the case left is given the network timeout to end.
        deadline = time.monotonic() + TIMEOUT + 1.0
        while ae.active_associations and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if problem is None and ae.active_associations:
            problem = f"{len(ae.active_associations)} association(s) left open"
            for assoc in ae.active_associations:
                assoc.abort()
        if problem is None and captured.bad:
            problem = "logged:\n" + "\n".join(captured.bad[:3])
        if node is not None:
            node_tracebacks = node.new_tracebacks()
            if not node.alive():
                problem = (problem or "") + " the node died"
            elif problem is None and node_tracebacks:
                problem = "the node logged:\n" + "\n".join(node_tracebacks[:2])
        plan = scp.plans.get(index)
        if plan is not None:
            kinds[plan.kind] = kinds.get(plan.kind, 0) + 1
        if problem is not None or args.replay is not None:
            incident = {"case": index, "kind": plan.kind if plan else None, "what": plan.what if plan else None,
                        "outcomes": outcomes, "problem": problem, "seconds": round(time.monotonic() - t0, 2)}  # fmt: skip
            (incidents if problem is not None else []).append(incident)
            print(incident, flush=True)
        if done % args.progress == 0:
            print(f"{done:6d} cases, {len(incidents)} incidents, {time.monotonic() - started:.0f} s", flush=True)
    elapsed = time.monotonic() - started
    print(f"{len(indices)} cases (seed {args.seed}, {args.api} API) in {elapsed:.0f} s; kinds {kinds}; "
          f"incidents {len(incidents)}; hostile SCP's own errors {len(scp.errors)}")  # fmt: skip
    print(f"chromanet's ERROR lines (no traceback): {dict(sorted(captured.errors.items(), key=lambda kv: -kv[1]))}")
    for error in scp.errors[:5]:
        print(error)
    scp.listener.close()
    if node is not None:
        node.stop()
    return 1 if incidents or scp.errors else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="cases to run (default 2000)")
    parser.add_argument("--start", type=int, default=0, help="first case index")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--api", choices=["async", "blocking"], default="async",
                        help="the client's API: async (AE.associate_async) or blocking (AE.associate, pynetdicom's)")
    parser.add_argument("--via-node", action="store_true",
                        help="the hostile SCP is a node's C-MOVE destination: each case moves 1-3 palettes from "
                             "a chromanet serve (started here) to it, and the node's log is scanned for tracebacks")
    parser.add_argument("--replay", type=int, help="run this one case, logging everything")
    parser.add_argument("--case-limit", type=float, default=15.0, help="seconds before a case is a hang")
    parser.add_argument("--progress", type=int, default=250, help="print a line every N cases")
    args = parser.parse_args()
    import uvloop

    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
