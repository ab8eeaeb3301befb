"""Hot-standby pair: both members hold one configuration with identical identities, the
standby takes over at the active's death, the dead one comes back as standby."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from nvmf_phoenix.recovery.pair import PairSupervisor
from nvmf_phoenix.rpc import RpcClient, RpcError
from nvmf_phoenix.rpc import nvmf as rn

from tests.phoenix_tools import drop_region
from tests.support import PAIR_NQN, configure_pair, paired
from tests.target_fixture import free_port
from tests.target_process import TARGET_KINDS
from tests.waiting import wait_for

NQN = PAIR_NQN
H1 = "nqn.2014-08.org.nvmexpress:uuid:6e767068-6f65-6e69-7800-000000000001"
H2 = "nqn.2014-08.org.nvmexpress:uuid:6e767068-6f65-6e69-7800-000000000002"
UUID = "5e1f0000-0000-4000-8000-0000000000aa"


def configure(c: RpcClient, image: Path, port: int, disc: int) -> None:
    configure_pair(c, image, port, disc)


def member(pair: PairSupervisor, name: str, method: str, params: Any = None) -> Any:
    with RpcClient.connect(pair.members[name].sock) as c:
        return c.call(method, params)


def listener_states(pair: PairSupervisor, name: str) -> dict[str, set[str]]:
    out = {}
    for ls in member(pair, name, "nvmf_subsystem_get_listeners", {"nqn": NQN}):
        a = ls["address"]
        out[f"{a['traddr']}:{a['trsvcid']}"] = {s["ana_state"] for s in ls["ana_states"]}
    return out


def identities(pair: PairSupervisor, name: str) -> dict[str, Any]:
    sub = next(s for s in member(pair, name, "nvmf_get_subsystems") if s["nqn"] == NQN)
    ns = sub["namespaces"][0]
    return {k: sub[k] for k in ("serial_number", "model_number")} | \
        {k: ns[k] for k in ("nsid", "uuid", "nguid", "anagrpid") if k in ns} | \
        {"cntlid": (sub["min_cntlid"], sub["max_cntlid"])}


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_both_members_hold_the_same_identities_and_their_roles(tmp_path: Path,
                                                               kind: str) -> None:
    port, disc = free_port(), free_port()
    with paired(tmp_path, kind=kind) as pair, \
            RpcClient.connect(str(tmp_path / "public.sock")) as c:
        configure(c, tmp_path / "disk.img", port, disc)
        a, b = identities(pair, "a"), identities(pair, "b")
        assert a.pop("cntlid") == (1, 32767) and b.pop("cntlid") == (32768, 65519)
        assert a == b and a["serial_number"] == "PAIR0001"
        assert listener_states(pair, "a") == {f"127.0.0.1:{port}": {"optimized"}}
        assert listener_states(pair, "b") == {f"127.0.0.1:{port + 1}": {"non_optimized"}}
        refs = member(pair, "a", "nvmf_discovery_get_referrals")
        assert [r["address"]["trsvcid"] for r in refs] == [str(disc + 1)]
        refs = member(pair, "b", "nvmf_discovery_get_referrals")
        assert [r["address"]["trsvcid"] for r in refs] == [str(disc)]
        status = c.call("phoenix_status")
        assert status["mode"] == "pair" and status["redundant"] and status["active"] == "a"
        assert status["members"]["b"]["listeners"] == sorted(
            [f"127.0.0.1:{port + 1}", f"127.0.0.1:{disc + 1}"])


def test_calls_a_pair_cannot_mirror_are_refused_with_what_to_do(tmp_path: Path) -> None:
    with paired(tmp_path) as pair, RpcClient.connect(str(tmp_path / "public.sock")) as c:
        for method, params, words in [
                ("bdev_malloc_create", {"num_blocks": 128, "block_size": 512}, "bdev_aio"),
                ("nvmf_create_subsystem", {"nqn": NQN, "min_cntlid": 5}, "leave min_cntlid"),
                ("nvmf_subsystem_listener_set_ana_state",
                 {"nqn": NQN, "listen_address": {}, "ana_state": "optimized"},
                 "sets ANA states itself")]:
            with pytest.raises(RpcError) as err:
                c.call(method, params)
            assert err.value.code == -1 and words in err.value.message, method
        assert member(pair, "b", "nvmf_get_subsystems") == \
            member(pair, "a", "nvmf_get_subsystems")


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_active_death_is_a_failover_and_the_dead_one_returns_as_standby(
        tmp_path: Path, kind: str) -> None:
    port, disc = free_port(), free_port()
    with paired(tmp_path, kind=kind) as pair, \
            RpcClient.connect(str(tmp_path / "public.sock")) as c:
        configure(c, tmp_path / "disk.img", port, disc)
        before = identities(pair, "a")
        proc = pair.members["a"].proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        wait_for(lambda: pair.status.failovers == 1, timeout=10, what="failover")
        assert pair.active == "b"
        assert listener_states(pair, "b") == {f"127.0.0.1:{port + 1}": {"optimized"}}
        # The public socket serves from b now, and changes are mirrored back onto a.
        rn.nvmf_subsystem_add_host(c, NQN, H1)
        wait_for(lambda: c.call("phoenix_status")["redundant"], timeout=30,
                 what="a back as standby")
        assert listener_states(pair, "a") == {f"127.0.0.1:{port}": {"non_optimized"}}
        after = identities(pair, "a")
        assert after == before
        rn.nvmf_subsystem_add_host(c, NQN, H2)
        hosts = {h["nqn"] for s in member(pair, "a", "nvmf_get_subsystems")
                 if s["nqn"] == NQN for h in s["hosts"]}
        assert hosts == {H1, H2}


def test_standby_death_costs_nothing_and_it_is_rebuilt(tmp_path: Path) -> None:
    port, disc = free_port(), free_port()
    with paired(tmp_path) as pair, RpcClient.connect(str(tmp_path / "public.sock")) as c:
        configure(c, tmp_path / "disk.img", port, disc)
        proc = pair.members["b"].proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        rn.nvmf_subsystem_add_host(c, NQN, H1)
        wait_for(lambda: pair.members["b"].restarts == 1 and
                 c.call("phoenix_status")["redundant"], timeout=30, what="b rebuilt")
        assert pair.active == "a" and pair.status.failovers == 0
        hosts = {h["nqn"] for s in member(pair, "b", "nvmf_get_subsystems")
                 if s["nqn"] == NQN for h in s["hosts"]}
        assert hosts == {H1}
        assert listener_states(pair, "b") == {f"127.0.0.1:{port + 1}": {"non_optimized"}}


def test_both_dead_at_once_falls_back_to_a_restore(tmp_path: Path) -> None:
    port, disc = free_port(), free_port()
    with paired(tmp_path) as pair, RpcClient.connect(str(tmp_path / "public.sock")) as c:
        configure(c, tmp_path / "disk.img", port, disc)
        before = identities(pair, "a")
        procs = [pair.members[n].proc for n in ("a", "b")]
        for p in procs:
            assert p is not None
            p.send_signal(signal.SIGKILL)
        # The call waits for the restore, then is served by a restored member.
        assert rn.nvmf_get_subsystems(c, NQN)[0]["serial_number"] == "PAIR0001"
        wait_for(lambda: c.call("phoenix_status")["redundant"], timeout=30,
                 what="both members back")
        assert identities(pair, pair.active) | {"cntlid": None} == \
            before | {"cntlid": None}
        states = {n: listener_states(pair, n) for n in ("a", "b")}
        assert sorted(s for st in states.values() for v in st.values() for s in v) == \
            ["non_optimized", "optimized"]


def test_a_new_supervisor_adopts_both_members_and_keeps_their_roles(tmp_path: Path) -> None:
    port, disc = free_port(), free_port()
    public, state = str(tmp_path / "public.sock"), str(tmp_path / "state")
    argv = [sys.executable, "-m", "nvmf_phoenix.plugin.cli", "supervise", "--standby",
            "-s", public, "--target-socket", str(tmp_path / "a.sock"), "-d", state]
    sup = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pids: list[int] = []
    try:
        wait_for(lambda: _answers(public), timeout=30, what="supervisor up")
        with RpcClient.connect(public) as c:
            configure(c, tmp_path / "disk.img", port, disc)
            first = c.call("phoenix_status")
            pids = [first["members"][n]["pid"] for n in ("a", "b")]
            os.kill(pids[0], signal.SIGKILL)             # b becomes active
            wait_for(lambda: c.call("phoenix_status")["failovers"] == 1, timeout=10,
                     what="failover")
            wait_for(lambda: c.call("phoenix_status")["redundant"], timeout=30,
                     what="a back")
            pids = [c.call("phoenix_status")["members"][n]["pid"] for n in ("a", "b")]
        sup.kill()
        sup.wait(timeout=10)
        sup = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for(lambda: _answers(public), timeout=30, what="second supervisor up")
        with RpcClient.connect(public) as c:
            st = c.call("phoenix_status")
            assert st["active"] == "b" and st["redundant"]
            assert [st["members"][n]["pid"] for n in ("a", "b")] == pids
            assert rn.nvmf_get_subsystems(c, NQN)[0]["serial_number"] == "PAIR0001"
    finally:
        sup.terminate()
        sup.wait(timeout=30)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        drop_region(tmp_path / "state")


def _answers(sock: str) -> bool:
    try:
        with RpcClient.connect(sock, timeout=1) as c:
            return c.call("phoenix_status")["state"] == "ready"
    except RpcError:
        return False
