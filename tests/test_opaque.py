"""Nothing the target holds is dropped: configuration entries no declaration models are
carried verbatim (``TargetState.opaque``), replayed at their stage, compared by diff,
kept by the store, and reported."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from nvmf_phoenix.recovery import capture as capture_mod
from nvmf_phoenix.recovery import inflight
from nvmf_phoenix.recovery.capture import capture_config, state_from_rpc
from nvmf_phoenix.recovery.carry import missing, overlay
from nvmf_phoenix.recovery.diff import diff
from nvmf_phoenix.recovery.planner import plan
from nvmf_phoenix.recovery.restore import restore
from nvmf_phoenix.recovery.store import CheckpointStore
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import bdev as rb

from nvmf_phoenix.model import TargetState
from tests.support import save_config
from tests.target_process import TargetProcess
from tests.transparent_target import transparent_target

SUB = "nqn.2016-06.io.phx:opaque"
IOBUF = {"small_pool_count": 8192, "large_pool_count": 1024, "small_bufsize": 8192,
         "large_bufsize": 135168}
PASSTHRU = {"name": "P0", "base_bdev_name": "M0", "uuid": "1d2b3c4d-0000-4000-8000-00000000000f"}


def _configs() -> dict[str, list[dict[str, Any]]]:
    """A save_config as nvmf_tgt would give it, with entries the model does not know:
    an option section, a bdev module's bdev (a namespace uses it) and the examine barrier."""
    return {
        "iobuf": [{"method": "iobuf_set_options", "params": dict(IOBUF)}],
        "bdev": [{"method": "bdev_set_options", "params": {"bdev_io_pool_size": 65535}},
                 {"method": "bdev_malloc_create", "params": {
                     "name": "M0", "num_blocks": 64, "block_size": 512,
                     "uuid": "1d2b3c4d-0000-4000-8000-000000000001"}},
                 {"method": "bdev_passthru_create", "params": dict(PASSTHRU)},
                 {"method": "bdev_wait_for_examine"}],
        "nvmf": [{"method": "nvmf_create_subsystem", "params": {"nqn": SUB}},
                 {"method": "nvmf_subsystem_add_ns", "params": {"nqn": SUB, "namespace": {
                     "nsid": 1, "bdev_name": "P0"}}}]}


def test_unmodelled_entries_survive_checkpoint_plan_and_diff() -> None:
    st = state_from_rpc(_configs())
    assert [e["method"] for e in st.opaque or []] == [
        "iobuf_set_options", "bdev_set_options", "bdev_passthru_create",
        "bdev_wait_for_examine"]
    # The checkpoint's dict form (what the journal and the region store) keeps them.
    back = TargetState.from_dict(json.loads(json.dumps(st.to_dict())))
    assert back.opaque == st.opaque and diff(st, back) == []
    # Replayed into a fresh target: options before framework_start_init, the bdev after
    # the modelled ones and before the namespace that needs it, the barrier after it.
    the_plan = plan(back, TargetState(), phase="startup")
    calls = [(c.stage, c.method) for stage in the_plan.by_stage() for c in stage]
    order = [m for _, m in calls]   # as the executor runs them
    assert ("startup", "iobuf_set_options") in calls and ("startup", "bdev_set_options") in calls
    assert order.index("bdev_set_options") < order.index("framework_start_init")
    assert order.index("bdev_malloc_create") < order.index("bdev_passthru_create") < \
        order.index("bdev_wait_for_examine") < order.index("nvmf_subsystem_add_ns")
    (passthru,) = [c for c in the_plan.calls if c.method == "bdev_passthru_create"]
    assert passthru.params == PASSTHRU and passthru.key == "bdev:P0"
    assert "bdev_passthru_create P0" in the_plan.opaque
    # A live target that lacks one, or holds it otherwise: diff says so, by name.
    lost = TargetState.from_dict(back.to_dict())
    assert lost.opaque is not None
    lost.opaque = [e for e in lost.opaque if e["method"] != "bdev_passthru_create"]
    lost.opaque[0]["params"]["small_pool_count"] = 4096
    found = diff(back, lost, desired=True)
    assert any(d.startswith("opaque[bdev_passthru_create P0]") for d in found), found
    assert "opaque[iobuf_set_options][small_pool_count]: 8192 != 4096" in found
    # What the live target already has is not sent again.
    assert plan(back, back, phase="running").calls == []


