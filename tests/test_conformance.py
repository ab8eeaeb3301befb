"""Replay the exchanges recorded with a real SPDK nvmf_tgt against the embedded target.

Each request in ../shared/spdk-reference/*.json is sent, in order, over a real Unix socket
to a fresh embedded target process, and the answer is compared with SPDK's. The only
differences tolerated are listed in TOLERATED below, each for a reason that makes the
values *have* to differ. With $SPDK_NVMF_TGT set the same replay also runs against that
real nvmf_tgt: it checks that the recordings (and this comparison) still hold for SPDK.
"""
from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from nvmf_phoenix.rpc.client import JsonStream

from tests.target_fixture import free_port
from tests.target_process import TARGET_KINDS, target_process

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "spdk-reference"
FILES = ["00-basics", "01-bdevs", "02-build-config", "03-read-state", "04-errors",
         "05-teardown"]

TOLERATED = {
    # We are not SPDK: the version string and its fields are our own.
    "spdk_get_version": "version string and fields",
    # SPDK's list includes modules we do not have (lvol, raid, nvme, ...): ours must be a
    # subset of SPDK's and contain every method the project uses.
    "rpc_get_methods": "subset of SPDK's method list",
    # SPDK's tick rate is its TSC frequency.
    "nvmf_get_stats.tick_rate": "clock rate",
    # framework_get_config(bdev) lists option setters of SPDK modules we do not have.
    "framework_get_config.foreign_modules": "bdev_raid_set_options, bdev_nvme_set_options, "
                                            "bdev_nvme_set_hotplug",
    # Where a request left a uuid open, SPDK drew a random one; ours is derived (stable).
    # Those values (and the NGUID made from them) are mapped before comparing.
    "generated_uuids": "bdevs created without a uuid",
    # The test uses its own port and image path instead of 4420 and /var/lib/nvmf.
    "port_and_paths": "test environment",
}
FOREIGN = {"bdev_raid_set_options", "bdev_nvme_set_options", "bdev_nvme_set_hotplug"}
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Session:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.stream = JsonStream()

    def send(self, req: dict[str, Any]) -> dict[str, Any]:
        self.sock.sendall(json.dumps(req).encode())
        while True:
            objs = self.stream.feed(self.sock.recv(65536))
            if objs:
                assert len(objs) == 1
                return objs[0]


def _rewrite(obj: Any, subst: dict[str, str]) -> Any:
    if isinstance(obj, dict):
        return {k: _rewrite(v, subst) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rewrite(v, subst) for v in obj]
    if isinstance(obj, str):
        return subst.get(obj, obj)
    return obj


def _learn_uuids(expected: Any, got: Any, subst: dict[str, str], explicit: set[str]) -> None:
    """Map SPDK's random uuids to ours wherever the same object carries both.

    Only uuids no request named are learnt: an explicit uuid must come back unchanged.
    """
    if isinstance(expected, dict) and isinstance(got, dict):
        for k in expected.keys() & got.keys():
            e, g = expected[k], got[k]
            if isinstance(e, str) and isinstance(g, str) and UUID_RE.match(e) and \
                    UUID_RE.match(g) and e != g and e not in subst and e not in explicit:
                subst[e] = g
                subst[e.replace("-", "").upper()] = g.replace("-", "").upper()
            else:
                _learn_uuids(e, g, subst, explicit)
    elif isinstance(expected, list) and isinstance(got, list):
        for e, g in zip(expected, got, strict=False):
            _learn_uuids(e, g, subst, explicit)


def _normalise(method: str, resp: dict[str, Any]) -> dict[str, Any]:
    resp = dict(resp)
    resp.pop("id", None)
    result = resp.get("result")
    if method == "spdk_get_version" and isinstance(result, dict):
        resp["result"] = sorted(result)
    elif method == "nvmf_get_stats" and isinstance(result, dict):
        resp["result"] = {**result, "tick_rate": 0}
    elif method == "framework_get_config" and isinstance(result, list):
        resp["result"] = [e for e in result if e.get("method") not in FOREIGN]
    return resp


