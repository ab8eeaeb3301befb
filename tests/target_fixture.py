"""Run an embedded target in-process for tests: TargetCore + DataPath on 127.0.0.1.

``running_target()`` yields a :class:`RunningTarget` with a 1 MiB... 64 MiB RAM namespace
on ``NQN`` and a discovery listener on the same port; tests change the configuration
through ``rt.call(lambda: rt.core.<method>(...))`` so changes run on the data path's thread,
as the JSON-RPC server does.
"""
from __future__ import annotations

import random
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from nvmf_phoenix.embedded.bdev import open_bdev
from nvmf_phoenix.embedded.config_store import TargetCore
from nvmf_phoenix.embedded.io_loop import DataPath

from nvmf_phoenix.model import DISCOVERY_NQN, Bdev, Host, ListenAddress, Namespace, Subsystem

NQN = "nqn.2016-06.io.spdk:cnode1"
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:6e767068-6f65-6e69-7800-000000000001"
T = TypeVar("T")


_ports = random.Random()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing is bound to, with the next one free as well (a pair's standby
    listens on port + 1). Chosen below the kernel's ephemeral range: a port the kernel
    hands out for bind(0) may be taken by any client connection (another test run's,
    too) before the test binds it, one below that range only by an explicit bind."""
    try:
        first = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        high = int(first) - 2
    except (OSError, ValueError, IndexError):
        high = 32766
    for _ in range(500):
        # Even ports only: two calls never return p and p + 1 (a pair's port + 1).
        port = _ports.randrange(20000, max(high, 20002), 2)
        if _bindable(port) and _bindable(port + 1):
            return port
    with socket.socket() as s:       # a crowded machine: any port the kernel offers
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningTarget:
    core: TargetCore
    dp: DataPath
    port: int

    @property
    def address(self) -> ListenAddress:
        return ListenAddress.make("127.0.0.1", self.port)

    def call(self, fn: Callable[[], T]) -> T:
        return self.dp.run_in_loop(fn)


def build_core(port: int, num_blocks: int = 16384, block_size: int = 4096,
               ana_reporting: bool = False, hosts: list[str] | None = None,
               transport: dict | None = None) -> TargetCore:
    core = TargetCore(bdev_opener=open_bdev)
    core.create_transport("TCP", transport or {})
    core.add_bdev(Bdev(name="Malloc0", kind="malloc", uuid="6f5c8e0a-7d3b-4c2e-9a1f-0b2c3d4e5f60",
                       block_size=block_size, num_blocks=num_blocks))
    core.create_subsystem(Subsystem(nqn=NQN, serial_number="PHX0001",
                                    model_number="nvmf-phoenix test", ana_reporting=ana_reporting,
                                    allow_any_host=hosts is None))
    for h in hosts or []:
        core.add_host(NQN, Host(nqn=h))
    core.add_namespace(NQN, Namespace(nsid=1, bdev_name="Malloc0"))
    addr = ListenAddress.make("127.0.0.1", port)
    core.add_listener(NQN, addr)
    core.add_listener(DISCOVERY_NQN, addr)
    return core


@contextmanager
def running_target(**kwargs: object) -> Iterator[RunningTarget]:
    port = free_port()
    core = build_core(port, **kwargs)  # type: ignore[arg-type]
    dp = DataPath(core)
    dp.start_in_thread()
    try:
        yield RunningTarget(core, dp, port)
    finally:
        dp.stop()
