#!/usr/bin/env python3
"""A Color Palette SCP written as a pynetdicom program is, on a chromanet AE
("library mode"): plain ``def`` handlers for C-STORE, C-FIND, C-GET and
C-MOVE that take and yield pydicom Datasets, run in chromanet's handler
threads. The archive node (``chromanet serve``) answers from its index on
its own fast paths; this SCP goes through the engine's other paths: event
decoding, generator handlers advanced in worker threads, sub-operations
from yielded Datasets, handler statuses.

For ``scripts/fuzz_node.py --scp library``, which starts it, sends it
mutated PDUs and scans its log (stderr) for tracebacks and ERROR lines.
The handlers guard what they read of the peer's data sets, as a careful
program does, so that a traceback left in the log is the engine's.

    .venv/bin/python scripts/library_scp.py --port 11112 [--timeout 3]
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import signal
import sys
import threading
from typing import Any

from pydicom import Dataset
from pydicom.data import get_palette_files
from pydicom import dcmread

from chromanet import evt, uids
from chromanet.ae import AE

STORE = uids.ColorPaletteStorage
FIND, GET, MOVE = (uids.ColorPaletteInformationModelFind, uids.ColorPaletteInformationModelGet,
                   uids.ColorPaletteInformationModelMove)  # fmt: skip
CANNOT_UNDERSTAND = 0xC000
IDENTIFIER_DOES_NOT_MATCH = 0xA900


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--ae-title", default="CHROMANET")
    parser.add_argument("--timeout", type=float, default=3.0, help="ACSE, DIMSE and network timeouts (s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip

    palettes: dict[str, Dataset] = {}
    lock = threading.Lock()
    for path in get_palette_files("*.dcm"):
        ds = dcmread(path)
        palettes[str(ds.SOPInstanceUID)] = ds

    def wanted(identifier: Dataset) -> list[str] | None:
        value = identifier.get("SOPInstanceUID", "")
        if value in (None, ""):
            return None
        return [str(v) for v in value] if not isinstance(value, str) else [value]

    def on_store(event: Any) -> int:
        try:
            ds = event.dataset
            uid = str(ds.SOPInstanceUID)
        except Exception:
            return CANNOT_UNDERSTAND
        with lock:
            if len(palettes) < 256 or uid in palettes:
                palettes[uid] = ds
        return 0x0000

    def on_find(event: Any) -> Any:
        try:
            identifier = event.identifier
            label = str(identifier.get("ContentLabel", "") or "")
            uids_wanted = wanted(identifier)
            keys = [elem.keyword for elem in identifier if elem.keyword]
        except Exception:
            yield IDENTIFIER_DOES_NOT_MATCH, None
            return
        with lock:
            candidates = list(palettes.items())
        for uid, ds in candidates:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            if uids_wanted is not None and uid not in uids_wanted:
                continue
            if label and not fnmatch.fnmatchcase(str(ds.get("ContentLabel", "")), label):
                continue
            match = Dataset()
            for key in keys:
                setattr(match, key, ds.get(key, ""))
            yield 0xFF00, match

    def retrieve(event: Any) -> list[Dataset] | None:
        try:
            uids_wanted = wanted(event.identifier) or []
        except Exception:
            return None
        with lock:
            return [palettes[uid] for uid in uids_wanted if uid in palettes]

    def on_get(event: Any) -> Any:
        found = retrieve(event)
        if found is None:
            yield 0
            yield IDENTIFIER_DOES_NOT_MATCH, None
            return
        yield len(found)
        for ds in found:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, ds

    def on_move(event: Any) -> Any:
        yield None, None  # no move destination is known here: 0xA801

    ae = AE(args.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    ae.maximum_associations = 1000
    ae.add_supported_context(uids.Verification)
    for model in (FIND, GET, MOVE):
        ae.add_supported_context(model)
    ae.add_supported_context(STORE, scu_role=True, scp_role=True)
    handlers = [(evt.EVT_C_STORE, on_store), (evt.EVT_C_FIND, on_find), (evt.EVT_C_GET, on_get),
                (evt.EVT_C_MOVE, on_move)]  # fmt: skip
    server = ae.start_server((args.bind, args.port), block=False, evt_handlers=handlers)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
