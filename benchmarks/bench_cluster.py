"""Cluster: node deaths under verified I/O and configuration changes (issue 20's torture).

The lab of tests/cluster_lab.py: three storage nodes (network namespaces with a data and
a control network, an etcd member each, ``nvmf-phoenix supervise --store etcd://...
--node nK``) on one shared file, and a host namespace running the project's multipath
initiator with verified random I/O over one path per node. ``--deaths N`` times, the node
that owns the group dies, alternately *loud* (every process SIGKILLed: connections reset)
and *silent* (both links dropped at the switch: no FIN, no RST; its processes killed only
after a peer took over and the host moved on), then comes back and rejoins as standby
before the next death.
All along, a client keeps changing the configuration (adding and removing allowed hosts)
through whichever node owns the group, retrying on refusals and recording every
acknowledged change; at the end the configuration loaded from etcd must hold every one.

Per death: from the death to etcd naming a new owner, to that peer's listener
``optimized``, and the longest I/O stall the host saw in between (gaps between
completions). Printed as JSON, per kind: median, p90, max.

    python benchmarks/bench_cluster.py --deaths 100
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster_churn import (
    ConfigChurn,
    divergence,
    lost_changes,
    stored_hosts,
    summary,
)
from tests.cluster_host import stall_after
from tests.cluster_lab import ClusterLab, cluster_lab, node_number
from tests.waiting import wait_for


def one_death(lab: ClusterLab, kind: str, host_resumed: Callable[[], None],
              probe: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Kill the owner, wait for the peer to serve and the host's I/O to flow again,
    (``probe``,) bring the node back as standby. The node stays down until the host has
    moved on by itself: a node coming back answers the host's retransmissions on the
    old connections with resets, which would end a silent death's stall early."""
    old = lab.owner_node()
    epoch = lab.epoch()
    at = lab.kill_node_loud(old.k) if kind == "loud" else lab.kill_node_silent(old.k)
    new = lab.wait_owner(lambda o: node_number(o) != old.k, timeout=60,
                         what="a peer owning the group")
    owned = time.monotonic()
    peer = node_number(new)
    wait_for(lambda: lab.serving_optimized(peer), timeout=60,
             what=f"n{peer} serving optimized")
    optimized = time.monotonic()
    host_resumed()
    probed = probe() if probe is not None else {}
    lab.restart_node(old.k, reboot=kind == "silent")   # a silent node is reaped first
    back = lab.wait_roles(timeout=120)
    return {"kind": kind, "node": old.name, "peer": f"n{peer}", "at": at,
            "epoch_step": int(new["epoch"]) - epoch,
            "owner_ms": round((owned - at) * 1000, 1),
            "optimized_ms": round((optimized - at) * 1000, 1),
            "standby_back_ms": round((time.monotonic() - at) * 1000, 1),
            "owner_kept": back.k == peer, **probed}


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)
    return {"n": len(s), "median": round(statistics.median(s), 1),
            "p90": round(s[min(len(s) - 1, int(0.9 * len(s)))], 1), "max": round(s[-1], 1)}


