"""Packaging: the built wheel installs everything under nvmf_phoenix and nothing bare.

The repository keeps rpc/, wire/, persist/, recovery/, plugin/, embedded/, initiator/ at top
level; pyproject.toml maps
them onto nvmf_phoenix.*. These tests build a real wheel, install it into a fresh virtual
environment and import from there, so a folder missing from the mapping or a stray
top-level module fails here rather than on a user's machine.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"nvmf_phoenix": "nvmf_phoenix", "nvmf_phoenix.rpc": "rpc",
          "nvmf_phoenix.recovery": "recovery", "nvmf_phoenix.plugin": "plugin",
          "nvmf_phoenix.embedded": "embedded", "nvmf_phoenix.initiator": "initiator",
          "nvmf_phoenix.wire": "wire", "nvmf_phoenix.persist": "persist"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_mapped() -> None:
    """Each folder with an __init__.py under a mapped folder is listed as a package."""
    cfg = _pyproject()["tool"]["setuptools"]
    listed = dict(cfg["package-dir"])
    assert set(cfg["packages"]) == set(listed)
    found = {}
    for name, folder in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            sub = ".".join((name, *rel.parts)) if rel.parts else name
            found[sub] = str(init.parent.relative_to(ROOT))
    assert found == listed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the tracked files: setuptools leaves build/ beside the sources,
    # and a wheel must not depend on anything that is not committed.
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, files):
        dest = src / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, dest)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(src)], check=True, timeout=300)
    (whl,) = out.glob("nvmf_phoenix-*.whl")
    return whl


def test_wheel_has_only_the_nvmf_phoenix_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"nvmf_phoenix"}
    for folder in ("rpc", "recovery", "plugin", "embedded", "initiator", "wire", "persist"):
        assert f"nvmf_phoenix/{folder}/__init__.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "nvmf-phoenix = nvmf_phoenix.plugin.cli:main" in zipfile.ZipFile(wheel).read(
        entry).decode()


@pytest.mark.slow
def test_wheel_installs_and_imports(wheel: Path, tmp_path: Path) -> None:
    """Install the wheel (with its dependencies) into a fresh venv and import every part."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True,
                   timeout=600)
    code = ("import importlib, importlib.util as u\n"
            "for m in ('nvmf_phoenix.rpc','nvmf_phoenix.recovery','nvmf_phoenix.plugin',"
            "'nvmf_phoenix.embedded','nvmf_phoenix.model'):\n"
            "    importlib.import_module(m)\n"
            "for bare in ('rpc','plugin','recovery','target'):\n"
            "    assert u.find_spec(bare) is None, bare\n"
            "print('ok')\n")
    run = subprocess.run([str(py), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
    cli = subprocess.run([str(env_dir / "bin" / "nvmf-phoenix"), "--version"],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert "nvmf-phoenix" in cli.stdout
