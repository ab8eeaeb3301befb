"""Helpers that several test modules share and that belong to no one of them.

The suite's layout rule (tests/test_suite_layout.py checks it): a ``test_*.py`` module
never imports from another ``test_*.py`` module, and no module imports a ``_private``
name from another. A helper two test modules need lives here or in one of the named
helper modules beside it (target_process, target_fixture, transparent_target, waiting,
phoenix_tools, pdu_fuzz, corruption, torture, netlab, ...), with a public name.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nvmf_phoenix.recovery.pair import PairSupervisor
from nvmf_phoenix.recovery.supervisor import Supervisor
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import framework as rf
from nvmf_phoenix.rpc import nvmf as rn

from tests.target_process import target_command

EMBEDDED = target_command("embedded")
# SPDK's own spdk-rpc (from its PyPI package), run as an operator runs it: no plugin.
SPDK_RPC = shutil.which("spdk-rpc") or str(Path(sys.executable).parent / "spdk-rpc")


@contextmanager
def supervised(tmp_path: Path, cmd: list[str] | None = None, kind: str = "embedded",
               **kw: object) -> Iterator[Supervisor]:
    """A started Supervisor with its sockets and state directory under ``tmp_path``:
    callers talk to ``public.sock``; the target itself serves ``private.sock``. Stopped,
    and its shared-memory region removed, however the test ends."""
    sup = Supervisor(cmd or target_command(kind), str(tmp_path / "private.sock"),
                     str(tmp_path / "public.sock"), str(tmp_path / "state"), **kw)
    try:
        sup.start()
        yield sup
    finally:
        sup.stop()
        sup.store.region.unlink()


@contextmanager
def paired(tmp_path: Path, kind: str = "embedded", **kw: Any) -> Iterator[PairSupervisor]:
    """A started hot-standby pair under ``tmp_path``: callers talk to ``public.sock``;
    members a and b serve ``a.sock`` and ``b.sock``. Stopped, and its shared-memory
    region removed, however the test ends."""
    cmd = target_command(kind)
    if kind == "spdk":   # two nvmf_tgt on the cores of one: no core locks between them
        cmd = [*cmd, "--disable-cpumask-locks"] if "--disable-cpumask-locks" not in cmd \
            else cmd
    pair = PairSupervisor((cmd, cmd), (str(tmp_path / "a.sock"), str(tmp_path / "b.sock")),
                          str(tmp_path / "public.sock"), str(tmp_path / "state"), **kw)
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()
        pair.store.region.unlink()


PAIR_NQN = "nqn.2016-06.io.phx:pair"
PAIR_UUID = "5e1f0000-0000-4000-8000-0000000000aa"


def configure_pair(c: RpcClient, image: Path, port: int, disc: int,
                   blocks: int = 2048) -> None:
    """What a user does on a pair's public socket (nothing pair-specific): one aio
    namespace of 4 KiB blocks on ``image``, a listener on ``port``, discovery on ``disc``."""
    image.write_bytes(b"\0" * (blocks * 4096))
    rn.nvmf_create_transport(c, "TCP")
    rb.bdev_aio_create(c, str(image), "D0", 4096, uuid=PAIR_UUID)
    rn.nvmf_create_subsystem(c, PAIR_NQN, serial_number="PAIR0001", allow_any_host=True)
    rn.nvmf_subsystem_add_ns(c, PAIR_NQN, "D0")
    addr = {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    rn.nvmf_subsystem_add_listener(c, PAIR_NQN, addr)
    rn.nvmf_subsystem_add_listener(c, "nqn.2014-08.org.nvmexpress.discovery",
                                   {**addr, "trsvcid": str(disc)})


def spdk_rpc_ok(sock: str, *args: str, stdin: str | None = None,
                timeout: float = 60) -> str:
    """Run SPDK's spdk-rpc against ``sock``; assert it succeeded, return what it printed."""
    run = subprocess.run([SPDK_RPC, "-s", sock, *args], input=stdin, capture_output=True,
                         text=True, timeout=timeout)
    assert run.returncode == 0, f"spdk-rpc {' '.join(args)}: {run.stdout}{run.stderr}"
    return run.stdout


def rich_config(client: RpcClient, image: Path, port: str) -> None:
    """A configuration that uses every kind of object the target keeps: a keyring key, a
    discovery referral, malloc and AIO bdevs (``image`` backs the AIO one), a tuned TCP
    transport, two subsystems (ANA reporting on and off, cntlid ranges, an allowed host,
    listeners on ``port``), namespaces with chosen nsid, EUI-64, NGUID and ANA group, and
    a discovery listener."""
    key = image.parent / "psk0.key"
    key.write_text("NVMeTLSkey-1:01:not-a-real-key:\n")
    key.chmod(0o600)
    rf.keyring_file_add_key(client, "psk0", str(key))
    rn.nvmf_discovery_add_referral(client, rn.listen_address("127.0.0.2", 8009))
    rb.bdev_malloc_create(client, 2048, 512, name="M0")
    rb.bdev_malloc_create(client, 256, 4096, name="M1", uuid="00000000-0000-0000-0000-0000000000aa")
    rb.bdev_aio_create(client, str(image), "A0", block_size=512)
    rn.nvmf_create_transport(client, "TCP", max_queue_depth=64, in_capsule_data_size=8192)
    addr = rn.listen_address("127.0.0.1", port)
    for i, ana in ((1, True), (2, False)):
        nqn = f"nqn.2016-06.io.spdk:rt{i}"
        rn.nvmf_create_subsystem(client, nqn, serial_number=f"SN{i}", ana_reporting=ana,
                                 min_cntlid=10 * i, max_cntlid=10 * i + 5, max_namespaces=8)
        rn.nvmf_subsystem_add_host(client, nqn, f"nqn.2014-08.org.nvmexpress:uuid:"
                                   f"0000000{i}-0000-0000-0000-000000000000")
        rn.nvmf_subsystem_add_listener(client, nqn, addr, ana_state="non_optimized"
                                       if ana else None)
    rn.nvmf_subsystem_add_ns(client, "nqn.2016-06.io.spdk:rt1", "M0", nsid=3,
                             eui64="0011223344556677", anagrpid=2)
    rn.nvmf_subsystem_add_ns(client, "nqn.2016-06.io.spdk:rt1", "A0")
    rn.nvmf_subsystem_add_ns(client, "nqn.2016-06.io.spdk:rt2", "M1",
                             nguid="00112233445566778899AABBCCDDEEFF")
    rn.nvmf_subsystem_add_listener(client, "nqn.2014-08.org.nvmexpress.discovery", addr)


def save_config(c: RpcClient) -> dict[str, list[dict[str, Any]]]:
    """What scripts/rpc.py save_config writes: each subsystem's framework_get_config."""
    names = [s["subsystem"] for s in c.call("framework_get_subsystems")]
    return {n: c.call("framework_get_config", {"name": n}) or [] for n in names}
