"""The cluster's floating address: held by the owner alone, taken over by the peer.

First the views (pure): the owner's view listens on the floating address too, no other
role's does, the checkpoint never holds those copies, and a user's listener change is
followed on the floating address by :func:`floating_calls`.

Then the lab (tests/cluster_lab.py: three node namespaces, a real etcd member in each, a
host namespace), every node started with ``--floating-address ADDR/24 --floating-dev
eth0``. The host knows the floating address only and runs the project's initiator with
verified I/O through it. The owner is killed loud: the peer takes the address (the host's
neighbour entry for it moves to the peer's MAC), the host reconnects to it, and the dead
node, started again, comes back as standby without the address. Then the new owner is cut
off from etcd: it fences itself (listeners on the address inaccessible, then the address
gone) and the third node takes the address; the third node, stopped as planned, hands it
on. 0 I/O errors, 0 mismatches throughout.
"""
from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nvmf_phoenix.plugin import metrics
from nvmf_phoenix.plugin.cli_cluster import cluster_status
from nvmf_phoenix.recovery.pair_view import (
    ACTIVE,
    FENCED,
    STANDBY,
    ClusterLayout,
    NodePlace,
    floating_calls,
    member_view,
    to_logical,
)
from nvmf_phoenix.rpc import RpcClient, RpcError

from nvmf_phoenix.model import (
    DISCOVERY_NQN,
    ListenAddress,
    Listener,
    Subsystem,
    TargetState,
)
from tests.cluster_host import HostIO, stall_after
from tests.cluster_lab import (
    DATA_DEV,
    DISC_PORT,
    IO_PORT,
    NQN,
    PREFIX,
    ClusterLab,
    Node,
    node_number,
    supervise_command,
)
from tests.netlab import why_no_netns
from tests.phoenix_tools import BIN
from tests.waiting import wait_for

FLOAT = "192.0.2.100"


# -- the views ------------------------------------------------------------------------
def _logical() -> TargetState:
    state = TargetState.empty()
    sub = Subsystem(nqn=NQN)
    sub.listeners = {a: Listener(a) for a in [ListenAddress.make("192.0.2.11", IO_PORT)]}
    disc = Subsystem(nqn=DISCOVERY_NQN, subtype="Discovery")
    disc.listeners = {a: Listener(a) for a in [ListenAddress.make("192.0.2.11", DISC_PORT)]}
    state.subsystems = {NQN: sub, DISCOVERY_NQN: disc}
    return state


LAYOUT = ClusterLayout({"n1": NodePlace(0, "192.0.2.11"), "n2": NodePlace(1, "192.0.2.12")},
                       floating=FLOAT)


def _traddrs(state: TargetState, nqn: str) -> dict[str, dict[int, str]]:
    return {f"{a.traddr}:{a.trsvcid}": ls.ana_states
            for a, ls in state.subsystems[nqn].listeners.items()}


def test_only_the_owner_view_listens_on_the_floating_address() -> None:
    owner = member_view(_logical(), LAYOUT, "n2", ACTIVE)
    assert set(_traddrs(owner, NQN)) == {f"192.0.2.12:{IO_PORT}", f"{FLOAT}:{IO_PORT}"}
    assert set(_traddrs(owner, NQN)[f"{FLOAT}:{IO_PORT}"].values()) == {"optimized"}
    assert set(_traddrs(owner, DISCOVERY_NQN)) == {f"192.0.2.12:{DISC_PORT}",
                                                   f"{FLOAT}:{DISC_PORT}"}
    for role in (STANDBY, FENCED):
        view = member_view(_logical(), LAYOUT, "n2", role)
        assert set(_traddrs(view, NQN)) == {f"192.0.2.12:{IO_PORT}"}, role
    # No referral to the floating address: it is not another node's discovery service.
    assert all(r.address.traddr != FLOAT for r in owner.referrals)
    # What the owner reports checkpoints as the user's configuration, copies left out.
    back = to_logical(owner, LAYOUT, "n2", _logical())
    assert set(_traddrs(back, NQN)) == {f"192.0.2.11:{IO_PORT}"}
    assert set(_traddrs(back, DISCOVERY_NQN)) == {f"192.0.2.11:{DISC_PORT}"}


