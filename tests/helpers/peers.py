"""External peers (pynetdicom, DCMTK tools) are found at test time.

When one is missing the test is skipped with the reason, except under CI
(``CI`` set in the environment), where a missing peer fails the test: CI
must run them all.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest


def missing_peer(reason: str) -> None:
    """Skip, or fail under CI: a CI run must exercise every peer."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: peers are required)", pytrace=False)
    pytest.skip(reason)


def require_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        missing_peer(f"{name} not installed: pip install {name}")
