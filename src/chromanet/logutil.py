"""Logging what a peer can make us repeat, without letting it flood the log.

A malformed or hostile peer can make the node log the same warning as fast
as it can send: ``peer_log`` lets the first ``BURST`` records of one kind
from one peer host through in each ``INTERVAL`` seconds, counts the rest,
and says how many it dropped when the next one gets through.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

#: Records of one kind from one host allowed through per interval.
BURST = 5
INTERVAL = 60.0
#: Hosts x kinds remembered; the oldest is forgotten past this.
_MAX_KEYS = 4096

# (host, logger name, message format) -> [window start, count, dropped]
_windows: OrderedDict[tuple[str, str, str], list[float]] = OrderedDict()


def peer_log(logger: logging.Logger, level: int, peer_host: str, message: str, *args: object) -> None:
    """``logger.log(level, message, *args)``, rate-limited per peer host and
    message (the format string, so every ``protocol error: %s`` of a host is
    one kind)."""
    if not logger.isEnabledFor(level):
        return
    key = (peer_host, logger.name, message)
    now = time.monotonic()
    window = _windows.get(key)
    if window is None or now - window[0] >= INTERVAL:
        dropped = int(window[2]) if window is not None else 0
        _windows[key] = [now, 1.0, 0.0]
        _windows.move_to_end(key)
        if len(_windows) > _MAX_KEYS:
            _windows.popitem(last=False)
        if dropped:
            logger.log(level, message + " (%d more like it from %s were not logged)", *args, dropped, peer_host)
        else:
            logger.log(level, message, *args)
        return
    window[1] += 1
    if window[1] <= BURST:
        logger.log(level, message, *args)
    else:
        window[2] += 1


def reset() -> None:
    """Forget every window (for tests)."""
    _windows.clear()
