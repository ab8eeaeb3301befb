"""Every refusal says why, in the target's log, the way nvmf_tgt's error lines do.

The answers keep SPDK's codes and messages (often a bare "Invalid parameters"), so the
reason has to be somewhere an operator looks: the target's stderr."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from nvmf_phoenix.rpc import RpcClient, RpcError

from tests.target_process import target_command
from tests.waiting import wait_for

NQN = "nqn.2016-06.io.spdk:reasons"
BAD_CALLS = [
    ("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "NoSuchBdev"}},
     "NoSuchBdev"),
    ("nvmf_create_subsystem", {"nqn": NQN}, "exists"),
    ("bdev_malloc_create", {"name": "M", "num_blocks": 8, "block_size": 333}, "333"),
    ("nvmf_subsystem_add_host", {"nqn": "nqn.2016-06.io.spdk:none", "host": NQN}, "none"),
    ("nvmf_create_subsystem", {"nqn": "not-an-nqn"}, "not-an-nqn"),
]


@pytest.fixture
def target(tmp_path: Path):  # type: ignore[no-untyped-def]
    sock = str(tmp_path / "t.sock")
    log = open(tmp_path / "target.log", "w+")   # noqa: SIM115  (read back below)
    proc = subprocess.Popen([*target_command(), "-r", sock], stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: Path(sock).exists(), timeout=20, what="target socket")
        yield sock, tmp_path / "target.log"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def test_each_refusal_is_logged_with_its_reason(target: tuple[str, Path]) -> None:
    sock, log = target
    with RpcClient.connect(sock, timeout=20) as c:
        c.call("nvmf_create_subsystem", {"nqn": NQN})
        for method, params, _ in BAD_CALLS:
            with pytest.raises(RpcError):
                c.call(method, params)
    for method, _, why in BAD_CALLS:
        wait_for(lambda m=method, w=why: any(  # type: ignore[misc]
            f"{m} refused" in line and w in line.split("): ", 1)[-1]
            for line in log.read_text().splitlines()), timeout=10,
            what=f"the reason for refusing {method} in the log")
