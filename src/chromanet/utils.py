"""Small helpers with pynetdicom's names (``debug_logger``)."""

from __future__ import annotations

import logging
import sys

__all__ = ["debug_logger"]


def debug_logger() -> None:
    """Log everything the "chromanet" logger tree emits, at DEBUG, to
    stderr. Calling it again does not add a second handler."""
    logger = logging.getLogger("chromanet")
    for handler in list(logger.handlers):
        if getattr(handler, "_chromanet_debug", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._chromanet_debug = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(levelname).1s: %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
