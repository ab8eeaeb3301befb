"""Completeness: nothing SPDK keeps is lost by checkpoint -> SIGKILL -> restore.

For every method that creates state SPDK v26.05's nvmf_tgt writes into its own
configuration, one scenario uses it on a target started with --wait-for-rpc, takes a
checkpoint the way ``nvmf-phoenix checkpoint now`` does (``ops.checkpoint_now``), kills the
target with SIGKILL, starts a fresh one with --wait-for-rpc, restores the checkpoint the
way ``nvmf-phoenix restore`` does (``ops.restore_checkpoint``) and asserts that SPDK's
save_config (framework_get_config of every subsystem framework_get_subsystems lists, as
scripts/rpc.py save_config builds it) is the same as before, order aside, and that
``checkpoint diff`` finds nothing. Whatever the restore drops or adds is named in the
failure, entry by entry, under the scenario's method (test ids are the method names).

How the method list was derived (``test_every_saved_method_is_covered_or_excluded``
re-derives it from SPDK's source, so it cannot rot): the methods the save_config writers
of the subsystems nvmf_tgt has (framework_get_subsystems: scheduler, vmd, sock, iobuf,
keyring, accel, bdev, nvmf, nbd) emit, i.e. every ``"method"`` written by
``*_write_config_json`` in lib/{accel,bdev,nvmf,sock,nbd,keyring}, module/{accel,bdev,
keyring,scheduler} and module/event/subsystems at tag v26.05; plus the methods of SPDK's
schema (schema/schema.json) that change what those writers emit without being written
themselves (nvmf_subsystem_allow_any_host, nvmf_subsystem_set_ns_ana_group,
nvmf_subsystem_set_keys, bdev_null_resize: their effect shows in another entry's params),
and nvmf_subsystem_listener_set_ana_state, whose state is not in save_config but is
host-visible (compared through nvmf_subsystem_get_listeners). Every other method the real
nvmf_tgt lists (rpc_get_methods) is classified: a read, a removal, or in NOT_SAVED with
why SPDK's save_config does not hold its effect (``test_every_live_method_is_classified``,
on real SPDK).

The scenarios, the exclusions (``EXCLUDED``, each with its reason), the cases where
SPDK itself does not give back its own save_config (``spdk_bug``: expected failures on
SPDK) and what the embedded target refuses rather than ignores (``embedded_refuses``) are
in tests/completeness_scenarios.py.

Runs on SPDK's nvmf_tgt when $SPDK_NVMF_TGT names one (marked ``spdk``), and on the
embedded target for every scenario whose methods it serves (those run in CI).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from nvmf_phoenix.embedded import rpc_methods
from nvmf_phoenix.plugin import ops
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc.errors import RpcError

from tests.completeness_scenarios import (
    DISCOVERY,
    EXCLUDED,
    FILES,
    NOT_SAVED,
    READS,
    REGENERATED,
    REMOTE_NQN,
    REMOVALS,
    SCENARIOS,
    Scenario,
    U,
)
from tests.support import save_config
from tests.target_fixture import free_port
from tests.target_process import TargetProcess

# Importing registers the embedded target's handlers (which methods it serves).
from nvmf_phoenix.embedded import rpc_bdev, rpc_framework, rpc_nvmf  # noqa: F401  isort: skip

SPDK_REPO = "/work/.mirror/spdk+spdk/repo"
SPDK_TAG = "v26.05"


def _embedded_serves(s: Scenario) -> bool:
    return s.methods() <= set(rpc_methods.METHODS) and not s.embedded_refuses


def _cases() -> list[Any]:
    kinds = ["embedded"] + (["spdk"] if os.environ.get("SPDK_NVMF_TGT") else [])
    out = []
    for kind in kinds:
        for name, s in SCENARIOS.items():
            if kind == "embedded" and not _embedded_serves(s):
                continue
            marks = [pytest.mark.spdk] if kind == "spdk" else []
            if kind == "spdk" and s.spdk_bug:
                marks.append(pytest.mark.xfail(reason=s.spdk_bug, strict=True))
            out.append(pytest.param(kind, name, id=f"{kind}-{name}", marks=marks))
    return out


def _fill(value: Any, subst: dict[str, str]) -> Any:
    if isinstance(value, str):
        for k, v in subst.items():
            value = value.replace("{" + k + "}", v)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, subst) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, subst) for v in value]
    return value


def _entries(cfg: dict[str, list[Any]]) -> set[str]:
    """Each entry as one comparable line (order aside), minus what SPDK regenerates."""
    out = set()
    for sub, entries in cfg.items():
        for e in entries:
            params = {k: v for k, v in (e.get("params") or {}).items()
                      if f"{e['method']}.{k}" not in REGENERATED}
            out.add(f"{sub}: {e['method']} {json.dumps(params, sort_keys=True)}")
    return out


@contextmanager
def _target(sock: str, kind: str) -> Iterator[TargetProcess]:
    tp = TargetProcess(sock, "--wait-for-rpc", kind=kind)
    try:
        yield tp
    finally:
        tp.kill()
        tp.stop()


def _prepare(tmp_path: Path) -> dict[str, str]:
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    (tmp_path / "aio.img").write_bytes(bytes(1 << 20))
    return {"tmp": str(tmp_path), "port": str(free_port())}


@contextmanager
def _remote(tmp_path: Path, subst: dict[str, str]) -> Iterator[None]:
    """An embedded target serving REMOTE_NQN (one namespace, discovery too) on a free
    port, named {remote_port}; it stays up across the kill and the restore."""
    port = str(free_port())
    addr = {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port}
    sock = str(tmp_path / "remote.sock")
    tp = TargetProcess(sock)
    try:
        with RpcClient.connect(sock) as c:
            c.call("nvmf_create_transport", {"trtype": "TCP"})
            c.call("bdev_malloc_create", {"name": "R0", "num_blocks": 256, "block_size": 512,
                                          "uuid": U.format(9)})
            c.call("nvmf_create_subsystem", {"nqn": REMOTE_NQN, "allow_any_host": True,
                                             "serial_number": "REMOTE01"})
            c.call("nvmf_subsystem_add_ns", {"nqn": REMOTE_NQN,
                                             "namespace": {"bdev_name": "R0"}})
            for nqn in (REMOTE_NQN, DISCOVERY):
                c.call("nvmf_subsystem_add_listener", {"nqn": nqn, "listen_address": addr})
        subst["remote_port"] = port
        yield
    finally:
        tp.stop()


def round_trip(tmp_path: Path, kind: str, s: Scenario) -> list[str]:
    """Build ``s``, checkpoint, SIGKILL, restore into a fresh --wait-for-rpc target; the
    differences of save_config (and of ``s.reads``), named; [] when all came back."""
    subst = _prepare(tmp_path)
    with contextlib.ExitStack() as stack:
        if s.remote:
            stack.enter_context(_remote(tmp_path, subst))
        return _round_trip(tmp_path, kind, s, subst)


def _round_trip(tmp_path: Path, kind: str, s: Scenario, subst: dict[str, str]) -> list[str]:
    sock, state_dir = str(tmp_path / "spdk.sock"), str(tmp_path / "state")
    reads = [(m, _fill(p, subst)) for m, p in s.reads]
    with _target(sock, kind) as tp, RpcClient.connect(sock) as c:
        for m, p in s.startup:
            c.call(m, _fill(p, subst))
        c.call("framework_start_init")
        for m, p in s.runtime:
            c.call(m, _fill(p, subst))
        before = save_config(c)
        read_before = [c.call(m, p) for m, p in reads]
        ops.checkpoint_now(c, state_dir, runtime=False)
        tp.kill()   # the crash
    with _target(sock, kind), RpcClient.connect(sock) as c:
        loaded, _ = ops.load(state_dir)
        assert loaded.state is not None
        report, summary = ops.restore_checkpoint(c, loaded.state, state_dir)
        after = save_config(c)
        read_after = [c.call(m, p) for m, p in reads]
        live_diff = ops.diff_live(c, state_dir)
    was, now = _entries(before), _entries(after)
    out = [f"lost   {e}" for e in sorted(was - now)] + [f"gained {e}" for e in sorted(now - was)]
    out += [f"{m} differs: {b} != {a}" for (m, _), b, a in zip(reads, read_before, read_after,
                                                              strict=True) if b != a]
    if not report.ok:
        out.append(f"restore not ok: {summary}")
    if not live_diff["same"]:
        out.append(f"checkpoint diff: {live_diff['differences']}")
    return out


@pytest.mark.parametrize(("kind", "name"), _cases())
def test_save_config_survives_checkpoint_kill_restore(tmp_path: Path, kind: str,
                                                      name: str) -> None:
    try:
        problems = round_trip(tmp_path, kind, SCENARIOS[name])
    finally:
        ops.drop(str(tmp_path / "state"))   # its shared-memory region would outlive us
    assert problems == [], f"{name} on {kind}:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", [n for n, s in SCENARIOS.items() if s.embedded_refuses])
def test_embedded_refuses_what_it_would_not_honour(tmp_path: Path, name: str) -> None:
    """A scenario the embedded target cannot carry is refused there, never half-taken."""
    s, subst = SCENARIOS[name], _prepare(tmp_path)
    sock = str(tmp_path / "spdk.sock")
    with _target(sock, "embedded"), RpcClient.connect(sock) as c:
        for m, p in s.startup:
            c.call(m, _fill(p, subst))
        c.call("framework_start_init")
        *setup, (method, params) = s.runtime
        for m, p in setup:
            c.call(m, _fill(p, subst))
        with pytest.raises(RpcError):
            c.call(method, _fill(params, subst))


def _method(name: str) -> str:
    return name.split("+")[0]


# -- the list cannot rot -----------------------------------------------------------------
WRITER_DIRS = ("lib/accel", "lib/bdev", "lib/nvmf", "lib/sock", "lib/nbd", "lib/keyring",
               "module/accel", "module/bdev", "module/keyring", "module/scheduler",
               *(f"module/event/subsystems/{s}" for s in (
                   "scheduler", "vmd", "sock", "iobuf", "keyring", "accel", "bdev", "nvmf",
                   "nbd")))
WRITTEN = re.compile(r'"method"\s*,\s*"([a-z0-9_]+)"')


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", SPDK_REPO, *args], check=True, capture_output=True,
                          text=True).stdout


def saved_methods() -> set[str]:
    """Every method a save_config writer of nvmf_tgt's subsystems emits, at SPDK_TAG."""
    files = [f for f in _git("ls-tree", "-r", "--name-only", SPDK_TAG, *WRITER_DIRS).split()
             if f.endswith(".c")]
    out: set[str] = set()
    for f in files:
        text = _git("show", f"{SPDK_TAG}:{f}")
        # a "method" name may be on the line after the key
        out.update(WRITTEN.findall(re.sub(r'"method",\s*\n\s*', '"method", ', text)))
    return out


