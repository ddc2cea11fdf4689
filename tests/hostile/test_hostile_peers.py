"""The palette node against hostile and broken peers, each a raw socket.

One test (or a few) per way a peer can exhaust or derail a node, each with
what the node must do instead (issue "Hold up against hostile and broken
peers"): bounded memory under pipelining (PS3.7's operations window, TCP
flow control), time limits a trickling or idle peer cannot cheat, a
per-host share of the association slots, identifiers capped in size, no
spooled or replaced file left behind, nothing stored that could not be read
back, PS3.8's answer to every bad A-ASSOCIATE-RQ (A-ASSOCIATE-RJ or A-ABORT),
no traceback for a peer's ordinary failure, and a log a peer cannot flood.
The node runs as a subprocess (``chromanet serve``) with short limits
(``helpers.hostile``); after each misbehaviour it must still serve.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from io import BytesIO

import pytest
from pydicom import dcmread

from chromanet import _dimse, _pdata, _pdu, dsutil, uids
from chromanet.ae import AE
from helpers.data import palette_paths
from helpers.hostile import (
    EXPLICIT,
    FIND,
    GET,
    IDLE_TIMEOUT,
    IMPLICIT,
    MAX_IDENTIFIER,
    PDU_TIMEOUT,
    PER_HOST,
    associate,
    connect,
    echo_rq,
    identifier,
    message_bytes,
    query_rq,
    raw_associate_rq,
    read_message,
    recv_pdu,
    reset,
    running_node,
    still_serves,
    store_rq,
    wait_for,
)

PALETTE_EXPLICIT = [(1, uids.ColorPaletteStorage, [EXPLICIT])]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    with running_node(tmp_path_factory.mktemp("hostile")) as running:
        yield running


def _no_traceback(node) -> None:
    assert "Traceback" not in node.log(), node.log()[-3000:]


# ------------------------------------------------------- memory and windows
def _send_for_3_s(node, sock, batch: bytes) -> tuple[int, float]:
    """Send ``batch`` over and over for 3 s as fast as the socket takes it
    (waiting while the node does not read; stopping if it closes). Returns
    the bytes the node took and how much its RSS grew, in MiB."""
    start_rss = node.rss_kib()
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        try:
            sent += sock.send(batch)
        except BlockingIOError:
            time.sleep(0.01)  # the node stopped reading
        except OSError:
            break  # the node dropped us: also bounded
    return sent, (node.rss_kib() - start_rss) / 1024


@pytest.mark.parametrize("op", ["echo", "find"])
def test_pipelining_without_reading_is_held_to_bounded_memory(node, op):
    """Requests sent as fast as the socket takes them, no response ever
    read: the node stops reading (its responses are unread; C-FIND tasks
    beyond the window) instead of queueing without bound. Before this held,
    the node grew by hundreds of MB in these 3 s."""
    contexts = [(1, uids.Verification, [IMPLICIT])] if op == "echo" else [(1, FIND, [IMPLICIT])]
    sock = associate(node, contexts)
    ident = identifier(SOPInstanceUID="1.2.840.10008.1.5.1", ContentLabel="")
    batch = b"".join(
        message_bytes(1, echo_rq(i)) if op == "echo" else message_bytes(1, query_rq(_dimse.C_FIND_RQ, FIND, i), ident)
        for i in range(1, 65)
    )
    sent, growth_mib = _send_for_3_s(node, sock, batch)
    reset(sock)
    assert growth_mib < 48, f"the node grew by {growth_mib:.0f} MiB"
    assert sent < 64 << 20, f"the node kept reading: {sent} bytes taken"
    assert still_serves(node)


def test_a_peer_that_goes_on_sending_after_a_framing_error_is_not_kept(node):
    """A PDU header claiming 1.1 GB makes the stream unreadable: the node
    aborts and waits for the peer to close (Sta13). A peer that goes on
    sending instead must not make it keep what arrives. Before the fix every
    chunk was held, chained to the re-raised framing error's traceback
    (hundreds of MB in these 3 s)."""
    sock = associate(node, [(1, uids.Verification, [IMPLICIT])])
    sock.sendall(struct.pack(">BBI", 0x07, 0, 0x46000000) + b"\x00" * 64)
    batch = b"\x00\x01" * 32768
    sent, growth_mib = _send_for_3_s(node, sock, batch)
    reset(sock)
    assert growth_mib < 48, f"the node grew by {growth_mib:.0f} MiB after taking {sent >> 20} MiB"
    assert still_serves(node)


# ------------------------------------------------------------------ timers
def test_trickling_peer_is_aborted_by_the_pdu_time_limit(node):
    """One byte every 0.3 s of a PDU that never completes: the network
    timeout alone would never fire; the PDU limit does."""
    sock = associate(node)
    pdu = message_bytes(1, echo_rq(1))
    began = time.monotonic()
    answer = None
    sock.settimeout(0.3)
    for byte in pdu[:-1]:
        try:
            sock.send(bytes([byte]))
            answer = recv_pdu(sock)
            break
        except (socket.timeout, TimeoutError):
            continue
        except (ConnectionError, OSError):
            break
    elapsed = time.monotonic() - began
    assert isinstance(answer, _pdu.Abort) and answer.source == 2, answer
    assert PDU_TIMEOUT - 0.5 < elapsed < PDU_TIMEOUT + 3, elapsed
    sock.close()


def test_trickling_before_the_rq_is_aborted_too(node):
    sock = connect(node)
    sock.settimeout(0.3)
    began = time.monotonic()
    closed = False
    for byte in raw_associate_rq([(1, uids.Verification, [IMPLICIT])]):
        try:
            sock.send(bytes([byte]))
            sock.recv(64)  # EOF or the node's A-ABORT: either way it ended it
        except (socket.timeout, TimeoutError):
            continue
        except OSError:
            pass
        closed = True
        break
    assert closed and time.monotonic() - began < PDU_TIMEOUT + 3
    sock.close()


def test_idle_association_is_aborted_and_its_slot_freed(node):
    sock = associate(node)
    began = time.monotonic()
    answer = recv_pdu(sock)  # nothing sent: the node's idle limit ends it
    assert isinstance(answer, _pdu.Abort) and answer.source == 2
    assert IDLE_TIMEOUT - 0.5 < time.monotonic() - began < IDLE_TIMEOUT + 3
    sock.close()


def test_a_few_hosts_cannot_take_every_slot(tmp_path):
    """PER_HOST idle associations from 127.0.0.1: the next one from that
    host is refused (transient, local limit exceeded), one from 127.0.0.2
    is still accepted."""
    with running_node(tmp_path, "--idle-timeout", "60") as fresh:
        holders = [associate(fresh) for _ in range(PER_HOST)]
        try:
            sock = connect(fresh)
            sock.sendall(raw_associate_rq([(1, uids.Verification, [IMPLICIT])]))
            refused = recv_pdu(sock)
            sock.close()
            assert isinstance(refused, _pdu.AssociateRJ)
            assert (refused.result, refused.source, refused.reason) == (2, 3, 2)
            other = associate(fresh, source="127.0.0.2")
            other.close()
        finally:
            for holder in holders:
                holder.close()
        assert wait_for(lambda: _accepts(fresh))


def _accepts(node) -> bool:
    try:
        sock = associate(node)
    except AssertionError:
        return False
    sock.close()
    return True


# ------------------------------------------------------------ size limits
@pytest.mark.parametrize(
    "field, model, status",
    [(_dimse.C_FIND_RQ, FIND, 0xA700), (_dimse.C_GET_RQ, GET, 0xA701)],
    ids=["find", "get"],
)
def test_identifier_over_the_limit_is_refused_without_holding_it(node, field, model, status):
    sock = associate(node, [(1, model, [IMPLICIT])])
    big = identifier(SOPInstanceUID="1.2.3", ContentLabel="", ContentDescription="x" * 60) + (
        struct.pack("<HHI", 0x0009, 0x1010, 20 << 20) + bytes(20 << 20)
    )
    start_rss = node.rss_kib()
    sock.sendall(message_bytes(1, query_rq(field, model, 1), big))
    answer = read_message(sock, {1})
    assert answer.command.status == status
    assert str(MAX_IDENTIFIER) in (answer.command.error_comment or "")
    assert (node.rss_kib() - start_rss) / 1024 < 16
    sock.close()


def test_echo_with_a_data_set_is_refused(node):
    sock = associate(node)
    command = echo_rq(1)
    command.command_data_set_type = _dimse.DATASET_PRESENT
    sock.sendall(message_bytes(1, command, bytes(MAX_IDENTIFIER * 4)))
    assert read_message(sock, {1}).command.status == 0x0212
    sock.close()


def test_wrong_command_group_length_is_served_and_cancel_on_a_foreign_context_ignored(node):
    """Sloppy but harmless: a Command Group Length off by two (as a peer's
    C-ECHO-RQ vector has it) and a C-CANCEL-RQ on a context ID never
    proposed. The framing bounds the command; a cancel names its operation
    by Message ID. Neither is a reason to abort."""
    sock = associate(node)
    encoded = bytearray(_dimse.encode_command(echo_rq(7)))
    struct.pack_into("<I", encoded, 8, struct.unpack_from("<I", encoded, 8)[0] + 2)
    sock.sendall(b"".join(bytes(b) for b in _pdata.fragment_message(1, bytes(encoded), None, 16384)))
    answer = read_message(sock, {1}).command
    assert (answer.status, answer.message_id_being_responded_to) == (0x0000, 7)
    cancel = _dimse.Command(_dimse.C_CANCEL_RQ, message_id_being_responded_to=99,
                            command_data_set_type=_dimse.NO_DATASET)
    sock.sendall(message_bytes(77, cancel))
    sock.sendall(message_bytes(1, echo_rq(8)))
    assert read_message(sock, {1}).command.message_id_being_responded_to == 8
    sock.close()
    _no_traceback(node)


# -------------------------------------------------------------- identifiers
@pytest.mark.parametrize(
    "payload, status",
    [
        (identifier(SOPInstanceUID="1." + "2" * 198), 0xA900),
        (identifier(ContentLabel="?" * 60000), 0xA900),
        (identifier(ContentLabel="*" * 6000), 0xA900),
        (bytes(range(256)) * 8, 0xC310),
        (b"\x00" * 32, 0xA900),
        # Alternate Content Description Sequence whose item header is cut
        # short: found by scripts/fuzz_node.py (0xC311 and a traceback before).
        (identifier(ContentLabel="") + b"\x70\x00\x87\x00\x06\x00\x00\x00\xfe\xff\x00\xe0\x00\x00", 0xC310),
    ],
    ids=["200-char-uid", "60k-wildcard", "6k-wildcard", "garbage", "command-group", "sequence-item-cut-short"],
)
def test_malformed_identifier_gets_a_failure_never_a_match(node, payload, status):
    sock = associate(node, [(1, FIND, [IMPLICIT])])
    sock.sendall(message_bytes(1, query_rq(_dimse.C_FIND_RQ, FIND, 1), payload))
    answer = read_message(sock, {1})
    assert answer.command.status == status
    assert answer.dataset is None
    sock.close()
    _no_traceback(node)


# ------------------------------------------------------------------ stores
def test_refused_store_leaves_no_spool_file(node):
    sock = associate(node, PALETTE_EXPLICIT)
    sock.sendall(message_bytes(1, store_rq("1.2.826.0.1.3680043.8.498.1", 1), b"\x08\x00\x16\x00garbage-garbage"))
    assert read_message(sock, {1}).command.status == 0xC000
    sock.close()
    assert node.spool() == []
    assert "1.2.826.0.1.3680043.8.498.1" not in node.stored.rows() and node.stored.consistent()


def test_store_without_a_data_set_is_refused_before_the_archive(node):
    """A C-STORE-RQ whose Command Data Set Type says no data set (found by
    scripts/fuzz_node.py): 0xC000 with a comment, and the association goes
    on; it reached the node's handler before, which logged an ERROR and
    answered 0xA700 (out of resources) as if the archive had failed."""
    sock = associate(node, PALETTE_EXPLICIT)
    command = store_rq("1.2.826.0.1.3680043.8.498.4", 1)
    command.command_data_set_type = _dimse.NO_DATASET
    sock.sendall(message_bytes(1, command))
    answer = read_message(sock, {1}).command
    assert (answer.status, answer.error_comment) == (0xC000, "C-STORE-RQ without a data set")
    sock.sendall(message_bytes(1, echo_rq(2)))
    assert read_message(sock, {1}).command.status == 0x0000
    sock.close()
    assert "1.2.826.0.1.3680043.8.498.4" not in node.stored.rows()
    assert " ERROR " not in node.log(), node.log()[-3000:]
    _no_traceback(node)


def test_store_cut_off_by_a_reset_leaves_no_spool_file_and_no_traceback(node):
    sock = associate(node, PALETTE_EXPLICIT)
    data = dsutil.encode_dataset(dcmread(palette_paths()[0]), EXPLICIT) + bytes(2 << 20)
    whole = message_bytes(1, store_rq("1.2.826.0.1.3680043.8.498.2", 1), data)
    sock.sendall(whole[: len(whole) // 2])
    assert wait_for(lambda: node.spool() != [], 5)  # it was being spooled
    reset(sock)
    assert wait_for(lambda: node.spool() == [])
    assert wait_for(lambda: "lost" in node.log() or "partial data set removed" in node.log())
    _no_traceback(node)


def test_implicit_bytes_on_an_explicit_context_are_refused(node):
    """What could not be served back (dcmdump cannot read it) is not stored."""
    ds = dcmread(palette_paths()[1])
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    sock = associate(node, PALETTE_EXPLICIT)
    sock.sendall(message_bytes(1, store_rq(ds.SOPInstanceUID, 1), dsutil.encode_dataset(ds, IMPLICIT)))
    assert read_message(sock, {1}).command.status == 0xC000
    sock.close()
    assert ds.SOPInstanceUID not in node.stored.rows() and node.stored.consistent()
    assert node.spool() == []


def test_concurrent_stores_of_one_uid_leave_one_file(node):
    uid = "1.2.826.0.1.3680043.8.498.4"
    base = dcmread(palette_paths()[2])
    base.SOPInstanceUID = uid

    def store_many(worker: int) -> None:
        ae = AE("WORKER")  # one peer (several would be refused each other's instance: 0x0124)
        ae.add_requested_context(uids.ColorPaletteStorage, EXPLICIT)
        assoc = ae.associate(*node.address, ae_title="CHROMANET")
        assert assoc.is_established
        for n in range(10):
            ds = base.copy()
            ds.ContentLabel = f"W{worker}_{n}"
            assert assoc.send_c_store(ds).Status == 0
        assoc.release()

    threads = [threading.Thread(target=store_many, args=(w,)) for w in range(PER_HOST)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # One instance, whichever store came last, and nothing left of the others.
    assert uid in node.stored.rows() and node.stored.consistent()
    assert not [name for name in node.stored.files() if name.startswith(uid)]  # kept in the index
    assert dcmread(BytesIO(node.stored.part10(uid))).ContentLabel.startswith("W")
    assert node.spool() == []


def test_reset_in_the_middle_of_a_get_closes_its_files_without_a_traceback(node):
    """The node sends C-STORE sub-operations (memory-mapped files); the
    peer resets before answering any: no file of them stays open."""
    baseline = node.open_files()
    sock = associate(
        node, [(1, GET, [EXPLICIT]), (3, uids.ColorPaletteStorage, [EXPLICIT])], scp_roles=(uids.ColorPaletteStorage,)
    )
    wanted = "\\".join(f"1.2.840.10008.1.5.{n}" for n in range(1, 9))
    sock.sendall(message_bytes(1, query_rq(_dimse.C_GET_RQ, GET, 1), identifier(EXPLICIT, SOPInstanceUID=wanted)))
    sub_operation = read_message(sock, {1, 3})
    assert sub_operation.command.command_field == _dimse.C_STORE_RQ
    reset(sock)
    assert wait_for(lambda: node.open_files() <= baseline), (node.open_files(), baseline)
    _no_traceback(node)
    assert still_serves(node)


# ------------------------------------------------- bad association requests
@pytest.mark.parametrize(
    "rq, expected",
    [
        (raw_associate_rq([(1, uids.Verification, [IMPLICIT]), (1, FIND, [IMPLICIT])]), ("abort", 2, 6)),
        (raw_associate_rq([(1 + 2 * (n % 128), uids.Verification, [IMPLICIT]) for n in range(10000)]), ("abort", 2, 6)),
        (raw_associate_rq([(1, uids.Verification, [IMPLICIT])], calling=b" " * 16), ("rj", 1, 1, 3)),
        (raw_associate_rq([(1, uids.Verification, [IMPLICIT])], called=b"CHROMA\x01NET"), ("rj", 1, 1, 7)),
        (raw_associate_rq([(1, uids.Verification, [IMPLICIT])], max_length=1), ("rj", 1, 1, 1)),
    ],
    ids=["duplicate-context-id", "10000-contexts", "empty-calling-aet", "control-char-called-aet", "max-pdu-1"],
)
def test_bad_association_request_gets_the_standard_answer(node, rq, expected):
    sock = connect(node)
    sock.sendall(rq)
    answer = recv_pdu(sock)
    sock.close()
    if expected[0] == "abort":
        assert isinstance(answer, _pdu.Abort) and (answer.source, answer.reason) == expected[1:]
    else:
        assert isinstance(answer, _pdu.AssociateRJ)
        assert (answer.result, answer.source, answer.reason) == expected[1:]
    _no_traceback(node)
    assert still_serves(node)


# --------------------------------------------------------------------- logs
def test_a_flood_of_bad_pdus_is_logged_a_few_times(node):
    before = node.log().count("protocol error")
    for _ in range(200):
        sock = associate(node)
        sock.sendall(b"\x0a\x00\x00\x00\x00\x00")  # an unknown PDU type
        recv_pdu(sock)
        sock.close()
    assert wait_for(lambda: node.log().count("protocol error") > before)
    time.sleep(0.5)
    assert node.log().count("protocol error") - before <= 6
    assert still_serves(node)
