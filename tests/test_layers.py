"""The import direction between the product's packages, checked on the source.

Layers, bottom to top (DESIGN.md has the map):

    model, wire, persist, rpc      declarations, formats, files, JSON-RPC client and server
    embedded, initiator, recovery  the target, the host side, checkpoint/restore
    plugin                         the command line and the spdk-rpc plugin

A package imports only from its own layer's lower neighbours and below; embedded and
recovery never import each other (each must work without the other: the supervisor drives
SPDK, the embedded target runs without a supervisor), and the initiator is a host: it
knows the wire formats, not the target. An import inside a function that reaches another
nvmf_phoenix module is allowed only where it is listed below with its reason, so a cycle
cannot hide in one.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"nvmf_phoenix": "model", "wire": "wire", "persist": "persist", "rpc": "rpc",
           "embedded": "embedded", "initiator": "initiator", "recovery": "recovery",
           "plugin": "plugin"}
# What each package may import (besides itself).
ALLOWED = {
    "model": set(),
    "wire": set(),
    "persist": {"wire"},
    "rpc": {"model"},
    "embedded": {"model", "wire", "persist", "rpc"},
    "initiator": {"model", "wire"},
    "recovery": {"model", "wire", "persist", "rpc"},
    "plugin": {"model", "wire", "persist", "rpc", "embedded", "initiator", "recovery"},
}
# Imports inside functions, with the reason they are not at the top of the module.
LAZY = {
    ("embedded/app.py", "nvmf_phoenix.embedded.plain"):
        "app.py is also the socket keeper's main: it must not load the target it never runs",
    ("embedded/app.py", "nvmf_phoenix.embedded.worker"):
        "app.py is also the socket keeper's main: it must not load the target it never runs",
    ("embedded/keeper.py", "nvmf_phoenix.rpc.sockpath"):
        "the keeper imports what it needs only once it serves",
    ("plugin/cli.py", "nvmf_phoenix.embedded"):
        "the command line imports a mode's code only when that mode runs (start-up time)",
    ("plugin/cli.py", "nvmf_phoenix.plugin"):
        "the command line imports a mode's code only when that mode runs (start-up time)",
    ("plugin/cli.py", "nvmf_phoenix.plugin.cli_common"):
        "the command line imports a mode's code only when that mode runs (start-up time)",
    ("plugin/cli.py", "nvmf_phoenix.recovery.supervisor"):
        "the command line imports a mode's code only when that mode runs (start-up time)",
    ("plugin/cli.py", "nvmf_phoenix.recovery.etcd_store"):
        "the command line imports a mode's code only when that mode runs (start-up time)",
    ("plugin/cli.py", "nvmf_phoenix.recovery.pair"):
        "the command line imports a mode's code only when that mode runs (start-up time)",
    ("plugin/cli.py", "nvmf_phoenix.recovery.pair_view"):
        "the command line imports a mode's code only when that mode runs (start-up time)",
    ("plugin/cli_checkpoint.py", "nvmf_phoenix.embedded.keeper_client"):
        "the command line imports a mode's code only when that mode runs (start-up time)",
    ("plugin/cli_checkpoint.py", "nvmf_phoenix.plugin"):
        "the command line imports a mode's code only when that mode runs (start-up time)",
    ("plugin/cli_checkpoint.py", "nvmf_phoenix.recovery.restore"):
        "the command line imports a mode's code only when that mode runs (start-up time)",
    ("plugin/spdk_plugin.py", "nvmf_phoenix.plugin"):
        "spdk-rpc loads plugins on every call: netlink only when asked",
}


def _package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "nvmf_phoenix":
        return None
    if len(parts) == 1 or parts[1] in ("model", "__init__"):
        return "model"
    return parts[1] if parts[1] in ALLOWED else "model"


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function?, line) for every nvmf_phoenix import."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_func or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom) and child.module:
                names = [child.module] + [f"{child.module}.{a.name}" for a in child.names]
                found.extend((n, in_func, child.lineno) for n in names[:1])
                # "from nvmf_phoenix import wire" names the package in the alias
                if child.module == "nvmf_phoenix":
                    found.extend((n, in_func, child.lineno) for n in names[1:])
            elif isinstance(child, ast.Import):
                found.extend((a.name, in_func, child.lineno) for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return [(m, f, n) for m, f, n in found if m.startswith("nvmf_phoenix")]


def _product_files() -> list[tuple[str, Path]]:
    return [(layer, p) for folder, layer in FOLDERS.items()
            for p in sorted((ROOT / folder).glob("*.py"))]


def test_imports_go_downward_only() -> None:
    wrong = []
    for layer, path in _product_files():
        for module, _, line in _imports(path):
            pkg = _package(module)
            if pkg is not None and pkg != layer and pkg not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({layer}) imports {module}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_unlisted_import_inside_a_function() -> None:
    found = set()
    for _, path in _product_files():
        rel = str(path.relative_to(ROOT))
        found |= {(rel, module) for module, in_func, _ in _imports(path) if in_func}
    assert found <= set(LAZY), "imports inside functions without a listed reason:\n" + \
        "\n".join(f"{f}: {m}" for f, m in sorted(found - set(LAZY)))
    assert set(LAZY) <= found, f"listed but gone (remove from LAZY): {set(LAZY) - found}"


def test_every_product_folder_is_layered() -> None:
    tops = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert tops == set(FOLDERS)