@pytest.mark.skipif(not os.path.isdir(SPDK_REPO), reason="no SPDK source mirror")
def test_every_saved_method_is_covered_or_excluded() -> None:
    saved = saved_methods()
    covered = {_method(n) for n in SCENARIOS}
    assert "nvmf_ns_add_host" in saved and "iobuf_set_options" in saved   # the derivation
    assert sorted(saved - covered - set(EXCLUDED)) == []
    schema = {m["name"] for m in json.loads(_git("show", f"{SPDK_TAG}:schema/schema.json"))[
        "methods"]}
    assert covered <= schema and set(EXCLUDED) <= saved


def _classified(m: str) -> bool:
    return (m in SCENARIOS or any(_method(n) == m for n in SCENARIOS) or m in EXCLUDED
            or bool(REMOVALS.search(m)) or bool(READS.search(m))
            or any(m.startswith(p) for p in NOT_SAVED))


@pytest.mark.spdk
@pytest.mark.skipif(not os.environ.get("SPDK_NVMF_TGT"), reason="needs SPDK_NVMF_TGT")
def test_every_live_method_is_classified(tmp_path: Path) -> None:
    """Every method the real nvmf_tgt serves is a read, a removal, covered by a scenario,
    excluded with its reason, or one whose effect SPDK's save_config does not hold."""
    sock = str(tmp_path / "spdk.sock")
    with _target(sock, "spdk"), RpcClient.connect(sock) as c:
        c.call("framework_start_init")
        live = c.call("rpc_get_methods")
    assert sorted(m for m in live if not _classified(m)) == []
