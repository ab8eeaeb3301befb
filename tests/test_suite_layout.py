"""How the test suite and the benchmarks share code, checked on the source.

A test module is something pytest runs, not a library: when one imports another, running
or deleting one changes the other, and a private helper taken from a test module is a
private helper with two owners. So helpers that several modules need live in
tests/support.py or a named helper module (target_process, pdu_fuzz, corruption, ...)
under a public name, and:

- no module in tests/ or benchmarks/ imports from a ``test_*`` module;
- no module there imports an ``_underscore`` name (or from an ``_underscore`` module)
  of another module: what is shared is public.
"""
from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("tests", "benchmarks")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _absolute(module: str | None, level: int, package: str) -> str:
    """The absolute module a ``from`` import names (``from .x import y`` inside tests/ is
    ``tests.x``)."""
    if not level:
        return module or ""
    base = package.split(".")[: len(package.split(".")) - (level - 1)]
    return ".".join([*base, module] if module else base)


def violations(source: str, filename: str, package: str) -> list[str]:
    """Every import in ``source`` that breaks the rules above, as ``file:line: why``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        pairs: list[tuple[str, str | None]]   # (module, name imported from it)
        if isinstance(node, ast.Import):
            pairs = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node.module, node.level, package)
            pairs = [(module, alias.name) for alias in node.names]
        else:
            continue
        for module, name in pairs:
            where = f"{filename}:{node.lineno}"
            parts = module.split(".")
            if any(p.startswith("test_") for p in parts) or (name or "").startswith("test_"):
                found.append(f"{where}: imports from a test module ({module}"
                             f"{'.' + name if name else ''}); move the helper to "
                             "tests/support.py")
            elif any(_private(p) for p in parts) or (name is not None and _private(name)):
                found.append(f"{where}: imports a private name ({module}"
                             f"{'.' + name if name else ''}); make it public where it lives")
    return found


def _sources() -> list[Path]:
    return [p for folder in CHECKED for p in sorted((ROOT / folder).glob("*.py"))]


def test_no_module_imports_a_test_module_or_a_private_name() -> None:
    found = []
    for path in _sources():
        rel = path.relative_to(ROOT)
        found += violations(path.read_text(), str(rel), rel.parent.name)
    assert not found, "the test suite's layout rule is broken:\n" + "\n".join(found)


def test_the_check_sees_what_it_must_refuse() -> None:
    """The checker itself: each way of breaking a rule is caught, and the shapes the suite
    uses every day are not."""
    bad = {
        "from tests.test_supervisor import supervised": "test module",
        "import tests.test_rpc_server": "test module",
        "from tests import test_rpc_server": "test module",
        "from .test_rpc_server import rich_config": "test module",
        "from tests.pdu_fuzz import _Builder": "private name",
        "from nvmf_phoenix.embedded.rpc_methods import _check_uuid": "private name",
        "from tests._helpers import x": "private name",
        "def f() -> None:\n    from tests.pdu_fuzz import _Builder\n": "private name",
    }
    for source, why in bad.items():
        found = violations(source, "x.py", "tests")
        assert len(found) == 1 and why in found[0], (source, found)
    good = ("from __future__ import annotations\n"
            "from tests.support import supervised\n"
            "from tests import realhost\n"
            "from .target_fixture import NQN\n"
            "from bench_io import run_case\n"
            "import tests.waiting\n")
    assert violations(good, "x.py", "tests") == []


def test_every_checked_folder_has_sources() -> None:
    """Guards the check against a renamed folder silently checking nothing."""
    for folder in CHECKED:
        assert list((ROOT / folder).glob("*.py")), folder


def _pytest_options() -> dict[str, Any]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["tool"]["pytest"]["ini_options"])


def test_every_declared_marker_is_used_and_the_default_run_takes_all() -> None:
    """A marker declared and never used (``slow`` was) promises a selection that selects
    nothing; --strict-markers refuses the reverse. The default options must not deselect
    anything: CI's plain ``pytest`` runs the slow tests too."""
    options = _pytest_options()
    declared = {m.split(":")[0].strip() for m in options["markers"]}
    text = "\n".join(p.read_text() for p in sorted((ROOT / "tests").glob("*.py")))
    used = set(re.findall(r"pytest\.mark\.(\w+)", text))
    assert declared <= used, f"declared, never used: {declared - used}"
    args = options["addopts"].split()
    assert "--strict-markers" in args
    assert not any(a.startswith(("-m", "-k")) for a in args), args