def test_a_checkpoint_without_them_is_compared_as_before() -> None:
    """Older checkpoints (and states built by hand) never recorded opaque entries:
    nothing to replay, nothing to compare, no spurious differences."""
    st = state_from_rpc(_configs())
    old = st.to_dict()
    del old["opaque"]
    loaded = TargetState.from_dict(old)
    assert loaded.opaque is None
    assert diff(loaded, st, desired=True) == []
    assert not [c for c in plan(loaded, TargetState(), phase="startup").calls
                if c.method in ("iobuf_set_options", "bdev_passthru_create")]


def test_a_startup_option_a_running_target_lacks_is_a_conflict() -> None:
    desired, live = state_from_rpc(_configs()), state_from_rpc(_configs())
    assert live.opaque is not None
    live.opaque[0]["params"]["large_pool_count"] = 512
    the_plan = plan(desired, live, phase="running")
    assert [c.method for c in the_plan.calls] == []
    assert any("iobuf_set_options" in c and "--wait-for-rpc" in c
               for c in the_plan.conflicts), the_plan.conflicts
    assert "opaque iobuf_set_options" in the_plan.extra


def test_store_and_carry_keep_them(tmp_path: Path) -> None:
    st = state_from_rpc(_configs())
    store = CheckpointStore(str(tmp_path / "ckpt"), name="opq", region_dir=str(tmp_path / "shm"))
    try:
        store.save(st)
        loaded = store.load().state
    finally:
        store.close()
    assert loaded is not None and loaded.opaque == st.opaque
    # A restore that could not replay the passthru bdev: the checkpoint keeps it.
    live = TargetState.from_dict(st.to_dict())
    assert live.opaque is not None
    live.opaque = [e for e in live.opaque if e["method"] != "bdev_passthru_create"]
    carried = missing(st, live)
    assert carried and carried.describe() == ["opaque bdev_passthru_create P0"]
    kept, still = overlay(live, carried)
    assert diff(st, kept) == [] and still.describe() == carried.describe()


def test_capture_says_once_what_it_carries(caplog: pytest.LogCaptureFixture) -> None:
    capture_mod._told.discard("bdev_passthru_create")
    with caplog.at_level(logging.INFO, logger=capture_mod.__name__):
        state_from_rpc(_configs())
        state_from_rpc(_configs())
    told = [r.getMessage() for r in caplog.records if "bdev_passthru_create" in r.getMessage()]
    assert len(told) == 1 and "not modelled" in told[0]


def test_embedded_restore_replays_and_reports_them(tmp_path: Path) -> None:
    """The embedded target reports option entries of its own (bdev_set_options, the
    examine barrier): a restore into a fresh target replays them and says so."""
    sock = str(tmp_path / "spdk.sock")
    tp = TargetProcess(sock)
    try:
        with RpcClient.connect(sock) as c:
            rb.bdev_malloc_create(c, 64, 512, name="M0")
            before = capture_config(c)
    finally:
        tp.kill()
    assert before.opaque and {"bdev_set_options", "bdev_wait_for_examine"} <= {
        e["method"] for e in before.opaque}
    fresh = TargetProcess(sock, "--wait-for-rpc")
    try:
        with RpcClient.connect(sock) as c:
            report = restore(c, before)
            after = capture_config(c)
    finally:
        fresh.stop()
    assert report.ok, report.summary()
    assert {"bdev_set_options", "bdev_wait_for_examine"} <= set(report.summary()["opaque"])
    assert diff(before, after) == []


