"""The method table: one declaration per JSON-RPC method, and what derives from it.

Every method the embedded target serves, and every method capture, changes, the planner
and the in-flight policy model, has exactly one declaration in rpc/methods.py; the
derivations that could drift apart (a planner's params and capture's reading of them,
a declared phase and the embedded target's) are checked here on real model objects.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from nvmf_phoenix.embedded import rpc_nvmf  # noqa: F401  (registers the nvmf handlers)
from nvmf_phoenix.embedded.config_store import TargetCore
from nvmf_phoenix.embedded.rpc_methods import METHODS as SERVED
from nvmf_phoenix.embedded.spdk_format import subsystem_config
from nvmf_phoenix.recovery import changes, inflight
from nvmf_phoenix.recovery.capture import CONFIG_SUBSYSTEMS, apply_entry, state_from_rpc
from nvmf_phoenix.recovery.diff import diff
from nvmf_phoenix.recovery.planner import plan
from nvmf_phoenix.rpc import methods
from nvmf_phoenix.rpc.methods import METHODS, READ_ONLY_PREFIXES, is_read_only

from nvmf_phoenix.model import (
    Bdev,
    Host,
    Key,
    Kind,
    ListenAddress,
    Listener,
    Namespace,
    Referral,
    StartupOptions,
    Subsystem,
    TargetState,
    Transport,
)

ROOT = Path(__file__).resolve().parent.parent
NQN = "nqn.2016-06.io.phx:methods"
SPDK_NAME = re.compile(r"(nvmf|bdev|keyring|framework|spdk|rpc)_[a-z_]+")


def _declared_names_in_source() -> list[str]:
    """Method names as written in the table's source, duplicates kept."""
    tree = ast.parse((ROOT / "rpc" / "methods.py").read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("Method", "_reads") and node.args and \
                isinstance(node.args[0], ast.Constant):
            names.append(str(node.args[0].value))
    return names


def test_each_method_is_declared_once() -> None:
    names = _declared_names_in_source()
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert set(names) == set(METHODS)


def test_every_served_method_is_declared_with_its_phases() -> None:
    assert set(SERVED) - set(METHODS) == set(), "served but not declared"
    for name, served in SERVED.items():
        assert served.phases == METHODS[name].phases, name


def test_every_method_recovery_names_is_declared() -> None:
    """capture, changes, inflight, the planner, the front: any SPDK method name written
    in recovery/ is one the table declares (else its meaning lives somewhere else)."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "recovery").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    SPDK_NAME.fullmatch(node.value):
                found.setdefault(node.value, path.name)
    assert found, "the scan found nothing: the pattern is wrong"
    undeclared = {n: f for n, f in found.items() if n not in METHODS}
    assert not undeclared, undeclared
    assert set(changes.MODELLED) <= set(METHODS)


def test_read_only_agrees_with_spdk_naming() -> None:
    """SPDK names its read-only methods ``*_get_*``; a declaration that disagrees (or an
    undeclared name) would change what the front journals."""
    for name, m in METHODS.items():
        assert m.read_only == name.startswith(READ_ONLY_PREFIXES), name
    assert is_read_only("bdev_get_iostat") and not is_read_only("bdev_null_create")
    assert not is_read_only("nvmf_subsystem_add_ns")


def test_journal_vocabulary_is_stable() -> None:
    """The op strings are on disk in journals: renaming one breaks old journals."""
    assert {k.value for k in Kind} == {"bdev", "key", "transport", "subsystem", "host",
                                       "ns", "listener", "referral", "allow_any_host",
                                       "ana", "ns_host"}


def _rich_state() -> TargetState:
    """One object of every kind with every optional field set (ANA aside: its states
    are set by calls that carry no object)."""
    st = TargetState.empty()
    st.startup = StartupOptions(nvmf_config={"discovery_filter": "address"},
                                max_subsystems=64, crdt={"crdt1": 5})
    st.keys["k0"] = Key(name="k0", path="/keys/k0")
    st.bdevs["m0"] = Bdev(name="m0", kind="malloc", uuid="9f1e4f0b-5ab8-4c43-9b1b-000000000001",
                          block_size=4096, num_blocks=256, params={"md_size": 0})
    st.bdevs["a0"] = Bdev(name="a0", kind="aio", uuid="9f1e4f0b-5ab8-4c43-9b1b-000000000002",
                          block_size=512, num_blocks=0, filename="/dev/null",
                          params={"readonly": True})
    st.bdevs["n0"] = Bdev(name="n0", kind="null", uuid="9f1e4f0b-5ab8-4c43-9b1b-000000000003",
                          block_size=512, num_blocks=2048,
                          params={"physical_block_size": 512, "md_size": 0})
    st.transports["TCP"] = Transport(trtype="TCP", options={"max_queue_depth": 64})
    st.bdevs["i0"] = Bdev(name="i0", kind="malloc", uuid="9f1e4f0b-5ab8-4c43-9b1b-000000000004",
                          block_size=512, num_blocks=64,
                          params={"md_size": 8, "md_interleave": True, "dif_type": 1})
    sub = Subsystem(nqn=NQN, serial_number="SN1", model_number="M1", max_namespaces=8,
                    min_cntlid=3, max_cntlid=9, allow_any_host=False, ana_reporting=True,
                    dmrsl=1024, wzsl=4, passthrough=True, enable_nssr=True)
    sub.hosts["nqn.h1"] = Host(nqn="nqn.h1", psk="k0", dhchap_key="k0")
    sub.namespaces[2] = Namespace(nsid=2, bdev_name="m0", uuid="0b5c7b44-0000-4000-8000-0000"
                                  "00000002", nguid="00112233445566778899AABBCCDDEEFF",
                                  eui64="0011223344556677", anagrpid=2, ptpl_file="/p/ns2")
    st.bdevs["m1"] = Bdev(name="m1", kind="malloc", uuid="9f1e4f0b-5ab8-4c43-9b1b-000000000003",
                          block_size=512, num_blocks=64)
    sub.namespaces[3] = Namespace(nsid=3, bdev_name="m1", uuid="0b5c7b44-0000-4000-8000-0000"
                                  "00000003", nguid="00112233445566778899AABBCCDDEE03",
                                  anagrpid=3, no_auto_visible=True, hosts=["nqn.h1"])
    addr = ListenAddress.make("127.0.0.1", 4420)
    sub.listeners[addr] = Listener(address=addr, secure_channel=True, sock_impl="ssl")
    st.subsystems[NQN] = sub
    st.referrals.append(Referral(address=ListenAddress.make("10.0.0.9", 8009)))
    return st


def test_planner_params_read_back_by_capture_give_the_objects_back() -> None:
    """For every creating method: the params the planner emits from a model object, read
    the way capture reads a config entry, give back that object."""
    desired = _rich_state()
    the_plan = plan(desired, TargetState(), phase="startup")
    rebuilt = TargetState.empty()
    for call in the_plan.calls:
        assert call.method in METHODS, call.method
        apply_entry(rebuilt, call.method, call.params or {})
    assert rebuilt.config_dict() == desired.config_dict()
    creating = {n for n, m in METHODS.items() if m.put is not None}
    assert creating <= {c.method for c in the_plan.calls}, "a creating method not exercised"


def test_prune_plans_only_declared_removals() -> None:
    the_plan = plan(TargetState.empty(), _rich_state(), prune=True)
    assert {c.method for c in the_plan.calls} == {
        "nvmf_subsystem_remove_listener", "nvmf_delete_subsystem", "bdev_malloc_delete",
        "bdev_aio_delete", "bdev_null_delete"}


def test_embedded_config_is_captured_as_the_same_state() -> None:
    """The embedded target's framework_get_config renders each object from its create
    params; capture reads them back to the state the target holds."""
    core = TargetCore()
    core.state = _rich_state()
    configs = {name: subsystem_config(core, name) or [] for name in CONFIG_SUBSYSTEMS}
    assert all(e["method"] in METHODS for c in configs.values() for e in c)
    captured = state_from_rpc(configs)
    assert diff(core.state, captured, desired=True) == []


def test_a_lost_answer_is_recognised_by_the_declared_effect() -> None:
    """Each modelled method: the effect shows between a state without the change and one
    with it, and not the other way round."""
    before, after = TargetState.empty(), _rich_state()
    sub = after.subsystems[NQN]
    ns, host = sub.namespaces[2], sub.hosts["nqn.h1"]
    (ls,) = sub.listeners.values()
    adds = [("nvmf_create_subsystem", sub.to_create_params()),
            ("nvmf_subsystem_add_ns", methods.emit("nvmf_subsystem_add_ns", sub, ns)),
            ("nvmf_subsystem_add_host", host.to_create_params(NQN)),
            ("nvmf_ns_add_host", methods.emit("nvmf_ns_add_host", sub, sub.namespaces[3],
                                              "nqn.h1")),
            ("nvmf_subsystem_add_listener", ls.to_create_params(NQN)),
            ("nvmf_create_transport", {"trtype": "tcp"}),
            ("bdev_malloc_create", after.bdevs["m0"].to_create_params())]
    half = _rich_state()
    half_sub = half.subsystems[NQN]
    half_sub.namespaces.clear()
    half_sub.hosts.clear()
    half_sub.listeners.clear()
    for name, params in adds:
        base = half if name.startswith("nvmf_subsystem_") else before
        assert inflight.effect_present(name, params, base, after), name
        assert not inflight.effect_present(name, params, after, base), name
    assert inflight.result_of("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {
        "bdev_name": "m0"}}, half, after) == 2


def test_a_bdev_saved_with_its_metadata_in_its_block_size_is_kept_as_created() -> None:
    """SPDK reports an interleaved-metadata bdev's block size with the metadata in it
    (520) and no md_interleave, a form its create call refuses: the model keeps the
    form creation takes, which is also what a call's own params give."""
    saved = {"name": "x", "num_blocks": 8, "block_size": 520, "md_size": 8, "dif_type": 1,
             "uuid": "9f1e4f0b-5ab8-4c43-9b1b-000000000009"}
    malloc = Bdev.from_create_params("malloc", saved)
    assert (malloc.block_size, malloc.params["md_interleave"]) == (512, True)
    assert malloc == Bdev.from_create_params("malloc", {**saved, "block_size": 512,
                                                        "md_interleave": True})
    null = Bdev.from_create_params("null", saved)   # a null bdev always interleaves
    assert null.block_size == 512 and "md_interleave" not in null.params
    separate = Bdev.from_create_params("malloc", {**saved, "block_size": 512,
                                                  "md_interleave": False})
    assert separate.block_size == 512 and "md_interleave" not in separate.params
