#!/usr/bin/env python3
"""Fuzz the palette archive node (``chromanet serve``) with mutated PDUs.

What and why: a node on a network meets peers that send anything (the
hostile-peer issue). This script starts the node as a subprocess on
127.0.0.1, sends it ``--count`` mutated PDUs (default 100,000) over many short
connections, and checks that it never dies, never leaves a connection open
past its own time limits, never logs a traceback, and gives every file
descriptor back. It is a script, not a test: it takes minutes, and pytest
(``testpaths = tests``) does not collect it.

How to run (from the repository root, after ``scripts/bootstrap``)::

    .venv/bin/python scripts/fuzz_node.py --quick               # ~2000 mutated PDUs, about a minute
    .venv/bin/python scripts/fuzz_node.py --json bench-results/fuzz.json   # 100,000 mutated PDUs
    .venv/bin/python scripts/fuzz_node.py --replay bench-results/fuzz/incident-1.json
    .venv/bin/python scripts/fuzz_node.py --scp library --quick   # library mode (scripts/library_scp.py)
    .venv/bin/python scripts/fuzz_node.py --index postgres --quick  # the node on a PostgreSQL index
    .venv/bin/python scripts/fuzz_node.py --tls --quick             # inside TLS, on the node's TLS listener

Options: ``--count N``, ``--concurrency C`` (connections sending at once),
``--seed S`` (case i of seed S is always the same bytes), ``--venv DIR`` (whose
``bin/chromanet`` runs the node), ``--node-timeout T`` (the node's network,
PDU, idle, ACSE and DIMSE limits), ``--json FILE``, ``--out-dir DIR``
(incidents, the node's log when something went wrong), ``--replay FILE``.

The corpus: valid A-ASSOCIATE-RQs (Verification, Color Palette
FIND/GET/MOVE and Storage, Implicit and Explicit VR Little Endian, with and
without role selection, user identity, extended negotiation, unsupported
contexts), then P-DATA-TF carrying C-ECHO-RQ, C-FIND-RQ + identifier,
C-STORE-RQ + a small palette, C-GET-RQ, C-MOVE-RQ, C-CANCEL-RQ, and
A-RELEASE-RQ or A-ABORT. Each connection is one case, built from
``random.Random(f"{seed}:{index}")``, of one of four kinds:

- ``pre``: the A-ASSOCIATE-RQ itself is mutated (the rest is sent only if the
  node accepts it);
- ``post``: a valid association, then one or two PDUs mutated;
- ``multi``: a valid association, then 3-8 DIMSE messages whose command or
  data set is mutated inside correct P-DATA framing (the node should answer
  each with a status and carry on);
- ``blind``: everything in one write, before the A-ASSOCIATE-AC.

Mutations: bit flips, byte set/insert/delete, truncation, PDU length lies
(small and large), PDU type swaps, item/sub-item type, length, value,
drop and duplicate inside the RQ (and 129+ contexts, bad AE titles,
protocol versions), PDV length/context/control-header lies and splits,
command-set element lies (length, value, drop, duplicate, order, group
length), data set lies (element lengths, wrong transfer syntax, deep
sequences, huge values), duplicated, reordered, dropped and stray PDUs
(AC, RJ, RP, a second RQ, unknown types), random garbage. Delivery: one
write per PDU, everything in one write, or tiny writes of 1-7 bytes. The
end: FIN or reset (SO_LINGER 0).

Per connection: send, read what comes back (a valid request waits for its
answer, a mutated PDU 0.25 s for a first byte, then until quiet), then close.
When the node has neither answered the last PDU nor closed, the connection is
watched until the node's own limit (``--node-timeout``) plus ``--hang-margin``
after our last byte; 5 % of the answered ones are watched too, to check that
an idle association is reclaimed.

Figures (printed, and in ``--json``):

- ``pdus_sent``: PDUs written (at least their first byte); ``mutated_sent``:
  those that differ from the valid corpus (what ``--count`` counts);
  ``connections``; ``connect_failed`` (refused or timed out);
- ``answers``: PDUs the node sent, by kind (A-ABORT with source/reason,
  A-ASSOCIATE-RJ with result/source/reason); ``dimse``: responses by command
  and status;
- ``outcomes``: per connection: ``node-closed-answered`` / ``node-closed-silent``
  (closed without any answer to the fuzzed part), ``we-closed`` (the node
  answered and waited for more), ``reclaimed-*`` (watched, then closed by the
  node's limits), ``hang`` (no answer and no close within limit + margin),
  ``unreclaimed`` (answered, but still open after limit + margin);
- ``crashes``: the node process exited (it is restarted and the run goes on),
  or one of its worker processes did (the node restarts it, and logs so);
  ``tracebacks``: "Traceback (most recent call last)" in its stderr;
  ``error_lines``: ERROR/CRITICAL log lines;
- ``rss_kib``: the node's VmRSS at start (after a warm-up), peak (sampled
  twice a second, and the kernel's VmHWM) and end; ``fds``: entries of
  /proc/PID/fd at start and at end (after the load stopped and the node
  reclaimed its connections), both summed over the node's processes (its
  worker processes too); ``log_bytes``: the node's stderr size;
- ``health``: one clean association with a C-ECHO after the load.

Exit status 0 when crashes, hangs (and unreclaimed), tracebacks are 0, the
fds came back to the start count (+ ``--fd-slack``) and the health check
passed; 1 otherwise. Each problem is written to ``--out-dir`` as an incident
(the traceback, the cases in flight) and bisected to one case by replaying
them; ``--replay`` plays a saved case (or an incident's culprit) again.
Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:
    from pydicom import Dataset, config

    from chromanet import _dimse, _pdu, dsutil, uids
    from chromanet._pdata import fragment_message
    from chromanet.ul.negotiation import ContextSpec, build_associate_rq
except ImportError as exc:  # pragma: no cover
    sys.exit(f"fuzz_node.py: run me with the project's python (.venv/bin/python): {exc}")

# "HOT*" is not a valid CS value: on purpose, as in chromanet's own CLI.
config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
HOST = "127.0.0.1"
CALLED, CALLING = "CHROMANET", "FUZZ-SCU"
NODE_MAX_PDU = 65536  # the node's default Maximum Length
I, E = uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian
VERIFY, STORE = uids.Verification, uids.ColorPaletteStorage
FIND, GET, MOVE = (uids.ColorPaletteInformationModelFind, uids.ColorPaletteInformationModelGet,
                   uids.ColorPaletteInformationModelMove)
WELL_KNOWN = sorted(uids.WELL_KNOWN_PALETTE_UIDS)
PDU_NAMES = {1: "A-ASSOCIATE-RQ", 2: "A-ASSOCIATE-AC", 3: "A-ASSOCIATE-RJ", 4: "P-DATA-TF",
             5: "A-RELEASE-RQ", 6: "A-RELEASE-RP", 7: "A-ABORT"}
DIMSE_NAMES = {0x0001: "C-STORE-RQ", 0x8001: "C-STORE-RSP", 0x0010: "C-GET-RQ", 0x8010: "C-GET-RSP",
               0x0020: "C-FIND-RQ", 0x8020: "C-FIND-RSP", 0x0021: "C-MOVE-RQ", 0x8021: "C-MOVE-RSP",
               0x0030: "C-ECHO-RQ", 0x8030: "C-ECHO-RSP", 0x0FFF: "C-CANCEL-RQ"}
PENDING = (0xFF00, 0xFF01)

# =========================================================== the valid corpus
# Each variant: (abstract syntax, transfer syntax, roles) in context-ID order
# (1, 3, 5...), one transfer syntax per context so that we know what the node
# accepts; the keyword arguments go to build_associate_rq.
_ALL = (VERIFY, FIND, GET, MOVE, STORE)
VARIANTS: dict[str, tuple[list[tuple[str, str, bool]], dict]] = {
    "echo-i": ([(VERIFY, I, False)], {}),
    "echo-e": ([(VERIFY, E, False)], {}),
    "all-i": ([(a, I, a == STORE) for a in _ALL], {}),
    "all-e": ([(a, E, a == STORE) for a in _ALL], {}),
    "all-ie": ([(a, ts, a == STORE) for a in _ALL for ts in (I, E)], {}),
    "store-ext": ([(STORE, E, True), (FIND, E, False), (VERIFY, I, False)], {
        "max_pdu_length": 0, "async_ops_window": (4, 4),
        "user_identity": _pdu.UserIdentityRQ(2, b"fuzz", b"secret", True),
        "sop_class_extended": [_pdu.SOPClassExtendedNegotiation(FIND, b"\x01")]}),
    "mixed": ([("1.2.840.10008.5.1.4.1.1.2", I, False), (VERIFY, "1.2.840.10008.1.2.4.50", False),
               (FIND, E, False), (VERIFY, I, False), (GET, I, False), (STORE, I, True)],
              {"max_pdu_length": 4096}),
}
TEMPLATES = [("echo",), ("echo", "echo", "echo"), ("find",), ("find", "cancel"), ("store",),
             ("store", "find"), ("get",), ("get", "cancel"), ("move",), ("echo", "find", "store")]
NEEDS = {"echo": VERIFY, "find": FIND, "cancel": FIND, "store": STORE, "get": GET, "move": MOVE}
STORE_UIDS = [f"2.25.{9000000000 + n}" for n in range(48)]  # a bounded pool: the archive stays small


def _cmd(field_: int, **kw) -> bytes:
    return _dimse.encode_command(_dimse.Command(field_, **kw))


_DS_CACHE: dict[tuple, bytes] = {}


def _dataset(ts: str, key: tuple, build) -> bytes:
    if (ts, key) not in _DS_CACHE:
        _DS_CACHE[(ts, key)] = dsutil.encode_dataset(build(), ts)
    return _DS_CACHE[(ts, key)]


def identifier(ts: str, **values: str) -> bytes:
    def build() -> Dataset:
        ds = Dataset()
        for name, value in values.items():
            setattr(ds, name, value)
        return ds
    return _dataset(ts, tuple(sorted(values.items())), build)


def palette(ts: str, uid: str) -> bytes:
    def build() -> Dataset:
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID, ds.ContentLabel = STORE, uid, "FUZZ"
        for color, group in (("Red", 0x1101), ("Green", 0x1102), ("Blue", 0x1103)):
            ds.add_new((0x0028, group), "US", [16, 0, 8])
            ds.add_new((0x0028, group + 0x100), "OW", bytes(range(0, 32, 2)))
        return ds
    return _dataset(ts, ("palette", uid), build)


@dataclass
class Msg:
    """One DIMSE message, kept as command + data set bytes so that mutations
    can work inside it and the framing be redone."""
    ctx: int
    command: bytes
    dataset: bytes | None
    expect: int | None  # the Message ID whose final response to wait for
    label: str
    max_pdu: int = NODE_MAX_PDU
    pack: bool = True
    mutated: bool = False

    def pdus(self) -> list[bytes]:
        blob = b"".join(bytes(b) for b in fragment_message(self.ctx, self.command, self.dataset,
                                                           self.max_pdu, self.pack))
        return split_pdus(blob)


def split_pdus(blob: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 6 <= len(blob):
        end = pos + 6 + struct.unpack_from(">I", blob, pos + 2)[0]
        out.append(blob[pos:end])
        pos = end
    return out


class Corpus:
    def __init__(self) -> None:
        self.rq: dict[str, bytes] = {}
        self.contexts: dict[str, dict[str, list[tuple[int, str]]]] = {}
        for name, (specs, kwargs) in VARIANTS.items():
            kwargs = {"max_pdu_length": 16384, **kwargs}
            contexts = [ContextSpec(a, [ts], scu_role=True, scp_role=True) if roles else ContextSpec(a, [ts])
                        for a, ts, roles in specs]
            self.rq[name] = _pdu.encode_pdu(build_associate_rq(CALLED, CALLING, contexts, **kwargs))
            table: dict[str, list[tuple[int, str]]] = {}
            for index, (a, ts, _roles) in enumerate(specs):
                if name != "mixed" or index >= 2:  # the first two of "mixed" are refused
                    table.setdefault(a, []).append((2 * index + 1, ts))
            self.contexts[name] = table
        self.release = _pdu.encode_pdu(_pdu.ReleaseRQ())
        self.abort = _pdu.encode_pdu(_pdu.Abort(0, 0))
        ac = _pdu.AssociateAC(CALLED, CALLING, [_pdu.PresentationContextAC(1, 0, I)],
                              _pdu.UserInformation(max_length=16384, implementation_class_uid="1.2.3.4"))
        self.strays = {
            "stray A-ASSOCIATE-AC": _pdu.encode_pdu(ac),
            "stray A-ASSOCIATE-RJ": _pdu.encode_pdu(_pdu.AssociateRJ(1, 1, 1)),
            "stray A-RELEASE-RP": _pdu.encode_pdu(_pdu.ReleaseRP()),
            "stray A-ABORT(2,6)": _pdu.encode_pdu(_pdu.Abort(2, 6)),
            "stray second RQ": self.rq["echo-i"],
            "stray type 0x08": b"\x08\x00\x00\x00\x00\x04\x00\x00\x00\x00",
            "stray empty P-DATA": b"\x04\x00\x00\x00\x00\x00",
            "stray P-DATA ctx 255": split_pdus(b"".join(bytes(b) for b in fragment_message(
                255, _cmd(_dimse.C_ECHO_RQ, affected_sop_class_uid=VERIFY, message_id=7,
                          command_data_set_type=_dimse.NO_DATASET), None, 0)))[0],
        }

    def messages(self, rng: random.Random, variant: str, ops: tuple[str, ...]) -> list[Msg]:
        table = self.contexts[variant]
        out: list[Msg] = []
        last_qr: tuple[int, int] | None = None
        for n, op in enumerate(ops, start=1):
            ctx, ts = rng.choice(table[NEEDS[op]])
            present = {"command_data_set_type": _dimse.DATASET_PRESENT, "message_id": n, "priority": 0}
            if op == "echo":
                msg = Msg(ctx, _cmd(_dimse.C_ECHO_RQ, affected_sop_class_uid=VERIFY, message_id=n,
                                    command_data_set_type=_dimse.NO_DATASET), None, n, op)
            elif op == "find":
                label = rng.choice(["HOT*", "*IRON*", "FUZZ", "NO-SUCH-LABEL"])
                msg = Msg(ctx, _cmd(_dimse.C_FIND_RQ, affected_sop_class_uid=FIND, **present),
                          identifier(ts, ContentLabel=label, SOPInstanceUID=""), n, op)
            elif op == "store":
                uid = rng.choice(STORE_UIDS)
                msg = Msg(ctx, _cmd(_dimse.C_STORE_RQ, affected_sop_class_uid=STORE,
                                    affected_sop_instance_uid=uid, **present), palette(ts, uid), n, op)
            elif op in ("get", "move"):
                sop, field_ = (GET, _dimse.C_GET_RQ) if op == "get" else (MOVE, _dimse.C_MOVE_RQ)
                extra = {"move_destination": "FUZZ-NOWHERE"} if op == "move" else {}
                msg = Msg(ctx, _cmd(field_, affected_sop_class_uid=sop, **present, **extra),
                          identifier(ts, SOPInstanceUID=rng.choice(WELL_KNOWN)), n, op)
            else:  # cancel the previous FIND/GET: do not wait for that one's answer
                target_ctx, target_id = last_qr or (ctx, n - 1)
                if out:
                    out[-1].expect = None
                msg = Msg(target_ctx, _cmd(_dimse.C_CANCEL_RQ, message_id_being_responded_to=target_id,
                                           command_data_set_type=_dimse.NO_DATASET), None, target_id, op)
            if op in ("find", "get"):
                last_qr = (ctx, n)
            msg.max_pdu = rng.choice([NODE_MAX_PDU, NODE_MAX_PDU, 16384, 256])
            msg.pack = rng.random() < 0.7
            out.append(msg)
        return out


# ============================================================== cases
@dataclass
class Unit:
    data: bytes
    label: str
    mutated: bool = False
    expect: int | str | None = None  # a Message ID, "assoc", "release" or None
    last: bool = True  # the last PDU of its message: wait for an answer after it


@dataclass
class Case:
    seed: int
    index: int
    kind: str
    variant: str
    units: list[Unit]
    delivery: str = "per-pdu"  # per-pdu | whole | tiny
    close: str = "fin"  # fin | rst
    chunk_seed: int = 0
    autorespond: bool = True  # answer the node's C-STORE-RQ sub-operations (C-GET)
    watch: bool = False  # watch until the node closes even if it answered
    mutations: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.seed}:{self.index}"

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["units"] = [{**asdict(u), "data": u.data.hex()} for u in self.units]
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> Case:
        units = [Unit(**{**u, "data": bytes.fromhex(u["data"])}) for u in doc["units"]]
        return cls(**{**doc, "units": units})


# ============================================================== mutations
I8 = [0x00, 0x01, 0x02, 0x07, 0x10, 0x20, 0x21, 0x40, 0x50, 0x7F, 0x80, 0xFE, 0xFF]
I16 = [0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF]
I32 = [0, 1, 2, 3, 4, 5, 6, 0xFF, 0xFFFF, 0x10000, NODE_MAX_PDU + 1, 0x100000, 0x100001, 0x7FFFFFFF,
       0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]


def _lie(rng: random.Random, true: int, table: list[int], mask: int) -> int:
    choice = rng.choice(table + [true - 1, true + 1, true + rng.randint(2, 300), true - rng.randint(2, 300), true * 2])
    choice &= mask
    return choice if choice != true else (true + 1) & mask


def m_bitflip(rng, b):
    b, n = bytearray(b), rng.choice([1, 1, 1, 2, 3, 8])
    for _ in range(n):
        bit = rng.randrange(len(b) * 8)
        b[bit >> 3] ^= 1 << (bit & 7)
    return bytes(b), f"bitflip x{n}"


def m_set(rng, b):
    b, pos = bytearray(b), rng.randrange(len(b))
    n = min(rng.choice([1, 1, 2, 4]), len(b) - pos)
    for i in range(n):
        b[pos + i] = rng.choice(I8)
    return bytes(b), f"set {n}@{pos}"


def m_insert(rng, b):
    pos, n = rng.randrange(len(b) + 1), rng.choice([1, 2, 4, 16, 64])
    extra = rng.randbytes(n) if rng.random() < 0.5 else (b[rng.randrange(len(b)):] * n)[:n]
    return b[:pos] + extra + b[pos:], f"insert {n}@{pos}"


def m_delete(rng, b):
    pos = rng.randrange(len(b))
    n = rng.choice([1, 2, 4, 16, 64])
    return b[:pos] + b[pos + n:], f"delete {n}@{pos}"


def m_truncate(rng, b):
    cut = rng.choice([0, 1, 5, 6, 7, rng.randrange(len(b)), rng.randrange(len(b))])
    cut = min(cut, len(b) - 1)
    return b[:cut], f"truncate {len(b)}->{cut}"


def m_pdu_len(rng, b):
    if len(b) < 6:
        return m_garbage(rng, b)
    true = struct.unpack_from(">I", b, 2)[0]
    lie = _lie(rng, true, I32, 0xFFFFFFFF)
    return b[:2] + struct.pack(">I", lie) + b[6:], f"pdu-length {true}->{lie}"


def m_pdu_type(rng, b):
    new = rng.choice([t for t in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x10, 0x7F, 0x80, 0xFF) if t != b[0]])
    return bytes([new]) + b[1:], f"pdu-type {b[0]:#x}->{new:#x}"


def m_reserved(rng, b):
    return b[:1] + bytes([rng.randint(1, 255)]) + b[2:], "reserved byte set"


def m_garbage(rng, b):
    n = rng.choice([1, 6, 7, 64, 512, 4096])
    if rng.random() < 0.5:
        return rng.randbytes(n), f"garbage {n}"
    return struct.pack(">BBI", rng.randint(1, 7), 0, n) + rng.randbytes(n), f"garbage body {n}"


# -------- A-ASSOCIATE-RQ as a tree of items (so lengths stay true or lie on purpose)
class Item:
    __slots__ = ("type", "reserved", "prefix", "children", "value", "length")

    def __init__(self, type_: int, reserved: int, value: bytes) -> None:
        self.type, self.reserved, self.value = type_, reserved, value
        self.prefix, self.children, self.length = b"", None, None

    def encode(self) -> bytes:
        body = self.prefix + b"".join(c.encode() for c in self.children) if self.children is not None else self.value
        length = len(body) if self.length is None else self.length
        return struct.pack(">BBH", self.type, self.reserved, length & 0xFFFF) + body

    def clone(self) -> Item:
        new = Item(self.type, self.reserved, self.value)
        new.prefix, new.length = self.prefix, self.length
        new.children = None if self.children is None else [c.clone() for c in self.children]
        return new


def parse_items(data: bytes, pos: int, end: int, top: bool) -> list[Item]:
    items = []
    while pos + 4 <= end:
        type_, reserved, length = data[pos], data[pos + 1], struct.unpack_from(">H", data, pos + 2)[0]
        body = data[pos + 4:pos + 4 + length]
        item = Item(type_, reserved, body)
        if top and type_ in (0x20, 0x21):
            item.prefix, item.children = body[:4], parse_items(body, 4, len(body), False)
        elif top and type_ == 0x50:
            item.children = parse_items(body, 0, len(body), False)
        items.append(item)
        pos += 4 + length
    return items


def _all_items(items: list[Item]) -> list[tuple[list[Item], Item]]:
    out = []
    for item in items:
        out.append((items, item))
        if item.children is not None:
            out.extend(_all_items(item.children))
    return out


def m_rq_struct(rng, b):
    """Structure-aware mutation of an A-ASSOCIATE-RQ (or AC)."""
    if len(b) < 74:
        return m_bitflip(rng, b)
    head, items = bytearray(b[6:74]), parse_items(b, 74, len(b), True)
    flat = _all_items(items)
    op = rng.choice(["len", "len", "type", "drop", "dup", "value", "reserved", "many", "header", "ctx-id",
                     "uid", "inner-len"])
    what = op
    if flat and op == "len":
        _, item = rng.choice(flat)
        true = len(item.encode()) - 4
        item.length = _lie(rng, true, I16, 0xFFFF)
        what = f"item {item.type:#x} length {true}->{item.length}"
    elif flat and op == "type":
        _, item = rng.choice(flat)
        old, item.type = item.type, rng.choice([0x00, 0x01, 0x10, 0x20, 0x21, 0x30, 0x40, 0x50, 0x51, 0x52, 0x53,
                                                0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0xFF])
        what = f"item type {old:#x}->{item.type:#x}"
    elif flat and op == "drop":
        parent, item = rng.choice(flat)
        parent.remove(item)
        what = f"drop item {item.type:#x}"
    elif flat and op == "dup":
        parent, item = rng.choice(flat)
        parent.insert(parent.index(item) + rng.randint(0, 1), item.clone())
        what = f"duplicate item {item.type:#x}"
    elif flat and op == "value":
        candidates = [(p, it) for p, it in flat if it.children is None]
        if candidates:
            _, item = rng.choice(candidates)
            item.value = rng.choice([b"", rng.randbytes(rng.randint(1, 70)), item.value + b"\x00",
                                     item.value * rng.randint(2, 40), b"1." * 40, b"\xff" * 8])[:0xFFFF]
            what = f"item {item.type:#x} value {len(item.value)} bytes"
    elif op == "reserved" and flat:
        _, item = rng.choice(flat)
        item.reserved = rng.randint(1, 255)
        what = f"item {item.type:#x} reserved byte"
    elif op == "many":
        pcs = [it for it in items if it.type == 0x20]
        if pcs:
            n = rng.choice([64, 127, 128, 129, 200, 255, 400])
            odd = rng.random() < 0.7
            clones = []
            for k in range(n):
                clone = pcs[k % len(pcs)].clone()
                clone.prefix = bytes([(2 * k + 1) % 256 if odd else k % 256]) + clone.prefix[1:]
                clones.append(clone)
            at = items.index(pcs[0])
            items[at:at + len(pcs)] = clones
            what = f"{n} presentation contexts ({'odd' if odd else 'any'} IDs)"
    elif op == "header":
        where = rng.choice(["version", "called", "calling", "reserved"])
        if where == "version":
            head[0:2] = struct.pack(">H", rng.choice([0, 2, 3, 0x8000, 0xFFFF]))
        elif where in ("called", "calling"):
            start = 4 if where == "called" else 20
            head[start:start + 16] = rng.choice([b" " * 16, b"\x00" * 16, b"A\\B" + b" " * 13, b"\x01\x02" * 8,
                                                 b"\xff" * 16, b" LEADING        ", rng.randbytes(16)])
        else:
            head[36 + rng.randrange(32)] = rng.randint(1, 255)
        what = f"header {where}"
    elif op == "ctx-id":
        pcs = [it for it in items if it.type == 0x20]
        if pcs:
            item = rng.choice(pcs)
            new = rng.choice([0, 2, 254, 255, pcs[0].prefix[0]])
            item.prefix = bytes([new]) + item.prefix[1:]
            what = f"context ID -> {new}"
    elif op == "uid":
        candidates = [(p, it) for p, it in flat if it.type in (0x10, 0x30, 0x40, 0x52)]
        if candidates:
            _, item = rng.choice(candidates)
            item.value = rng.choice([item.value + b"\x00", item.value + b" ", b".1.2", b"1..2", b"01.2",
                                     b"1.2.a", b"1." * 40, item.value[:-1], b""])
            what = f"item {item.type:#x} UID {item.value[:24]!r}"
    elif op == "inner-len":
        candidates = [(p, it) for p, it in flat if it.type in (0x54, 0x56, 0x57, 0x58) and len(it.value) >= 4]
        if candidates:
            _, item = rng.choice(candidates)
            at = 2 if item.type == 0x58 else 0
            true = struct.unpack_from(">H", item.value, at)[0]
            lie = _lie(rng, true, I16, 0xFFFF)
            item.value = item.value[:at] + struct.pack(">H", lie) + item.value[at + 2:]
            what = f"sub-item {item.type:#x} inner length {true}->{lie}"
    body = bytes(head) + b"".join(it.encode() for it in items)
    return struct.pack(">BBI", b[0], b[1], len(body)) + body, "rq " + what


# -------- P-DATA-TF as PDV items
def m_pdata_struct(rng, b):
    pdvs, pos = [], 6
    while pos + 6 <= len(b):
        length = struct.unpack_from(">I", b, pos)[0]
        pdvs.append([b[pos + 4], b[pos + 5], b[pos + 6:pos + 4 + length], None])
        pos += 4 + length
    if not pdvs:
        return m_garbage(rng, b)
    op = rng.choice(["len", "len", "ctx", "mch", "split", "empty", "drop", "dup", "none", "tiny"])
    k = rng.randrange(len(pdvs))
    what = op
    if op == "len":
        true = len(pdvs[k][2]) + 2
        pdvs[k][3] = _lie(rng, true, I32, 0xFFFFFFFF)
        what = f"pdv length {true}->{pdvs[k][3]}"
    elif op == "ctx":
        pdvs[k][0] = rng.choice([0, 2, 3, 5, 9, 254, 255, pdvs[k][0] + 2 & 0xFF])
        what = f"pdv context -> {pdvs[k][0]}"
    elif op == "mch":
        pdvs[k][1] = rng.choice([0, 1, 2, 3, pdvs[k][1] ^ 1, pdvs[k][1] ^ 2, 4, 0x80, 0xFF, rng.randint(4, 255)])
        what = f"pdv header -> {pdvs[k][1]:#x}"
    elif op == "split" and len(pdvs[k][2]) > 1:
        ctx, mch, data, _ = pdvs[k]
        cut = rng.randrange(1, len(data))
        pdvs[k:k + 1] = [[ctx, mch & ~2, data[:cut], None], [ctx, mch, data[cut:], None]]
        what = f"pdv split at {cut}"
    elif op == "empty":
        pdvs.insert(k, [pdvs[k][0], pdvs[k][1] & ~2 if rng.random() < 0.5 else pdvs[k][1], b"", None])
    elif op == "drop":
        del pdvs[k]
    elif op == "dup":
        pdvs.insert(k, list(pdvs[k]))
    elif op == "none":
        pdvs = []
    elif op == "tiny" and len(pdvs[k][2]) <= 400:
        ctx, mch, data, _ = pdvs[k]
        pdvs[k:k + 1] = [[ctx, (mch & ~2) | (mch & 2 if i == len(data) - 1 else 0), data[i:i + 1], None]
                         for i in range(len(data))]
        what = f"pdv as {len(data)} one-byte fragments"
    body = b"".join(struct.pack(">IBB", (len(d) + 2 if lie is None else lie), c, m) + d for c, m, d, lie in pdvs)
    return struct.pack(">BBI", b[0], b[1], len(body)) + body, "pdata " + what


# -------- inside a DIMSE message (the framing stays valid)
def _elements(data: bytes, explicit: bool) -> list[tuple[int, int, int, int]]:
    """(start, length field offset, length field size, value end) of the
    top-level elements, as far as they parse."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        if explicit:
            vr = data[pos + 4:pos + 6]
            if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"):
                if pos + 12 > len(data):
                    break
                at, size = pos + 8, 4
            else:
                at, size = pos + 6, 2
        else:
            at, size = pos + 4, 4
        length = int.from_bytes(data[at:at + size], "little")
        if length == 0xFFFFFFFF:
            break
        out.append((pos, at, size, at + size + length))
        pos = at + size + length
    return out


