"""A hot-standby pair of targets stood up by hand, for the real-Linux-host tests.

Two target processes (the embedded target, or SPDK's nvmf_tgt when $SPDK_NVMF_TGT is set)
run inside a network namespace reached from the root namespace over a veth (10.77.N.1 root
side, 10.77.N.2 inside), so the addresses their discovery logs name are the ones a qemu
guest can connect to. Both serve one aio file with identical identities (serial, namespace
UUID/NGUID/EUI-64), disjoint cntlid ranges and ANA reporting on, as
/work/shared/reference/ana-standby.md describes; each discovery service refers to the
other's. ``failover(killed)`` is what the supervisor's pair mode does when the active dies:
SIGKILL, the survivor's listener to ``optimized``, the dead one restarted as the
``non_optimized`` standby. Swapping this for ``nvmf-phoenix supervise --standby`` means
replacing :func:`pair_lab` only: the tests use ``addr``, ``disc_port``, ``active``,
``failover``.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nvmf_phoenix.rpc import RpcClient, RpcError
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn
from pyroute2 import IPRoute, NetNS, netns

from nvmf_phoenix.model import DISCOVERY_NQN
from tests.netlab import netns_cmd
from tests.target_process import target_command
from tests.waiting import wait_for

SUBNQN = "nqn.2016-06.io.phx:pair"
SERIAL = "PHXPAIR0001"
MODEL = "nvmf-phoenix pair"
BDEV = "Pair0"
BDEV_UUID = "70686f65-6e69-4870-8169-720000000001"
NGUID = "70686F656E6948708169720000000001"
EUI64 = "7068786169720001"
BLOCK_SIZE = 4096
IMAGE_BYTES = 64 << 20
# Disjoint cntlid ranges: Linux rejects a second controller with a cntlid the subsystem
# already showed it.
CNTLID = {"A": (1, 32767), "B": (32768, 65519)}
PORTS = {"A": (4420, 8009), "B": (4421, 8010)}     # (I/O listener, discovery listener)


class VethNamespace:
    """A network namespace joined to the root namespace by one veth pair."""

    def __init__(self) -> None:
        self.name = f"phxpair{os.getpid()}"
        self.host_if = f"phr{os.getpid()}"[:15]
        self.subnet = _free_subnet()
        self.root_addr, self.addr = f"{self.subnet}.1", f"{self.subnet}.2"
        netns.create(self.name)
        try:
            with IPRoute() as ip:
                ip.link("add", ifname=self.host_if, kind="veth",
                        peer={"ifname": "eth0", "net_ns_fd": self.name})
                idx = ip.link_lookup(ifname=self.host_if)[0]
                ip.addr("add", index=idx, address=self.root_addr, prefixlen=24)
                ip.link("set", index=idx, state="up")
            with NetNS(self.name) as ns:
                for dev in ("lo", "eth0"):
                    ns.link("set", index=ns.link_lookup(ifname=dev)[0], state="up")
                ns.addr("add", index=ns.link_lookup(ifname="eth0")[0], address=self.addr,
                        prefixlen=24)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        with contextlib.suppress(OSError):
            netns.remove(self.name)     # takes the veth (both ends) with it


def _free_subnet() -> str:
    """10.77.N with no address of the root namespace in it: helpers running the same
    test at once each get their own."""
    with IPRoute() as ip:
        used = {a.get_attr("IFA_ADDRESS") for a in ip.get_addr(family=2)}
    for n in range(256):
        if not any(u.startswith(f"10.77.{n}.") for u in used):
            return f"10.77.{n}"
    raise RuntimeError("no free 10.77.N.0/24 subnet in the root namespace")


def member_command(kind: str) -> list[str]:
    """The target command for one member. Two nvmf_tgt processes sharing a core need
    --disable-cpumask-locks (each would lock the core otherwise), so it is added if
    $SPDK_NVMF_TGT_ARGS lacks it."""
    cmd = target_command(kind)
    if kind == "spdk" and "--disable-cpumask-locks" not in cmd:
        cmd.append("--disable-cpumask-locks")
    return cmd


def pair_kind() -> str:
    """Real SPDK when $SPDK_NVMF_TGT names it, else the embedded target."""
    return "spdk" if os.environ.get("SPDK_NVMF_TGT") else "embedded"


@dataclass
class Member:
    """One target process of the pair and how it is configured."""
    name: str
    sock: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def port(self) -> int:
        return PORTS[self.name][0]

    @property
    def disc_port(self) -> int:
        return PORTS[self.name][1]

    def spawn(self, ns: str, kind: str) -> None:
        """Start the process in the namespace and wait (20 s at most) for its socket."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock)
        # A file, not a pipe: nobody reads it during a run, and a full pipe would stall
        # the target. The child keeps its own descriptor.
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                netns_cmd(ns, [*member_command(kind), "-r", self.sock]), stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.starts += 1
        proc = self.proc
        wait_for(lambda: proc.poll() is not None or _answers(self.sock), timeout=20,
                 interval=0.005, what=f"target {self.name} RPC socket")
        if proc.poll() is not None:
            raise AssertionError(f"target {self.name} exited with {proc.returncode}: "
                                 f"{self.log.read_text(errors='replace')[-2000:]}")

    def kill(self) -> None:
        """SIGKILL, as a crash would; reaped before returning."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.kill()


def _answers(sock: str) -> bool:
    try:
        with RpcClient.connect(sock, timeout=2) as c:
            c.call("rpc_get_methods")
        return True
    except (OSError, RpcError):
        return False


def configure(c: RpcClient, m: Member, other: Member, addr: str, image: Path,
              ana_state: str) -> None:
    """The same configuration on both members, in the same order; identities given
    explicitly so both report exactly the same namespace."""
    rn.nvmf_create_transport(c, "TCP")
    rb.bdev_aio_create(c, str(image), BDEV, block_size=BLOCK_SIZE, uuid=BDEV_UUID)
    lo, hi = CNTLID[m.name]
    rn.nvmf_create_subsystem(c, SUBNQN, serial_number=SERIAL, model_number=MODEL,
                             allow_any_host=True, ana_reporting=True, min_cntlid=lo,
                             max_cntlid=hi)
    rn.nvmf_subsystem_add_ns(c, SUBNQN, BDEV, nsid=1, uuid=BDEV_UUID, nguid=NGUID,
                             eui64=EUI64)
    # The listener comes up in its role's ANA state: a restarted member never serves
    # as optimized, even for a moment (fencing).
    rn.nvmf_subsystem_add_listener(c, SUBNQN, rn.listen_address(addr, m.port),
                                   ana_state=ana_state)
    rn.nvmf_subsystem_add_listener(c, DISCOVERY_NQN, rn.listen_address(addr, m.disc_port))
    rn.nvmf_discovery_add_referral(c, rn.listen_address(addr, other.disc_port))


@dataclass
class Failover:
    """One failover's timeline (monotonic seconds) and who was killed."""
    killed: str
    at: float          # SIGKILL sent
    promoted: float    # survivor's listener optimized
    standby: float     # killed member running again, configured as non_optimized


