"""The audit trail of ``chromanet serve`` (issue 12), as an administrator
reads it: the node a subprocess with ``--audit-file`` or ``--audit-syslog``,
peers over loopback sockets, the JSON lines checked field by field.

What is checked against which text: the records carry what PS3.15 A.5's
audit messages need (A.5.3: Active Participants by AE title and network
address, Participant Objects by SOP Instance UID or query); the
association's end follows PS3.8 (A-ASSOCIATE-RJ result/source/reason of
Table 9-21, A-ABORT source of Table 9-26); syslog messages follow RFC 5424
section 6 (PRI, VERSION 1, ... MSGID, structured data "-", the JSON
message). The writer itself (``apps/audit_writer.py``) is checked without a
node: an unwritable file costs records, not the node.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from chromanet import _pdu, dsutil, evt, uids
from chromanet.apps import audit_writer
from chromanet.apps.audit_writer import AuditWriter, FileSink, SyslogSink
from chromanet.blocking import ThreadedServer

from helpers.qr import FIND, GET, MOVE, qr_scu_ae
from helpers.servers import configure_scp_ae, free_port, wait_listening
from helpers.waits import WAIT_TIMEOUT, wait_until

NODE_AE = "CHROMANET"
SCU_AE = "AUDITSCU"
HOT = {"1.2.840.10008.1.5.1": "HOT_IRON", "1.2.840.10008.1.5.8": "HOT_METAL_BLUE"}


# ------------------------------------------------------------------ set-up
class AuditedNode:
    """``chromanet serve`` with the given audit flags, on a free port."""

    def __init__(self, data_dir: Path, audit_args: list[str], destination_port: int) -> None:
        self.port = free_port()
        self.args = [
            sys.executable, "-m", "chromanet.apps.cli", "serve", "--data-dir", str(data_dir),
            "--port", str(self.port), "--bind", "127.0.0.1", "--log-level", "INFO", "--workers", "1",
            "--allow", SCU_AE, "--default-access", "all", "--move-dest", f"DEST=127.0.0.1:{destination_port}", *audit_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output = ""
        wait_listening(self.port, self.process, timeout=30)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.output, _ = self.process.communicate(timeout=WAIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.output, _ = self.process.communicate()
        return self.output


@pytest.fixture
def destination() -> Iterator[dict[str, Any]]:
    """A chromanet Storage SCP "DEST" (the C-MOVE destination) recording
    what it received: SOP Instance UID -> data set size."""
    received: dict[str, int] = {}

    def on_store(event: Any) -> int:
        received[event.request.AffectedSOPInstanceUID] = len(event.encoded_dataset(include_meta=False))
        return 0x0000

    ae = configure_scp_ae("DEST")
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert isinstance(server, ThreadedServer)
    try:
        yield {"port": server.server_address[1], "received": received}
    finally:
        server.shutdown()


@pytest.fixture
def start_node(tmp_path: Path, destination: dict[str, Any]) -> Iterator[Callable[[list[str]], AuditedNode]]:
    nodes: list[AuditedNode] = []

    def start(audit_args: list[str]) -> AuditedNode:
        node = AuditedNode(tmp_path / f"data{len(nodes)}", audit_args, destination["port"])
        nodes.append(node)
        return node

    try:
        yield start
    finally:
        for node in nodes:
            node.stop()


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    # Each line is one whole JSON object (a line still being written would
    # not end in a newline: ignore it).
    return [json.loads(line) for line in lines if line.endswith("}")]


def wait_record(path: Path, **fields: Any) -> dict[str, Any]:
    """The first record with these field values, waited for."""
    found: list[dict[str, Any]] = []

    def look() -> bool:
        found[:] = [r for r in read_records(path) if all(r.get(k) == v for k, v in fields.items())]
        return bool(found)

    assert wait_until(look), f"no record with {fields} in {read_records(path)}"
    return found[0]


def scu(ae_title: str = SCU_AE, models: tuple[str, ...] = (FIND,)) -> Any:
    """A requestor for Verification, Color Palette Storage and ``models``
    (with the C-GET model, give the storage context both roles)."""
    ae = qr_scu_ae(ae_title, models)
    ae.add_requested_context(uids.Verification)
    ae.add_requested_context(uids.ColorPaletteStorage)
    return ae


def new_palette(label: str | None = "AUDITED") -> Dataset:
    ds = pydicom.dcmread(pydicom.data.get_palette_files("hotiron.dcm")[0])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PaletteColorLookupTableUID = generate_uid()
    if label is None:
        del ds.ContentLabel
    else:
        ds.ContentLabel = label
    return ds


def identifier(**keys: str) -> Dataset:
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "HOT*" is a query, not a valid CS value
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    return ds


def final(responses: Any) -> Dataset:
    answers = list(responses)
    return answers[-1][0]


ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# ------------------------------------------------------------ a full session
def test_a_full_session_leaves_one_record_per_operation_and_association(start_node, destination, tmp_path):
    audit = tmp_path / "audit.jsonl"
    node = start_node(["--audit-file", str(audit)])
    start = wait_record(audit, record="application", event="start")
    assert start["node"] == NODE_AE and start["port"] == node.port and start["pid"] == node.process.pid

    got: dict[str, int] = {}

    def on_get_store(event: Any) -> int:
        got[event.request.AffectedSOPInstanceUID] = len(event.encoded_dataset(include_meta=False))
        return 0x0000

    palette = new_palette()
    identity = _pdu.UserIdentityRQ(2, b"alice", b"s3cret-passcode")
    both_roles = _pdu.RoleSelection(uids.ColorPaletteStorage, True, True)  # store, and receive a C-GET's
    assoc = scu(models=(FIND, GET, MOVE)).associate(
                            "127.0.0.1", node.port, ae_title=NODE_AE, ext_neg=[identity, both_roles],
                            evt_handlers=[(evt.EVT_C_STORE, on_get_store)])  # fmt: skip
    assert assoc.is_established
    local_port = assoc.local["port"]
    try:
        assert assoc.send_c_echo().Status == 0x0000
        found = final(assoc.send_c_find(identifier(ContentLabel="HOT*", SOPInstanceUID=""), FIND))
        assert found.Status == 0x0000
        assert assoc.send_c_store(palette).Status == 0x0000
        wanted = "\\".join(HOT)
        retrieved = final(assoc.send_c_get(identifier(SOPInstanceUID=wanted), GET))
        assert retrieved.Status == 0x0000 and set(got) == set(HOT)
        moved = final(assoc.send_c_move(identifier(SOPInstanceUID="1.2.840.10008.1.5.2\\1.2.3.4"), "DEST", MOVE))
        assert moved.Status == 0xB000  # one sent, one not stored: warning
    finally:
        assoc.release()

    closed = wait_record(audit, record="association", calling_ae=SCU_AE)
    assoc_id = closed["association"]
    assert closed["called_ae"] == NODE_AE and closed["result"] == "released" and closed["severity"] == "info"
    assert (closed["peer_address"], closed["peer_port"]) == ("127.0.0.1", local_port)
    assert (closed["local_address"], closed["local_port"]) == ("127.0.0.1", node.port)
    assert closed["tls"] is None
    assert (closed["user_identity_type"], closed["username"], closed["user_verified"]) == (
        "username+passcode", "alice", None,
    )  # fmt: skip
    assert closed["implementation_class_uid"] == uids.IMPLEMENTATION_CLASS_UID
    assert closed["operations"] == {"C-ECHO": 1, "C-FIND": 1, "C-STORE": 1, "C-GET": 1, "C-MOVE": 1}
    assert closed["operations_failed"] == 0
    assert closed["aborted_by"] is None and closed["reject_result"] is None
    assert ISO_UTC.match(closed["time"]) and ISO_UTC.match(closed["started"]) and closed["duration"] > 0

    ops = [r for r in read_records(audit) if r["record"] == "operation" and r["association"] == assoc_id]
    assert [r["operation"] for r in ops] == ["C-ECHO", "C-FIND", "C-STORE", "C-GET", "C-MOVE"]
    for op in ops:
        assert (op["calling_ae"], op["called_ae"], op["peer_address"]) == (SCU_AE, NODE_AE, "127.0.0.1")
        assert op["outcome"] == "answered" and ISO_UTC.match(op["time"]) and op["duration"] >= 0
    echo, find, store, get, move = ops

    assert (echo["status"], echo["status_category"], echo["sop_class_uid"]) == ("0x0000", "Success", uids.Verification)
    assert (echo["bytes_in"], echo["bytes_out"]) == (0, 0)

    assert find["sop_class_uid"] == FIND and find["status"] == "0x0000"
    assert find["query"] == {"SOPInstanceUID": "", "ContentLabel": "HOT*"} and find["query_keys_omitted"] == 0
    assert find["matches"] == 2 and find["bytes_in"] > 0 and find["bytes_out"] > 0

    assert store["sop_instance_uid"] == palette.SOPInstanceUID and store["status"] == "0x0000"
    assert store["sop_class_uid"] == uids.ColorPaletteStorage and store["move_originator"] is None
    assert store["bytes_in"] == len(dsutil.encode_dataset(palette, uids.ExplicitVRLittleEndian))
    assert store["bytes_out"] == 0 and store["query"] is None

    assert get["query"] == {"SOPInstanceUID": wanted} and get["status"] == "0x0000"
    assert (get["completed"], get["failed"], get["warning"]) == (2, 0, 0)
    assert sorted(get["instances_sent"]) == sorted(HOT) and get["instances_failed"] == []
    assert get["bytes_out"] == sum(got.values()) and get["matches"] is None

    assert move["move_destination"] == "DEST" and move["status"] == "0xB000"
    assert move["move_destination_address"] == f"127.0.0.1:{destination['port']}"
    assert find["move_destination_address"] is None
    assert move["status_category"] == "Warning"
    assert (move["completed"], move["failed"], move["warning"]) == (1, 1, 0)
    assert move["instances_sent"] == ["1.2.840.10008.1.5.2"] and move["instances_failed"] == ["1.2.3.4"]
    # The data set sent to DEST, and the Failed SOP Instance UID List.
    assert move["bytes_out"] > destination["received"]["1.2.840.10008.1.5.2"] > 0

    node.stop()
    stop = wait_record(audit, record="application", event="stop")
    assert stop["pid"] == node.process.pid
    text = audit.read_text()
    assert "s3cret" not in text  # the passcode never
    records = read_records(audit)
    assert len(records) == len(text.splitlines())  # every line one whole object
    assert all(ISO_UTC.match(r["time"]) and r["node"] == NODE_AE for r in records)


# --------------------------------------------- how associations end badly
def test_rejected_aborted_and_failed_store_records(start_node, tmp_path):
    audit = tmp_path / "audit.jsonl"
    node = start_node(["--audit-file", str(audit)])

    intruder = scu("INTRUDER").associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert intruder.is_rejected
    rejected = wait_record(audit, record="association", calling_ae="INTRUDER")
    assert rejected["result"] == "rejected" and rejected["severity"] == "warning"
    assert (rejected["reject_result"], rejected["reject_source"], rejected["reject_reason"]) == (1, 1, 3)
    assert rejected["reject_reason_text"] == "calling AE title not recognized"
    assert rejected["operations"] == {} and rejected["peer_address"] == "127.0.0.1"
    assert rejected["username"] is None and rejected["aborted_by"] is None

    aborting = scu().associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert aborting.is_established and aborting.send_c_echo().Status == 0x0000
    aborted_port = aborting.local["port"]
    aborting.abort()
    aborted = wait_record(audit, record="association", peer_port=aborted_port)
    assert aborted["result"] == "aborted" and aborted["aborted_by"] == "peer"
    assert (aborted["abort_source"], aborted["abort_reason"]) == (0, 0)
    assert aborted["operations"] == {"C-ECHO": 1} and aborted["reject_result"] is None

    bad = new_palette(label=None)  # Content Label is required: the node refuses it
    storing = scu().associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert storing.is_established
    storing_port = storing.local["port"]
    try:
        assert storing.send_c_store(bad).Status == 0xA900
    finally:
        storing.release()
    failed = wait_record(audit, record="operation", sop_instance_uid=bad.SOPInstanceUID)
    assert failed["operation"] == "C-STORE" and failed["status"] == "0xA900"
    assert failed["status_category"] == "Failure" and failed["outcome"] == "answered"
    assert failed["severity"] == "warning" and failed["error_comment"]
    assert failed["bytes_in"] > 0
    closed = wait_record(audit, record="association", peer_port=storing_port)
    assert closed["result"] == "released" and closed["operations_failed"] == 1
    assert closed["association"] == failed["association"]


def test_a_connection_without_a_request_is_recorded_as_closed(start_node, tmp_path):
    audit = tmp_path / "audit.jsonl"
    node = start_node(["--audit-file", str(audit)])
    with socket.create_connection(("127.0.0.1", node.port), timeout=WAIT_TIMEOUT) as probe:
        probe_port = probe.getsockname()[1]
    closed = wait_record(audit, record="association", peer_port=probe_port)
    assert closed["result"] == "closed" and closed["calling_ae"] is None and closed["operations"] == {}


# ------------------------------------------------------------------ syslog
def _echo_once(node) -> None:
    """One association to the node with one C-ECHO, released."""
    assoc = scu().associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_syslog_over_udp_gets_rfc5424_messages(start_node):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(WAIT_TIMEOUT)
        port = receiver.getsockname()[1]
        node = start_node(["--audit-syslog", f"127.0.0.1:{port}", "--audit-syslog-facility", "local4"])
        _echo_once(node)
        messages: dict[str, str] = {}
        record: dict[str, Any] = {}
        while record.get("calling_ae") != SCU_AE:  # (wait_listening's probe comes first)
            data = receiver.recv(65536).decode("utf-8")
            match = re.match(r"^<(\d+)>1 (\S+) (\S+) chromanet (\d+) (\S+) - (\{.*\})$", data)
            assert match, data
            messages[match.group(5)] = data
            if match.group(5) == "association":
                pri, timestamp, _host, pid, _msgid, body = match.groups()
                record = json.loads(body)
    assert int(pri) == 20 * 8 + 6  # local4, informational
    assert int(pid) == node.process.pid and timestamp == record["time"]
    assert record["record"] == "association" and record["calling_ae"] == SCU_AE and record["result"] == "released"
    assert "application" in messages and "operation" in messages
    echo = json.loads(messages["operation"].split(" - ", 1)[1])
    assert echo["operation"] == "C-ECHO" and echo["status"] == "0x0000"


def test_syslog_over_a_unix_datagram_socket(tmp_path):
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        receiver.settimeout(WAIT_TIMEOUT)
        writer = AuditWriter([SyslogSink(path, "authpriv")])
        try:
            writer.write({"time": 1700000000.25, "record": "tls-handshake-failure", "severity": "warning",
                          "peer_address": "192.0.2.7"})  # fmt: skip
            data = receiver.recv(65536).decode("utf-8")
        finally:
            writer.close()
    # authpriv (10), warning (4); the timestamp is the record's.
    assert data.startswith("<84>1 2023-11-14T22:13:20.250Z ")
    assert " tls-handshake-failure - {" in data
    assert json.loads(data.split(" - ", 1)[1])["peer_address"] == "192.0.2.7"


# ------------------------------------------------------------------ failures
def test_the_writer_survives_an_unwritable_file_and_says_what_was_lost(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(audit_writer, "RETRY_INTERVAL", 0.0)
    missing_dir = tmp_path / "not-yet"
    path = missing_dir / "audit.jsonl"
    writer = AuditWriter([FileSink(path)])
    try:
        with caplog.at_level(logging.WARNING, logger="chromanet.audit"):
            for n in range(3):
                writer.write({"time": 1.0, "record": "operation", "n": n})
            assert writer.flush(WAIT_TIMEOUT)
        warnings = [r for r in caplog.records if "cannot write" in r.getMessage()]
        assert len(warnings) == 1 and str(path) in warnings[0].getMessage()  # one warning, not one per record
        missing_dir.mkdir()
        writer.write({"time": 2.0, "record": "operation", "n": 3})
        assert writer.flush(WAIT_TIMEOUT)
    finally:
        writer.close()
    records = read_records(path)
    assert records[0]["record"] == "audit-gap" and records[0]["lost"] == 3
    assert [r.get("n") for r in records[1:]] == [3]


def test_the_file_is_reopened_when_rotated_away(tmp_path):
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter([FileSink(path)])
    try:
        writer.write({"time": 1.0, "record": "operation", "n": 1})
        assert writer.flush(WAIT_TIMEOUT)
        os.rename(path, tmp_path / "audit.jsonl.1")
        writer.reopen()  # what SIGHUP does
        writer.write({"time": 2.0, "record": "operation", "n": 2})
        assert writer.flush(WAIT_TIMEOUT)
    finally:
        writer.close()
    assert [r["n"] for r in read_records(tmp_path / "audit.jsonl.1")] == [1]
    assert [r["n"] for r in read_records(path)] == [2]


def test_a_node_whose_audit_file_cannot_be_written_keeps_serving(start_node, tmp_path):
    unwritable = tmp_path / "no-such-dir" / "audit.jsonl"
    node = start_node(["--audit-file", str(unwritable)])
    for _ in range(2):
        _echo_once(node)
    output = node.stop()
    assert node.process.returncode == 0, output
    assert output.count("audit trail: cannot write") == 1, output
    assert "Traceback" not in output


def test_toml_audit_table(tmp_path):
    from chromanet.apps.cli import build_parser, load_node_config

    config_file = tmp_path / "node.toml"
    config_file.write_text('[audit]\nfile = "/var/log/chromanet/audit.jsonl"\nsyslog = "/dev/log"\n'
                           'syslog_facility = "local3"\n')  # fmt: skip
    args = build_parser().parse_args(["serve", "--config", str(config_file)])
    config = load_node_config(args)
    assert config.audit_file == Path("/var/log/chromanet/audit.jsonl")
    assert (config.audit_syslog, config.audit_syslog_facility) == ("/dev/log", "local3")
    args = build_parser().parse_args(["serve", "--config", str(config_file), "--audit-file", "here.jsonl"])
    assert load_node_config(args).audit_file == Path("here.jsonl")  # flags win
    config_file.write_text('[audit]\nfiel = "x"\n')
    with pytest.raises(ValueError, match="fiel"):
        load_node_config(build_parser().parse_args(["serve", "--config", str(config_file)]))
