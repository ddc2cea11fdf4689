"""The sans-IO Upper Layer, two ends wired back to back in memory (no sockets).

``ul.upper_layer.UpperLayer`` takes bytes and the time and returns
indications, bytes to send and a deadline. Here a requestor and an acceptor
exchange their ``data_to_send()`` directly, with a fake clock, so the PS3.8
behaviour (Table 9-10, the ARTIM timer, the network idle limit, release
collisions of 9.2.3, the A-ABORT of an invalid PDU) is checked without a
loop or a socket. What the asyncio adapter adds (closing sockets, one loop
timer) is checked over real sockets in the wire-state tests.
"""

from __future__ import annotations

import struct

import pytest

from chromanet import _dimse, _pdu, uids
from chromanet._dimse import Command
from chromanet._pdata import DimseMessage
from chromanet.ul.negotiation import ContextSpec, build_associate_rq, negotiate_as_acceptor
from chromanet.ul.statemachine import State
from chromanet.ul.upper_layer import (
    Aborted,
    AssociateAccepted,
    AssociateRejected,
    AssociateRequested,
    NotEstablishedError,
    ReleaseConfirmed,
    ReleaseRequested,
    UpperLayer,
)

ARTIM = 30.0
IDLE = 60.0
CONTEXTS = [ContextSpec(uids.Verification, [uids.ImplicitVRLittleEndian])]


class Pair:
    """A requestor and an acceptor joined by two in-memory pipes."""

    def __init__(self, network_timeout: float | None = IDLE) -> None:
        self.now = 0.0
        self.requestor = UpperLayer(
            requestor=True, max_receive_pdu_length=16382, artim_timeout=ARTIM, network_timeout=network_timeout
        )
        self.acceptor = UpperLayer(
            requestor=False, max_receive_pdu_length=16382, artim_timeout=ARTIM, network_timeout=network_timeout
        )
        self.seen: dict[str, list] = {"requestor": [], "acceptor": []}

    def side(self, name: str) -> UpperLayer:
        return self.requestor if name == "requestor" else self.acceptor

    def connect(self) -> None:
        self.requestor.request_association(
            build_associate_rq("SCP", "SCU", CONTEXTS, max_pdu_length=16382)
        )
        self.seen["acceptor"] += self.acceptor.connection_made(self.now)
        self.seen["requestor"] += self.requestor.connection_made(self.now)

    def pump(self) -> None:
        """Deliver what each side has to send until neither has anything."""
        moved = True
        while moved:
            moved = False
            for sender, receiver in (("requestor", "acceptor"), ("acceptor", "requestor")):
                data = b"".join(bytes(b) for b in self.side(sender).data_to_send())
                if data:
                    moved = True
                    self.seen[receiver] += self.side(receiver).receive_data(data, self.now)

    def establish(self) -> None:
        self.connect()
        self.pump()
        (requested,) = self.seen["acceptor"]
        assert isinstance(requested, AssociateRequested)
        ac, result = negotiate_as_acceptor(requested.rq, CONTEXTS, ae_title="SCP", max_pdu_length=16382)
        ids = {ctx.context_id for ctx in result.contexts if ctx.accepted}
        self.acceptor.accept_association(ac, result.peer_max_pdu_length, ids)
        self.ac_bytes = _pdu.encode_pdu(ac)
        self.pump()
        (accepted,) = self.seen["requestor"]
        assert isinstance(accepted, AssociateAccepted)
        self.requestor.association_accepted(16382, ids)
        self.seen = {"requestor": [], "acceptor": []}


def echo_rq(message_id: int = 1) -> Command:
    return Command(
        _dimse.C_ECHO_RQ,
        affected_sop_class_uid=uids.Verification,
        message_id=message_id,
        command_data_set_type=_dimse.NO_DATASET,
    )