class PairLab:
    def __init__(self, workdir: Path, kind: str | None = None) -> None:
        self.kind = kind or pair_kind()
        self.workdir = workdir
        self.image = workdir / "pair.img"
        with open(self.image, "wb") as f:
            f.truncate(IMAGE_BYTES)
        self.net = VethNamespace()
        self.addr = self.net.addr
        self.members = {n: Member(n, str(workdir / f"{n}.sock"), workdir / f"{n}.log")
                        for n in ("A", "B")}
        self.active = "A"
        self.failovers: list[Failover] = []

    @property
    def disc_port(self) -> int:
        """Where a host starts discovery (the active's discovery service at start)."""
        return self.members["A"].disc_port

    def other(self, name: str) -> str:
        return "B" if name == "A" else "A"

    def start_member(self, name: str, ana_state: str) -> None:
        m, other = self.members[name], self.members[self.other(name)]
        m.spawn(self.net.name, self.kind)
        with RpcClient.connect(m.sock, timeout=10) as c:
            configure(c, m, other, self.addr, self.image, ana_state)

    def start(self) -> None:
        self.start_member("A", "optimized")
        self.start_member("B", "non_optimized")

    def set_ana(self, name: str, state: str) -> None:
        m = self.members[name]
        with RpcClient.connect(m.sock, timeout=10) as c:
            rn.nvmf_subsystem_listener_set_ana_state(
                c, SUBNQN, rn.listen_address(self.addr, m.port), state)

    def failover(self, killed: str) -> Failover:
        """What the supervisor does when ``killed`` (the active) dies: promote the
        survivor at once, then bring the dead one back as the standby."""
        assert killed == self.active, f"{killed} is not the active member"
        survivor = self.other(killed)
        at = time.monotonic()
        self.members[killed].kill()
        self.set_ana(survivor, "optimized")
        promoted = time.monotonic()
        self.active = survivor
        self.start_member(killed, "non_optimized")
        fo = Failover(killed, at, promoted, time.monotonic())
        self.failovers.append(fo)
        return fo

    def close(self) -> None:
        for m in self.members.values():
            m.stop()
        self.net.close()


@contextlib.contextmanager
def pair_lab(workdir: Path, kind: str | None = None) -> Iterator[PairLab]:
    lab = PairLab(workdir, kind)
    try:
        lab.start()
        yield lab
    finally:
        lab.close()
