"""The processes ``benches/e2e.py`` launches: one SCP, or one client.

Each runs in its own process (own GIL), started by the harness in its own
session so that the harness can kill the whole process group.

SCP::

    python benches/e2e_peers.py scp --impl chromanet|pynetdicom [--nodelay] --port P [--no-quickack]
    python benches/e2e_peers.py scp --impl chromanet-node|chromanet-qr|pynetdicom-qr --port P
        --data-dir DIR [--move-dest AET=PORT]
    ... [--tls-dir DIR]    (chromanet, chromanet-node: TLS only, DIR/server.pem)

  ``chromanet``/``pynetdicom``: listens on 127.0.0.1:P with Verification and
  Color Palette Storage. Its C-STORE handler returns Success without decoding
  the data set (we measure the engine, not pydicom). ``chromanet-node`` is
  the real palette archive node (``chromanet.apps.node.PaletteNode``) on an
  archive built by ``data``; ``pynetdicom-qr`` is a pynetdicom Color Palette
  Q/R SCP answering from an in-memory list of the same data sets (read from
  the archive's files at start); ``chromanet-qr`` is the same handlers on a
  chromanet AE (library mode: what a pynetdicom program gets by swapping
  the import). Each exits when its stdin closes (so an SCP
  never outlives a harness that died), or on SIGTERM. ``--no-quickack``: the
  chromanet SCPs with ``AE.tcp_quickack`` off (the node: ``tcp_quickack =
  false``), to compare with it on against peers that run Nagle's algorithm.

Data::

    python benches/e2e_peers.py data --root DIR --set NAME:KIND:N ... [--dcmtk]

  Builds, outside any timing, one chromanet archive per set
  (``DIR/cn/NAME``: N copies of the pydicom palettes with new SOP Instance
  UIDs, KIND ``small`` (~4.4 KB) or ``large`` (65536-entry 16-bit LUTs,
  ~400 KB)), the list of their UIDs (``DIR/uids/NAME.txt``) and, with
  ``--dcmtk``, a dcmqrscp storage area of N Secondary Capture images of the
  same file size in one series (``DIR/dcmtk/NAME``, indexed with
  ``dcmqridx``; keys in ``DIR/dcmtk/NAME.json``).

Client::

    python benches/e2e_peers.py client --impl chromanet-async|chromanet-blocking|pynetdicom|dcmtk
        [--nodelay] --port P --workload WORKLOAD --n N [--warmup W] [--uids FILE]
        [--tls-dir DIR]        (chromanet-async, dcmtk: over TLS, DIR/ca.pem)

  WORKLOAD: echo, assoc, store, find-many (one C-FIND, N matches expected),
  find-one (N C-FINDs of one SOP Instance UID each), get (one C-GET of the N
  UIDs in ``--uids``), move (one C-MOVE of them to ``--move-aet``). ``dcmtk``
  runs DCMTK's tools (``/usr/bin/echoscu`` ... ) once per ``go`` and times the
  process, Patient Root on dcmqrscp for the Q/R workloads (``--dcmtk-keys``);
  ``--nodelay`` puts ``TCP_NODELAY=1`` in the tools' environment (without it
  they run as DCMTK-based nodes usually do: Nagle's algorithm on).
  ``--no-quickack``: the chromanet clients with ``AE.tcp_quickack`` off.

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
from pathlib import Path
from typing import Any, Callable

HOST = "127.0.0.1"
VERIFICATION = "1.2.840.10008.1.1"
COLOR_PALETTE_STORAGE = "1.2.840.10008.5.1.4.39.1"


def _set_nodelay(event: Any) -> None:
    """pynetdicom EVT_CONN_OPEN handler: TCP_NODELAY on the association's socket."""
    sock = event.assoc.dul.socket.socket
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)



# ---------------------------------------------------------------------------- data
FIND_MODEL = "1.2.840.10008.5.1.4.39.2"
MOVE_MODEL = "1.2.840.10008.5.1.4.39.3"
GET_MODEL = "1.2.840.10008.5.1.4.39.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
LABEL_PREFIX = {"small": "BENCH", "large": "BIG"}
DCMTK_BIN = "/usr/bin"  # pynetdicom's same-named console scripts shadow DCMTK's on PATH
# dcmqrscp's index.dat is capped at 32 MiB (DB ALERT "attempt to seek beyond
# 33554432 bytes") with ~8 KB a record: about 4100 images per storage area.
DCMTK_MAX_IMAGES = 4000


def _bench_uid(*parts: object) -> str:
    import uuid

    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, 'chromanet-bench/' + '/'.join(map(str, parts))).int}"


def _large_palette(template: Any) -> Any:
    """A valid Color Palette with 65536-entry 16-bit normal LUTs (3 x 128 KiB)."""
    import array

    ds = template
    for color in ("Red", "Green", "Blue"):
        ds[f"{color}PaletteColorLookupTableDescriptor"].value = [0, 0, 16]  # 0 = 65536 entries
        for seg in (f"Segmented{color}PaletteColorLookupTableData",):
            if seg in ds:
                del ds[seg]
    ramp = array.array("H", range(65536))
    ds.RedPaletteColorLookupTableData = ramp.tobytes()
    ds.GreenPaletteColorLookupTableData = ramp[::-1].tobytes()
    ds.BluePaletteColorLookupTableData = array.array("H", ((i * 7) & 0xFFFF for i in range(65536))).tobytes()
    return ds


