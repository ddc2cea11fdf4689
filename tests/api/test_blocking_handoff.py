"""The blocking API's hand-offs to the loop (``chromanet.blocking`` over
``chromanet.loopthread``) keep pynetdicom's call semantics.

- C-FIND/C-GET/C-MOVE are checked in the caller's thread: a query model
  with no accepted context, or a priority that is not one of PS3.7's
  three, raises at the call, not at the first response.
- The request is sent before anything the caller hands over next: a
  C-CANCEL (PS3.7 9.3.2.3) issued right after ``send_c_find``, before the
  first ``next``, cancels it.
- A C-GET whose responses the caller stops reading after two is
  cancelled, and the association serves the next request.
- C-ECHO and C-STORE (sent and answered by callbacks on the loop) give
  the response's Status and send the caller's Message ID, and a C-STORE of a data set large enough to be paced out goes the coroutine
  way with the same result; both give an empty Dataset once the peer
  aborted (pynetdicom's answer when no response came).
- An abort that lands between a C-FIND/C-GET's check in the caller's
  thread and its sending on the loop gives that empty Dataset too.
"""

from __future__ import annotations

import copy
import gc
import threading
from typing import Any

import pytest
from pydicom import Dataset

from chromanet import evt
from chromanet.ul.connection import PACING_SLICE
from helpers.qr import FIND, GET, UIDS, StoreLog, qr_association, statuses
from helpers.servers import scu_ae
from helpers.waits import WAIT_TIMEOUT, wait_until

pytestmark = pytest.mark.timeout(60)

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"  # not proposed by the Q/R SCU here


def uid_query(uid: str | list[str] = "") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "PALETTE"
    ds.SOPInstanceUID = uid
    return ds


def test_query_checks_raise_at_the_call(make_qr_scp):
    def on_find(event):
        yield 0xFF00, uid_query("1.2.3")

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    with qr_association(scp.port) as assoc:
        with pytest.raises(ValueError, match="no accepted presentation context"):
            assoc.send_c_find(uid_query(), PATIENT_ROOT_FIND)
        with pytest.raises(ValueError, match="priority"):
            assoc.send_c_find(uid_query(), FIND, priority=7)
        with pytest.raises(ValueError, match="priority"):
            assoc.send_c_get(uid_query(), GET, priority=-1)
        # nothing was sent for those: the association serves the next one
        assert statuses(list(assoc.send_c_find(uid_query(), FIND))) == [0xFF00, 0x0000]


def test_cancel_right_after_the_call_follows_the_request(make_qr_scp):
    """The C-CANCEL is handed to the loop after the request was, before
    any response was read: the SCP gets the request first, then the
    cancel, and answers 0xFE00 (had the cancel gone first, the SCP would
    not know the Message ID and the handler would run to its end)."""
    release = threading.Event()
    served: list[int] = []

    def on_find(event):
        for n in range(1000):
            served.append(n)
            yield 0xFF00, uid_query(f"1.2.3.{n}")
            if n == 0:
                release.wait(WAIT_TIMEOUT)  # the cancel arrives meanwhile

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    with qr_association(scp.port) as assoc:
        responses = assoc.send_c_find(uid_query(), FIND, msg_id=21)
        assoc.send_c_cancel(21)
        release.set()
        got = list(responses)
        assert got[-1][0].Status == 0xFE00
        assert len(served) < 1000
        assert statuses(list(assoc.send_c_find(uid_query("x"), FIND, msg_id=22)))[-1] == 0x0000


def test_blocking_get_left_after_two_responses(make_qr_scp, palettes):
    """The caller breaks out of a C-GET's responses: the rest is cancelled
    (the SCP stops its sub-operations) and the association goes on."""
    release = threading.Event()

    def on_get(event):
        yield len(UIDS)
        for n, uid in enumerate(UIDS):
            if event.is_cancelled:
                return
            if n == 3:
                release.wait(WAIT_TIMEOUT)  # the caller leaves meanwhile
            yield 0xFF00, palettes[uid].filename

    scp = make_qr_scp([(evt.EVT_C_GET, on_get)])
    log = StoreLog()
    with qr_association(scp.port, store=log) as assoc:
        responses = assoc.send_c_get(uid_query(UIDS), GET)
        seen = []
        for status, _ in responses:
            seen.append(int(status.Status))
            if len(seen) == 2:
                break
        responses.close()
        release.set()
        assert seen == [0xFF00, 0xFF00]
        assert len(log.uids) < len(UIDS)
        # The next request once the SCP's final answer to the cancelled one
        # came: the SCP reads nothing beyond the operations window (1)
        # before its operation ends, and the C-STORE-RSP of a sub-operation
        # it may still start would wait behind the next request.
        channel = assoc.service_session.channel
        assert wait_until(lambda: not channel.is_outstanding(1))
        again = list(assoc.send_c_get(uid_query(UIDS), GET))
        assert statuses(again) == [0xFF00] * len(UIDS) + [0x0000]