def m_elements(rng, data: bytes, explicit: bool) -> tuple[bytes, str]:
    elements = _elements(data, explicit)
    if not elements:
        return m_bitflip(rng, data) if data else (rng.randbytes(16), "garbage")
    start, at, size, end = rng.choice(elements)
    op = rng.choice(["len", "len", "drop", "dup", "swap", "value", "big"])
    tag = f"({int.from_bytes(data[start:start + 2], 'little'):04X},{int.from_bytes(data[start + 2:start + 4], 'little'):04X})"
    if op == "len":
        true = int.from_bytes(data[at:at + size], "little")
        lie = _lie(rng, true, I16 if size == 2 else I32, (1 << (8 * size)) - 1)
        return data[:at] + lie.to_bytes(size, "little") + data[at + size:], f"{tag} length {true}->{lie}"
    if op == "drop":
        return data[:start] + data[end:], f"drop {tag}"
    if op == "dup":
        return data[:end] + data[start:end] + data[end:], f"duplicate {tag}"
    if op == "swap" and len(elements) > 1:
        s2, _a, _s, e2 = rng.choice(elements)
        if s2 != start:
            (s1, e1), (s2, e2) = sorted([(start, end), (s2, e2)])
            return data[:s1] + data[s2:e2] + data[e1:s2] + data[s1:e1] + data[e2:], f"swap {tag}"
    value = rng.choice([b"", b"\x00", b"\xff\xff", b"\x01\x00", b"\x01\x01", b"\x30\x00", b"\xff\x0f", b"\x01\x80",
                        b"1.2\x00", b"\\\\", rng.randbytes(rng.randint(1, 9)), b"A" * 70])
    if op == "big":
        value = rng.choice([b"HOT*" * 2048, b"\x00" * 70000, b"1." * 5000])
    if size == 2:
        value = value[:0xFFFE]
    header = data[start:at] + len(value).to_bytes(size, "little")
    return data[:start] + header + value + data[end:], f"{tag} value {len(value)} bytes"


