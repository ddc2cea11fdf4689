"""The quick-ACK setting (``AE.tcp_quickack``) as the applications expose
it: ``chromanet serve`` (TOML key ``tcp_quickack``, ``--[no-]tcp-quickack``)
and ``chromanet bench`` (``--[no-]tcp-quickack``). On by default, and off
where it is turned off: on the node's AE, so on every association it
accepts and every C-MOVE sub-association it opens."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest
import uvloop

from chromanet.apps import loadtool
from chromanet.apps.cli import build_parser, load_node_config
from chromanet.apps.node import NodeConfig, PaletteNode
from helpers.servers import scu_ae
from helpers.waits import WAIT_TIMEOUT, until

REPO = Path(__file__).resolve().parents[2]


def serve_config(*argv: str):
    return load_node_config(build_parser().parse_args(["serve", *argv]))


def test_on_by_default_and_in_the_sample_config() -> None:
    assert serve_config().tcp_quickack is True
    assert NodeConfig().tcp_quickack is True
    with open(REPO / "docs" / "serve.toml", "rb") as handle:
        assert tomllib.load(handle)["tcp_quickack"] is True


def test_toml_key_and_flags(tmp_path: Path) -> None:
    off = tmp_path / "off.toml"
    off.write_text("tcp_quickack = false\n")
    assert serve_config("--config", str(off)).tcp_quickack is False
    assert serve_config("--config", str(off), "--tcp-quickack").tcp_quickack is True  # flags win
    assert serve_config("--no-tcp-quickack").tcp_quickack is False


@pytest.mark.parametrize("quickack", [True, False])
def test_node_associations_follow_the_setting(tmp_path: Path, quickack: bool) -> None:
    async def body() -> None:
        config = NodeConfig(port=0, bind_address="127.0.0.1", data_dir=tmp_path / "data", tcp_quickack=quickack,
                            log_level="WARNING")
        node = PaletteNode(config)
        assert node.ae.tcp_quickack is quickack  # also what its C-MOVE sub-associations get
        server = await node.start()
        try:
            async with scu_ae().associate_async("127.0.0.1", server.server_address[1], ae_title="CHROMANET") as assoc:
                assert (await assoc.send_c_echo()).Status == 0
                await asyncio.wait_for(until(lambda: bool(server.active_associations)), WAIT_TIMEOUT)
                (theirs,) = server.active_associations
                assert theirs._ul.connection.tcp_quickack is quickack
        finally:
            await node.close()

    uvloop.run(asyncio.wait_for(body(), 60))


def test_bench_flag() -> None:
    def plan(*argv: str) -> loadtool.Plan:
        parser = build_parser()
        return loadtool.build_plan(parser.parse_args(["bench", "127.0.0.1", "104", *argv]))

    assert plan().tcp_quickack is True
    assert plan("--no-tcp-quickack").tcp_quickack is False
    assert loadtool.Worker(plan("--no-tcp-quickack")).ae.tcp_quickack is False
    assert loadtool.Worker(plan()).ae.tcp_quickack is True