def test_echo_and_store_responses(make_scp, palettes):
    message_ids: list[int] = []

    def on_echo(event: Any) -> int:
        message_ids.append(event.request.MessageID)
        return 0x0000

    scp = make_scp(handlers=[(evt.EVT_C_ECHO, on_echo)])
    assoc = scu_ae().associate("127.0.0.1", scp.port, ae_title="SRV")
    assert assoc.is_established
    try:
        echo = assoc.send_c_echo(msg_id=33)
        assert echo.Status == 0x0000
        assert message_ids == [33]
        stored = assoc.send_c_store(palettes[UIDS[0]], msg_id=34)
        assert stored.Status == 0x0000
        # a data set past the pacing slice: sent the coroutine way
        big = copy.deepcopy(palettes[UIDS[1]])  # the fixture's data sets are shared
        big.ContentLabel = "BIG"
        big.RedPaletteColorLookupTableData = b"\x00\x01" * (PACING_SLICE // 2 + 4096)
        stored = assoc.send_c_store(big, msg_id=35)
        assert stored.Status == 0x0000
        assert [item.sop_instance_uid for item in scp.stored] == [UIDS[0], UIDS[1]]
        assert len(scp.stored[1].encoded) > PACING_SLICE
    finally:
        assoc.release()


def test_echo_and_store_after_the_peer_aborted(make_scp, palettes):
    aborted = threading.Event()

    def on_echo(event: Any) -> int:
        event.assoc.abort()
        aborted.set()
        return 0x0000

    scp = make_scp(handlers=[(evt.EVT_C_ECHO, on_echo)])
    assoc = scu_ae().associate("127.0.0.1", scp.port, ae_title="SRV")
    assert assoc.is_established
    first = assoc.send_c_echo()
    assert aborted.wait(WAIT_TIMEOUT)
    assert "Status" not in first
    assert wait_until(lambda: assoc.is_aborted)
    with pytest.raises(RuntimeError, match="not established"):
        assoc.send_c_echo()
    with pytest.raises(RuntimeError, match="not established"):
        assoc.send_c_store(palettes[UIDS[0]])


def test_responses_never_read_cancel_the_request(make_qr_scp):
    """A C-FIND whose responses are dropped without being read (the
    request went out at the call): it is cancelled (the SCP closes its
    endless generator) and the association serves the next request."""
    closed = threading.Event()

    def on_find(event):
        if event.identifier.SOPInstanceUID != "ENDLESS":
            yield 0xFF00, uid_query("1.2.3")
            return
        try:
            n = 0
            while True:
                n += 1
                yield 0xFF00, uid_query(f"1.2.3.{n}")
        finally:
            closed.set()

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    with qr_association(scp.port) as assoc:
        gc.disable()  # dropping it is enough: no collection of cycles needed
        try:
            dropped = assoc.send_c_find(uid_query("ENDLESS"), FIND)
            del dropped
            assert closed.wait(WAIT_TIMEOUT)  # cancelled, the association still up
        finally:
            gc.enable()
        assert statuses(list(assoc.send_c_find(uid_query(), FIND))) == [0xFF00, 0x0000]


@pytest.mark.parametrize("operation", ["find", "get", "echo"])
def test_an_abort_between_the_callers_check_and_the_send(make_qr_scp, monkeypatch, operation):
    """The blocking API checks a C-FIND/C-GET/C-MOVE in the caller's thread
    and sends it on the loop; an A-ABORT processed in between (found by
    scripts/fuzz_scu.py: a hostile SCP's second A-ASSOCIATE-AC) gives what
    an abort while waiting gives, one empty status Dataset, never the
    engine's own AssociationAborted out of the call. A C-ECHO is checked on
    the loop: the RuntimeError of a call on an association that has ended."""
    from chromanet import blocking, loopthread

    def on_find(event):
        yield 0xFF00, uid_query("1.2.3")

    scp = make_qr_scp([(evt.EVT_C_FIND, on_find)])
    with qr_association(scp.port) as assoc:
        inner = assoc._inner

        def aborted_first(real):
            def call(*args, loop=None, **kwargs):
                # Queued on the loop before the hand-off of the request.
                loopthread.target_loop(loop).call_soon_threadsafe(inner.abort)
                return real(*args, loop=loop, **kwargs)

            return call

        monkeypatch.setattr(loopthread, "iterate_started", aborted_first(loopthread.iterate_started))
        monkeypatch.setattr(loopthread, "run_started", aborted_first(loopthread.run_started))
        assert blocking.loopthread is loopthread
        if operation == "find":
            assert [(status, ident) for status, ident in assoc.send_c_find(uid_query(), FIND)] == [(Dataset(), None)]
        elif operation == "get":
            assert [(status, ident) for status, ident in assoc.send_c_get(uid_query(UIDS[0]), GET)] == [(Dataset(), None)]
        else:
            with pytest.raises(RuntimeError, match="not established"):
                assoc.send_c_echo()
        assert wait_until(lambda: assoc.is_aborted)
