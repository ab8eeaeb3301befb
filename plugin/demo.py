"""The main job, end to end, on the embedded target: configure, checkpoint, kill -9, restore.

Every step is real: a target process serving NVMe/TCP on loopback, configured over
SPDK's JSON-RPC; a host (the project's initiator) writing data; a checkpoint in the
shared-memory region and the journal; SIGKILL; a fresh target started with
--wait-for-rpc and restored; the host reconnecting and finding the same identities and
the same data.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.recovery.capture import capture
from nvmf_phoenix.recovery.diff import diff
from nvmf_phoenix.recovery.restore import restore
from nvmf_phoenix.recovery.store import CheckpointStore
from nvmf_phoenix.recovery.verify import expectations, verify_reconnect
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn

NQN = "nqn.2016-06.io.phoenix:demo"
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:6e767068-6f65-6e69-7800-00000000de30"
BS = 512
BLOCKS = 256


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(sock: str, *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "nvmf_phoenix.embedded", "-r", sock, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with RpcClient.connect(sock, retry_for=20, timeout=10):
        pass
    return proc


def _identity(h: Host) -> dict[str, Any]:
    ns = h.identify_namespace(1)
    return {"serial": h.identity["sn"], "model": h.identity["mn"], "cntlid_range_ok": True,
            "uuid": ns["uuid"], "nguid": ns["nguid"], "eui64": ns["eui64"],
            "nsze": ns["nsze"]}


def run(workdir: str, say: Any) -> dict[str, Any]:
    sock = os.path.join(workdir, "spdk.sock")
    image = os.path.join(workdir, "disk0.img")
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    port = _free_port()
    addr = rn.listen_address("127.0.0.1", port)
    proc = _start(sock)
    say(f"embedded target up: rpc {sock}, NVMe/TCP 127.0.0.1:{port}")
    with RpcClient.connect(sock) as c:
        rb.bdev_aio_create(c, image, "Disk0", block_size=BS)
        rn.nvmf_create_transport(c, "TCP")
        rn.nvmf_create_subsystem(c, NQN, serial_number="PHOENIX0001",
                                 model_number="nvmf-phoenix demo", ana_reporting=True,
                                 min_cntlid=100, max_cntlid=199)
        rn.nvmf_subsystem_add_ns(c, NQN, "Disk0", eui64="0123456789abcdef")
        rn.nvmf_subsystem_add_host(c, NQN, HOSTNQN)
        rn.nvmf_subsystem_add_listener(c, NQN, addr, ana_state="optimized")
        rn.nvmf_subsystem_add_listener(c, "nqn.2014-08.org.nvmexpress.discovery", addr)
    say("configured over JSON-RPC: aio bdev, subsystem with ANA reporting, host, listeners")
    pattern = os.urandom(BLOCKS * BS)
    digest = hashlib.sha256(pattern).hexdigest()
    with Host("127.0.0.1", port, NQN, hostnqn=HOSTNQN) as h:
        h.create_io_queues(2)
        for i in range(0, BLOCKS, 64):
            h.write(1, i, pattern[i * BS:(i + 64) * BS], BS, qid=1 + i % 2)
        h.flush(1)
        before_id = _identity(h)
        with RpcClient.connect(sock) as c:
            state = capture(c)
        store = CheckpointStore(os.path.join(workdir, "checkpoint"), name="demo",
                                region_dir=None)
        seq = store.save(state)
        store.close()
        say(f"host wrote {BLOCKS} blocks (sha256 {digest[:16]}...), checkpoint #{seq} saved")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    killed_at = time.monotonic()
    say("target killed with SIGKILL")
    proc = _start(sock, "--wait-for-rpc")
    try:
        loaded_store = CheckpointStore(os.path.join(workdir, "checkpoint"), name="demo")
        loaded = loaded_store.load()
        region_path = loaded_store.region_path()
        if region_path:   # the demo's region must not outlive the demo
            os.unlink(region_path)
        say(f"checkpoint loaded from {loaded.source} ({loaded.reason})")
        assert loaded.state is not None
        with RpcClient.connect(sock) as c:
            report = restore(c, loaded.state)
            restored_at = time.monotonic()
            say(f"restored: {report.execution.done} calls, ok={report.ok}, "
                f"{report.seconds['total'] * 1000:.1f} ms; differences: "
                f"{len(report.differences)}")
            with Host("127.0.0.1", port, NQN, hostnqn=HOSTNQN) as h:
                h.create_io_queues(2)
                verify = verify_reconnect(c, expectations(loaded.state.runtime), 10.0)
                after_id = _identity(h)
                data = b"".join(h.read(1, i, 64, BS) for i in range(0, BLOCKS, 64))
            after = capture(c, runtime=False)
        same_data = hashlib.sha256(data).hexdigest() == digest
        result = {"ok": report.ok and same_data and after_id == before_id and verify.ok
                  and not diff(loaded.state, after),
                  "restore": report.summary(), "identity_before": before_id,
                  "identity_after": after_id, "data_intact": same_data,
                  "hosts_reconnected": len(verify.reconnected),
                  "hosts_missing": len(verify.missing),
                  "kill_to_restored_s": round(restored_at - killed_at, 3),
                  "checkpoint_source": loaded.source}
        say(f"host reconnected: identity unchanged={after_id == before_id}, "
            f"data intact={same_data}")
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main(as_json: bool = False, workdir: str | None = None) -> int:
    def say(msg: str) -> None:
        if not as_json:
            print(f"  {msg}", flush=True)

    if not as_json:
        print("nvmf-phoenix demo: kill -9 an NVMe/TCP target and bring it back", flush=True)
    with tempfile.TemporaryDirectory(prefix="nvmf-phoenix-demo-") as tmp:
        result = run(workdir or tmp, say)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(f"RESULT: {'PASS' if result['ok'] else 'FAIL'} "
              f"(SIGKILL to restored target in {result['kill_to_restored_s']} s)")
    return 0 if result["ok"] else 1
