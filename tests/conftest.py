"""Fixtures and hooks shared by every test folder.

The set-up they stand on (SCP starters, recorders, DCMTK lookup, palette
files...) is plain code in ``helpers/``; here are only the fixtures that
give it a lifetime. Every server a fixture starts listens on 127.0.0.1
port 0 (a free port the kernel picks) and is shut down in the fixture's
``finally``, whatever the test did; every wait is bounded
(``helpers.waits``). Fixtures only one folder uses are in that folder's
conftest.py (interop/, services/).

External peers (pynetdicom, DCMTK tools) are found at test time; when one is
missing the test is skipped with the reason, except under CI (``CI`` set in
the environment), where a missing peer fails the test: CI must run them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from helpers.data import palette_paths
from helpers.dcmtk import require_dcmtk
from helpers.peers import require_module
from helpers.postgres import PgCluster, running_cluster
from helpers.qr import configure_qr_scp_ae
from helpers.servers import ScpHandle, async_scp, configure_scp_ae, start_scp
from helpers.tls import Pki, make_pki


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "peer: needs an external DICOM peer (pynetdicom or DCMTK tools)")
    config.addinivalue_line("markers", "load: many concurrent associations against one server")


# ---------------------------------------------------------------- peers
@pytest.fixture
def dcmtk() -> Callable[[str], str]:
    """``dcmtk("storescu")`` -> path of DCMTK's tool (skip/fail if missing)."""
    return require_dcmtk


@pytest.fixture
def pynetdicom() -> Any:
    return require_module("pynetdicom")


# ---------------------------------------------------------------- PostgreSQL
@pytest.fixture(scope="session")
def postgres() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster for the run (``helpers.postgres``):
    initdb in a temporary directory, a free port, its socket in that
    directory; stopped and removed at the end. Skipped (failed under CI)
    without PostgreSQL's binaries."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def private_cluster() -> Iterator[PgCluster]:
    """A cluster of the test's own, which it may stop and start."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_url(postgres: PgCluster) -> str:
    """The URL of a new empty database in the run's cluster."""
    return postgres.create_database()


# ---------------------------------------------------------------- data
@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Test CAs and certificates (``helpers.tls``), made once per run in a
    temporary directory."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def palette_files() -> list[Path]:
    return palette_paths()


@pytest.fixture(scope="session")
def palettes(palette_files: list[Path]) -> dict[str, Any]:
    """SOP Instance UID -> the palette as read by pydicom (8 entries;
    ``ds.filename`` is its file)."""
    import pydicom

    read = {}
    for path in palette_files:
        ds = pydicom.dcmread(path)
        read[str(ds.SOPInstanceUID)] = ds
    assert sorted(read) == [f"1.2.840.10008.1.5.{i}" for i in range(1, 9)]
    return read


# ---------------------------------------------------------------- chromanet SCPs
@pytest.fixture
def make_scp() -> Iterator[Callable[..., ScpHandle]]:
    """Factory for blocking-API chromanet SCPs (on the background loop):
    ``make_scp(ae_title=..., transfer_syntaxes=..., handlers=[...],
    store=True, ssl_context=None, **ae_settings)``. All are shut down after
    the test."""
    started: list[Any] = []

    def make(
        ae_title: str = "SRV",
        transfer_syntaxes: list[str] | None = None,
        handlers: list[Any] | None = None,
        store: bool = True,
        ssl_context: Any = None,
        **settings: Any,
    ) -> ScpHandle:
        ae = configure_scp_ae(ae_title, transfer_syntaxes, **settings)
        return start_scp(started, ae, handlers, store, ssl_context)

    try:
        yield make
    finally:
        for server in started:
            server.shutdown()


@pytest.fixture
def chromanet_scp(make_scp: Callable[..., ScpHandle]) -> ScpHandle:
    """A blocking-API chromanet SCP "SRV": Verification + Color Palette
    Storage (all four default transfer syntaxes), recording what it stored."""
    return make_scp()


@pytest.fixture
def async_chromanet_scp() -> Callable[..., Any]:
    """``async with async_chromanet_scp(**options) as scp:`` inside a test
    coroutine run by ``run_async`` (the server lives on that loop)."""
    return async_scp


@pytest.fixture
def make_qr_scp() -> Iterator[Callable[..., ScpHandle]]:
    """Factory for blocking-API chromanet Q/R SCPs on free ports:
    ``make_qr_scp(handlers=[(evt.EVT_C_FIND, on_find)], **ae_settings)``.
    All are shut down after the test."""
    started: list[Any] = []

    def make(handlers: list[Any] | None = None, ae_title: str = "QRSCP", **settings: Any) -> ScpHandle:
        return start_scp(started, configure_qr_scp_ae(ae_title, **settings), handlers, store=False)

    try:
        yield make
    finally:
        for server in started:
            server.shutdown()
