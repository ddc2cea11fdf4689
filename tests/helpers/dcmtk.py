"""DCMTK's command-line tools as test peers, and their set-up.

- Finding the tools: pynetdicom installs console scripts with the same names
  (storescp, echoscu...) that may come first on PATH, so only a tool that
  says it is DCMTK's counts.
- storescp: DCMTK's default profile has no Color Palette Storage, and
  ``--promiscuous`` only takes SOP classes DCMTK does not know, so every test
  gives it the one profile in ``tests/data/storescp-palettes.cfg``
  (``storescp_palette_options()``).
- dcmqrscp: its configuration file, written next to its storage area.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from helpers.data import DATA_DIR
from helpers.peers import missing_peer

DCMTK_HINT = "apt-get install dcmtk"

# The association negotiation profile file, and the profile in it.
STORESCP_PROFILE = DATA_DIR / "storescp-palettes.cfg"
STORESCP_PROFILE_NAME = "Palettes"


def storescp_palette_options() -> list[str]:
    """storescp's options accepting Verification and Color Palette Storage
    (Explicit VR LE, Implicit VR LE, Explicit VR BE)."""
    return ["-xf", str(STORESCP_PROFILE), STORESCP_PROFILE_NAME]


def _is_dcmtk(path: str) -> bool:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "dcmtk" in (out.stdout + out.stderr).lower()


_DCMTK_CACHE: dict[str, str | None] = {}


def find_dcmtk_tool(name: str) -> str | None:
    """The first ``name`` on PATH that is DCMTK's. pynetdicom installs
    console scripts with the same names (storescp, echoscu...) that may come
    first on PATH, so ``shutil.which`` alone is not enough."""
    if name not in _DCMTK_CACHE:
        found = None
        for directory in os.environ.get("PATH", "").split(os.pathsep):
            candidate = shutil.which(name, path=directory)
            if candidate and _is_dcmtk(candidate):
                found = candidate
                break
        _DCMTK_CACHE[name] = found
    return _DCMTK_CACHE[name]


def require_dcmtk(name: str) -> str:
    path = find_dcmtk_tool(name)
    if path is None:
        missing_peer(f"DCMTK's {name} not installed: {DCMTK_HINT}")
    assert path is not None
    return path


DCMQRSCP_CONFIG = """\
NetworkTCPPort  = {port}
MaxPDUSize      = 16384
MaxAssociations = 16
HostTable BEGIN
HostTable END
VendorTable BEGIN
VendorTable END
AETable BEGIN
{ae_title}  {area}  R  (10, 64mb)  ANY
AETable END
"""


def write_dcmqrscp_config(path: Path, port: int, area: Path, ae_title: str = "QRSCP") -> Path:
    """A dcmqrscp configuration: AE ``ae_title`` serving the storage area
    ``area`` read-only to any peer, on ``port``."""
    path.write_text(DCMQRSCP_CONFIG.format(port=port, area=area, ae_title=ae_title))
    return path