@pytest.fixture(scope="module", params=TARGET_KINDS)
def replay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> list[tuple[str, Any, Any, Any]]:
    if not REFERENCE.is_dir():
        pytest.skip(f"no SPDK reference recordings at {REFERENCE}")
    tmp = tmp_path_factory.mktemp("conf")
    image = tmp / "aio0.img"
    with open(image, "wb") as f:
        f.truncate(131072 * 512)
    port = str(free_port())
    subst = {"/var/lib/nvmf/aio0.img": str(image), "4420": port}
    out = []
    with target_process(tmp, kind=request.param) as tp:
        s = Session(tp.sock)
        explicit: set[str] = set()
        for name in FILES:
            for rec in json.loads((REFERENCE / f"{name}.json").read_text()):
                req = _rewrite(rec["request"], subst)
                explicit.update(re.findall(r"[0-9a-f]{8}-[0-9a-f-]{27}", json.dumps(req)))
                got = s.send(req)
                method = req["method"]
                _learn_uuids(_normalise(method, rec["response"]), _normalise(method, got),
                             subst, explicit)
                out.append((name, req, _rewrite(rec["response"], subst), got))
    return out


def test_every_recorded_exchange_matches(replay: list[tuple[str, Any, Any, Any]]) -> None:
    mismatches = []
    for name, req, expected, got in replay:
        method = req["method"]
        if method == "rpc_get_methods":
            continue   # checked below
        if _normalise(method, expected) != _normalise(method, got):
            mismatches.append(f"{name} {method} {json.dumps(req.get('params'))}\n"
                              f"  SPDK: {json.dumps(_normalise(method, expected))[:600]}\n"
                              f"  ours: {json.dumps(_normalise(method, got))[:600]}")
    assert not mismatches, "\n".join(mismatches)
    assert len(replay) >= 50


def test_method_list_is_a_subset_of_spdks(replay: list[tuple[str, Any, Any, Any]]) -> None:
    (_, _, expected, got), = [r for r in replay if r[1]["method"] == "rpc_get_methods"]
    ours, spdk = set(got["result"]), set(expected["result"])
    assert ours <= spdk | {"bdev_wait_for_examine"}, ours - spdk
    used = {"bdev_malloc_create", "bdev_aio_create", "nvmf_create_subsystem",
            "nvmf_subsystem_add_ns", "nvmf_subsystem_add_listener", "framework_get_config",
            "nvmf_subsystem_get_controllers", "nvmf_subsystem_get_qpairs", "nvmf_get_stats"}
    assert used <= ours