def build_palette_set(root: Path, name: str, kind: str, n: int) -> list[str]:
    """Archive ``root/cn/name`` with n palettes (+ the 8 well-known); their
    UIDs. Every instance is also written out as a Part 10 file to
    ``root/cn/name/part10`` (``part10_files``), the bytes the archive keeps,
    for the peers that serve files or data sets loaded from them (the
    archive keeps small palettes in its index, not in ``files/``)."""
    import pydicom
    from pydicom.data import get_palette_files

    from chromanet.archive import PaletteArchive

    templates = [pydicom.dcmread(f) for f in sorted(get_palette_files("*.dcm"))]
    if kind == "large":
        templates = [_large_palette(templates[1])]  # hotiron: normal LUT data, ICC profile
    archive = PaletteArchive.open(root / "cn" / name)
    # A fixture, not a benchmark: no fsync per file, no synchronous SQLite
    # commits while building (the data is rebuilt if the machine crashes).
    archive._step_fsync_file = lambda path, fd=None: None  # type: ignore[method-assign]
    archive._step_fsync_dir = lambda: None  # type: ignore[method-assign]
    archive.index._writer.execute("PRAGMA synchronous=OFF")
    uids: list[str] = []
    try:
        for i in range(n):
            ds = templates[i % len(templates)]
            ds.SOPInstanceUID = _bench_uid(name, i)
            ds.ContentLabel = f"{LABEL_PREFIX[kind]}_{i:05d}"
            result = archive.ingest_dataset(ds)
            if not result.ok:
                raise SystemExit(f"ingest of palette {i} of set {name} failed: 0x{result.status:04X} {result.comment}")
            uids.append(str(ds.SOPInstanceUID))
        export = root / "cn" / name / "part10"
        export.mkdir(exist_ok=True)
        for (uid,) in archive.index.select(["sop_instance_uid"], "1", ()):
            (export / f"{uid}.dcm").write_bytes(archive.read(uid))  # type: ignore[arg-type]
    finally:
        archive.close()
    (root / "uids").mkdir(parents=True, exist_ok=True)
    (root / "uids" / f"{name}.txt").write_text("\n".join(uids) + "\n")
    return uids