def run(workdir: Path, deaths: int, host_options: dict[str, float | str],
        lease_ttl: float, interval: float, check: bool = False) -> dict[str, Any]:
    with cluster_lab(workdir, lease_ttl=lease_ttl) as lab:
        lab.start()
        lab.configure()
        lab.wait_roles()
        host = lab.host_io(host_options)
        try:
            host.wait_flowing()
            churn = ConfigChurn(lab, interval=interval).start()
            events: list[dict[str, Any]] = []

            def resumed() -> None:
                host.wait_flowing(more=20, timeout=120)

            def probe() -> dict[str, Any]:
                """Right after the takeover, changes paused: what etcd lost so far."""
                churn.pause()
                try:
                    lost = lost_changes(churn.log, stored_hosts(lab))
                finally:
                    churn.resume()
                return {"lost_at_takeover": lost["adds"] + lost["removes"]}
            try:
                for d in range(deaths):
                    events.append(one_death(lab, "loud" if d % 2 == 0 else "silent",
                                            resumed, probe if check else None))
                    host.wait_flowing(more=20, timeout=60)
                    if check:
                        churn.pause()
                        events[-1]["divergence"] = divergence(lab)
                        churn.resume()
                    print(json.dumps({k: v for k, v in events[-1].items() if k != "at"}),
                          file=sys.stderr, flush=True)
            finally:
                log = churn.stop()
            io = host.stop()
        finally:
            host.kill()
        lost = lost_changes(log, stored_hosts(lab))
        with open(workdir / "churn-events.json", "w") as f:
            json.dump({"events": log.events, "deaths": events}, f)
    ends = [e["at"] for e in events[1:]] + [None]
    for e, until in zip(events, ends, strict=True):
        e["stall_ms"] = round(stall_after(io, e["at"], until) * 1000, 1)
    per_kind: dict[str, dict[str, Any]] = {}
    for kind in ("loud", "silent"):
        mine = [e for e in events if e["kind"] == kind]
        per_kind[kind] = {key: stats([e[key] for e in mine]) for key in
                          ("owner_ms", "optimized_ms", "stall_ms", "standby_back_ms")}
        per_kind[kind]["epoch_steps_not_1"] = sum(e["epoch_step"] != 1 for e in mine)
        per_kind[kind]["owner_not_kept"] = sum(not e["owner_kept"] for e in mine)
    diverged = [{"death": n, "kind": e["kind"], "node": e["node"], "peer": e["peer"],
                 "divergence": e["divergence"]} for n, e in enumerate(events)
                if e.get("divergence")]
    return {"deaths": len(events), "lease_ttl_s": lease_ttl, "host": host_options,
            "diverged": diverged,
            "per_kind": per_kind,
            "io": {"completed": io["completed"], "errors": io["errors"],
                   "mismatches": io["mismatches"],
                   "read_back_mismatches": io["read_back_mismatches"],
                   "max_gap_ms": io["max_gap_ms"], "failovers": io.get("failovers"),
                   "error_samples": io.get("error_samples", [])},
            "changes": summary(log, lost)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deaths", type=int, default=100)
    ap.add_argument("--lease-ttl", type=float, default=2, help="the owner's lease (s)")
    ap.add_argument("--kato-ms", type=int, default=3000, help="the host's keep-alive "
                    "timeout (Keep Alive every half of it)")
    ap.add_argument("--io-timeout", type=float, help="the host's I/O timeout: a command "
                    "outstanding this long fails its path (default: the KATO)")
    ap.add_argument("--connect-timeout", type=float, default=1.0, help="how long the host "
                    "waits for a connect or an admin command such as Keep Alive (s)")
    ap.add_argument("--interval", type=float, default=0.05, help="pause between two "
                    "configuration changes (s)")
    ap.add_argument("--workdir", help="keep the lab's files (logs) here")
    ap.add_argument("--check", action="store_true", help="after each death, pause the "
                    "changes and compare every node's target with etcd's configuration")
    args = ap.parse_args()
    io_timeout = args.io_timeout if args.io_timeout is not None else args.kato_ms / 1000
    host = {"kato_ms": args.kato_ms, "io_timeout": io_timeout,
            "connect_timeout": args.connect_timeout, "reconnect_delay": 0.5}
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        result = run(Path(args.workdir), args.deaths, host, args.lease_ttl, args.interval,
                     args.check)
    else:
        with tempfile.TemporaryDirectory(prefix="phx-bench-cluster-") as tmp:
            result = run(Path(tmp), args.deaths, host, args.lease_ttl, args.interval,
                         args.check)
    print(json.dumps(result, indent=2))
    bad = (result["io"]["errors"] or result["io"]["mismatches"]
           or result["changes"]["lost"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
