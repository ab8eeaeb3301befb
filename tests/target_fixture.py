"""Run an embedded target in-process for tests: TargetCore + DataPath on 127.0.0.1.

``running_target()`` yields a :class:`RunningTarget` with a 1 MiB... 64 MiB RAM namespace
on ``NQN`` and a discovery listener on the same port; tests change the configuration
through ``rt.call(lambda: rt.core.<method>(...))`` so changes run on the data path's thread,
as the JSON-RPC server does.
"""
from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from nvmf_phoenix.embedded.bdev import open_bdev
from nvmf_phoenix.embedded.config_store import TargetCore
from nvmf_phoenix.embedded.io_loop import DataPath

from nvmf_phoenix.model import DISCOVERY_NQN, Bdev, Host, ListenAddress, Namespace, Subsystem

NQN = "nqn.2016-06.io.spdk:cnode1"
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:6e767068-6f65-6e69-7800-000000000001"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
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