def test_a_lost_answer_of_an_unmodelled_bdev_is_found_among_them() -> None:
    """bdev_passthru_create's answer lost: the bdev shows among the carried entries, so
    the call is not sent again (which SPDK would refuse: the name exists)."""
    after = state_from_rpc(_configs())
    before = TargetState.from_dict(after.to_dict())
    assert before.opaque is not None
    before.opaque = [e for e in before.opaque if e["method"] != "bdev_passthru_create"]
    assert inflight.effect_present("bdev_passthru_create", PASSTHRU, before, after)
    assert inflight.result_of("bdev_passthru_create", PASSTHRU, before, after) == "P0"
    assert not inflight.effect_present("bdev_passthru_create", PASSTHRU, after, after)
    assert inflight.effect_present("bdev_passthru_delete", {"name": "P0"}, after, before)


def test_options_a_checkpoint_never_set_are_the_targets_own() -> None:
    """A checkpoint of a target without an option section (the embedded target has no
    sock options) restored onto one with it: those defaults are no difference; a bdev
    the checkpoint does not have is."""
    desired, live = state_from_rpc(_configs()), state_from_rpc(_configs())
    assert live.opaque is not None
    sock = {"impl_name": "posix", "recv_buf_size": 2097152}
    live.opaque.insert(1, {"subsystem": "sock", "method": "sock_impl_set_options",
                           "params": sock})
    assert diff(desired, live, desired=True) == []
    assert diff(desired, live) != []           # compared as equals, they differ
    live.opaque.append({"subsystem": "bdev", "method": "bdev_null_create",
                        "params": {"name": "N0", "num_blocks": 8, "block_size": 512}})
    assert [d.split(":")[0] for d in diff(desired, live, desired=True)] == [
        "opaque[bdev_null_create N0]"]
    assert plan(desired, live).extra == ["opaque bdev_null_create N0"]
    assert plan(desired, live, prune=True).extra == ["opaque bdev_null_create N0"]


# Option setters (and bdev_enable_histogram) with values other than nvmf_tgt's defaults.
SETTINGS = [("iobuf_set_options", {"small_pool_count": 4096}),
            ("sock_impl_set_options", {"impl_name": "posix", "recv_buf_size": 4194304}),
            ("sock_set_default_impl", {"impl_name": "ssl"}),
            ("accel_set_options", {"task_count": 1024}),
            ("bdev_set_options", {"bdev_io_cache_size": 128}),
            ("bdev_nvme_set_options", {"keep_alive_timeout_ms": 5000}),
            ("bdev_raid_set_options", {"process_window_size_kb": 2048}),
            ("framework_set_scheduler", {"name": "dynamic", "period": 2000000,
                                         "load_limit": 30})]


def test_a_successor_worker_keeps_the_option_values(tmp_path: Path) -> None:
    """The crash-transparent target saves option values and enabled histograms with its
    configuration: the worker that takes over after a SIGKILL reports what its
    predecessor was told, not nvmf_tgt's defaults."""
    with transparent_target(tmp_path, "--wait-for-rpc") as t:
        with t.rpc() as c:
            for m, p in SETTINGS:
                c.call(m, p)
            c.call("framework_start_init")
            rb.bdev_malloc_create(c, 64, 512, name="M0")
            c.call("bdev_enable_histogram", {"name": "M0", "enable": True, "opc": "read"})
            before = save_config(c)
            scheduler = c.call("framework_get_scheduler")
        assert any(e["method"] == "bdev_enable_histogram" for e in before["bdev"])
        seen = t.wait_standby()["takeovers"]
        t.kill_active()
        t.wait_standby(seen + 1)
        with t.rpc() as c:
            assert save_config(c) == before
            assert c.call("framework_get_scheduler") == scheduler
            assert c.call("bdev_get_histogram", {"name": "M0"})["histogram"]