def _fix_group_length(command: bytes) -> bytes:
    if command[:4] == b"\x00\x00\x00\x00" and len(command) >= 12:
        return command[:8] + struct.pack("<I", len(command) - 12) + command[12:]
    return command


def deep_sequence(explicit: bool, depth: int) -> bytes:
    tag = struct.pack("<HH", 0x0040, 0xA730)
    open_sq = tag + (b"SQ\x00\x00" if explicit else b"") + b"\xff\xff\xff\xff"
    item, item_end = b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    seq_end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return (open_sq + item) * depth + (item_end + seq_end) * depth


def mutate_message(rng: random.Random, msg: Msg, explicit: bool) -> str:
    """Mutate the command or the data set of ``msg`` in place; returns what."""
    target = rng.choice(["command", "command", "dataset", "dataset", "presence"])
    if target == "dataset" and msg.dataset is None:
        target = "command"
    if target == "command":
        op = rng.random()
        if op < 0.75:
            command, what = m_elements(rng, msg.command, explicit=False)
            if rng.random() < 0.6:
                command = _fix_group_length(command)
        elif op < 0.9:
            extra = struct.pack("<HHI", 0, rng.choice([0x5555, 0x0900, 0x0600, 0x1030, 0x0901]), 2) + b"\x01\x00"
            command = _fix_group_length(msg.command + extra) if rng.random() < 0.5 else msg.command + extra
            what = "extra element"
        else:
            command, what = rng.choice([m_bitflip, m_truncate, m_insert, m_delete])(rng, msg.command)
        msg.command = command
        what = "command " + what
    elif target == "dataset" and msg.dataset is not None:
        op = rng.random()
        if op < 0.4:
            msg.dataset, what = m_elements(rng, msg.dataset, explicit)
        elif op < 0.55:
            depth = rng.choice([8, 64, 300, 1500])
            msg.dataset = msg.dataset + deep_sequence(explicit, depth)
            what = f"nested sequence depth {depth}"
        elif op < 0.65:
            other = I if explicit else E
            label = msg.label
            msg.dataset = palette(other, STORE_UIDS[0]) if label == "store" else identifier(other, ContentLabel="*")
            what = "data set in the other transfer syntax"
        else:
            msg.dataset, what = rng.choice([m_bitflip, m_truncate, m_insert, m_delete, m_set])(rng, msg.dataset)
        what = "data set " + what
    else:
        if msg.dataset is None:
            msg.dataset, what = rng.choice([b"", rng.randbytes(20), identifier(E, ContentLabel="*")]), "unexpected data set"
        else:
            msg.dataset, what = None, "data set missing"
    msg.expect, msg.mutated = None, True
    return f"{msg.label}: {what}"


