"""Fixtures for the interoperability tests: pynetdicom SCPs recording what
they received, on free ports, shut down after the test (the chromanet SCPs
and the ``dcmtk``/``pynetdicom`` peer fixtures are in tests/conftest.py)."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from helpers.servers import PynetdicomScp, start_pynetdicom_scp


@pytest.fixture
def make_pynetdicom_scp(pynetdicom: Any) -> Iterator[Callable[..., PynetdicomScp]]:
    """Factory for pynetdicom SCPs (Verification + Color Palette Storage)
    recording stored data sets and notification events
    (``helpers.servers.start_pynetdicom_scp``); shut down after the test."""
    started: list[Any] = []

    def make(ae_title: str = "PYSCP", require_called_aet: bool = False, ssl_context: Any = None) -> PynetdicomScp:
        handle = start_pynetdicom_scp(pynetdicom, ae_title, require_called_aet, ssl_context)
        started.append(handle.server)
        return handle

    try:
        yield make
    finally:
        for server in started:
            server.shutdown()


@pytest.fixture
def pynetdicom_scp(make_pynetdicom_scp: Callable[..., PynetdicomScp]) -> PynetdicomScp:
    return make_pynetdicom_scp()