def pdata(context_id: int, control: int, fragment: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def sent_pdus(layer: UpperLayer) -> list:
    data = b"".join(bytes(b) for b in layer.data_to_send())
    pdus = []
    while data:
        (length,) = struct.unpack(">I", data[2:6])
        pdus.append(_pdu.decode_pdu_bytes(data[: 6 + length]))
        data = data[6 + length :]
    return pdus


# ------------------------------------------------------------ establishment
def test_association_is_established_both_ways():
    pair = Pair()
    pair.establish()
    assert pair.requestor.state is State.STA6 and pair.acceptor.state is State.STA6
    assert pair.requestor.is_established and pair.acceptor.is_established


def test_acceptor_arms_artim_on_connect_and_stops_it_on_the_rq():
    pair = Pair(network_timeout=None)
    pair.acceptor.connection_made(100.0)
    assert pair.acceptor.get_timer() == 100.0 + ARTIM
    pair.acceptor.receive_data(_pdu.encode_pdu(build_associate_rq("SCP", "SCU", CONTEXTS, max_pdu_length=16382)), 101.0)
    assert pair.acceptor.get_timer() is None  # AE-6 stopped ARTIM: Sta3


def test_rq_delivered_one_byte_at_a_time():
    pair = Pair()
    pair.acceptor.connection_made(0.0)
    encoded = _pdu.encode_pdu(build_associate_rq("SCP", "SCU", CONTEXTS, max_pdu_length=16382))
    indications = []
    for index in range(len(encoded)):
        indications += pair.acceptor.receive_data(encoded[index : index + 1], 0.0)
        assert pair.acceptor.in_pdu == (index < len(encoded) - 1)
    assert [type(i) for i in indications] == [AssociateRequested]


def test_reject_is_confirmed_and_the_acceptor_waits_for_close():
    pair = Pair()
    pair.connect()
    pair.pump()
    pair.acceptor.reject_association(_pdu.AssociateRJ(result=1, source=1, reason=7))
    pair.pump()
    (rejected,) = pair.seen["requestor"]
    assert isinstance(rejected, AssociateRejected) and rejected.rj.reason == 7
    assert pair.requestor.close_requested  # AE-4: the requestor closes
    assert pair.acceptor.state is State.STA13 and not pair.acceptor.close_requested
    assert pair.acceptor.get_timer() == pair.now + ARTIM  # AE-8: ARTIM in Sta13
    assert pair.acceptor.handle_timer(pair.now + ARTIM) == []
    assert pair.acceptor.close_requested and pair.acceptor.state is State.STA1


# ------------------------------------------------------------------- P-DATA
def test_message_crosses_and_keeps_its_fields():
    pair = Pair()
    pair.establish()
    buffers = pair.requestor.message_buffers(1, echo_rq(7))
    indications = pair.acceptor.receive_data(b"".join(bytes(b) for b in buffers), 1.0)
    (message,) = indications
    assert isinstance(message, DimseMessage)
    assert (message.context_id, message.command.command_field, message.command.message_id) == (1, 0x0030, 7)


def test_no_pdata_outside_an_association():
    layer = UpperLayer(requestor=True, max_receive_pdu_length=16382)
    with pytest.raises(NotEstablishedError):
        layer.message_buffers(1, echo_rq())


def test_message_then_release_in_one_chunk_keeps_their_order():
    """A request sent right before A-RELEASE-RQ comes up first, and may still
    be answered in Sta8 (AR-7) before the release response."""
    pair = Pair()
    pair.establish()
    chunk = b"".join(bytes(b) for b in pair.requestor.message_buffers(1, echo_rq()))
    chunk += _pdu.encode_pdu(_pdu.ReleaseRQ())
    indications = pair.acceptor.receive_data(chunk, 1.0)
    assert [type(i) for i in indications] == [DimseMessage, ReleaseRequested]
    assert pair.acceptor.state is State.STA8
    assert pair.acceptor.message_buffers(1, echo_rq())  # the answer may still go out
    pair.acceptor.respond_release()
    assert [type(p) for p in sent_pdus(pair.acceptor)] == [_pdu.ReleaseRP]


# ------------------------------------------------------------------ release
def test_release_confirmed_then_both_close():
    pair = Pair()
    pair.establish()
    pair.requestor.request_release()
    pair.pump()
    assert [type(i) for i in pair.seen["acceptor"]] == [ReleaseRequested]
    pair.acceptor.respond_release()
    pair.pump()
    assert [type(i) for i in pair.seen["requestor"]] == [ReleaseConfirmed]
    assert pair.requestor.close_requested  # AR-3
    assert pair.acceptor.state is State.STA13 and pair.acceptor.get_timer() == pair.now + ARTIM  # AR-4


def test_release_collision_ends_on_both_sides():
    """PS3.8 9.2.3: both sides send A-RELEASE-RQ; the requestor answers first
    (Sta9 -> AR-9), the acceptor after the requestor's RP (AR-10 -> AR-4)."""
    pair = Pair()
    pair.establish()
    pair.requestor.request_release()
    pair.acceptor.request_release()
    pair.pump()
    assert ReleaseConfirmed in [type(i) for i in pair.seen["requestor"]]
    assert ReleaseConfirmed in [type(i) for i in pair.seen["acceptor"]]
    assert pair.requestor.close_requested or pair.requestor.state is State.STA13
    assert pair.acceptor.state in (State.STA13, State.STA1)


# -------------------------------------------------------------------- abort
def test_user_abort_reaches_the_peer_and_both_close():
    pair = Pair()
    pair.establish()
    pair.requestor.abort(source=0, reason=0)
    assert pair.requestor.close_requested
    pair.pump()
    assert pair.seen["acceptor"] == [Aborted(0, 0)]
    assert pair.acceptor.close_requested  # AA-3


def test_abort_before_anything_is_harmless():
    layer = UpperLayer(requestor=False, max_receive_pdu_length=16382)
    layer.abort()
    assert not layer.close_requested and layer.data_to_send() == []


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"\x09\x00\x00\x00\x00\x04\x00\x00\x00\x00", 1),  # Evt19: unknown PDU type
        (pdata(1, 0x03, b"\x00" * 8), 2),  # P-DATA before any association
        (_pdu.encode_pdu(_pdu.ReleaseRQ()), 2),  # A-RELEASE-RQ before any association
        (b"\x01\x00\x00\x00\x00\x4a" + b"\x00\x01" + b"\x00" * 72, 6),  # broken RQ items
    ],
    ids=["unknown-type", "p-data", "release-rq", "malformed-rq"],
)
def test_sta2_bad_pdu_gets_provider_abort(payload, reason):
    layer = UpperLayer(requestor=False, max_receive_pdu_length=16382, artim_timeout=ARTIM)
    layer.connection_made(0.0)
    layer.receive_data(payload, 1.0)
    (answer,) = sent_pdus(layer)
    assert isinstance(answer, _pdu.Abort) and (answer.source, answer.reason) == (2, reason)
    assert layer.state is State.STA13 and layer.get_timer() == 1.0 + ARTIM  # AA-1/AA-8
    layer.handle_timer(1.0 + ARTIM)
    assert layer.close_requested


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"\x0a\x00\x00\x00\x00\x00", 1),  # unknown PDU type
        (b"\x04\x00\x00\x00\x00\x08" + b"\x00\x00\x00\x40\x01\x03\x00\x00", 6),  # PDV overruns the PDU
        (pdata(7, 0x03, b"\x00" * 8), 6),  # a context that was never negotiated
        (pdata(1, 0xF3, b"\x00" * 8), 6),  # reserved bits in the message control header
        (pdata(1, 0x02, b"\x08\x00\x10\x00"), 6),  # a data set fragment before any command
        (pdata(1, 0x03, b"\x00\x00\x00\x00\x04\x00\x00\x00\xff\xff"), 6),  # not a command set
        (b"\x04\x00" + struct.pack(">I", 1 << 20) + b"\x00" * 64, 6),  # longer than our maximum
    ],
    ids=["unknown-type", "pdv-overrun", "unknown-context", "reserved-bits", "dataset-first", "bad-command",
         "too-long"],
)
def test_sta6_bad_pdu_gets_provider_abort(payload, reason):
    pair = Pair()
    pair.establish()
    indications = pair.acceptor.receive_data(payload, 1.0)
    assert indications == [Aborted(2, reason)]
    (answer,) = sent_pdus(pair.acceptor)
    assert isinstance(answer, _pdu.Abort) and (answer.source, answer.reason) == (2, reason)
    # Nothing after the bad PDU is read: the stream is no longer trusted.
    assert pair.acceptor.receive_data(pdata(1, 0x03, b"\x00" * 8), 2.0) == []


