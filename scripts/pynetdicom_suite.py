#!/usr/bin/env python3
"""Run pynetdicom 3.0.4's own public-API tests under pynetdicom and under chromanet.

    .venv/bin/python scripts/pynetdicom_suite.py                # both, side by side
    .venv/bin/python scripts/pynetdicom_suite.py --lib chromanet --failures
    .venv/bin/python scripts/pynetdicom_suite.py -k TestQRGetServiceClass --failures

What it does, each run:

1. Fetches the pynetdicom 3.0.4 sdist from PyPI once (``pip download
   --no-binary :all: --no-deps pynetdicom==3.0.4``) into the cache directory
   (``.cache/pynetdicom-suite`` in the repository, git-ignored; ``--cache``
   for another) and extracts its ``pynetdicom/tests`` as the package
   ``pnd_tests``. Nothing of it is committed, and the tests are not changed.
2. Runs the selected test files with pytest twice, each split over
   ``--shards`` processes (3), all at once: with the real pynetdicom (installed in the venv as a test peer),
   and with ``scripts/pynetdicom_shim.py`` making ``import pynetdicom``
   resolve to chromanet (Patient Root / Study Root Q/R mapped to the Color
   Palette Q/R SOP classes). A test has ``--timeout`` seconds (60), through
   pytest-timeout.
3. Prints the pass counts for both, and with ``--failures`` every test that
   passes under pynetdicom and not under chromanet, grouped by its error.
   The outcomes of the last run are kept in ``<cache>/results.json``; with
   ``--lib chromanet`` the comparison is with pynetdicom's last full run.

The selection. Files: ``test_ae.py`` (AE configuration, servers,
associate), ``test_assoc.py`` (Association, send_c_*, event handling on both
sides), ``test_events.py`` (Event objects, handler lists),
``test_service_verification.py``, ``test_service_storage.py``,
``test_service_qr.py`` (the C-ECHO/C-STORE/C-FIND/C-GET/C-MOVE SCPs and
their handler protocol) and ``test_transport.py`` (its server, TLS and
event-handling tests). Left out as whole files, because they test
pynetdicom's machinery rather than what a program calls: ``test_acse``,
``test_dul``, ``test_fsm``, ``test_pdu``, ``test_pdu_items``,
``test_primitives``, ``test_dimse_*``, ``test_dsutils``, ``test_utils``,
``test_timer``, ``test_validators``, ``test_assoc_user`` (ServiceUser,
built from the association's internals), ``test_service_class`` (the
ServiceClass objects), ``test_logging`` (log text), ``test_presentation``
(mostly the negotiation functions), ``test_sop`` and ``test_status``
(pynetdicom's SOPClass objects and tables, checked name by name in
``tests/api/test_compat_api.py`` instead), ``test_cli`` and
``test_environment``; and the files of services chromanet does not
implement: ``test_assoc_n``, ``test_service_n``,
``test_service_non_patient``, ``test_service_relevant_patient``,
``test_service_substance_admin``. Within the selected files a test is left
out when its own source uses pynetdicom's internals (the rule, and the
list of internal modules and attributes, are in
``pynetdicom_shim.internal_reason``); the rule reads the test's source,
never a result, so both libraries run the same tests.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

VERSION = "3.0.4"
ROOT = Path(__file__).resolve().parent.parent
SHIM_DIR = Path(__file__).resolve().parent
PACKAGE = "pnd_tests"
SELECTED_FILES = [
    "test_ae.py",
    "test_assoc.py",
    "test_events.py",
    "test_service_verification.py",
    "test_service_storage.py",
    "test_service_qr.py",
    "test_transport.py",
]
LIBRARIES = ("pynetdicom", "chromanet")


def fetch(cache: Path) -> Path:
    """The extracted test package (``<cache>/suite/pnd_tests``), fetched
    and extracted when not there yet."""
    suite = cache / "suite"
    tests = suite / PACKAGE
    if (tests / "__init__.py").exists():
        return tests
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"pynetdicom-{VERSION}.tar.gz"
    if not sdist.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
             f"pynetdicom=={VERSION}", "-d", str(cache)],
            check=True,
        )
    prefix = f"pynetdicom-{VERSION}/pynetdicom/tests/"
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
            archive.extractall(scratch, members=members, filter="data")
        if suite.exists():
            shutil.rmtree(suite)
        suite.mkdir(parents=True)
        shutil.move(str(Path(scratch) / prefix), str(tests))
    # An ini of our own, so that the sdist's and this repository's pytest
    # settings stay out of it.
    (suite / "pytest.ini").write_text("[pytest]\n")
    return tests


class Shard:
    """One pytest process running every n-th selected test for one library;
    restarted after a test that outlives its timeout (pytest-timeout cannot
    interrupt every wait), with the tests already run skipped."""

    def __init__(self, lib: str, index: int, count: int, tests: Path, cache: Path, args: argparse.Namespace) -> None:
        self.lib, self.index, self.count = lib, index, count
        self.tests, self.cache, self.args = tests, cache, args
        self.results = cache / f"results-{lib}-{index}.jsonl"
        self.skip = cache / f"skip-{lib}-{index}.txt"
        self.log = cache / f"pytest-{lib}-{index}.log"
        self.outcomes: dict[str, dict] = {}
        self.left_out: dict[str, str] = {}
        self.running: str | None = None
        self.finished = False
        self.restarts = 0
        for path in (self.results, self.skip, self.log):
            path.unlink(missing_ok=True)
        self.process = self._start()

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYNETDICOM_SUITE_LIB"] = self.lib
        env["PYNETDICOM_SUITE_SHARD"] = f"{self.index}/{self.count}"
        env["PYNETDICOM_SUITE_RESULTS"] = str(self.results)
        if self.skip.exists():
            env["PYNETDICOM_SUITE_SKIP"] = str(self.skip)
        # The tests' get_port() uses 11112/11113 unless it runs under an
        # xdist worker; a worker name per process gives each its own ports.
        env["PYTEST_XDIST_WORKER"] = f"{self.lib}-{self.index}-{self.restarts}"
        env["PYTHONPATH"] = os.pathsep.join([str(SHIM_DIR)] + [p for p in [env.get("PYTHONPATH")] if p])
        command = [
            sys.executable, "-m", "pytest", "-p", "pynetdicom_shim", "-p", "no:cacheprovider",
            "-c", str(self.tests.parent / "pytest.ini"), "--rootdir", str(self.tests.parent),
            "-q", "--no-header", "--tb=short", "-W", "ignore", f"--timeout={self.args.timeout}",
        ]
        if self.args.keyword:
            command += ["-k", self.args.keyword]
        command += [str(self.tests / name) for name in self.args.files]
        with open(self.log, "a") as log:
            return subprocess.Popen(command, cwd=self.tests.parent, env=env, stdout=log, stderr=subprocess.STDOUT)

    def _read(self) -> None:
        self.outcomes.clear()
        self.running = None
        self.finished = False  # of the last session in the file
        if not self.results.exists():
            return
        for line in self.results.read_text().splitlines():
            record = json.loads(line)
            if "left_out" in record:
                self.left_out.update(record["left_out"])
            elif "start" in record:
                self.running = record["start"]
                self.finished = False
            elif "finished" in record:
                self.finished = True
            elif "done" in record:
                name = record.pop("done")
                self.outcomes[name] = record
                self.running = None

    def poll(self, stuck_after: float) -> bool:
        """True once the shard has finished."""
        if self.process.poll() is not None:
            self._read()
            if self.process.returncode in (0, 1, 5) or self.restarts >= 5:
                return True
            # pytest stopped short (an INTERNALERROR while it rendered a
            # failure, a crash): the test it was in failed, the rest go on.
            self._restart_after(f"pytest ended with status {self.process.returncode}")
            return False
        idle = time.time() - self.results.stat().st_mtime if self.results.exists() else 0.0
        if self.finished and idle > 10:
            # Done, but a thread a test left behind keeps it alive.
            self.process.kill()
            self.process.wait()
            return True
        if idle < min(stuck_after, 10):
            return False
        self._read()
        if self.finished or idle < stuck_after:
            return False
        if self.running is None:
            return False
        # One test has outlived its timeout: record it, restart after it.
        self.process.kill()
        self.process.wait()
        self._restart_after(f"hung: killed after {stuck_after:.0f} s")
        return False

    def _restart_after(self, why: str) -> None:
        if self.running is not None:
            with open(self.results, "a") as handle:
                handle.write(json.dumps({"done": self.running, "outcome": "failed", "message": why}) + "\n")
        self._read()
        self.skip.write_text("\n".join(self.outcomes))
        self.restarts += 1
        self.finished = False
        self.process = self._start()


def _group(message: str) -> str:
    """A failure message with its particulars (numbers, addresses, UIDs)
    blurred, so that failures of one cause group together."""
    text = re.sub(r"0x[0-9A-Fa-f]+", "0x…", message)
    text = re.sub(r"\d+(\.\d+)+", "…", text)
    text = re.sub(r"\b\d+\b", "N", text)
    return text[:160]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lib", choices=("both",) + LIBRARIES, default="both")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "pynetdicom-suite")
    parser.add_argument("--timeout", type=int, default=60, help="seconds per test (pytest-timeout)")
    parser.add_argument("--shards", type=int, default=3,
                        help="pytest processes per library (the tests mostly wait on sockets and sleeps)")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression (a part of the selection)")
    parser.add_argument("--files", nargs="+", default=SELECTED_FILES, help="test files (default: the selection)")
    parser.add_argument("--failures", action="store_true", help="list what fails under chromanet only")
    parser.add_argument("--left-out", action="store_true", help="list the tests the selection rule leaves out")
    args = parser.parse_args()

    tests = fetch(args.cache)
    libs = LIBRARIES if args.lib == "both" else (args.lib,)
    began = time.monotonic()
    shards = [Shard(lib, index, args.shards, tests, args.cache, args) for lib in libs for index in range(args.shards)]
    waiting = list(shards)
    while waiting:
        time.sleep(1)
        waiting = [shard for shard in waiting if not shard.poll(args.timeout + 30)]
    outcomes: dict[str, dict] = {lib: {"results": {}, "left_out": {}} for lib in libs}
    for shard in shards:
        outcomes[shard.lib]["results"].update(shard.outcomes)
        outcomes[shard.lib]["left_out"].update(shard.left_out)
    (args.cache / "results.json").write_text(json.dumps(outcomes, indent=1, sort_keys=True))
    reference_file = args.cache / "reference-pynetdicom.json"
    if "pynetdicom" in outcomes and not args.keyword and args.files == SELECTED_FILES:
        reference_file.write_text(json.dumps(outcomes["pynetdicom"], indent=1, sort_keys=True))
    elif "pynetdicom" not in outcomes and reference_file.exists():
        # --lib chromanet: compared with pynetdicom's last full run.
        reference = json.loads(reference_file.read_text())
        names = set(outcomes["chromanet"]["results"])
        reference["results"] = {n: e for n, e in reference["results"].items() if n in names}
        outcomes = {"pynetdicom": reference, **outcomes}
        libs = LIBRARIES
    elapsed = time.monotonic() - began

    print(f"pynetdicom {VERSION} test suite, {len(args.files)} files, {elapsed:.0f} s")
    for lib in libs:
        results = outcomes[lib]["results"]
        counts = collections.Counter(entry["outcome"] for entry in results.values())
        print(f"  {lib:<11} {counts['passed']:>4} passed of {len(results)} selected"
              f"  ({counts['failed']} failed, {counts['error']} errors, {counts['skipped']} skipped;"
              f" {len(outcomes[lib]['left_out'])} left out as internals)")
    if len(libs) == 2:
        reference = {n for n, e in outcomes["pynetdicom"]["results"].items() if e["outcome"] == "passed"}
        ours = outcomes["chromanet"]["results"]
        passed = sum(1 for n in reference if ours.get(n, {}).get("outcome") == "passed")
        print(f"  chromanet passes {passed} of the {len(reference)} that pynetdicom passes"
              f" ({100.0 * passed / max(1, len(reference)):.1f} %)")
    if args.failures and "chromanet" in outcomes:
        reference_ok = None
        if "pynetdicom" in outcomes:
            reference_ok = {n for n, e in outcomes["pynetdicom"]["results"].items() if e["outcome"] == "passed"}
        groups: dict[str, list[str]] = collections.defaultdict(list)
        for name, entry in sorted(outcomes["chromanet"]["results"].items()):
            if entry["outcome"] in ("passed", "skipped"):
                continue
            if reference_ok is not None and name not in reference_ok:
                continue
            groups[_group(entry.get("message", ""))].append(name)
        for message, names in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            print(f"\n[{len(names)}] {message}")
            for name in names:
                print(f"    {name}")
    if args.left_out:
        lib = libs[0]
        reasons = collections.Counter(outcomes[lib]["left_out"].values())
        print("\nleft out:")
        for reason, count in reasons.most_common():
            print(f"  {count:>4}  {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