UNIT_OPS = [(m_bitflip, 12), (m_set, 6), (m_insert, 6), (m_delete, 6), (m_truncate, 8), (m_pdu_len, 10),
            (m_pdu_type, 6), (m_reserved, 2), (m_garbage, 4), ("struct", 20)]


def mutate_unit(rng: random.Random, unit: Unit) -> str:
    ops, weights = zip(*UNIT_OPS)
    op = rng.choices(ops, weights)[0]
    data = unit.data or b"\x00"
    if op == "struct":
        op = {1: m_rq_struct, 2: m_rq_struct, 4: m_pdata_struct}.get(data[0], m_bitflip)
    unit.data, what = op(rng, data)
    unit.mutated, unit.expect = True, None
    return f"{unit.label}: {what}"


def mutate_sequence(rng: random.Random, units: list[Unit], first: int, corpus: Corpus) -> str:
    k = rng.randrange(first, len(units)) if len(units) > first else first
    op = rng.choice(["dup", "swap", "drop", "stray", "stray"])
    if op == "dup" and k < len(units):
        units.insert(k + 1, Unit(units[k].data, units[k].label + " (again)", True))
        return f"duplicate {units[k].label}"
    if op == "swap" and k + 1 < len(units):
        units[k], units[k + 1] = units[k + 1], units[k]
        for u in units[k:k + 2]:
            u.mutated, u.expect = True, None
        return f"swap {units[k + 1].label} and {units[k].label}"
    if op == "drop" and k < len(units) and len(units) > first + 1:
        gone = units.pop(k)
        units[min(k, len(units) - 1)].mutated = True
        return f"drop {gone.label}"
    label, data = rng.choice(list(corpus.strays.items()))
    units.insert(k, Unit(data, label, True))
    return f"insert {label}"


def make_case(corpus: Corpus, seed: int, index: int) -> Case:
    rng = random.Random(f"{seed}:{index}")
    variant = rng.choice(list(VARIANTS))
    kind = rng.choices(["pre", "post", "multi", "blind"], [35, 35, 20, 10])[0]
    table = corpus.contexts[variant]
    usable = [t for t in TEMPLATES if all(NEEDS[op] in table for op in t)]
    if kind == "multi":
        singles = [op for op in ("echo", "find", "store", "get", "move") if NEEDS[op] in table]
        ops = tuple(rng.choices(singles, k=rng.randint(3, 8)))
    else:
        ops = rng.choice(usable)
    messages = corpus.messages(rng, variant, ops)
    case = Case(seed, index, kind, variant, [],
                delivery=rng.choices(["per-pdu", "whole", "tiny"], [70, 15, 15])[0],
                close=rng.choice(["fin", "rst"]), chunk_seed=rng.randrange(1 << 30),
                autorespond=rng.random() < 0.8, watch=rng.random() < 0.05)
    if kind in ("post", "multi") and rng.random() < 0.35 or kind == "multi":
        chance = 1.0 if kind == "post" else 0.7
        targets = [m for m in messages if rng.random() < chance] or [rng.choice(messages)]
        if kind == "post":
            targets = targets[:1]
        ts_of = {ctx: ts for entries in table.values() for ctx, ts in entries}
        for msg in targets:
            case.mutations.append(mutate_message(rng, msg, ts_of.get(msg.ctx) == E))
    units = [Unit(corpus.rq[variant], "A-ASSOCIATE-RQ", expect="assoc")]
    for msg in messages:
        pdus = msg.pdus()
        for n, pdu in enumerate(pdus):
            last = n == len(pdus) - 1
            units.append(Unit(pdu, f"{msg.label} P-DATA {n + 1}/{len(pdus)}", msg.mutated,
                              msg.expect if last else None, last))
    ending = rng.choices(["release", "abort", "none"], [70, 15, 15])[0]
    if ending == "release":
        units.append(Unit(corpus.release, "A-RELEASE-RQ", expect="release"))
    elif ending == "abort":
        units.append(Unit(corpus.abort, "A-ABORT"))
    if kind == "pre" or (kind == "blind" and rng.random() < 0.5):
        for _ in range(rng.choices([1, 2, 3], [70, 20, 10])[0]):
            case.mutations.append(mutate_unit(rng, units[0]))
        if rng.random() < 0.1:
            case.mutations.append(mutate_sequence(rng, units, 1, corpus))
    elif not case.mutations:
        for _ in range(rng.choices([1, 2], [75, 25])[0]):
            if rng.random() < 0.8 and len(units) > 1:
                case.mutations.append(mutate_unit(rng, rng.choice(units[1:])))
            else:
                case.mutations.append(mutate_sequence(rng, units, 1, corpus))
    if not any(u.mutated for u in units):  # every case sends at least one mutated PDU
        case.mutations.append(mutate_unit(rng, rng.choice(units[1:] or units)))
    case.units = units
    return case


def valid_cases(corpus: Corpus) -> list[Case]:
    """Every template on every variant, unmutated: the warm-up, and proof that
    the corpus reaches the services."""
    out = []
    for variant in VARIANTS:
        table = corpus.contexts[variant]
        for ops in TEMPLATES:
            if "cancel" in ops or not all(NEEDS[op] in table for op in ops):
                continue
            rng = random.Random(f"valid:{variant}:{ops}")
            units = [Unit(corpus.rq[variant], "A-ASSOCIATE-RQ", expect="assoc")]
            for msg in corpus.messages(rng, variant, ops):
                pdus = msg.pdus()
                units += [Unit(p, msg.label, False, msg.expect if n == len(pdus) - 1 else None,
                               n == len(pdus) - 1) for n, p in enumerate(pdus)]
            units.append(Unit(corpus.release, "A-RELEASE-RQ", expect="release"))
            out.append(Case(0, len(out), "valid", variant, units))
    return out


