"""Time from starting a fresh target to fully restored, for large configurations.

Cases: 64 subsystems x 4 namespaces x 1 listener, and 3,000 namespaces (12 subsystems x
250). The desired state is built directly in the model; the target is started with
--wait-for-rpc (as the supervisor does), restored by the pipelined executor, captured
again and compared. Prints one JSON line per run and a summary.

    python benchmarks/bench_restore.py [--runs 3] [--target-cmd "nvmf_tgt -m 0x1"]

With --target-cmd the same is measured against another nvmf_tgt-compatible binary
(e.g. a real SPDK nvmf_tgt; ``-r SOCKET --wait-for-rpc`` are appended).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from nvmf_phoenix.recovery.restore import restore
from nvmf_phoenix.rpc import RpcClient

from nvmf_phoenix.model import (
    DISCOVERY_NQN,
    Bdev,
    ListenAddress,
    Listener,
    Namespace,
    Subsystem,
    TargetState,
    Transport,
)


def desired_state(subsystems: int, per_sub: int, port: int) -> TargetState:
    st = TargetState()
    st.transports["TCP"] = Transport("TCP", {})
    addr = ListenAddress.make("127.0.0.1", port)
    st.subsystems[DISCOVERY_NQN] = Subsystem(nqn=DISCOVERY_NQN, subtype="Discovery",
                                             allow_any_host=True, max_namespaces=0)
    for s in range(subsystems):
        nqn = f"nqn.2016-06.io.phoenix:bench{s:04d}"
        sub = Subsystem(nqn=nqn, serial_number=f"PHXB{s:06d}", max_namespaces=max(32, per_sub),
                        allow_any_host=True, ana_reporting=True)
        for n in range(1, per_sub + 1):
            name = f"B{s}_{n}"
            uuid = f"{s:08x}-{n:04x}-4000-8000-{s * 1000 + n:012x}"
            st.bdevs[name] = Bdev(name=name, kind="malloc", uuid=uuid, block_size=512,
                                  num_blocks=8)
            sub.namespaces[n] = Namespace(nsid=n, bdev_name=name, uuid=uuid,
                                          nguid=uuid.replace("-", "").upper(), anagrpid=n)
        sub.listeners[addr] = Listener(address=addr, ana_states={
            g: "optimized" for g in range(1, sub.max_namespaces + 1)})
        st.subsystems[nqn] = sub
    return st


def one_run(cmd: list[str], subsystems: int, per_sub: int) -> dict[str, object]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    desired = desired_state(subsystems, per_sub, port)
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "spdk.sock")
        t0 = time.perf_counter()
        proc = subprocess.Popen([*cmd, "-r", sock, "--wait-for-rpc"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = RpcClient.connect(sock, retry_for=30, timeout=120)
            t_rpc = time.perf_counter()
            report = restore(client, desired)
            t_done = time.perf_counter()
            client.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {"subsystems": subsystems, "namespaces": subsystems * per_sub,
            "calls": len(report.plan.calls), "ok": report.ok,
            "failures": len(report.execution.failures),
            "process_to_rpc_s": round(t_rpc - t0, 3),
            "restore_execute_s": round(report.seconds["execute"], 3),
            "verify_capture_s": round(report.seconds["verify"], 3),
            "start_to_restored_s": round(t_done - t0 - report.seconds["verify"], 3),
            "start_to_verified_s": round(t_done - t0, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--target-cmd", default=f"{sys.executable} -m nvmf_phoenix.embedded")
    args = ap.parse_args()
    cmd = shlex.split(args.target_cmd)
    for subs, per in ((64, 4), (12, 250)):
        rows = [one_run(cmd, subs, per) for _ in range(args.runs)]
        for r in rows:
            print(json.dumps(r))
        med = statistics.median(float(r["start_to_restored_s"]) for r in rows)  # type: ignore[arg-type]
        print(f"# {subs}x{per}: median start->restored {med:.3f} s over {args.runs} runs, "
              f"all ok: {all(r['ok'] for r in rows)}")


if __name__ == "__main__":
    main()
