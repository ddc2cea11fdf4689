"""Fixtures for the service tests: pynetdicom C-MOVE destinations on free
ports, shut down after the test (the chromanet SCPs are in tests/conftest.py)."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from helpers.qr import PynetdicomDestination, start_pynetdicom_destination


@pytest.fixture
def make_pynetdicom_destination(pynetdicom: Any) -> Iterator[Callable[..., PynetdicomDestination]]:
    """Factory for pynetdicom Color Palette Storage SCPs (C-MOVE
    destinations) answering each C-STORE from a StoreLog; shut down after
    the test."""
    started: list[Any] = []

    def make(ae_title: str = "PYDEST", answers: dict[str, int] | None = None) -> PynetdicomDestination:
        destination = start_pynetdicom_destination(pynetdicom, ae_title, answers)
        started.append(destination.server)
        return destination

    try:
        yield make
    finally:
        for server in started:
            server.shutdown()
