"""The embedded target as a drop-in nvmf_tgt v26.05: JSON-RPC framing, configuration.

As in test_parity.py, every expected answer is what a real nvmf_tgt v26.05 gave, and with
$SPDK_NVMF_TGT set (``-m spdk``) the same checks run against that target.
tests/data/nvmf_tgt_v26.05_save_config.json is a save_config taken from one (option
setters changed from their defaults, a key, malloc/null/aio bdevs, two subsystems with
hosts, namespaces and listeners, a referral); @KEY@, @AIO@ and @PORT@ stand for the paths
and port of the environment.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.rawrpc import Raw
from tests.target_fixture import free_port
from tests.target_process import TARGET_KINDS, target_process

SAVE_CONFIG = Path(__file__).parent / "data" / "nvmf_tgt_v26.05_save_config.json"
SPDK_RPC = str(Path(sys.executable).parent / "spdk-rpc")
N1 = "nqn.2016-06.io.spdk:p1"


# -- JSON-RPC framing as lib/jsonrpc/jsonrpc_server.c has it ---------------------------
VERSION = b'"method":"spdk_get_version"'
INVALID = (-32600, "Invalid request")
FRAMING: list[tuple[bytes, Any]] = [
    (b'{' + VERSION + b',"id":1}', "result"),                       # no "jsonrpc": fine
    (b'{"jsonrpc":"1.0",' + VERSION + b',"id":2}', (None, INVALID)),
    (b'{"jsonrpc":"2.0",' + VERSION + b'}', "no answer"),             # a notification
    (b'{"jsonrpc":"2.0",' + VERSION + b',"id":null}', "no answer"),   # id null: no result
    (b'{"jsonrpc":"2.0",' + VERSION + b',"id":{"a":1}}', (None, INVALID)),
    (b'{"jsonrpc":"2.0",' + VERSION + b',"id":[1]}', (None, INVALID)),
    (b'{"jsonrpc":"2.0",' + VERSION + b',"id":true}', (None, INVALID)),
    (b'{"jsonrpc":"2.0",' + VERSION + b',"id":"s1"}', "result"),
    (b'42\n', (None, INVALID)),
    (b'"str"', (None, INVALID)),
    (b'{"jsonrpc":"2.0",' + VERSION + b',"id":3,"params":5}', (3, INVALID)),
    (b'{"jsonrpc":"2.0",' + VERSION + b',"id":4,"params":null}', "result"),
    (b'{"jsonrpc":"2.0","method":5,"id":6}', (None, INVALID)),
    (b'[]', (None, INVALID)),
    (b'{"jsonrpc":"2.0","method":"nope"}', (None, (-32601, "Method not found"))),
    (b'{"jsonrpc":"2.0",' + VERSION + b',"id":7,"extra":1}', (None, INVALID)),
    (b'{"jsonrpc":"2.0","method":"bdev_get_bdevs","id":8,"params":[]}',
     (8, (-32603, "spdk_json_decode_object failed"))),
    (b'{"jsonrpc":"2.0","id":11}', (None, INVALID)),
]


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_jsonrpc_framing_is_spdks(tmp_path: Path, kind: str) -> None:
    def seen(resp: Any) -> Any:
        if resp is None:
            return "no answer"
        if "error" in resp:
            return (resp["id"], (resp["error"]["code"], resp["error"]["message"]))
        return "result"
    with target_process(tmp_path, kind=kind) as tp:
        s = Raw(tp.sock)
        got = []
        for data, _ in FRAMING:   # an answer left out is waited for 1 s
            got.append(seen(s.send(data, wait=1.0)))
        batch = s.send(b'[{"jsonrpc":"2.0",' + VERSION + b',"id":9},[1]]')
    assert [(d, g) for g, (d, want) in zip(got, FRAMING, strict=True) if g != want] == []
    assert [seen(x) for x in batch] == ["result", (None, INVALID)]


# -- load_config of a real save_config ------------------------------------------------
def _entries(doc: dict[str, Any]) -> dict[str, list[str]]:
    """Each subsystem's entries, batches flattened, order aside."""
    return {s["subsystem"]: sorted(json.dumps(x, sort_keys=True)
                                   for e in s["config"]
                                   for x in (e if isinstance(e, list) else [e]))
            for s in doc["subsystems"]}


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_load_config_of_a_real_save_config(tmp_path: Path, kind: str) -> None:
    """``spdk-rpc load_config`` of a save_config taken from a real nvmf_tgt, into a
    target started with --wait-for-rpc; its save_config gives the same back."""
    key, aio = tmp_path / "key0", tmp_path / "aio.img"
    key.write_text("NVMeTLSkey-1:01:MDAxMTIyMzM0NDU1NjY3Nzg4OTlhYWJiY2NkZGVlZmZwJEiQ:\n")
    key.chmod(0o600)
    aio.write_bytes(bytes(4 << 20))
    text = SAVE_CONFIG.read_text().replace("@KEY@", str(key)).replace(
        "@AIO@", str(aio)).replace("@PORT@", str(free_port()))
    with target_process(tmp_path, "--wait-for-rpc", kind=kind) as tp:
        load = subprocess.run([SPDK_RPC, "-s", tp.sock, "load_config"], input=text,
                              capture_output=True, text=True, timeout=120)
        assert load.returncode == 0, load.stderr[-2000:]
        save = subprocess.run([SPDK_RPC, "-s", tp.sock, "save_config"],
                              capture_output=True, text=True, timeout=60)
        assert save.returncode == 0, save.stderr[-2000:]
    assert _entries(json.loads(save.stdout)) == _entries(json.loads(text))


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_framework_get_config_with_batches_keeps_spdks_batches(tmp_path: Path,
                                                               kind: str) -> None:
    """with_batches: nvmf's subsystems, hosts, namespaces, namespace hosts and listeners
    are five batch arrays (empty ones too); the malloc, null and nvme bdev modules write
    a batch each, aio none. Without it, the same entries flattened."""
    aio = tmp_path / "a.img"
    aio.write_bytes(bytes(1 << 20))

    def methods(cfg: list[Any]) -> list[Any]:
        return [[x["method"] for x in e] if isinstance(e, list) else e["method"]
                for e in cfg]
    with target_process(tmp_path, kind=kind) as tp:
        s = Raw(tp.sock)
        for method, params in (
                ("nvmf_create_transport", {"trtype": "TCP"}),
                ("nvmf_create_subsystem", {"nqn": N1}),
                ("bdev_malloc_create", {"name": "M0", "num_blocks": 64, "block_size": 512}),
                ("bdev_null_create", {"name": "N0", "num_blocks": 64, "block_size": 512}),
                ("bdev_aio_create", {"name": "A0", "filename": str(aio),
                                     "block_size": 512})):
            assert "result" in s.call(method, params), method
        nvmf = s.call("framework_get_config", {"name": "nvmf", "with_batches": True})
        flat = s.call("framework_get_config", {"name": "nvmf"})["result"]
        bdev = s.call("framework_get_config", {"name": "bdev", "with_batches": True})
    assert methods(nvmf["result"]) == [
        "nvmf_set_config", "nvmf_set_max_subsystems", "nvmf_set_crdt",
        "nvmf_create_transport", ["nvmf_create_subsystem"], [], [], [], []]
    assert [x for e in nvmf["result"] for x in (e if isinstance(e, list) else [e])] == flat
    assert methods(bdev["result"]) == [
        "bdev_set_options", "bdev_raid_set_options", ["bdev_malloc_create"],
        ["bdev_null_create"], "bdev_nvme_set_options", [], "bdev_nvme_set_hotplug",
        "bdev_aio_create", "bdev_wait_for_examine"]


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_started_with_a_real_save_config(tmp_path: Path, kind: str) -> None:
    """nvmf_tgt -c <save_config>: the same file as above, taken at start."""
    key, aio, conf = tmp_path / "key0", tmp_path / "aio.img", tmp_path / "config.json"
    key.write_text("NVMeTLSkey-1:01:MDAxMTIyMzM0NDU1NjY3Nzg4OTlhYWJiY2NkZGVlZmZwJEiQ:\n")
    key.chmod(0o600)
    aio.write_bytes(bytes(4 << 20))
    conf.write_text(SAVE_CONFIG.read_text().replace("@KEY@", str(key)).replace(
        "@AIO@", str(aio)).replace("@PORT@", str(free_port())))
    with target_process(tmp_path, "-c", str(conf), kind=kind) as tp:
        save = subprocess.run([SPDK_RPC, "-s", tp.sock, "save_config"],
                              capture_output=True, text=True, timeout=60)
        assert save.returncode == 0, save.stderr[-2000:]
    assert _entries(json.loads(save.stdout)) == _entries(json.loads(conf.read_text()))