def test_floating_calls_follow_the_users_listener_changes() -> None:
    before = member_view(_logical(), LAYOUT, "n1", ACTIVE)
    more = _logical()
    extra = ListenAddress.make("192.0.2.11", 4430)
    more.subsystems[NQN].listeners[extra] = Listener(extra)
    after = member_view(more, LAYOUT, "n1", ACTIVE)
    assert floating_calls(before, after, FLOAT) == [
        ("nvmf_subsystem_add_listener",
         {"nqn": NQN, "listen_address": ListenAddress.make(FLOAT, 4430).to_dict()})]
    assert floating_calls(after, before, FLOAT) == [
        ("nvmf_subsystem_remove_listener",
         {"nqn": NQN, "listen_address": ListenAddress.make(FLOAT, 4430).to_dict()})]
    # A deleted subsystem took its listeners with it; no floating address, no calls.
    gone = _logical()
    del gone.subsystems[NQN]
    assert floating_calls(before, member_view(gone, LAYOUT, "n1", ACTIVE), FLOAT) == []
    assert floating_calls(before, after, None) == []


@pytest.mark.parametrize("extra, says", [
    (["--floating-address", "192.0.2.100/24"], "--floating-address needs --floating-dev"),
    (["--floating-address", "192.0.2.x", "--floating-dev", "lo"], "192.0.2.x"),
    (["--floating-address", "192.0.2.100/40", "--floating-dev", "lo"], "prefix /40"),
    (["--floating-address", "192.0.2.11", "--floating-dev", "lo"], "must differ"),
    (["--floating-address", "192.0.2.100", "--floating-dev", "nosuchdev0"],
     "no network interface 'nosuchdev0'"),
])
def test_floating_flags_are_checked_before_anything_starts(tmp_path: Path, extra: list[str],
                                                           says: str) -> None:
    run = subprocess.run([str(BIN / "nvmf-phoenix"), "supervise", "--store",
                          "etcd://127.0.0.1:9/x", "--node", "n1", "--node-address",
                          "192.0.2.11", "-d", str(tmp_path / "state"), "-s",
                          str(tmp_path / "public.sock"), *extra],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and says in run.stderr, run.stderr
    assert not (tmp_path / "state").exists()


# -- the lab ------------------------------------------------------------------------------
_reason = why_no_netns()
lab_only = pytest.mark.skipif(_reason is not None, reason=_reason or "")

LEASE_TTL = 2
HOST: dict[str, float | str] = {"kato_ms": 3000, "io_timeout": 3.0, "connect_timeout": 1.0,
                                "reconnect_delay": 0.25}
LOUD_BOUND = 5.0          # generous on a shared machine: lease expiry (2 s) dominates


def floating_address(lab: ClusterLab) -> str:
    """The lab's floating address: .100 of the data network (free_subnets' choice)."""
    return lab.nodes[1].data_addr.rsplit(".", 1)[0] + ".100"


def floating_command(lab: ClusterLab, node: Node) -> list[str]:
    return [*supervise_command(lab, node), "--floating-address",
            f"{floating_address(lab)}/24", "--floating-dev", DATA_DEV]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ClusterLab]:
    lab = ClusterLab(tmp_path, lease_ttl=LEASE_TTL, command=floating_command)
    try:
        lab.start()
        lab.configure()
        lab.wait_roles()
        yield lab
    finally:
        lab.close()


def holders(lab: ClusterLab) -> list[int]:
    """The nodes whose data interface has the floating address."""
    addr = floating_address(lab)
    return [k for k, n in lab.nodes.items() if addr in lab.net.addresses(n.ns, DATA_DEV)]


def floating_ana(lab: ClusterLab, k: int) -> str | None:
    """Node ``k``'s listener on the floating address: its ANA state, None if none."""
    try:
        return lab.ana_states(k).get(floating_address(lab))
    except (OSError, RpcError):
        return None


def node_status(node: Node) -> dict[str, Any]:
    with RpcClient.connect(node.sock, timeout=5) as c:
        return dict(c.call("phoenix_status"))


def _cli(*argv: str) -> str:
    run = subprocess.run([str(BIN / "nvmf-phoenix"), *argv], capture_output=True,
                         text=True, timeout=60)
    return run.stdout + run.stderr


def wait_holder(lab: ClusterLab, k: int, timeout: float = 30.0) -> None:
    """Node ``k`` alone holds the floating address and listens on it optimized."""
    wait_for(lambda: holders(lab) == [k] and floating_ana(lab, k) == "optimized",
             timeout=timeout, interval=0.02,
             what=f"n{k} alone holding {floating_address(lab)}, optimized on it")