def build_dcmtk_set(root: Path, name: str, n: int, file_size: int) -> None:
    """dcmqrscp storage area ``root/dcmtk/name``: n Secondary Capture images of
    ~file_size bytes each in one patient/study/series, indexed by dcmqridx."""
    import subprocess

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    area = root / "dcmtk" / name
    area.mkdir(parents=True, exist_ok=True)
    keys = {
        "PatientID": "BENCH",
        "StudyInstanceUID": _bench_uid(name, "study"),
        "SeriesInstanceUID": _bench_uid(name, "series"),
    }

    def image(pixels: int) -> Dataset:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = SECONDARY_CAPTURE
        ds.PatientName, ds.PatientID = "BENCH^DATA", keys["PatientID"]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = keys["StudyInstanceUID"], keys["SeriesInstanceUID"]
        ds.StudyID, ds.SeriesNumber, ds.Modality, ds.ConversionType = "1", 1, "OT", "WSD"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        columns = min(pixels, 512)
        ds.Rows, ds.Columns = max(1, pixels // columns), columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = bytes(ds.Rows * ds.Columns)
        return ds

    # Size the pixel data so that the file is as large as the palettes.
    import io

    probe = image(2)
    probe.SOPInstanceUID = probe.file_meta.MediaStorageSOPInstanceUID = _bench_uid(name, "img", 0)
    buf = io.BytesIO()
    probe.save_as(buf, enforce_file_format=True)
    pixels = max(2, (file_size - len(buf.getvalue()) + 2) // 2 * 2)
    ds = image(pixels)
    files = []
    for i in range(n):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _bench_uid(name, "img", i)
        ds.InstanceNumber = i + 1
        path = area / f"IMG{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(str(path))
        if i == 0:
            keys["SOPInstanceUID"] = str(ds.SOPInstanceUID)
    keys["file_size"] = path.stat().st_size  # type: ignore[assignment]
    for start in range(0, len(files), 2000):
        subprocess.run([f"{DCMTK_BIN}/dcmqridx", str(area), *files[start:start + 2000]], check=True,
                       stdout=subprocess.DEVNULL)
    (root / "dcmtk" / f"{name}.json").write_text(json.dumps(keys))


def run_data(root: Path, sets: list[str], dcmtk: bool) -> None:
    from concurrent.futures import ProcessPoolExecutor

    # Palettes and DCMTK images in two processes (two cores).
    specs = [spec.split(":") for spec in sets]
    with ProcessPoolExecutor(max_workers=2) as pool:
        pending = [pool.submit(build_palette_set, root, name, kind, int(n)) for name, kind, n in specs]
        images = []
        for (name, kind, n), fut in zip(specs, pending):
            fut.result()
            if dcmtk:  # same mean file size as the palettes of the set
                files = part10_files(root / "cn" / name, "2.25.*.dcm")[:64]
                size = sum(f.stat().st_size for f in files) // max(1, len(files))
                images.append(pool.submit(build_dcmtk_set, root, name, min(int(n), DCMTK_MAX_IMAGES), size))
        for fut in images:
            fut.result()
    print("done", flush=True)


# ----------------------------------------------------------------------------- SCP
def _serve_until_eof() -> None:
    """Serve until stdin closes, then exit at once (no engine clean-up)."""
    try:
        while sys.stdin.readline():
            pass
    finally:
        os._exit(0)


def part10_files(data_dir: Path, pattern: str = "*.dcm") -> list[Path]:
    """The Part 10 files of every instance of an archive ``build_palette_set`` built."""
    return sorted((data_dir / "part10").glob(pattern))


def _load_palettes(data_dir: Path) -> dict[str, Any]:
    """SOP Instance UID -> Dataset for every instance of a built archive."""
    import pydicom

    out = {}
    for path in part10_files(data_dir):
        ds = pydicom.dcmread(path)
        out[str(ds.SOPInstanceUID)] = ds
    return out


def _requested_uids(identifier: Any) -> list[str] | None:
    """The SOP Instance UID key: None when universal (empty), else the list."""
    value = identifier.get("SOPInstanceUID", "")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def pynetdicom_qr_handlers(palettes: dict[str, Any], destinations: dict[str, int], nodelay: bool,
                           evt: Any = None) -> list[Any]:
    """The pynetdicom way: FIND yields (0xFF00, identifier) per match; GET and
    MOVE yield the number of sub-operations, then (0xFF00, dataset) each.
    ``evt``: the module whose events they are bound to (pynetdicom's, or
    chromanet's for the same handlers on a chromanet AE: library mode)."""
    import fnmatch

    from pydicom import Dataset

    if evt is None:
        from pynetdicom import evt

    def on_find(event: Any) -> Any:
        identifier = event.identifier
        label = str(identifier.get("ContentLabel", "") or "")
        wanted = _requested_uids(identifier)
        keys = [elem.keyword for elem in identifier if elem.keyword]
        for uid in wanted if wanted is not None else palettes:
            ds = palettes.get(uid)
            if ds is None or (label and not fnmatch.fnmatchcase(str(ds.ContentLabel), label)):
                continue
            match = Dataset()
            for key in keys:
                setattr(match, key, ds.get(key, ""))
            yield 0xFF00, match

    def on_get(event: Any) -> Any:
        wanted = [u for u in _requested_uids(event.identifier) or () if u in palettes]
        yield len(wanted)
        for uid in wanted:
            yield 0xFF00, palettes[uid]

    def on_move(event: Any) -> Any:
        port = destinations.get(str(event.request.MoveDestination).strip())
        if port is None:
            yield None, None
            return
        # The sub-association gets TCP_NODELAY too (kwargs go to ae.associate).
        yield (HOST, port, {"evt_handlers": [(evt.EVT_CONN_OPEN, _set_nodelay)]} if nodelay else {})
        wanted = [u for u in _requested_uids(event.identifier) or () if u in palettes]
        yield len(wanted)
        for uid in wanted:
            yield 0xFF00, palettes[uid]

    return [(evt.EVT_C_FIND, on_find), (evt.EVT_C_GET, on_get), (evt.EVT_C_MOVE, on_move)]


def _tls_files(tls_dir: Path) -> dict[str, str]:
    """The PKI the harness wrote (tests/helpers/tls.py's make_pki)."""
    return {name: str(tls_dir / f"{name}") for name in ("ca.pem", "server.pem", "server.key")}


def _store_ae(quickack: bool, window: int) -> Any:
    """The chromanet store SCP's AE (Verification, Color Palette Storage),
    for the pynetdicom-style and the asyncio store SCP alike."""
    from chromanet.ae import AE

    ae = AE("BENCH-SCP")
    ae.tcp_quickack = quickack
    ae.maximum_associations = 64
    ae.async_ops_window = (window, window)
    ae.add_supported_context(VERIFICATION)
    ae.add_supported_context(COLOR_PALETTE_STORAGE)
    return ae


def run_scp(impl: str, port: int, nodelay: bool, data_dir: Path | None = None,
            move_dests: dict[str, int] | None = None, tls_dir: Path | None = None, quickack: bool = True,
            index: str | None = None, inline: bool = False, window: int = 1) -> None:
    """``tls_dir``: listen for TLS only, with the server certificate there.
    ``index``: the chromanet node's index URL (postgresql://...; None: SQLite
    in ``data_dir``). ``inline``: the chromanet and chromanet-qr SCPs run
    their sync handlers on the loop (``AE.sync_handlers_inline``).
    ``window``: the chromanet and chromanet-qr SCPs offer this asynchronous
    operations window, both ways (the node always offers (8, 8))."""
    move_dests = move_dests or {}
    ssl_context = None
    if tls_dir is not None and impl not in ("chromanet", "chromanet-aio", "chromanet-node"):
        raise SystemExit(f"--tls-dir: not implemented for the {impl} SCP")
    if tls_dir is not None:
        from chromanet.tls_context import server_context

        files = _tls_files(tls_dir)
        ssl_context = server_context(files["server.pem"], files["server.key"])
    if impl == "chromanet":
        from chromanet import evt

        ae = _store_ae(quickack, window)
        ae.sync_handlers_inline = inline
        handlers = [(evt.EVT_C_STORE, lambda event: 0x0000)]
        server = ae.start_server((HOST, port), block=False, evt_handlers=handlers, ssl_context=ssl_context)
    elif impl == "chromanet-aio":
        # An asyncio program's store SCP: ``start_server_async`` on its own
        # (uvloop) loop and an ``async def`` C-STORE handler, which runs on
        # that loop (no worker thread), next to ``chromanet``'s pynetdicom-
        # style ``def`` handler, which runs in the association's worker.
        import asyncio
        import threading

        from chromanet import evt
        from chromanet.loopthread import new_event_loop

        ae = _store_ae(quickack, window)

        async def on_store(event: Any) -> int:  # counted by the client, not decoded
            return 0x0000

        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        aio_server = loop.run_until_complete(
            ae.start_server_async((HOST, port), evt_handlers=[(evt.EVT_C_STORE, on_store)], ssl_context=ssl_context))
        print(f"listening {aio_server.server_address[1]}", flush=True)
        threading.Thread(target=_serve_until_eof, daemon=True).start()
        loop.run_forever()
        return
    elif impl == "chromanet-node":
        import asyncio
        import threading

        from chromanet.loopthread import new_event_loop
        from chromanet.apps.access import AccessPolicy
        from chromanet.apps.node import NodeConfig, PaletteNode
        from chromanet.apps.tls_options import NodeTls

        if data_dir is None:
            raise SystemExit("chromanet-node needs --data-dir")
        config = NodeConfig(ae_title="BENCH-SCP", port=port, bind_address=HOST, data_dir=data_dir,
                            move_destinations={aet: (HOST, p) for aet, p in move_dests.items()},
                            log_level="WARNING", tcp_quickack=quickack, index=index,
                            # Every operation for every peer (the bench clients move too); the
                            # admission check still runs for each association, as in a real node.
                            access=AccessPolicy())
        if tls_dir is not None:  # the TLS listener alone, on the port
            files = _tls_files(tls_dir)
            config.listen_plain = False
            config.tls = NodeTls(port=port, certificate=Path(files["server.pem"]),
                                 private_key=Path(files["server.key"]))
        loop = new_event_loop()  # uvloop when installed
        asyncio.set_event_loop(loop)
        node = PaletteNode(config)
        server = loop.run_until_complete(node.start())
        print(f"listening {server.server_address[1]}", flush=True)
        threading.Thread(target=_serve_until_eof, daemon=True).start()
        loop.run_forever()
        return
    elif impl == "chromanet-qr":
        # Library mode: the pynetdicom program's handlers (pydicom Datasets
        # in, pydicom Datasets yielded) on a chromanet AE.
        from chromanet import evt
        from chromanet.ae import AE

        if data_dir is None:
            raise SystemExit("chromanet-qr needs --data-dir")
        ae = AE("BENCH-SCP")
        ae.tcp_quickack = quickack
        ae.sync_handlers_inline = inline
        ae.maximum_associations = 64
        ae.async_ops_window = (window, window)
        ae.add_supported_context(VERIFICATION)
        for model in (FIND_MODEL, GET_MODEL, MOVE_MODEL):
            ae.add_supported_context(model)
        ae.add_supported_context(COLOR_PALETTE_STORAGE, scu_role=True, scp_role=True)
        ae.add_requested_context(COLOR_PALETTE_STORAGE)  # C-MOVE sub-associations
        handlers = pynetdicom_qr_handlers(_load_palettes(data_dir), move_dests, False, evt)
        server = ae.start_server((HOST, port), block=False, evt_handlers=handlers)
    elif impl in ("pynetdicom", "pynetdicom-qr"):
        import pynetdicom
        from pynetdicom import evt

        ae = pynetdicom.AE("BENCH-SCP")
        ae.maximum_associations = 64
        ae.add_supported_context(VERIFICATION)
        if impl == "pynetdicom":
            ae.add_supported_context(COLOR_PALETTE_STORAGE)
            handlers = [(evt.EVT_C_STORE, lambda event: 0x0000)]
        else:
            if data_dir is None:
                raise SystemExit("pynetdicom-qr needs --data-dir")
            for model in (FIND_MODEL, GET_MODEL, MOVE_MODEL):
                ae.add_supported_context(model)
            ae.add_supported_context(COLOR_PALETTE_STORAGE, scu_role=True, scp_role=True)
            ae.add_requested_context(COLOR_PALETTE_STORAGE)  # C-MOVE sub-associations
            handlers = pynetdicom_qr_handlers(_load_palettes(data_dir), move_dests, nodelay)
        if nodelay:
            handlers.append((evt.EVT_CONN_OPEN, _set_nodelay))
        server = ae.start_server((HOST, port), block=False, evt_handlers=handlers)
    else:
        raise SystemExit(f"unknown SCP impl {impl!r}")
    print(f"listening {server.server_address[1]}", flush=True)
    _serve_until_eof()


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


def _blocking_workload(workload: str, assoc_factory: Callable[[], Any], datasets: list[Any], uids: list[str],
                       received: list[int], move_aet: str) -> Callable[[int], tuple[float, float, int, int]]:
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

    def find_many(n: int) -> tuple[float, float, int, int]:
        assoc = assoc_factory()
        if not assoc.is_established:
            raise RuntimeError("association not established")
        t0 = time.monotonic()
        matches, final = _count_find(assoc.send_c_find(_find_all(), FIND_MODEL))
        t1 = time.monotonic()
        assoc.release()
        return t0, t1, matches, int(final != 0) + int(matches != n)

    def find_one(n: int) -> tuple[float, float, int, int]:
        assoc = assoc_factory()
        if not assoc.is_established:
            raise RuntimeError("association not established")
        errors = 0
        t0 = time.monotonic()
        for i in range(n):
            matches, final = _count_find(assoc.send_c_find(_find_uid(uids[i % len(uids)]), FIND_MODEL))
            errors += int(final != 0) + int(matches != 1)
        t1 = time.monotonic()
        assoc.release()
        return t0, t1, n, errors

    def retrieve(n: int) -> tuple[float, float, int, int]:
        received[0] = 0
        assoc = assoc_factory()
        if not assoc.is_established:
            raise RuntimeError("association not established")
        identifier = _retrieve_uids(uids[:n])
        t0 = time.monotonic()
        if workload == "get":
            responses = assoc.send_c_get(identifier, GET_MODEL)
        else:
            responses = assoc.send_c_move(identifier, move_aet, MOVE_MODEL)
        final = None
        for status, _ in responses:
            final = status
        t1 = time.monotonic()
        assoc.release()
        return t0, t1, n, _retrieve_errors(final, n, received[0] if workload == "get" else n)

    return {"echo": echo, "assoc": assoc_cycle, "store": store, "find-many": find_many, "find-one": find_one,
            "get": retrieve, "move": retrieve}[workload]


def _async_workload(workload: str, ae: Any, port: int, datasets: list[Any], uids: list[str],
                    received: list[int], move_aet: str, tls_args: Any = None,
                    window: int = 1) -> Callable[[int], Any]:
    """``tls_args``: (ssl context, server name) for TLS, None for plain TCP.
    ``window`` > 1: every association proposes that asynchronous operations
    window both ways, and W1, W3 and W8 keep that many requests outstanding
    (as many tasks, each sending its share one after the other); W4's
    C-STOREs arrive that many at a time when the SCP grants it."""
    import asyncio

    from chromanet import evt
    from chromanet.pdu_primitives import AsynchronousOperationsWindowNegotiation

    ext_neg = None
    if window > 1:
        item = AsynchronousOperationsWindowNegotiation()
        item.maximum_number_operations_invoked = window
        item.maximum_number_operations_performed = window
        ext_neg = [item]

    def associate(**kwargs: Any) -> Any:
        return ae.associate_async(HOST, port, ae_title="BENCH-SCP", tls_args=tls_args, ext_neg=ext_neg, **kwargs)

    async def spread(n: int, one: Callable[[int], Any]) -> int:
        """``one(i)`` for i in 0..n-1, ``window`` at a time; the errors."""
        if window <= 1:
            return sum([await one(i) for i in range(n)])

        async def worker(first: int) -> int:
            return sum([await one(i) for i in range(first, n, window)])

        return sum(await asyncio.gather(*(worker(k) for k in range(window))))

    @evt.inline  # an asyncio program's counter: on its loop, no thread hand-off
    def store_handler(event: Any) -> int:  # C-GET sub-operations: counted, not decoded
        received[0] += 1
        return 0x0000

    async def echo(n: int) -> tuple[float, float, int, int]:
        assoc = await associate()
        if not assoc.is_established:
            raise RuntimeError("association not established")

        async def one(i: int) -> int:
            return _check(await assoc.send_c_echo())

        t0 = time.monotonic()
        errors = await spread(n, one)
        t1 = time.monotonic()
        await assoc.release()
        return t0, t1, n, errors

    async def assoc_cycle(n: int) -> tuple[float, float, int, int]:
        errors = 0
        t0 = time.monotonic()
        for _ in range(n):
            assoc = await ae.associate_async(HOST, port, ae_title="BENCH-SCP", tls_args=tls_args)
            if not assoc.is_established:
                errors += 1
                continue
            errors += _check(await assoc.send_c_echo())
            await assoc.release()
        t1 = time.monotonic()
        return t0, t1, n, errors

    async def store(n: int) -> tuple[float, float, int, int]:
        assoc = await associate()
        if not assoc.is_established:
            raise RuntimeError("association not established")

        async def one(i: int) -> int:
            return _check(await assoc.send_c_store(datasets[i % len(datasets)]))

        t0 = time.monotonic()
        errors = await spread(n * len(datasets), one)
        t1 = time.monotonic()
        await assoc.release()
        return t0, t1, n * len(datasets), errors

    async def find_many(n: int) -> tuple[float, float, int, int]:
        assoc = await associate()
        if not assoc.is_established:
            raise RuntimeError("association not established")
        t0 = time.monotonic()
        matches, final = await _acount_find(assoc.send_c_find(_find_all(), FIND_MODEL))
        t1 = time.monotonic()
        await assoc.release()
        return t0, t1, matches, int(final != 0) + int(matches != n)

    async def find_one(n: int) -> tuple[float, float, int, int]:
        assoc = await associate()
        if not assoc.is_established:
            raise RuntimeError("association not established")

        async def one(i: int) -> int:
            matches, final = await _acount_find(assoc.send_c_find(_find_uid(uids[i % len(uids)]), FIND_MODEL))
            return int(final != 0) + int(matches != 1)

        t0 = time.monotonic()
        errors = await spread(n, one)
        t1 = time.monotonic()
        await assoc.release()
        return t0, t1, n, errors

    async def retrieve(n: int) -> tuple[float, float, int, int]:
        received[0] = 0
        handlers = [(evt.EVT_C_STORE, store_handler)] if workload == "get" else None
        assoc = await associate(evt_handlers=handlers)
        if not assoc.is_established:
            raise RuntimeError("association not established")
        identifier = _retrieve_uids(uids[:n])
        t0 = time.monotonic()
        if workload == "get":
            responses = assoc.send_c_get(identifier, GET_MODEL)
        else:
            responses = assoc.send_c_move(identifier, move_aet, MOVE_MODEL)
        final = None
        async for status, _ in responses:
            final = status
        t1 = time.monotonic()
        await assoc.release()
        return t0, t1, n, _retrieve_errors(final, n, received[0] if workload == "get" else n)

    return {"echo": echo, "assoc": assoc_cycle, "store": store, "find-many": find_many, "find-one": find_one,
            "get": retrieve, "move": retrieve}[workload]


# -------------------------------------------------------------------- Q/R helpers
def _find_all() -> Any:
    """W2: every bench palette (ContentLabel BENCH_nnnnn), UID and label returned."""
    from pydicom import Dataset

    ds = Dataset()
    ds.SOPInstanceUID = ""
    ds.ContentLabel = "BENCH*"
    return ds


def _find_uid(uid: str) -> Any:
    from pydicom import Dataset

    ds = Dataset()
    ds.SOPInstanceUID = uid
    ds.ContentLabel = ""
    return ds


def _retrieve_uids(uids: list[str]) -> Any:
    """A retrieve identifier: the SOP Instance UID list (one multi-valued key)."""
    from pydicom import Dataset

    ds = Dataset()
    ds.SOPInstanceUID = uids if len(uids) > 1 else uids[0]
    return ds


def _count_find(responses: Any) -> tuple[int, int | None]:
    matches, final = 0, None
    for status, found in responses:
        if status is None or "Status" not in status:
            break
        if status.Status in (0xFF00, 0xFF01):
            matches += found is not None
        else:
            final = int(status.Status)
    return matches, final


async def _acount_find(responses: Any) -> tuple[int, int | None]:
    matches, final = 0, None
    async for status, found in responses:
        if status is None or "Status" not in status:
            break
        if status.Status in (0xFF00, 0xFF01):
            matches += found is not None
        else:
            final = int(status.Status)
    return matches, final


def _retrieve_errors(final: Any, n: int, received: int) -> int:
    """0 when the final response is Success with n completed sub-operations
    (and, for C-GET, n C-STOREs arrived)."""
    if final is None or "Status" not in final or final.Status != 0:
        return 1
    completed = int(final.get("NumberOfCompletedSuboperations", n) or 0)
    return int(completed != n) + int(received != n)


def _dcmtk_workload(workload: str, port: int, keys: dict[str, Any], move_aet: str,
                    out_dir: Path, tls_dir: Path | None = None,
                    nodelay: bool = True) -> Callable[[int], tuple[float, float, int, int]]:
    """DCMTK's command-line SCUs, one process per run (W7: per association);
    the Q/R workloads on the Patient Root model of dcmqrscp. ``tls_dir``:
    over TLS (``+tla``: no client certificate; the server verified against
    the CA there), for the tools that have TLS (not getscu and movescu in
    DCMTK 3.6.7)."""
    import shutil
    import subprocess
    import tempfile

    tool = {name: f"{DCMTK_BIN}/{name}" for name in ("echoscu", "storescu", "findscu", "getscu", "movescu")}
    peer = ["-aec", "BENCH-SCP", "-aet", "BENCH-SCU", HOST, str(port)]
    if tls_dir is not None:
        if workload in ("get", "move"):
            raise SystemExit("DCMTK's getscu and movescu have no TLS")
        peer = ["+tla", "+cf", _tls_files(tls_dir)["ca.pem"], *peer]
    series = ["-k", f"PatientID={keys.get('PatientID', '')}", "-k", f"StudyInstanceUID={keys.get('StudyInstanceUID', '')}",
              "-k", f"SeriesInstanceUID={keys.get('SeriesInstanceUID', '')}"]
    palettes = [str(p) for p in sorted(_palette_files())]
    get_dir = Path(tempfile.mkdtemp(prefix="getscu-", dir=out_dir))

    # DCMTK sets TCP_NODELAY on its sockets when the environment says so.
    env = dcmtk_env(nodelay)

    def run(argv: list[str]) -> tuple[float, float, subprocess.CompletedProcess[bytes]]:
        t0 = time.monotonic()
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=env)
        t1 = time.monotonic()
        return t0, t1, done

    def failed(done: subprocess.CompletedProcess[bytes]) -> int:
        text = done.stdout.decode(errors="replace")
        bad = done.returncode != 0 or "E: " in text or "Failed" in text
        if bad:
            sys.stderr.write(f"{done.args[0]} exit {done.returncode}: {text[-2000:]}\n")
        return int(bad)

    def echo(n: int) -> tuple[float, float, int, int]:
        t0, t1, done = run([tool["echoscu"], "--repeat", str(n), *peer])
        return t0, t1, n, failed(done)

    def assoc_cycle(n: int) -> tuple[float, float, int, int]:
        errors = 0
        t0 = time.monotonic()
        for _ in range(n):
            errors += failed(run([tool["echoscu"], *peer])[2])
        return t0, time.monotonic(), n, errors

    def store(n: int) -> tuple[float, float, int, int]:
        # -R: propose only the files' SOP classes (the default list lacks Color Palette Storage)
        t0, t1, done = run([tool["storescu"], "-R", *peer, *(palettes * n)])
        return t0, t1, n * len(palettes), failed(done)

    def image_query(uid: str = "") -> list[str]:
        return ["-P", "-k", "QueryRetrieveLevel=IMAGE", *series, "-k", f"SOPInstanceUID={uid}"]

    def find_many(n: int) -> tuple[float, float, int, int]:
        t0, t1, done = run([tool["findscu"], "-q", *image_query(), *peer])
        return t0, t1, n, failed(done)

    def find_one(n: int) -> tuple[float, float, int, int]:
        t0, t1, done = run([tool["findscu"], "-q", "--repeat", str(n), *image_query(keys["SOPInstanceUID"]), *peer])
        return t0, t1, n, failed(done)

    def get(n: int) -> tuple[float, float, int, int]:
        t0, t1, done = run([tool["getscu"], "-P", "-k", "QueryRetrieveLevel=SERIES", *series, "-od", str(get_dir), *peer])
        got = sum(1 for _ in get_dir.iterdir())
        shutil.rmtree(get_dir)  # outside the timing
        get_dir.mkdir()
        return t0, t1, n, failed(done) + int(got != n)

    def move(n: int) -> tuple[float, float, int, int]:
        t0, t1, done = run([tool["movescu"], "-v", "-P", "-aem", move_aet, "-k", "QueryRetrieveLevel=SERIES",
                            *series, *peer])
        text = done.stdout.decode(errors="replace")
        ok = "Final Move Response (Success)" in text  # dcmqrscp: any failed sub-operation -> warning/failure
        if not ok:
            sys.stderr.write(f"movescu: no successful final response:\n{text[-3000:]}\n")
        return t0, t1, n, failed(done) + int(not ok)

    return {"echo": echo, "assoc": assoc_cycle, "store": store, "find-many": find_many, "find-one": find_one,
            "get": get, "move": move}[workload]


def dcmtk_env(nodelay: bool) -> dict[str, str]:
    """The environment of a DCMTK tool: ``TCP_NODELAY=1`` or none at all."""
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def _dcmtk_check_find(port: int, keys: dict[str, Any], n: int, uid: str = "") -> None:
    """Untimed: a verbose findscu run, its responses counted."""
    import subprocess

    argv = [f"{DCMTK_BIN}/findscu", "-P", "-k", "QueryRetrieveLevel=IMAGE",
            "-k", f"PatientID={keys['PatientID']}", "-k", f"StudyInstanceUID={keys['StudyInstanceUID']}",
            "-k", f"SeriesInstanceUID={keys['SeriesInstanceUID']}", "-k", f"SOPInstanceUID={uid}",
            "-aec", "BENCH-SCP", HOST, str(port)]
    done = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, TCP_NODELAY="1"))
    import re

    got = len(re.findall(r"Find Response: \d+ \(Pending\)", done.stdout + done.stderr))
    if done.returncode != 0 or got != n:
        raise SystemExit(f"findscu check: {got} matches, expected {n} (exit {done.returncode})\n"
                         f"{(done.stdout + done.stderr)[-2000:]}")