def test_unexpected_ac_in_sta6_aborts():
    pair = Pair()
    pair.establish()
    pair.requestor.receive_data(pair.ac_bytes, 1.0)  # a second A-ASSOCIATE-AC
    (answer,) = sent_pdus(pair.requestor)
    assert isinstance(answer, _pdu.Abort) and (answer.source, answer.reason) == (2, 2)


# ------------------------------------------------------------------- timers
def test_network_idle_limit_aborts_and_moves_with_each_receive():
    pair = Pair(network_timeout=10.0)
    pair.establish()
    layer = pair.acceptor
    assert layer.get_timer() == 10.0
    layer.receive_data(b"\x04", 5.0)  # one byte of a PDU still counts as life
    assert layer.get_timer() == 15.0
    assert layer.handle_timer(12.0) == []  # early: nothing due
    assert layer.handle_timer(15.0) == [Aborted(2, 0)]
    (answer,) = sent_pdus(layer)
    assert isinstance(answer, _pdu.Abort) and answer.source == 2
    assert layer.close_requested and layer.get_timer() is None


def test_connection_lost_in_sta6_is_a_provider_abort():
    pair = Pair()
    pair.establish()
    assert pair.acceptor.connection_lost() == [Aborted(2, 0)]
    assert pair.acceptor.state is State.STA1 and pair.acceptor.get_timer() is None