def _shape(obj: Any) -> Any:
    """Keys and value types, recursively; lists by the shape of their first element."""
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shape(obj[0])] if obj else []
    return type(obj).__name__


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_live_host_answers_have_spdks_shape(tmp_path: Path, kind: str) -> None:
    """06-live-host was recorded with SPDK's own initiator connected; its values (host
    ids, peer ports, I/O counters) belong to that host, so the answers are compared by
    shape (every key, every value type) with our initiator connected instead."""
    from nvmf_phoenix.initiator.host import Host
    from nvmf_phoenix.rpc import RpcClient
    from nvmf_phoenix.rpc import bdev as rb
    from nvmf_phoenix.rpc import nvmf as rn

    if not REFERENCE.is_dir():
        pytest.skip(f"no SPDK reference recordings at {REFERENCE}")
    records = json.loads((REFERENCE / "06-live-host.json").read_text())
    nqn = "nqn.2016-06.io.spdk:live"
    port = free_port()
    with target_process(tmp_path, kind=kind) as tp, RpcClient.connect(tp.sock) as c:
        rb.bdev_malloc_create(c, 64, 512, name="Live0")
        rn.nvmf_create_transport(c, "TCP")
        # The recording's subsystem had ANA reporting: only then are ana_states listed.
        rn.nvmf_create_subsystem(c, nqn, allow_any_host=True, ana_reporting=True)
        rn.nvmf_subsystem_add_ns(c, nqn, "Live0")
        rn.nvmf_subsystem_add_listener(c, nqn, rn.listen_address("127.0.0.1", port))
        with Host("127.0.0.1", port, nqn) as h:
            h.create_io_queues(1)
            s = Session(tp.sock)
            for rec in records:
                got = s.send(rec["request"])
                assert _shape(got) == _shape(rec["response"]), rec["request"]["method"]
                if rec["request"]["method"] == "nvmf_subsystem_get_controllers":
                    # Same queues as the recording (admin + 1 I/O): SPDK counts the admin
                    # queue in num_io_qpairs, so the value must match, not just the type.
                    count = [c["num_io_qpairs"] for c in got["result"]]
                    assert count == [c["num_io_qpairs"] for c in rec["response"]["result"]]


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_listener_without_ana_reporting_lists_no_ana_states(tmp_path: Path, kind: str) -> None:
    """SPDK writes ana_states for a listener only when its subsystem has ANA reporting."""
    from nvmf_phoenix.rpc import RpcClient
    from nvmf_phoenix.rpc import nvmf as rn

    port = free_port()
    addr = rn.listen_address("127.0.0.1", port)
    with target_process(tmp_path, kind=kind) as tp, RpcClient.connect(tp.sock) as c:
        rn.nvmf_create_transport(c, "TCP")
        rn.nvmf_create_subsystem(c, "nqn.2016-06.io.spdk:plain", allow_any_host=True)
        rn.nvmf_create_subsystem(c, "nqn.2016-06.io.spdk:ana", ana_reporting=True,
                                 max_namespaces=4)
        for nqn in ("nqn.2016-06.io.spdk:plain", "nqn.2016-06.io.spdk:ana"):
            rn.nvmf_subsystem_add_listener(c, nqn, addr)
        plain = c.call("nvmf_subsystem_get_listeners", {"nqn": "nqn.2016-06.io.spdk:plain"})
        ana = c.call("nvmf_subsystem_get_listeners", {"nqn": "nqn.2016-06.io.spdk:ana"})
    assert [sorted(e) for e in plain] == [["address"]]
    assert [[g["ana_group"] for g in e["ana_states"]] for e in ana] == [[1, 2, 3, 4]]