def _palette_files() -> list[Path]:
    from pydicom.data import get_palette_files

    return sorted(Path(f) for f in get_palette_files("*.dcm"))


def run_client(args: argparse.Namespace) -> None:
    impl, port, nodelay, workload, n, warmup = args.impl, args.port, args.nodelay, args.workload, args.n, args.warmup
    datasets = _palettes() if workload == "store" and impl != "dcmtk" else []
    uids = args.uids.read_text().split() if args.uids else []
    received = [0]
    model = {"find-many": FIND_MODEL, "find-one": FIND_MODEL, "get": GET_MODEL, "move": MOVE_MODEL}.get(workload)
    contexts = [VERIFICATION] + ([COLOR_PALETTE_STORAGE] if workload == "store" else []) + ([model] if model else [])
    run_once: Callable[[int], tuple[float, float, int, int]]

    if impl == "pynetdicom":
        import pynetdicom
        from pynetdicom import evt

        ae = pynetdicom.AE("BENCH-SCU")
        for c in contexts:
            ae.add_requested_context(c)
        handlers = [(evt.EVT_CONN_OPEN, _set_nodelay)] if nodelay else []
        ext_neg = []
        if workload == "get":  # C-STORE sub-operations on this association: SCP role
            ae.add_requested_context(COLOR_PALETTE_STORAGE)
            ext_neg = [pynetdicom.build_role(COLOR_PALETTE_STORAGE, scp_role=True)]

            def on_store(event: Any) -> int:  # counted, not decoded
                received[0] += 1
                return 0x0000

            handlers.append((evt.EVT_C_STORE, on_store))

        def factory() -> Any:
            return ae.associate(HOST, port, ae_title="BENCH-SCP", evt_handlers=handlers, ext_neg=ext_neg)

        # Check once, outside the timing, that the socket option is what we claim.
        probe = factory()
        if not probe.is_established:
            raise SystemExit("pynetdicom client: probe association failed")
        got = probe.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        if bool(got) != nodelay:
            raise SystemExit(f"pynetdicom client: TCP_NODELAY is {got}, wanted {int(nodelay)}")
        probe.release()
        run_once = _blocking_workload(workload, factory, datasets, uids, received, args.move_aet)
        warm = _blocking_workload("find-one", factory, datasets, uids, received, args.move_aet)
    elif impl == "chromanet-blocking":
        from chromanet import evt as cevt
        from chromanet.ae import AE

        ae = AE("BENCH-SCU")
        ae.tcp_quickack = args.quickack
        for c in contexts:
            ae.add_requested_context(c)

        def on_store_cn(event: Any) -> int:  # counted, not decoded
            received[0] += 1
            return 0x0000

        bound = [(cevt.EVT_C_STORE, on_store_cn)] if workload == "get" else None

        def factory() -> Any:
            return ae.associate(HOST, port, ae_title="BENCH-SCP", evt_handlers=bound)

        run_once = _blocking_workload(workload, factory, datasets, uids, received, args.move_aet)
        warm = _blocking_workload("find-one", factory, datasets, uids, received, args.move_aet)
    elif impl == "chromanet-async":
        import asyncio

        from chromanet.ae import AE
        from chromanet.loopthread import new_event_loop

        ae = AE("BENCH-SCU")
        ae.tcp_quickack = args.quickack
        for c in contexts:
            ae.add_requested_context(c)
        tls_args = None
        if args.tls_dir is not None:
            from chromanet.tls_context import client_context

            tls_args = (client_context(_tls_files(args.tls_dir)["ca.pem"]), None)
        loop = new_event_loop()  # uvloop when installed
        asyncio.set_event_loop(loop)
        coro_fn = _async_workload(workload, ae, port, datasets, uids, received, args.move_aet, tls_args, args.window)
        warm_fn = _async_workload("find-one", ae, port, datasets, uids, received, args.move_aet, tls_args,
                                  args.window)

        def run_once(count: int) -> tuple[float, float, int, int]:
            return loop.run_until_complete(coro_fn(count))

        def warm(count: int) -> tuple[float, float, int, int]:
            return loop.run_until_complete(warm_fn(count))
    elif impl == "dcmtk":
        keys = json.loads(args.dcmtk_keys.read_text()) if args.dcmtk_keys else {}
        run_once = _dcmtk_workload(workload, port, keys, args.move_aet, args.scratch, args.tls_dir, nodelay)
        warm = run_once
        if workload in ("find-many", "find-one"):  # DCMTK prints no counts: check them once, verbosely
            _dcmtk_check_find(port, keys, n if workload == "find-many" else 1,
                              "" if workload == "find-many" else keys["SOPInstanceUID"])
            warmup = 0
        elif workload in ("get", "move"):
            warmup = 0  # series level: the warm-up would move the whole series
    else:
        raise SystemExit(f"unknown client impl {impl!r}")
    if args.window > 1 and impl != "chromanet-async":
        raise SystemExit(f"--window: not implemented for the {impl} client")
    if args.tls_dir is not None and impl not in ("chromanet-async", "dcmtk"):
        raise SystemExit(f"--tls-dir: not implemented for the {impl} client")

    if warmup > 0:  # untimed: first-call imports, caches, allocator
        if workload == "find-many":
            warm(warmup)  # a few one-match C-FINDs
        else:
            t0, t1, count, errors = run_once(warmup)
            if errors:
                raise SystemExit(f"warm-up of {workload} ({warmup}): {errors} error(s)")
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd != "go":
            continue
        try:
            cpu0 = _cpu_seconds()
            t0, t1, count, errors = run_once(n)
            out = {"t0": t0, "t1": t1, "n": count, "errors": errors, "cpu_s": _cpu_seconds() - cpu0}
        except Exception as exc:  # reported to the harness, which fails the cell
            logging.getLogger("e2e").exception("workload %s failed", workload)
            out = {"error": f"{type(exc).__name__}: {exc}"}
        out["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(out), flush=True)
    os._exit(0)  # do not wait on non-daemon engine threads


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its waited-for children
    (DCMTK's tools) so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


WORKLOADS = ["echo", "assoc", "store", "find-many", "find-one", "get", "move"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("scp")
    s.add_argument("--impl", required=True, choices=["chromanet", "chromanet-aio", "pynetdicom", "chromanet-node",
                                                         "chromanet-qr", "pynetdicom-qr"])
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--nodelay", action="store_true")
    s.add_argument("--no-quickack", dest="quickack", action="store_false", help="chromanet: tcp_quickack off")
    s.add_argument("--data-dir", type=Path, help="Q/R SCPs: an archive built by 'data'")
    s.add_argument("--move-dest", action="append", default=[], metavar="AET=PORT")
    s.add_argument("--tls-dir", type=Path, help="TLS only, with DIR/server.pem and DIR/server.key (chromanet)")
    s.add_argument("--index", help="chromanet-node: index URL (postgresql://...); default SQLite in --data-dir")
    s.add_argument("--inline-handlers", dest="inline", action="store_true",
                   help="chromanet, chromanet-qr: sync handlers inline on the loop (AE.sync_handlers_inline)")
    s.add_argument("--window", type=int, default=1,
                   help="chromanet, chromanet-qr: the asynchronous operations window offered, both ways "
                        "(default 1)")
    c = sub.add_parser("client")
    c.add_argument("--impl", required=True, choices=["chromanet-async", "chromanet-blocking", "pynetdicom", "dcmtk"])
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--nodelay", action="store_true", help="pynetdicom, dcmtk: TCP_NODELAY on")
    c.add_argument("--no-quickack", dest="quickack", action="store_false", help="chromanet: tcp_quickack off")
    c.add_argument("--workload", required=True, choices=WORKLOADS)
    c.add_argument("--n", type=int, required=True,
                   help="echoes, associations, palette rounds (x8 stores), matches, C-FINDs or instances")
    c.add_argument("--warmup", type=int, default=0, help="run the workload once with this size before 'ready'")
    c.add_argument("--uids", type=Path, help="Q/R: file with the SOP Instance UIDs of the set")
    c.add_argument("--move-aet", default="BENCH-STORE")
    c.add_argument("--dcmtk-keys", type=Path, help="dcmtk Q/R: the set's Patient Root keys (JSON)")
    c.add_argument("--scratch", type=Path, default=Path("/tmp"), help="dcmtk get: where getscu writes")
    c.add_argument("--tls-dir", type=Path, help="over TLS, verifying the SCP against DIR/ca.pem "
                   "(chromanet-async, dcmtk)")
    c.add_argument("--window", type=int, default=1,
                   help="chromanet-async: propose this asynchronous operations window both ways and keep that "
                        "many requests outstanding (W1, W3, W8; default 1: one at a time)")
    d = sub.add_parser("data")
    d.add_argument("--root", type=Path, required=True)
    d.add_argument("--set", action="append", required=True, metavar="NAME:small|large:N")
    d.add_argument("--dcmtk", action="store_true", help="also build the dcmqrscp storage areas")
    args = p.parse_args()
    # Warnings and errors (aborts, timeouts) of either engine go to stderr,
    # which the harness keeps in bench-results/e2e-logs/. INFO stays off: at
    # WARNING the per-message log calls cost only a level check.
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {args.role}[{os.getpid()}] %(name)s %(levelname)s %(message)s")
    if args.role == "scp":
        dests = {}
        for entry in args.move_dest:
            aet, _, port = entry.partition("=")
            dests[aet] = int(port)
        run_scp(args.impl, args.port, args.nodelay, args.data_dir, dests, args.tls_dir, args.quickack,
                args.index, args.inline, args.window)
    elif args.role == "data":
        run_data(args.root, args.set, args.dcmtk)
    else:
        run_client(args)


if __name__ == "__main__":
    main()
