"""A pytest plugin that runs pynetdicom's own tests against either library.

Loaded by ``scripts/pynetdicom_suite.py`` (``pytest -p pynetdicom_shim``);
it does three things, driven by environment variables the runner sets:

1. ``PYNETDICOM_SUITE_LIB=chromanet``: an import hook (a meta path finder
   put in front of the others) makes ``import pynetdicom`` and its
   submodules resolve to chromanet's equivalents, so the unmodified tests
   drive chromanet. See ``_PUBLIC`` for the module map. The Patient Root,
   Study Root and Patient/Study Only Q/R SOP classes are mapped to the Color
   Palette Q/R classes, so that the Q/R tests exercise chromanet's Q/R.
   A name chromanet lacks (an internal module such as ``pynetdicom.dul``, a
   SOP class of a service chromanet does not implement) imports as a
   placeholder that raises ``NotImplementedError`` once it is used, so that
   a test module importing it still loads and only the tests that use it
   fail. With ``PYNETDICOM_SUITE_LIB=pynetdicom`` nothing is hooked.
2. The selection (the same for both libraries, decided from the test's
   source alone, never from a result): see ``internal_reason``.
3. ``PYNETDICOM_SUITE_SHARD=i/n``: only every n-th selected test, from the
   i-th (the runner starts n processes per library).
4. ``PYNETDICOM_SUITE_RESULTS=<file>``: the tests left out, then a line
   as each selected test starts and one with its outcome (for a failure,
   the first line of its error) when it ends, as JSON lines.
   ``PYNETDICOM_SUITE_SKIP=<file>``: node IDs not to run again (the runner
   restarts a process whose test hung, after that test).
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.util
import inspect
import itertools
import json
import os
import re
import sys
import threading
import types
import weakref
from typing import Any

import pytest

LIB = os.environ.get("PYNETDICOM_SUITE_LIB", "pynetdicom")

# --------------------------------------------------------------- the shim
#: pynetdicom module -> the chromanet module standing in for it. Anything
#: else under ``pynetdicom.`` is a module of placeholders.
_PUBLIC = {
    "pynetdicom": "chromanet",
    "pynetdicom.ae": "chromanet.ae",
    "pynetdicom.association": "chromanet.association",
    "pynetdicom.events": "chromanet.evt",
    "pynetdicom.evt": "chromanet.evt",
    "pynetdicom.presentation": "chromanet.presentation",
    "pynetdicom.sop_class": "chromanet.sop_class",
    "pynetdicom.status": "chromanet.status",
    # The negotiation items programs pass in ext_neg (when chromanet has them).
    "pynetdicom.pdu_primitives": "chromanet.pdu_primitives",
}

#: pynetdicom's Q/R information models whose tests are run on Color Palette Q/R.
_QR_MAP = {
    "PatientRootQueryRetrieveInformationModelFind": "ColorPaletteInformationModelFind",
    "PatientRootQueryRetrieveInformationModelGet": "ColorPaletteInformationModelGet",
    "PatientRootQueryRetrieveInformationModelMove": "ColorPaletteInformationModelMove",
    "StudyRootQueryRetrieveInformationModelFind": "ColorPaletteInformationModelFind",
    "StudyRootQueryRetrieveInformationModelGet": "ColorPaletteInformationModelGet",
    "StudyRootQueryRetrieveInformationModelMove": "ColorPaletteInformationModelMove",
    "PatientStudyOnlyQueryRetrieveInformationModelFind": "ColorPaletteInformationModelFind",
    "PatientStudyOnlyQueryRetrieveInformationModelGet": "ColorPaletteInformationModelGet",
    "PatientStudyOnlyQueryRetrieveInformationModelMove": "ColorPaletteInformationModelMove",
}


class Missing:
    """A pynetdicom name chromanet does not have: importable, raises on use."""

    def __init__(self, qualname: str) -> None:
        object.__setattr__(self, "_qualname", qualname)

    def _fail(self, *_args: Any, **_kwargs: Any) -> Any:
        raise NotImplementedError(f"chromanet has no equivalent of {self._qualname}")

    __call__ = __iter__ = __len__ = __str__ = __int__ = __index__ = __fspath__ = _fail

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._fail()

    def __repr__(self) -> str:
        return f"<missing {self._qualname}>"


class _Facade(types.ModuleType):
    """``pynetdicom.X`` as chromanet: chromanet's module's names, the Q/R
    mapping for ``sop_class``, and placeholders for what chromanet lacks."""

    def __init__(self, name: str, target: types.ModuleType | None) -> None:
        super().__init__(name)
        object.__setattr__(self, "_target", target)
        if target is not None and getattr(target, "__doc__", None):
            self.__doc__ = target.__doc__

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        target = object.__getattribute__(self, "_target")
        if self.__name__ == "pynetdicom.sop_class" and name in _QR_MAP:
            return getattr(target, _QR_MAP[name])
        if self.__name__ == "pynetdicom":
            if name == "__version__":
                return "3.0.4"
            if name in INTERNAL_MODULES or f"pynetdicom.{name}" in _PUBLIC:
                return importlib.import_module(f"pynetdicom.{name}")
        if target is not None:
            try:
                value = getattr(target, name)
            except AttributeError:
                # chromanet's NotImplementedName is an AttributeError too.
                pass
            else:
                # The package's submodules are facades as well.
                if isinstance(value, types.ModuleType) and self.__name__ == "pynetdicom":
                    return importlib.import_module(f"pynetdicom.{name}")
                return value
            # A public class pynetdicom keeps in a submodule, chromanet at the
            # top (``pynetdicom.association.Association``).
            if self.__name__ in _PUBLIC and name[:1].isupper():
                top = importlib.import_module("chromanet")
                try:
                    return getattr(top, name)
                except AttributeError:
                    pass
        return Missing(f"{self.__name__}.{name}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname == "pynetdicom" or fullname.startswith("pynetdicom."):
            return importlib.util.spec_from_loader(fullname, self, is_package=fullname == "pynetdicom")
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        target = None
        name = _PUBLIC.get(spec.name)
        if name is not None:
            try:
                target = importlib.import_module(name)
            except ImportError:
                target = None
        module = _Facade(spec.name, target)
        if spec.name == "pynetdicom":
            module.__path__ = []  # a package: its submodules come from this finder
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


if LIB == "chromanet":
    for _name in [n for n in sys.modules if n == "pynetdicom" or n.startswith("pynetdicom.")]:
        del sys.modules[_name]
    sys.meta_path.insert(0, _Finder())


# ------------------------------------------------------------ the selection
#: Modules of pynetdicom's machinery (state machine, PDUs, DIMSE primitives
#: and messages, encoding helpers, configuration knobs, the socket layer).
INTERNAL_MODULES = {
    "_config", "_globals", "_handlers", "acse", "dimse", "dimse_messages", "dimse_primitives", "dsutils",
    "dul", "fsm", "pdu", "pdu_items", "service_class", "service_class_n", "timer", "transport", "utils",
}
#: Names from pdu_primitives that are not negotiation items (ext_neg).
INTERNAL_PRIMITIVES = {"A_ASSOCIATE", "A_RELEASE", "A_ABORT", "A_P_ABORT", "P_DATA"}
#: Attributes of pynetdicom objects that are its machinery.
INTERNAL_ATTRIBUTES = {"dul", "acse", "dimse", "fsm", "dsutils", "state_machine", "reactor", "assoc_socket"}
#: Module-level helpers of the test files that reach into the machinery.
INTERNAL_HELPERS = {"DummyDIMSE", "hide_modules", "get_handlers_dul"}


def _internal_names(module: types.ModuleType) -> set[str]:
    """The names a test module imported from pynetdicom's internal modules."""
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError, SyntaxError):
        return set()
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] != "pynetdicom":
                continue
            sub = parts[1] if len(parts) > 1 else None
            for alias in node.names:
                bound = alias.asname or alias.name
                if sub is None and alias.name in INTERNAL_MODULES:
                    names.add(bound)
                elif sub in INTERNAL_MODULES:
                    names.add(bound)
                elif sub == "pdu_primitives" and alias.name in INTERNAL_PRIMITIVES:
                    names.add(bound)
                elif sub == "association" and alias.name == "ServiceUser":
                    names.add(bound)
                elif alias.name.startswith("_"):
                    names.add(bound)
    return names