# Refusals beyond the recordings, as a real SPDK v26.05 nvmf_tgt answered them: (method,
# params, code, message). Sent in order on one fresh target (a TCP transport exists).
REFUSALS: list[tuple[str, dict[str, Any], int, str]] = [
    ("spdk_get_version", {"x": 1}, -32602, "spdk_get_version method requires no parameters"),
    ("framework_get_subsystems", {"x": 1}, -32602,
     "'framework_get_subsystems' requires no arguments"),
    ("bdev_wait_for_examine", {"x": 1}, -32602, "bdev_wait_for_examine requires no parameters"),
    ("framework_get_config", {"name": "nope"}, -32602, "Subsystem 'nope' not found"),
    ("bdev_malloc_create", {"num_blocks": 16}, -32603, "spdk_json_decode_object failed"),
    ("bdev_malloc_create", {"num_blocks": -1, "block_size": 512}, -32603,
     "spdk_json_decode_object failed"),
    ("bdev_malloc_delete", {}, -32603, "spdk_json_decode_object failed"),
    ("bdev_aio_create", {"name": "A1"}, -32603, "spdk_json_decode_object failed"),
    ("bdev_get_bdevs", {"bogus": 1}, -32603, "spdk_json_decode_object failed"),
    ("bdev_get_bdevs", {"timeout": -1}, -32603, "spdk_json_decode_object failed"),
    ("nvmf_create_transport", {"trtype": "foo"}, -32602, "Invalid transport type 'foo'"),
    ("nvmf_get_transports", {"trtype": "RDMA"}, -19, "No such device"),
    ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:c1", "min_cntlid": 0}, -32602,
     "Invalid cntlid range [0-65519]"),
    ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:c2", "min_cntlid": 10,
                               "max_cntlid": 5}, -32602, "Invalid cntlid range [10-5]"),
    ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:c3", "min_cntlid": 70000},
     -32602, "Invalid parameters"),
    ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:c4", "max_namespaces": -1},
     -32602, "Invalid parameters"),
    ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:c5",
                               "serial_number": "123456789012345678901"},
     -32602, "Invalid parameters"),
    ("nvmf_get_subsystems", {"nqn": "nqn.2016-06.io.spdk:nope"}, -19, "No such device"),
    ("keyring_file_add_key", {"name": "k0"}, -32602, "Invalid argument"),
    ("keyring_file_add_key", {"name": "k0", "path": "relative/key"}, -1,
     "Operation not permitted"),
    ("keyring_file_add_key", {"name": "k0", "path": "/nonexistent/key"}, -2,
     "No such file or directory"),
    ("keyring_file_add_key", {"name": "k0", "path": "OPEN_KEY"}, -1, "Operation not permitted"),
    ("keyring_file_add_key", {"name": "a:k0", "path": "OPEN_KEY"}, -22, "Invalid argument"),
    ("keyring_file_remove_key", {"name": "nope"}, -126, "Required key not available"),
    ("nvmf_discovery_remove_referral", {"address": {"trtype": "tcp", "traddr": "127.0.0.9",
                                                    "trsvcid": "8009"}},
     -32603, "Unable to remove a referral."),
]


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_refusals_answer_as_spdk_does(tmp_path: Path, kind: str) -> None:
    open_key = tmp_path / "open.key"      # readable by others: SPDK refuses it
    open_key.write_text("NVMeTLSkey-1:01:not-a-real-key:\n")
    open_key.chmod(0o644)
    with target_process(tmp_path, kind=kind) as tp:
        s = Session(tp.sock)
        s.send({"jsonrpc": "2.0", "id": 0, "method": "nvmf_create_transport",
                "params": {"trtype": "TCP"}})
        got = []
        for i, (method, params, _, _) in enumerate(REFUSALS, 1):
            params = {k: str(open_key) if v == "OPEN_KEY" else v for k, v in params.items()}
            resp = s.send({"jsonrpc": "2.0", "id": i, "method": method, "params": params})
            err = resp.get("error", {})
            got.append((method, params, err.get("code"), err.get("message")))
    expected = [(m, {k: str(open_key) if v == "OPEN_KEY" else v for k, v in p.items()}, c, t)
                for m, p, c, t in REFUSALS]
    assert [g for g, e in zip(got, expected, strict=True) if g != e] == []


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_listener_needs_its_transport_first(tmp_path: Path, kind: str) -> None:
    """SPDK refuses a listener whose transport does not exist yet (-32602): a restore that
    opened listeners before transports would fail there, so the embedded target must too."""
    from nvmf_phoenix.rpc import RpcClient, RpcError
    from nvmf_phoenix.rpc import nvmf as rn

    nqn = "nqn.2016-06.io.spdk:order"
    addr = rn.listen_address("127.0.0.1", free_port())
    with target_process(tmp_path, kind=kind) as tp, RpcClient.connect(tp.sock) as c:
        rn.nvmf_create_subsystem(c, nqn)
        with pytest.raises(RpcError) as err:
            rn.nvmf_subsystem_add_listener(c, nqn, addr)
        assert (err.value.code, err.value.message) == (-32602, "Invalid parameters")
        rn.nvmf_create_transport(c, "TCP")
        rn.nvmf_subsystem_add_listener(c, nqn, addr)
        assert len(c.call("nvmf_subsystem_get_listeners", {"nqn": nqn})) == 1