# ============================================================ connections
class Peer(asyncio.Protocol):
    """Our end of one connection: collects the node's PDUs and DIMSE
    responses, answers C-STORE sub-operations when asked to."""

    def __init__(self, autorespond: bool) -> None:
        self.autorespond = autorespond
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.pdus: list[tuple[int, bytes]] = []
        self.responses: list[tuple[int, int | None, int | None]] = []  # (command field, status, id responded to)
        self.changed = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = False
        self.close_kind = ""
        self.local_close = False
        self.last_data = time.monotonic()
        self._command: dict[int, bytearray] = {}
        self._store_rq: tuple[int, _dimse.Command] | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.last_data = time.monotonic()
        while len(self.buffer) >= 6:
            length = struct.unpack_from(">I", self.buffer, 2)[0]
            if length > 1 << 24:
                self.pdus.append((-1, b""))  # nonsense from the node: counted, then ignored
                self.buffer.clear()
                break
            if len(self.buffer) < 6 + length:
                break
            pdu_type, body = self.buffer[0], bytes(self.buffer[6:6 + length])
            del self.buffer[:6 + length]
            self.pdus.append((pdu_type, body))
            if pdu_type == 4:
                self._pdata(body)
        self.changed.set()

    def _pdata(self, body: bytes) -> None:
        pos = 0
        while pos + 6 <= len(body):
            length = struct.unpack_from(">I", body, pos)[0]
            ctx, mch, data = body[pos + 4], body[pos + 5], body[pos + 6:pos + 4 + length]
            pos += 4 + length
            if mch & 1:
                self._command.setdefault(ctx, bytearray()).extend(data)
                if not mch & 2:
                    continue
                try:
                    command = _dimse.decode_command(bytes(self._command.pop(ctx)))
                except Exception:  # the node's command set did not decode: counted as such
                    self.responses.append((-1, None, None))
                    continue
                self.responses.append((command.command_field, command.status, command.message_id_being_responded_to))
                if command.command_field == _dimse.C_STORE_RQ:
                    self._store_rq = (ctx, command)
                    if not command.has_dataset:
                        self._answer_store()
            elif mch & 2 and self._store_rq is not None:
                self._answer_store()

    def _answer_store(self) -> None:
        ctx, rq = self._store_rq
        self._store_rq = None
        if not self.autorespond or self.transport is None or self.transport.is_closing():
            return
        rsp = _cmd(_dimse.C_STORE_RSP, affected_sop_class_uid=rq.affected_sop_class_uid,
                   affected_sop_instance_uid=rq.affected_sop_instance_uid,
                   message_id_being_responded_to=rq.message_id, status=0, command_data_set_type=_dimse.NO_DATASET)
        self.transport.writelines(fragment_message(ctx, rsp, None, 16384))

    def eof_received(self) -> bool:
        self.close_kind = self.close_kind or "fin"
        return False

    def connection_lost(self, exc) -> None:
        if not self.close_kind:
            self.close_kind = "local" if self.local_close else ("reset" if exc else "fin")
        self.closed = True
        self.writable.set()
        self.changed.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    @property
    def ended(self) -> bool:
        """The node sent A-ABORT, A-ASSOCIATE-RJ or A-RELEASE-RP: it now
        waits for us to close (PS3.8 Sta13); nothing more will come."""
        return any(t in (3, 6, 7) for t, _ in self.pdus)

    async def wait(self, predicate, timeout: float, until_close: bool = False) -> bool:
        """Until ``predicate()``, the node ended the association (unless
        ``until_close``) or the connection closed; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate() and not self.closed and (until_close or not self.ended):
            left = deadline - loop.time()
            if left <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                return False
        return True

    async def quiet(self, first: float, quiet: float = 0.05) -> None:
        """Wait up to ``first`` for data, then until ``quiet`` without any."""
        before = len(self.pdus)
        await self.wait(lambda: len(self.pdus) > before, first)
        while not self.closed and not self.ended:
            count = len(self.pdus)
            if not await self.wait(lambda: len(self.pdus) > count, quiet):
                break


def expectation(peer: Peer, expect):
    if expect == "assoc":
        return lambda: bool(peer.pdus)
    if expect == "release":
        return lambda: any(t == 6 for t, _ in peer.pdus)
    return lambda: any(rid == expect and status not in PENDING for f, status, rid in peer.responses if f & 0x8000)


@dataclass
class Config:
    port: int
    node_timeout: float
    hang_margin: float
    answer_wait: float = 2.0
    first_wait: float = 0.25
    #: ``--tls``: every connection is TLS, verified against the run's CA.
    tls: ssl.SSLContext | None = None


class Runner:
    """Plays cases against the node and counts what happens."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stats = Counter()
        self.answers = Counter()
        self.dimse = Counter()
        self.outcomes = Counter()
        self.kinds = Counter()
        self.seconds: Counter[str] = Counter()  # sending and reading time by case kind (watching excluded)
        self.problems: list[tuple[str, Case, str]] = []  # (hang|unreclaimed|case-timeout, case, detail)

    async def run(self, case: Case, active: asyncio.Semaphore | None = None,
                  watch: asyncio.Semaphore | None = None) -> str:
        """Play ``case``; the outcome. ``active`` is released once sending is
        done (before the watch for a hang, which takes a ``watch`` slot)."""
        held = active is not None
        try:
            return await asyncio.wait_for(self._run(case, active, watch), 60 + 2 * self.config.node_timeout)
        except TimeoutError:
            self.outcomes["case-timeout"] += 1
            self.problems.append(("case-timeout", case, "the case did not end within its bound"))
            return "case-timeout"
        finally:
            if held and getattr(case, "_active_held", True):
                active.release()

    async def _run(self, case: Case, active, watch) -> str:
        loop = asyncio.get_running_loop()
        cfg = self.config
        self.kinds[case.kind] += 1
        began = loop.time()
        try:
            transport, peer = await asyncio.wait_for(
                loop.create_connection(lambda: Peer(case.autorespond), HOST, cfg.port, ssl=cfg.tls,
                                       server_hostname=HOST if cfg.tls is not None else None), 5)
        except (OSError, TimeoutError):
            self.stats["connect_failed"] += 1
            return "connect-failed"
        self.stats["connections"] += 1
        raw = transport.get_extra_info("socket")
        if raw is not None:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        chunks = random.Random(case.chunk_seed)
        last_send = loop.time()
        mark = None  # PDUs received before the first mutated PDU went out
        answered_rq = True

        async def send(unit: Unit) -> bool:
            nonlocal last_send, mark
            if peer.closed or peer.ended or transport.is_closing():
                return False
            if unit.mutated and mark is None:
                mark = len(peer.pdus)
            data = unit.data
            if case.delivery == "tiny":
                pos = 0
                while pos < len(data) and not transport.is_closing():
                    step = chunks.randint(1, 7) if pos < 600 else 2048
                    transport.write(data[pos:pos + step])
                    pos += step
                    await asyncio.sleep(0)
            elif data:
                transport.write(data)
            if data:  # a PDU truncated to nothing is not counted as sent
                self.stats["pdus_sent"] += 1
                self.stats["bytes_sent"] += len(data)
                self.stats["mutated_sent"] += unit.mutated
            if not await peer.wait(lambda: peer.writable.is_set(), 5):
                self.stats["write_stalled"] += 1
                return False
            last_send = loop.time()
            return True

        units = case.units
        satisfied = False  # the last PDU sent was valid and got its answer
        if case.kind == "blind":
            for unit in units:
                if not await send(unit):
                    break
        else:
            rest = units[1:]
            if await send(units[0]):
                await peer.wait(expectation(peer, "assoc"), cfg.first_wait * 2 if units[0].mutated else cfg.answer_wait)
                answered_rq = any(t == 2 for t, _ in peer.pdus)
                if not answered_rq and not units[0].mutated:
                    self.stats["setup_refused"] += 1
            if answered_rq and case.delivery == "whole" and rest and not peer.closed:
                blob = Unit(b"".join(u.data for u in rest), "whole", any(u.mutated for u in rest))
                if blob.data and await send(blob):
                    self.stats["pdus_sent"] += sum(1 for u in rest if u.data) - 1
                    self.stats["mutated_sent"] += sum(1 for u in rest if u.data and u.mutated) - blob.mutated
            elif answered_rq:
                stalled = False  # a mutated PDU got no answer: the node may be waiting for more bytes
                for unit in rest:
                    before = len(peer.pdus)
                    if not await send(unit):
                        break
                    if not unit.last:
                        continue
                    if unit.expect is not None and not unit.mutated and not stalled:
                        satisfied = await peer.wait(expectation(peer, unit.expect), cfg.answer_wait)
                    else:
                        satisfied = False
                        await peer.quiet(cfg.first_wait)
                    stalled = len(peer.pdus) == before and (unit.mutated or stalled)
        await peer.quiet(0.05 if satisfied else cfg.first_wait)
        answered = len(peer.pdus) > (mark if mark is not None else 0)
        self.seconds[case.kind] += loop.time() - began
        if peer.closed:
            outcome = "node-closed-answered" if answered else "node-closed-silent"
        elif answered and not case.watch:
            outcome = "we-closed-after-end" if peer.ended else "we-closed"
        else:
            if active is not None:  # hand the sending slot on, take a watch slot
                await watch.acquire()
                active.release()
                case._active_held = False
            try:
                left = last_send + cfg.node_timeout + cfg.hang_margin - loop.time()
                late = len(peer.pdus)
                await peer.wait(lambda: False, max(left, 0.0), until_close=True)
            finally:
                if watch is not None and active is not None:
                    watch.release()
            if peer.closed:
                outcome = "reclaimed-with-pdu" if len(peer.pdus) > late else "reclaimed-silent"
            else:
                outcome = "unreclaimed" if answered or len(peer.pdus) > late else "hang"
                self.problems.append((outcome, case, f"open {cfg.node_timeout + cfg.hang_margin:.1f} s after "
                                                     f"our last byte; node sent {len(peer.pdus)} PDUs"))
        if not peer.closed:
            peer.local_close = True
            if case.close == "rst":
                raw = transport.get_extra_info("socket")  # None once a TLS transport has lost its connection
                if raw is not None:
                    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            else:
                transport.close()
        self.outcomes[outcome] += 1
        self._count_answers(peer)
        case._peer = peer  # for the health check and replays
        return outcome

    def _count_answers(self, peer: Peer) -> None:
        for pdu_type, body in peer.pdus:
            name = PDU_NAMES.get(pdu_type, f"type {pdu_type:#x}")
            if pdu_type == 7 and len(body) >= 4:
                name += f" source={body[2]} reason={body[3]}"
            elif pdu_type == 3 and len(body) >= 4:
                name += f" result={body[1]} source={body[2]} reason={body[3]}"
            self.answers[name] += 1
        for field_, status, _rid in peer.responses:
            name = DIMSE_NAMES.get(field_, f"command {field_}")
            self.dimse[name if status is None else f"{name} {status:#06x}"] += 1