def test_rq_followed_by_garbage_in_one_read_cannot_be_accepted_after():
    """The RQ and an invalid PDU arrive together: both indications come up,
    and the user's accept, arriving after the abort, is refused (False)
    instead of breaking the state machine (found by the fuzzer)."""
    layer = UpperLayer(requestor=False, max_receive_pdu_length=16382)
    layer.connection_made(0.0)
    rq = build_associate_rq("SCP", "SCU", CONTEXTS, max_pdu_length=16382)
    indications = layer.receive_data(_pdu.encode_pdu(rq) + b"\x0a\x00\x00\x00\x00\x00", 0.0)
    assert [type(i) for i in indications] == [AssociateRequested, Aborted]
    ac, result = negotiate_as_acceptor(indications[0].rq, CONTEXTS, ae_title="SCP", max_pdu_length=16382)
    assert layer.accept_association(ac, result.peer_max_pdu_length, {1}) is False
    assert [type(p) for p in sent_pdus(layer)] == [_pdu.Abort]


def test_release_request_followed_by_garbage_cannot_be_answered_after():
    pair = Pair()
    pair.establish()
    chunk = _pdu.encode_pdu(_pdu.ReleaseRQ()) + b"\x0a\x00\x00\x00\x00\x00"
    indications = pair.acceptor.receive_data(chunk, 1.0)
    assert [type(i) for i in indications] == [ReleaseRequested, Aborted]
    pair.acceptor.respond_release()  # too late: a no-op, not an InvalidEventError
    assert [type(p) for p in sent_pdus(pair.acceptor)] == [_pdu.Abort]