_MODULE_NAMES: dict[str, set[str]] = {}
_MODULE_FIXTURES: dict[str, set[str]] = {}


def _uses_internals(tree: ast.AST, imported: set[str]) -> str | None:
    """Why the code in ``tree`` uses pynetdicom's internals, or None."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id in imported:
                return f"uses internal {node.id}"
            if node.id in INTERNAL_HELPERS:
                return f"uses the test helper {node.id}"
            if node.id == "mock":
                return "patches pynetdicom's internals (mock)"
        elif isinstance(node, ast.Attribute):
            attr = node.attr
            if attr in INTERNAL_ATTRIBUTES:
                return f"uses internal .{attr}"
            if attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__")):
                return f"uses private .{attr}"
            if attr in INTERNAL_MODULES and isinstance(node.value, ast.Name) and node.value.id == "pynetdicom":
                return f"uses internal pynetdicom.{attr}"
    return None


def _internal_fixtures(module: types.ModuleType, imported: set[str]) -> set[str]:
    """The module's own fixtures whose code uses internals (e.g. one that
    sets ``_config.UNRESTRICTED_STORAGE_SERVICE``)."""
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError, SyntaxError):
        return set()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any("fixture" in ast.unparse(d) for d in node.decorator_list):
            if _uses_internals(node, imported):
                found.add(node.name)
    return found


_MODULE_TREES: dict[str, ast.Module | None] = {}


def _test_node(item: pytest.Item, module: types.ModuleType | None) -> ast.AST | None:
    """The test function's definition in its module's source, decorators
    included (a decorator such as ``hide_modules`` replaces the function
    object, so its own source would be the decorator's)."""
    if module is None:
        return None
    if module.__name__ not in _MODULE_TREES:
        try:
            _MODULE_TREES[module.__name__] = ast.parse(inspect.getsource(module))
        except (OSError, TypeError, SyntaxError):
            _MODULE_TREES[module.__name__] = None
    tree = _MODULE_TREES[module.__name__]
    if tree is None:
        return None
    name = getattr(item, "originalname", None) or item.name
    scope: list[ast.stmt] = tree.body
    cls = getattr(item, "cls", None)
    if cls is not None:
        scope = next((n.body for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__), [])
    return next((n for n in scope if isinstance(n, ast.FunctionDef) and n.name == name), None)


def internal_reason(item: pytest.Item) -> str | None:
    """Why a test is left out, or None when it is selected.

    A test is left out when its own source (the test function; fixtures and
    setup are not looked at) uses pynetdicom's machinery rather than its
    public API: a name the test module imported from an internal module
    (``dul``, ``fsm``, ``acse``, ``pdu``, ``pdu_items``, ``dimse*``,
    ``dsutils``, ``utils``, ``transport``, ``timer``, ``service_class``,
    ``_config``, ``_globals``, the non-negotiation ``pdu_primitives``,
    ``ServiceUser``), an attribute of the machinery (``assoc.dul``,
    ``.acse``, ``.dimse``…), a private attribute (``._name``), a private
    module attribute (``pynetdicom._config``), ``mock``/``monkeypatch``
    patching, or a fixture of the test module that does one of these (such
    as ``enable_unrestricted``, which sets ``_config``); or it checks pynetdicom's log text (``caplog``: the wording
    is not API, and chromanet's is its own)."""
    function = getattr(item, "function", None)
    if function is None:
        return None
    module = getattr(item, "module", None) or inspect.getmodule(function)
    if module is not None and module.__name__ not in _MODULE_NAMES:
        _MODULE_NAMES[module.__name__] = _internal_names(module)
        _MODULE_FIXTURES[module.__name__] = _internal_fixtures(module, _MODULE_NAMES[module.__name__])
    imported = _MODULE_NAMES.get(module.__name__, set()) if module is not None else set()
    internal_fixtures = _MODULE_FIXTURES.get(module.__name__, set()) if module is not None else set()
    tree = _test_node(item, module)
    if tree is None:
        return None
    fixtures = set(getattr(item, "fixturenames", ()))
    if "caplog" in fixtures:
        return "checks pynetdicom's log text (caplog)"
    if "monkeypatch" in fixtures or "mocker" in fixtures:
        return "patches pynetdicom's internals (monkeypatch)"
    for name in sorted(fixtures & internal_fixtures):
        return f"uses the fixture {name}, which sets pynetdicom internals"
    return _uses_internals(tree, imported)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    reasons: dict[str, str] = {}
    for item in items:
        reason = internal_reason(item)
        if reason is None:
            kept.append(item)
        else:
            dropped.append(item)
            reasons[item.nodeid] = reason
    # PYNETDICOM_SUITE_SHARD=i/n: this process runs every n-th selected test.
    shard = os.environ.get("PYNETDICOM_SUITE_SHARD")
    if shard:
        index, count = (int(part) for part in shard.split("/"))
        dropped += [item for position, item in enumerate(kept) if position % count != index]
        kept = [item for position, item in enumerate(kept) if position % count == index]
    # PYNETDICOM_SUITE_SKIP=<file>: tests already run (a restarted process).
    skip_file = os.environ.get("PYNETDICOM_SUITE_SKIP")
    if skip_file:
        with open(skip_file, encoding="utf-8") as handle:
            done = set(handle.read().split("\n"))
        dropped += [item for item in kept if item.nodeid in done]
        kept = [item for item in kept if item.nodeid not in done]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    config._suite_left_out = reasons  # type: ignore[attr-defined]


# ------------------------------------------------------------- isolation
# One failing test must not fail the ones after it: pynetdicom's tests give
# every test of a process the same two ports (utils.get_port), and a test
# that fails before its ``scp.shutdown()`` would leave its server holding
# the port. So, for both libraries alike: each test gets ports of its own
# (get_port keys its ports by the xdist worker name), and the AEs a test
# made are shut down after it (bounded, in a thread: a stuck one is left).
_AES: "weakref.WeakSet[Any]" = weakref.WeakSet()
_TEST_NUMBER = itertools.count()


def _track_aes() -> None:
    if LIB == "chromanet":
        from chromanet import ae as module

        cls = module.AE
    else:
        from pynetdicom import ae as module

        cls = module.ApplicationEntity
    original = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _AES.add(self)

    cls.__init__ = __init__


def pytest_configure(config: pytest.Config) -> None:
    _track_aes()


def pytest_runtest_setup(item: pytest.Item) -> None:
    base = os.environ.setdefault("PYNETDICOM_SUITE_WORKER", os.environ.get("PYTEST_XDIST_WORKER", "w"))
    os.environ["PYTEST_XDIST_WORKER"] = f"{base}-{next(_TEST_NUMBER)}"


def pytest_runtest_teardown(item: pytest.Item) -> None:
    for ae in list(_AES):
        stopper = threading.Thread(target=ae.shutdown, daemon=True)
        stopper.start()
        stopper.join(10)
    _AES.clear()


# --------------------------------------------------------------- results
def _write(record: dict[str, Any]) -> None:
    """One JSON line to the results file, flushed at once: the runner reads
    it while the tests run (and restarts a process stuck in one test)."""
    path = os.environ.get("PYNETDICOM_SUITE_RESULTS")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _last_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return re.sub(r"\s+", " ", first)[:300]


_OUTCOMES: dict[str, dict[str, str]] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    _write({"left_out": getattr(session.config, "_suite_left_out", {})})


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    _OUTCOMES[nodeid] = {"outcome": "passed"}
    _write({"start": nodeid})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _OUTCOMES.setdefault(report.nodeid, {"outcome": "passed"})
    if report.failed:
        if entry["outcome"] not in ("failed", "error"):
            entry["outcome"] = "failed" if report.when == "call" else "error"
            entry["message"] = _last_line(report)
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    _write({"done": nodeid, **_OUTCOMES.get(nodeid, {"outcome": "passed"})})


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A test may leave a thread behind that keeps the interpreter alive (a
    # server started with block=True that never stopped): the runner ends
    # the process once it has said this.
    _write({"finished": True})
