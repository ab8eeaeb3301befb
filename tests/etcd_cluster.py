"""A real etcd cluster for tests: N members of Debian's etcd-server on loopback.

Each member gets its own data directory and two free ports (client, peer) on 127.0.0.1
(or on the addresses given, e.g. inside a network namespace through ``wrap``). Members can
be killed (SIGKILL) and started again on the same data, which is how tests check that
quorum holds and nothing acknowledged is lost. Skips the test when etcd is not installed.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pytest
import requests

from tests.target_fixture import free_port
from tests.waiting import wait_for

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def require_etcd() -> None:
    if not os.path.exists(ETCD):
        pytest.skip("etcd is not installed (.ci/install-system-deps installs etcd-server)")


@dataclass
class Member:
    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"


class EtcdCluster:
    """``members`` etcd processes forming one cluster; ``url(prefix)`` for --store."""

    def __init__(self, members: int = 3, hosts: list[str] | None = None,
                 wrap: Callable[[int, list[str]], list[str]] | None = None) -> None:
        require_etcd()
        self.tmp = tempfile.mkdtemp(prefix="phx-etcd-")
        hosts = hosts or ["127.0.0.1"] * members
        self.wrap = wrap or (lambda _i, argv: argv)
        self.members = [Member(f"m{i}", hosts[i], free_port(), free_port(),
                               os.path.join(self.tmp, f"m{i}")) for i in range(members)]
        self.initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        self.token = f"phx-{os.getpid()}-{id(self)}"
        for i in range(members):
            self.start(i, new=True)
        self.wait_healthy()

    def endpoints(self) -> str:
        return ",".join(f"{m.host}:{m.client_port}" for m in self.members)

    def url(self, prefix: str = "phx") -> str:
        return f"etcd://{self.endpoints()}/{prefix}"

    def start(self, i: int, new: bool = False) -> None:
        m = self.members[i]
        argv = [ETCD, "--name", m.name, "--data-dir", m.data_dir,
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", self.initial, "--initial-cluster-token", self.token,
                "--initial-cluster-state", "new" if new else "existing",
                # test-sized timing: heartbeats every 50 ms, elections after 500 ms;
                # pre-vote (3.4 leaves it off): a member that comes back from a kill
                # or a partition must not depose a healthy leader (a needless election
                # stalls every lease renewal and can fence a healthy owner)
                "--heartbeat-interval", "50", "--election-timeout", "500", "--pre-vote",
                "--logger", "zap", "--log-level", "error"]
        log = open(os.path.join(self.tmp, f"{m.name}.log"), "ab")  # noqa: SIM115
        m.proc = subprocess.Popen(self.wrap(i, argv), stdout=log, stderr=log,
                                  start_new_session=True)
        log.close()

    def kill(self, i: int) -> None:
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(m.proc.pid, signal.SIGKILL)
            m.proc.wait(timeout=10)
        m.proc = None

    def healthy(self, i: int) -> bool:
        try:
            r = requests.get(self.members[i].client_url + "/health", timeout=1)
            return r.status_code == 200 and r.json().get("health") == "true"
        except (requests.RequestException, ValueError):
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        for i, m in enumerate(self.members):
            if m.proc is not None:
                wait_for(partial(self.healthy, i), timeout=timeout,
                         what=f"etcd member {m.name} healthy (log {self.tmp}/{m.name}.log)")

    def close(self) -> None:
        for i in range(len(self.members)):
            self.kill(i)
        shutil.rmtree(self.tmp, ignore_errors=True)
