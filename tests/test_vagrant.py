"""The Vagrant lab's Vagrantfile: `vagrant validate` with the libvirt provider plugin.

Nothing boots here (no nested virtualisation in CI); validation still loads the file with
Vagrant, checks every libvirt provider setting and the provisioners' configuration.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

VAGRANT_DIR = Path(__file__).resolve().parent.parent / "vagrant"
pytestmark = pytest.mark.skipif(shutil.which("vagrant") is None,
                                reason="vagrant is not installed (.ci/install-system-deps "
                                "installs Debian's vagrant and vagrant-libvirt as root)")


def validate(directory: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), "VAGRANT_HOME": str(home / ".vagrant.d"),
           "VAGRANT_CHECKPOINT_DISABLE": "1"}
    return subprocess.run(["vagrant", "validate"], cwd=directory, capture_output=True,
                          text=True, timeout=120, env=env)


def test_lab_vagrantfile_validates(tmp_path: Path) -> None:
    run = validate(VAGRANT_DIR, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "validated successfully" in run.stdout
    text = (VAGRANT_DIR / "Vagrantfile").read_text()
    playbook = re.search(r'ansible\.playbook = "([^"]+)"', text)
    assert playbook and (VAGRANT_DIR / playbook.group(1)).is_file()
    assert "-device" in text and "nvme,drive=" in text


def test_validation_catches_a_bad_provider_setting(tmp_path: Path) -> None:
    """Validation is real: an unknown libvirt setting is refused."""
    work = tmp_path / "lab"
    work.mkdir()
    text = (VAGRANT_DIR / "Vagrantfile").read_text()
    (work / "Vagrantfile").write_text(text.replace("lv.cpus = 2", "lv.cpus = 2\n"
                                                   "    lv.nvme_drives_please = 2"))
    run = validate(work, tmp_path)
    assert run.returncode != 0 and "nvme_drives_please" in run.stdout + run.stderr