@lab_only
def test_floating_address_moves_to_the_peer(lab: ClusterLab) -> None:
    addr = floating_address(lab)
    first = lab.owner_node()
    wait_holder(lab, first.k)
    assert all(floating_ana(lab, k) is None for k in lab.nodes if k != first.k)
    assert node_status(first)["floating"] == {"address": addr, "held": True}
    group = cluster_status(lab.client, PREFIX)["groups"]["default"]
    assert group["floating"] == {first.name: addr}, group
    # What users read: `status` on the owner's socket, `cluster status` from etcd.
    out = _cli("status", "-s", first.sock, "-d", first.state_dir)
    assert f"floating address {addr}: held by this node" in out, out
    out = _cli("cluster", "status", "--store", lab.store_url)
    assert f"floating address {addr} held by {first.name}" in out, out
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in
               metrics.PhoenixCollector(first.sock, first.state_dir).collect()
               for s in m.samples}
    assert samples[("nvmf_phoenix_cluster_floating_held",
                    (("address", addr), ("group", "default")))] == 1, samples
    host = HostIO(lab.host_ns, lab.workdir, NQN, {"path": [f"{addr}:{IO_PORT}"]},
                  {**HOST, "block_size": 4096})
    try:
        host.wait_flowing()
        assert lab.net.neighbour_mac(lab.host_ns, addr) == lab.net.mac(first.ns, DATA_DEV)
        # Loud death of the owner: the peer takes the group and the address.
        at = lab.kill_node_loud(first.k)
        new = lab.wait_owner(lambda o: node_number(o) != first.k, timeout=30,
                             what="a peer owning the group")
        peer = lab.nodes[node_number(new)]
        # The dead node's kernel keeps the address until its supervisor is back, so
        # only the host's neighbour entry can show the move.
        wait_for(lambda: floating_ana(lab, peer.k) == "optimized" and
                 lab.net.neighbour_mac(lab.host_ns, addr) == lab.net.mac(peer.ns, DATA_DEV),
                 timeout=30, interval=0.02, what=f"{addr} moved to {peer.name}")
        taken = time.monotonic() - at
        host.wait_flowing(timeout=60)
        flowing = time.monotonic()
        assert node_status(peer)["floating"] == {"address": addr, "held": True}
        # The dead node comes back as a standby and gives the address up.
        lab.restart_node(first.k)
        wait_holder(lab, peer.k)
        assert lab.wait_roles().k == peer.k
        assert floating_ana(lab, first.k) is None
        host.wait_flowing(timeout=60)
        # The new owner cut off from etcd fences itself: listeners inaccessible, then
        # the address gone; the third node takes it.
        lab.partition_from_etcd(peer.k)
        wait_for(lambda: peer.k not in holders(lab), timeout=30, interval=0.01,
                 what=f"{peer.name} fenced, without {addr}")
        assert floating_ana(lab, peer.k) in ("inaccessible", None)
        third = lab.wait_owner(lambda o: node_number(o) != peer.k, timeout=30,
                               what="another node owning the group")
        wait_holder(lab, node_number(third))
        host.wait_flowing(timeout=60)
        assert lab.net.neighbour_mac(lab.host_ns, addr) == \
            lab.net.mac(lab.nodes[node_number(third)].ns, DATA_DEV)
        lab.heal(peer.k)
        wait_for(lambda: floating_ana(lab, peer.k) is None, timeout=30,
                 what=f"{peer.name} back as standby, no listener on {addr}")
        assert peer.k not in holders(lab)
        # A planned stop of the owner: it resigns and takes the address off on its way.
        last = lab.nodes[node_number(third)]
        assert last.proc is not None
        last.proc.terminate()
        last.proc.wait(timeout=60)
        heir = lab.wait_owner(lambda o: node_number(o) != last.k, timeout=30,
                              what="an owner after the planned stop")
        wait_holder(lab, node_number(heir))
        host.wait_flowing(timeout=60)
        summary = host.stop()
    finally:
        host.kill()
    assert summary["errors"] == 0 and summary["mismatches"] == 0, summary
    assert summary["read_back_mismatches"] == 0, summary
    stall = stall_after(summary, at, flowing)
    print(f"floating {addr}: n{first.k} killed loud, {peer.name} optimized on it after "
          f"{taken * 1000:.0f} ms, worst I/O stall {stall * 1000:.0f} ms")
    assert stall <= LOUD_BOUND, (stall, summary["gaps"])