# ================================================================= the node
TIMESTAMP = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
ERROR_LINE = re.compile(rb"^\S+ \S+ (ERROR|CRITICAL) ")
TRACEBACK = b"Traceback (most recent call last)"
# The supervisor restarting a worker that ended on its own (a crash: the
# node's pid lives on, so only its log tells; apps/workers.py).
WORKER_ENDED = re.compile(rb"worker \d+ \(pid \d+\) .* restarting")


class Node:
    """``chromanet serve`` as a subprocess, its stderr in a file we scan."""

    def __init__(self, venv: Path, work: Path, port: int, timeout: float, scp: str = "node",
                 index: str | None = None, tls: bool = False) -> None:
        self.exe = venv / "bin" / "chromanet"
        self.index = index  # the node's --index URL (PostgreSQL); None: SQLite in the data directory
        # --tls: the node listens for TLS alone, with a certificate of a CA
        # made for the run (the tests' make_pki); the fuzzer's context trusts it.
        self.tls_files: tuple[Path, Path] | None = None
        self.client_tls: ssl.SSLContext | None = None
        if tls:
            _tests_on_path()
            from helpers.tls import make_pki

            pki = make_pki(work / "pki")
            self.tls_files = (pki.server.certificate, pki.server.key)
            self.client_tls = ssl.create_default_context(cafile=str(pki.ca))
        self.python = venv / "bin" / "python"
        self.scp = scp
        self.work, self.port, self.timeout = work, port, timeout
        self.log_path = work / "node.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._offset = 0
        self._partial = b""
        self._block: list[bytes] | None = None
        self._record: int | None = None  # index of the current ERROR record's event

    def start(self) -> None:
        t = str(self.timeout)
        command = [str(self.exe), "serve", "--port", str(self.port), "--bind", HOST,
                   "--data-dir", str(self.work / "data"), "--log-level", "INFO",
                   "--network-timeout", t, "--pdu-timeout", t, "--idle-timeout", t, "--acse-timeout", t,
                   "--dimse-timeout", t, "--max-associations", "1000", "--max-associations-per-host", "0",
                   # Every operation open, so that mutated stores and moves reach the services.
                   "--default-access", "all"]
        if self.index is not None:
            command += ["--index", self.index]
        if self.tls_files is not None:
            command += ["--no-plain", "--tls-port", str(self.port), "--tls-certificate", str(self.tls_files[0]),
                        "--tls-key", str(self.tls_files[1]), "--tls-handshake-timeout", t]
        if self.scp == "library":  # pynetdicom-style handlers on a chromanet AE (scripts/library_scp.py)
            command = [str(self.python), str(Path(__file__).with_name("library_scp.py")), "--port", str(self.port),
                       "--bind", HOST, "--timeout", t]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the node exited with {self.proc.returncode} at start; see {self.log_path}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the node did not accept connections within 120 s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def family(self) -> list[int]:
        """The node's processes: ``chromanet serve`` and, with worker
        processes (``--workers``, one per core by default), its workers,
        where the connections are served."""
        if self.proc is None:
            return []
        pids = [self.proc.pid]
        try:
            for task in os.listdir(f"/proc/{self.proc.pid}/task"):
                with open(f"/proc/{self.proc.pid}/task/{task}/children") as children:
                    pids += [int(pid) for pid in children.read().split()]
        except OSError:
            pass
        return pids

    def status(self, key: str) -> int | None:
        """``key`` (VmRSS, VmHWM: KiB) of /proc/PID/status, summed over the
        node's processes."""
        total = None
        for pid in self.family():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith(key + ":"):
                        total = (total or 0) + int(line.split()[1])
            except OSError:
                continue
        return total

    def fds(self) -> int | None:
        """Open files of the node's processes, together."""
        total = None
        for pid in self.family():
            try:
                total = (total or 0) + len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                continue
        return total

    def fd_kinds(self) -> dict[str, int]:
        kinds = Counter()
        for pid in self.family():
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    try:
                        target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    except OSError:
                        continue
                    kinds[target.split(":")[0] if ":" in target else target] += 1
            except OSError:
                pass
        return dict(kinds)

    def scan(self, final: bool = False) -> list[tuple[str, str, int]]:
        """New events in the log: ("traceback", text, number of "Traceback
        (most recent call last)" lines in it), ("error", line, 1) and
        ("error-traceback", line, 1) for an ERROR record that carries a
        traceback (reported with the traceback, not on its own)."""
        with open(self.log_path, "rb") as log:
            log.seek(self._offset)
            data = log.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if final and self._partial:
            lines.append(self._partial)
            self._partial = b""
        events: list[tuple[str, str, int]] = []
        for line in lines:
            if self._block is not None:
                if not TIMESTAMP.match(line):
                    self._block.append(line)
                    continue
                events.append(self._traceback())
            if TIMESTAMP.match(line):
                self._record = None
                if WORKER_ENDED.search(line):
                    events.append(("worker-ended", line.decode(errors="replace"), 1))
                if ERROR_LINE.match(line):
                    self._record = len(events)
                    events.append(("error", line.decode(errors="replace"), 1))
            elif line.startswith(TRACEBACK):
                self._block = [line]
                if self._record is not None and self._record < len(events):
                    kind, text, n = events[self._record]
                    events[self._record] = ("error-traceback", text, n)
                    self._block.insert(0, text.encode())
        if final and self._block is not None:
            events.append(self._traceback())
        return events

    def _traceback(self) -> tuple[str, str, int]:
        block, self._block = self._block, None
        return "traceback", b"\n".join(block).decode(errors="replace"), sum(ln.startswith(TRACEBACK) for ln in block)

    def tail(self, n: int = 40) -> str:
        return b"\n".join(self.log_path.read_bytes().splitlines()[-n:]).decode(errors="replace")


def signature(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith((" ", "\t"))]
    return (lines[-1] if lines else text)[:160]


def _tests_on_path() -> None:
    """The tests' helpers (``helpers.tls``, ``helpers.postgres``), as the
    tests import them."""
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# ================================================================ the run
class Fuzz:
    """The load, the watch on the node, incidents and their bisection."""

    def __init__(self, args: argparse.Namespace, node: Node) -> None:
        self.args, self.node = args, node
        self.config = Config(node.port, args.node_timeout, args.hang_margin, tls=node.client_tls)
        self.runner = Runner(self.config)
        self.corpus = Corpus()
        self.recent: deque[tuple[float, list, Case]] = deque(maxlen=3000)  # (start, [end], case)
        self.incidents: list[dict] = []
        self.tracebacks: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.crashes: list[dict] = []
        self.rss_peak = 0
        self.cases_made = 0
        self.stop_monitor = False

    def suspects(self, seen: float) -> list[Case]:
        """The cases that may have caused what the log showed at ``seen``:
        those running then or ended within the node's limit before."""
        window = self.args.node_timeout + self.args.hang_margin + 2
        return [case for start, end, case in self.recent if start <= seen and (not end or end[0] >= seen - window)]

    def record(self, kind: str, text: str, count: int = 1) -> None:
        if kind == "worker-ended":  # a worker process died: a crash, though the node's pid lives on
            self.crashes.append({"exit": "worker", "tail": text})
            if len(self.incidents) < 20:
                self.incidents.append({"kind": "crash", "signature": re.sub(r"\d+", "N", text.split(" ", 3)[-1])[:110],
                                       "text": text,
                                       "suspects": [c.to_json() for c in self.suspects(time.monotonic())]})
            print(f"!! {text}", flush=True)
            return
        if kind == "traceback":
            sig, counter = signature(text), self.tracebacks
        else:  # one kind of ERROR line, whatever numbers, tags and bytes it names
            sig = re.sub(r"^\S+ \S+ ", "", text)
            sig = re.sub(r"\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)", "(gggg,eeee)", sig)
            sig = re.sub(r"b'[^']*'|b\"[^\"]*\"", "b'...'", sig)
            sig, counter = re.sub(r"\d+", "N", sig)[:110], self.errors
        if not counter[sig] and kind != "error-traceback" and sum(i["kind"] == kind for i in self.incidents) < 12:
            self.incidents.append({"kind": kind, "signature": sig, "text": text,
                                   "suspects": [c.to_json() for c in self.suspects(time.monotonic())]})
        counter[sig] += count

    def observe(self, final: bool = False) -> None:
        """One look at the node: alive, memory, new log events."""
        rss = self.node.status("VmRSS")
        if rss:
            self.rss_peak = max(self.rss_peak, rss)
        for kind, text, count in self.node.scan(final):
            self.record(kind, text, count)

    def check_alive(self) -> bool:
        """False (and the node restarted, the crash recorded) if it died."""
        if self.node.alive:
            return True
        code = self.node.proc.returncode
        tail = self.node.tail()
        self.observe(final=True)
        self.crashes.append({"exit": code, "tail": tail})
        if len(self.incidents) < 20:
            self.incidents.append({"kind": "crash", "signature": f"exit status {code}", "text": tail,
                                   "suspects": [c.to_json() for c in self.suspects(time.monotonic())]})
        print(f"!! the node exited ({code}); restarting", flush=True)
        self.node.start()
        return False

    async def monitor(self) -> None:
        next_report = self.args.progress
        started = time.monotonic()
        while not self.stop_monitor:
            await asyncio.sleep(0.5)
            self.check_alive()
            self.observe()
            stats = self.runner.stats
            if stats["mutated_sent"] >= next_report:
                next_report += self.args.progress
                elapsed = time.monotonic() - started
                print(f"  {stats['mutated_sent']:>7} mutated / {stats['pdus_sent']:>7} PDUs, "
                      f"{stats['connections']} connections ({stats['connections'] / elapsed:.0f}/s), "
                      f"crashes {len(self.crashes)}, tracebacks {sum(self.tracebacks.values())}, "
                      f"hangs {self.runner.outcomes['hang']}, RSS {self.node.status('VmRSS')} KiB, "
                      f"fds {self.node.fds()}, {elapsed:.0f} s", flush=True)

    async def play(self, case: Case, active, watch) -> None:
        end: list[float] = []
        self.recent.append((time.monotonic(), end, case))
        try:
            await self.runner.run(case, active, watch)
        finally:
            end.append(time.monotonic())

    async def load(self) -> None:
        """Cases until ``--count`` mutated PDUs went out: at most
        ``--concurrency`` sending and ``--watch-limit`` watched at once."""
        args, stats = self.args, self.runner.stats
        active, watch = asyncio.Semaphore(args.concurrency), asyncio.Semaphore(args.watch_limit)
        tasks: set[asyncio.Task] = set()
        planned: dict[int, int] = {}  # mutated PDUs of the cases in flight
        deadline = time.monotonic() + args.max_minutes * 60
        while time.monotonic() < deadline:
            if stats["mutated_sent"] + sum(planned.values()) >= args.count:
                if not tasks:
                    break
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            await active.acquire()
            index = self.cases_made
            self.cases_made += 1
            case = make_case(self.corpus, args.seed, index)
            planned[index] = sum(1 for u in case.units if u.mutated and u.data)
            task = asyncio.create_task(self.play(case, active, watch))
            task.add_done_callback(lambda _t, i=index: planned.pop(i, None))
            task.add_done_callback(tasks.discard)
            tasks.add(task)
        if tasks:
            await asyncio.gather(*tasks)

    async def replay_together(self, cases: list[Case], times: int = 1,
                              watch: bool = True) -> tuple[set[str], list[Case]]:
        """Play ``cases`` at once (each ``times`` times; with ``watch``, each
        kept open until the node closes it, for what its timers do); the
        problems that showed up (signatures, "crash", "hang"...) and the
        cases as played. A separate Runner: the run's figures stay as they were."""
        runner = Runner(self.config)
        before = Counter(self.tracebacks) + Counter(self.errors)
        crashes = len(self.crashes)
        active = asyncio.Semaphore(self.args.concurrency)
        played = [Case.from_json({**case.to_json(), "watch": watch}) for case in cases for _ in range(times)]

        async def one(case: Case) -> str:
            async with active:
                return await runner.run(case)
        outcomes = await asyncio.gather(*(one(c) for c in played))
        await asyncio.sleep(1.0)
        self.check_alive()
        self.observe()
        after = Counter(self.tracebacks) + Counter(self.errors)
        found = {sig for sig, n in after.items() if n > before[sig]}
        if len(self.crashes) > crashes:
            found.add("crash")
        found |= {o for o in outcomes if o in ("hang", "unreclaimed", "case-timeout")}
        return found, played

    async def bisect(self, incident: dict) -> Case | None:
        """Narrow an incident's suspects to one case that reproduces it
        alone (played once, else 4 copies at once: some are races)."""
        target = incident["signature"] if incident["kind"] in ("traceback", "error") else "crash"

        async def reproduces(cases: list[Case]) -> bool:
            for times, watch in ((1, False), (3, True)):
                if target in (await self.replay_together(cases, times, watch))[0]:
                    return True
            return False
        cases = [Case.from_json(c) for c in incident["suspects"]]
        if not cases or not await reproduces(cases):
            return None
        while len(cases) > 1:
            half = cases[:len(cases) // 2]
            cases = half if await reproduces(half) else cases[len(cases) // 2:]
        return cases[0] if await reproduces(cases) else None


def format_case(case: Case, width: int = 160) -> str:
    lines = [f"case {case.name} kind={case.kind} variant={case.variant} delivery={case.delivery} "
             f"close={case.close}", f"  mutations: {'; '.join(case.mutations)}"]
    for n, unit in enumerate(case.units):
        hexed = unit.data.hex()
        lines.append(f" {'*' if unit.mutated else ' '}[{n}] {unit.label} ({len(unit.data)} bytes): "
                     f"{hexed[:width]}{'...' if len(hexed) > width else ''}")
    return "\n".join(lines)


async def health_check(config: Config, corpus: Corpus) -> tuple[bool, str]:
    """One clean association: A-ASSOCIATE-AC, C-ECHO-RSP Success, A-RELEASE-RP."""
    case = next(c for c in valid_cases(corpus) if c.variant == "echo-i" and len(c.units) == 3)
    outcome = await Runner(config).run(case)
    peer = getattr(case, "_peer", None)
    if peer is None:
        return False, outcome
    types = [t for t, _ in peer.pdus]
    ok = types[:1] == [2] and (0x8030, 0, 1) in peer.responses and 6 in types
    return ok, f"{[PDU_NAMES.get(t, t) for t in types]}, C-ECHO-RSP status {peer.responses}"


async def settle_fds(node: Node, target: int | None, limit: float) -> int | None:
    """Wait until the node holds at most ``target`` fds (None: until the count
    stays the same for a second), at most ``limit`` seconds."""
    deadline, last, since = time.monotonic() + limit, None, time.monotonic()
    while time.monotonic() < deadline:
        count = node.fds()
        if target is not None and (count or 0) <= target:
            break
        if count != last:
            last, since = count, time.monotonic()
        elif target is None and time.monotonic() - since >= 1:
            break
        await asyncio.sleep(0.25)
    return node.fds()


async def warm_up(fuzz: Fuzz) -> list[str]:
    """Every valid template once: the node's threads, SQLite connections and
    caches exist before the baseline, and the corpus is shown to reach the
    services. Returns the cases that did not get their answers."""
    bad = []
    runner = Runner(fuzz.config)
    cases = valid_cases(fuzz.corpus)
    for case in cases:
        await runner.run(case)
        peer = case._peer
        waits = [u.expect for u in case.units if u.expect not in (None, "assoc")]
        if not all(expectation(peer, w)() for w in waits):
            bad.append(f"{case.variant} {[u.label for u in case.units]}: {peer.responses}")
    # Then all at once, twice: every worker thread of the node has run (and
    # opened its SQLite connection) before the file descriptors are counted.
    active = asyncio.Semaphore(fuzz.args.concurrency)

    async def one(case: Case) -> None:
        async with active:
            await runner.run(Case.from_json(case.to_json()))
    await asyncio.gather(*(one(case) for case in cases * 2))
    print(f"warm-up: {sum(runner.kinds.values())} valid associations; DIMSE answers {dict(runner.dimse)}", flush=True)
    return bad


NODES: list[Node] = []  # stopped on the way out, however we leave
CLUSTERS: list[Any] = []  # throwaway PostgreSQL clusters (--index postgres), removed on the way out


def index_url(args: argparse.Namespace) -> str | None:
    """The node's index for ``--index postgres``: a database in a throwaway
    cluster of Debian's PostgreSQL (the tests' ``PgCluster``: initdb as an
    unprivileged user when we are root, a Unix socket in its own
    directory); None for the default (SQLite in the data directory)."""
    if args.index != "postgres":
        return None
    _tests_on_path()
    from helpers.postgres import PgCluster, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("--index postgres: initdb and pg_ctl not found (scripts/bootstrap --peers installs them)")
    cluster = PgCluster.create(bin_dir)
    CLUSTERS.append(cluster)
    cluster.start()
    url = cluster.create_database()
    print(f"PostgreSQL index: {url}", flush=True)
    return url


async def main_async(args: argparse.Namespace, work: Path) -> int:
    node = Node(Path(args.venv), work, free_port(), args.node_timeout, args.scp, args.index_url, args.tls)
    NODES.append(node)
    print(f"starting the node: {node.exe} serve --port {node.port} (log {node.log_path})", flush=True)
    node.start()
    fuzz = Fuzz(args, node)
    runner = fuzz.runner
    try:
        if args.replay:
            return await replay(args, fuzz)
        bad = await warm_up(fuzz)
        for line in bad:
            print(f"  warm-up: a valid case without its answers: {line}")
        fds_start = await settle_fds(node, None, 10)
        rss_start, fd_kinds_start = node.status("VmRSS"), node.fd_kinds()
        fuzz.observe()
        print(f"baseline: RSS {rss_start} KiB, fds {fds_start} {fd_kinds_start}; sending {args.count} mutated PDUs, "
              f"{args.concurrency} connections at once", flush=True)

        started = time.monotonic()
        monitor = asyncio.create_task(fuzz.monitor())
        try:
            await fuzz.load()
        finally:
            load_seconds = time.monotonic() - started
            fuzz.stop_monitor = True
            await monitor
        fds_after = await settle_fds(node, fds_start + args.fd_slack, args.node_timeout + args.hang_margin + 10)
        fuzz.check_alive()
        ok, health = await health_check(fuzz.config, fuzz.corpus)
        fds_end = await settle_fds(node, fds_start, args.node_timeout + 2)
        fd_kinds_end = node.fd_kinds()
        await asyncio.sleep(0.5)
        fuzz.observe(final=True)
        rss_end, hwm = node.status("VmRSS"), node.status("VmHWM")
        figures = {
            "seed": args.seed, "count": args.count, "concurrency": args.concurrency,
            "node_timeout_s": args.node_timeout, "hang_margin_s": args.hang_margin,
            "duration_s": round(load_seconds, 1), "cases": fuzz.cases_made,
            **{key: runner.stats[key] for key in ("pdus_sent", "mutated_sent", "bytes_sent", "connections",
                                                  "connect_failed", "setup_refused", "write_stalled")},
            "kinds": dict(runner.kinds), "active_seconds": {k: round(v) for k, v in runner.seconds.items()},
            "answers": dict(runner.answers.most_common()),
            "dimse": dict(runner.dimse.most_common()), "outcomes": dict(runner.outcomes.most_common()),
            "crashes": len(fuzz.crashes), "node_starts": node.starts, "hangs": runner.outcomes["hang"],
            "unreclaimed": runner.outcomes["unreclaimed"], "case_timeouts": runner.outcomes["case-timeout"],
            "tracebacks": sum(fuzz.tracebacks.values()), "traceback_kinds": dict(fuzz.tracebacks),
            "error_lines": sum(fuzz.errors.values()), "error_kinds": dict(fuzz.errors),
            "rss_kib": {"start": rss_start, "peak_sampled": fuzz.rss_peak, "peak_hwm": hwm, "end": rss_end},
            "fds": {"start": fds_start, "after_load": fds_after, "end": fds_end, "slack": args.fd_slack,
                    "start_kinds": fd_kinds_start, "end_kinds": fd_kinds_end},
            "log_bytes": node.log_path.stat().st_size, "health": {"ok": ok, "detail": health},
            "warmup_unanswered": bad,
        }

        # Incidents: the log's and the crashes (bisected to one case by
        # replaying their suspects), the hangs (the case itself).
        problems, seen = [], Counter()
        for kind, case, detail in runner.problems:
            seen[kind] += 1
            if seen[kind] <= 5:
                problems.append({"kind": kind, "signature": kind, "text": detail, "suspects": [case.to_json()],
                                 "culprit": case.to_json()})
        order = {"crash": 0, "traceback": 1, "error": 2}
        fuzz.incidents.sort(key=lambda i: order[i["kind"]])
        incidents = fuzz.incidents + problems
        triage_end = time.monotonic() + args.triage_minutes * 60
        for incident in fuzz.incidents[:args.triage]:
            if time.monotonic() > triage_end:
                break
            print(f"bisecting {incident['kind']} {incident['signature']!r} over "
                  f"{len(incident['suspects'])} suspects", flush=True)
            culprit = await fuzz.bisect(incident)
            incident["culprit"] = culprit.to_json() if culprit else None
        figures["incidents"] = [{"kind": i["kind"], "signature": i["signature"],
                                 "culprit": Case.from_json(i["culprit"]).name if i.get("culprit") else None}
                                for i in incidents]
        if incidents:
            out_dir = Path(args.out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            for n, incident in enumerate(incidents, start=1):
                incident["file"] = str(out_dir / f"incident-{n}.json")
                Path(incident["file"]).write_text(json.dumps(incident, indent=1))
            shutil.copy(node.log_path, out_dir / "node.log")
        report(figures, incidents)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(figures, indent=1))
        fds_back = fds_end is not None and fds_end <= fds_start + args.fd_slack
        passed = (not fuzz.crashes and not figures["hangs"] and not figures["unreclaimed"]
                  and not figures["case_timeouts"] and not figures["tracebacks"] and fds_back and ok)
        print("PASS" if passed else "FAIL", flush=True)
        return 0 if passed else 1
    finally:
        node.stop()


def report(f: dict, incidents: list[dict]) -> None:
    print(f"\n== fuzz_node: seed {f['seed']}, load {f['duration_s']} s, node limits {f['node_timeout_s']} s "
          f"(+{f['hang_margin_s']} s margin), {f['concurrency']} connections at once")
    print(f"PDUs sent          {f['pdus_sent']} ({f['mutated_sent']} mutated; {f['bytes_sent']} bytes) "
          f"in {f['cases']} cases {f['kinds']}")
    print(f"connections        {f['connections']} (connect failed {f['connect_failed']}, valid RQ refused "
          f"{f['setup_refused']}, write stalled {f['write_stalled']})")
    for title, key, limit in (("answers (PDUs from the node)", "answers", 40),
                              ("DIMSE messages from the node (command status)", "dimse", 30),
                              ("connection outcomes", "outcomes", 20)):
        print(f"{title}:")
        for name, n in list(f[key].items())[:limit]:
            print(f"  {n:>9}  {name}")
    print(f"crashes            {f['crashes']} (node started {f['node_starts']} times)")
    print(f"hangs              {f['hangs']} (unreclaimed {f['unreclaimed']}, case timeouts {f['case_timeouts']})")
    print(f"tracebacks         {f['tracebacks']}")
    for sig, n in f["traceback_kinds"].items():
        print(f"  {n:>9}  {sig}")
    print(f"ERROR lines        {f['error_lines']}")
    for sig, n in f["error_kinds"].items():
        print(f"  {n:>9}  {sig}")
    r, d = f["rss_kib"], f["fds"]
    print(f"RSS (KiB)          start {r['start']}, peak {r['peak_sampled']} (VmHWM {r['peak_hwm']}), end {r['end']}")
    print(f"fds                start {d['start']}, after load {d['after_load']}, end {d['end']} "
          f"(slack {d['slack']}); at end {d['end_kinds']}")
    print(f"node log           {f['log_bytes']} bytes")
    print(f"health check       {'ok' if f['health']['ok'] else 'FAILED'}: {f['health']['detail']}")
    for incident in incidents:
        print(f"\n-- {incident['kind']}: {incident['signature']}  ({incident.get('file')})")
        print("   " + "\n   ".join(incident["text"].splitlines()[-25:]))
        culprit = incident.get("culprit")
        if culprit:
            print(format_case(Case.from_json(culprit)))
        else:
            print(f"   (not reproduced by one case: {len(incident['suspects'])} suspects in the file)"
                  if "culprit" in incident else "   (not bisected: --triage)")


async def replay(args: argparse.Namespace, fuzz: Fuzz) -> int:
    """Play a saved case (a case file, or an incident's culprit, else its
    suspects one by one) on a fresh node, and say what the node did."""
    doc = json.loads(Path(args.replay).read_text())
    if "units" in doc:
        cases = [Case.from_json(doc)]
    elif doc.get("culprit"):
        cases = [Case.from_json(doc["culprit"])]
    else:
        cases = [Case.from_json(c) for c in doc.get("suspects", [])]
    fds_start = await settle_fds(fuzz.node, None, 5)
    failed = False
    for case in cases:
        print(format_case(case, width=400))
        found, (played,) = await fuzz.replay_together([case])
        peer = getattr(played, "_peer", None)
        answers = Runner(fuzz.config)
        if peer is not None:
            answers._count_answers(peer)
        print(f"  node sent: {dict(answers.answers)} {dict(answers.dimse)}; problems: {sorted(found) or 'none'}")
        failed |= bool(found)
    fds_end = await settle_fds(fuzz.node, fds_start + args.fd_slack, args.node_timeout + args.hang_margin)
    print(f"fds {fds_start} -> {fds_end}")
    for incident in fuzz.incidents:
        print(f"-- {incident['kind']}:\n{incident['text']}")
    return 1 if failed or (fds_end or 0) > fds_start + args.fd_slack else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="mutated PDUs to send (default 100000)")
    parser.add_argument("--quick", action="store_true", help="about 2000 mutated PDUs")
    parser.add_argument("--concurrency", type=int, default=24, help="connections sending at once")
    parser.add_argument("--watch-limit", type=int, default=384, help="connections watched for a hang at once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--venv", default=".venv", help="the venv whose bin/chromanet runs the node")
    parser.add_argument("--scp", choices=["node", "library"], default="node",
                        help="what to fuzz: the archive node (chromanet serve), or scripts/library_scp.py, the "
                             "same service as pynetdicom-style handlers on a chromanet AE (library mode)")
    parser.add_argument("--tls", action="store_true",
                        help="the node's TLS listener alone (certificates made for the run): the mutated PDUs go "
                             "inside TLS (--scp node only)")
    parser.add_argument("--index", choices=["sqlite", "postgres"], default="sqlite",
                        help="the node's index: SQLite in its data directory (default), or a throwaway PostgreSQL "
                             "cluster started for the run (Debian's postgresql package)")
    parser.add_argument("--node-timeout", type=float, default=3.0,
                        help="the node's network/PDU/idle/ACSE/DIMSE limits, seconds")
    parser.add_argument("--hang-margin", type=float, default=4.0, help="seconds past the node's limit")
    parser.add_argument("--fd-slack", type=int, default=8, help="fds the node may keep above the start count")
    parser.add_argument("--progress", type=int, default=10_000, help="print a line every N mutated PDUs")
    parser.add_argument("--max-minutes", type=float, default=40, help="stop sending after this long")
    parser.add_argument("--triage", type=int, default=10, help="incidents to bisect to one case")
    parser.add_argument("--triage-minutes", type=float, default=10, help="time for bisecting, at most")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--out-dir", default="bench-results/fuzz", help="incidents and the node log go here")
    parser.add_argument("--work-dir", help="the node's data and log (default: a temporary directory)")
    parser.add_argument("--replay", help="replay a saved case or incident file")
    args = parser.parse_args()
    if args.tls and args.scp != "node":
        parser.error("--tls: the node's TLS listener (--scp node) only")
    if args.quick:
        args.count = 2000
        args.progress = 500
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="fuzz-node-"))
    work.mkdir(parents=True, exist_ok=True)

    def terminate(_signum, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, terminate)
    try:
        args.index_url = index_url(args)  # before the loop: the cluster's set-up runs its own
        status = asyncio.run(main_async(args, work))
    except KeyboardInterrupt:
        status = 130
    finally:
        for node in NODES:
            node.stop()
        for cluster in CLUSTERS:
            cluster.destroy()
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
