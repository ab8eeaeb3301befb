"""``nvmf-phoenix checkpoint|restore|status|address``: the checkpoint life cycle by hand.

Thin: each command parses, calls :mod:`.ops` (the same functions the spdk-rpc plugin
uses), and prints JSON (``--json``) or a few readable lines. Progress of a restore goes to
stderr, one line per stage, so stdout stays clean for scripts.
"""
from __future__ import annotations

import argparse
import glob
import ipaddress
import socket
import struct
import sys
import time
from typing import Any

from nvmf_phoenix.plugin import cli_cluster, ops
from nvmf_phoenix.plugin.cli_common import (
    add_json,
    add_socket,
    add_state_dir,
    connect,
    emit,
    guarded,
    kib,
)
from nvmf_phoenix.rpc import RpcError


def _human_info(d: dict[str, Any]) -> str:
    s = d["summary"]
    lines = [f"checkpoint #{d['seq']} in {d['state_dir']}: saved {d['saved_at']} "
             f"({d['age_s']:.0f} s ago), {kib(d['state_bytes'])}, read from {d['source']}",
             f"  {s['subsystems']} subsystems, {s['namespaces']} namespaces, {s['hosts']} "
             f"hosts, {s['listeners']} listeners, {s['bdevs']} bdevs; "
             f"{s['connected_controllers']} controllers connected when saved",
             f"  journal {kib(d['journal_bytes'])}, snapshot {kib(d['snapshot_bytes'])}"]
    lines += [f"  problem: {p}" for p in d["problems"]]
    return "\n".join(lines)


# -- checkpoint ------------------------------------------------------------------------
def _now(args: argparse.Namespace) -> int:
    with connect(args) as c:
        emit(args, ops.checkpoint_now(c, args.state_dir, runtime=not args.no_runtime),
             _human_info)
    return ops.EXIT_OK


def _show(args: argparse.Namespace) -> int:
    emit(args, ops.show(args.state_dir, full=args.full), _human_info)
    return ops.EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    with connect(args) as c:
        result = ops.diff_live(c, args.state_dir)
    emit(args, result, lambda r: f"live target matches checkpoint #{r['seq']}" if r["same"]
         else "\n".join([f"live target differs from checkpoint #{r['seq']} "
                         "(checkpoint != live):", *(f"  {x}" for x in r["differences"])]))
    return ops.EXIT_OK if result["same"] else ops.EXIT_FAIL


def _export(args: argparse.Namespace) -> int:
    result = ops.export(args.state_dir, args.file)
    if args.file != "-":
        emit(args, result, lambda r: f"checkpoint #{r['seq']} written to {r['exported']} "
             f"({kib(r['bytes'])})")
    return ops.EXIT_OK


def _drop(args: argparse.Namespace) -> int:
    result = ops.drop(args.state_dir)
    emit(args, result, lambda r: "\n".join(
        [f"removed {p}" for p in r["removed"]]
        + ([f"kept {r['state_dir']}: it holds {', '.join(r['kept'])}"] if r["kept"] else [])
        + [f"freed {kib(r['freed_bytes'])}" if r["removed"] else
           f"nothing to drop for {r['state_dir']}"]))
    return ops.EXIT_OK


def _import(args: argparse.Namespace) -> int:
    emit(args, ops.import_(args.state_dir, args.file), _human_info)
    return ops.EXIT_OK


# -- restore ---------------------------------------------------------------------------
def _progress(quiet: bool) -> Any:
    start = time.monotonic()

    def say(stage: str, done: int, total: int) -> None:
        if not quiet:
            print(f"restore: {stage:<11} {done}/{total} calls  "
                  f"{time.monotonic() - start:.2f} s", file=sys.stderr, flush=True)
    return say


def _human_restore(r: dict[str, Any]) -> str:
    lines = [f"restore {'complete' if r['ok'] else 'INCOMPLETE'}: {r['done']} of "
             f"{r['calls']} calls in {r['seconds'].get('total', 0):.3f} s"]
    lines += [f"  failed: {f}" for f in r["failures"]]
    lines += [f"  skipped: {s}" for s in r["skipped"]]
    lines += [f"  conflict: {c}" for c in r["conflicts"]]
    lines += [f"  replayed verbatim (not modelled): {o}" for o in r.get("opaque", [])]
    lines += [f"  differs after restore: {d}" for d in r["differences"]]
    h = r.get("hosts")
    if h:
        lines.append(f"  hosts: {len(h['reconnected'])} of {h['expected']} reconnected")
        lines += [f"  missing: {m['hostnqn']} on {m['nqn']}" for m in h["missing"]]
    return "\n".join(lines)


def _restore(args: argparse.Namespace) -> int:
    if args.from_file:
        state, source = ops.read_export(args.from_file), args.from_file
    else:
        loaded, _ = ops.load(args.state_dir)
        assert loaded.state is not None
        state, source = loaded.state, f"checkpoint #{loaded.seq} ({loaded.source})"
    if not args.no_address_check:
        from nvmf_phoenix.plugin import netplumb

        added = [a for a, how in netplumb.prepare_state_addresses(
            state, args.floating_dev, args.floating_prefix).items() if how == "added"]
        if added and not args.quiet:
            print(f"restore: floating address {', '.join(added)} added to "
                  f"{args.floating_dev}", file=sys.stderr)
    if not args.quiet:
        print(f"restore: from {source} into {args.rpc_socket}", file=sys.stderr)
    with connect(args) as c:
        report, result = ops.restore_checkpoint(
            c, state, None if args.from_file else args.state_dir, prune=args.prune,
            wait_hosts=args.wait_hosts, progress=_progress(args.quiet))
    emit(args, result, _human_restore)
    hosts_ok = result["hosts"] is None or result["hosts"]["ok"] or args.wait_hosts <= 0
    return ops.EXIT_OK if report.ok and hosts_ok else ops.EXIT_FAIL


# -- status ----------------------------------------------------------------------------
def human_status(d: dict[str, Any]) -> str:
    sup, tgt, ck = d["supervisor"], d["target"], d["checkpoint"]
    lines = []
    if sup:
        restarts = sup["restarts"]
        line = f"supervisor: {sup['state']}, {restarts} restart{'s' * (restarts != 1)}"
        if restarts:
            line += (f", last restore {sup['last_restore_s']} s, death to ready "
                     f"{sup['last_death_to_ready_s']} s")
        lines.append(line + (f"; last error: {sup['last_error']}" if sup["last_error"]
                             else ""))
        if sup.get("mode") == "pair":
            lines += pair_lines(sup)
        elif sup.get("mode") == "cluster":
            lines += cli_cluster.node_lines(sup)
        if sup.get("store"):
            lines.append(store_line(sup["store"]))
    else:
        lines.append("supervisor: none on this socket (unsupervised target)")
    pid = f", pid {tgt['pid']}" if tgt.get("pid") else ""
    lines.append(f"target: {tgt['socket']}: {tgt['version']}, {tgt['phase']}, "
                 f"{tgt['subsystems']} subsystems{pid}")
    k = d.get("keeper")
    if k:
        kills = _takeovers(k)
        lines.append(f"crash-transparent: worker {k['active']} serving, standby "
                     f"{', '.join(map(str, k['standby'])) or 'starting'}, {kills} "
                     f"takeover{'s' * (kills != 1)}, {k['connections']} connections held")
    if d.get("kill_pid"):
        lines.append(f"to try it: kill -9 {d['kill_pid']} (the process serving I/O)")
    if ck:
        lines.append(_human_info(ck))
    elif k:
        lines.append("checkpoint: none needed (crash-transparent: the state lives in shared "
                     "memory; `nvmf-phoenix shm list` shows where)")
    else:
        lines.append(f"checkpoint: none in {d['state_dir']} (take one with "
                     "`nvmf-phoenix checkpoint now`)")
    return "\n".join(lines)


def store_line(st: dict[str, Any]) -> str:
    """Where the cluster's copy of the checkpoint is, and whether it has every change."""
    where = f"{','.join(st['endpoints'])}/{st.get('prefix', '?')} group {st.get('group', '?')}"
    state = f"BEHIND ({st['behind']})" if st.get("behind") else "up to date"
    return f"cluster store: etcd {where}: last committed seq {st['seq']}, {state}"


def pair_lines(sup: dict[str, Any]) -> list[str]:
    """A hot-standby pair: who is active, whether a standby stands by, where each listens."""
    n = sup["failovers"]
    lines = [f"pair: target {sup['active']} active, "
             + ("standby ready" if sup["redundant"] else f"NO STANDBY ({sup['degraded']})")
             + f", {n} failover{'s' * (n != 1)}"
             + (f", last {sup['last_failover_s'] * 1e3:.1f} ms death to standby optimized"
                if n else "") + f"; {sup['layout']['description']}"]
    for name, m in sorted(sup["members"].items()):
        pid = f"pid {m['pid']}" if m["pid"] else "no process"
        lines.append(f"  target {name}: {m['role']}, {m['state']}, {pid}, {m['socket']}, "
                     f"listening on {', '.join(m['listeners']) or 'nothing yet'}")
    return lines


def _takeovers(keeper: dict[str, Any]) -> int:
    """Takeovers since start: the keeper also counts handing the first worker its
    listeners, which no user would call a takeover."""
    return max(0, int(keeper["takeovers"]) - 1)


def _keeper(args: argparse.Namespace) -> dict[str, Any] | None:
    """The socket keeper's view, when the target is crash-transparent."""
    from nvmf_phoenix.embedded.keeper_client import keeper_status

    try:
        return keeper_status(args.rpc_socket + ".keeper", timeout=args.timeout)
    except OSError:
        return None


def _peer_pid(client: Any) -> int | None:
    """The process serving a Unix RPC socket (SO_PEERCRED), or None (TCP, HTTP)."""
    sock = getattr(client.transport, "sock", None)
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except OSError:
        return None
    return pid or None


def _children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them."""
    kids: list[int] = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(task) as f:
                kids += [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            continue
    return sorted(kids)


def _kill_pid(pid: int | None, sup: dict[str, Any] | None,
              keeper: dict[str, Any] | None) -> int | None:
    """The process whose kill -9 the project claims to survive: the worker serving a
    crash-transparent target, a supervisor's target (its child), or the target itself."""
    if keeper:
        return keeper.get("active")
    if sup and sup.get("mode") == "pair":
        return sup["members"][sup["active"]]["pid"]
    if sup and pid:
        kids = _children(pid)
        return kids[0] if kids else None
    return pid


def _status(args: argparse.Namespace) -> int:
    from nvmf_phoenix.recovery.restore import target_phase

    with connect(args) as c:
        pid = _peer_pid(c)
        try:
            sup = c.call("phoenix_status")
        except RpcError as err:
            if err.code != -32601:
                raise
            sup = None
        version = c.call("spdk_get_version").get("version", "?")
        phase = target_phase(c)
        subs = len([s for s in c.call("nvmf_get_subsystems")
                    if s.get("subtype") != "Discovery"]) if phase == "running" else 0
    try:
        ck = ops.show(args.state_dir)
    except ops.PhoenixError:
        ck = None
    keeper = _keeper(args)
    kill_pid = _kill_pid(pid, sup, keeper)
    if args.pid:
        if kill_pid is None:
            raise ops.PhoenixError(f"no process id for {args.rpc_socket} (not a local Unix "
                                   "socket?)")
        print(kill_pid)
        return ops.EXIT_OK
    doc = {"supervisor": sup, "target": {"socket": args.rpc_socket, "version": version,
                                         "phase": phase, "subsystems": subs, "pid": pid},
           "checkpoint": ck, "state_dir": args.state_dir, "keeper": keeper,
           "kill_pid": kill_pid}
    if keeper:
        keeper["takeovers_since_start"] = _takeovers(keeper)
    emit(args, doc, human_status)
    return ops.EXIT_OK if sup is None or sup["state"] == "ready" else ops.EXIT_FAIL


# -- address ---------------------------------------------------------------------------
def _address(args: argparse.Namespace) -> int:
    from nvmf_phoenix.plugin import netplumb

    addr, _, prefix = args.address.partition("/")
    try:
        ipaddress.ip_address(addr)
        if prefix:
            int(prefix)
    except ValueError:
        raise ops.PhoenixError(f"{args.address!r} is not an IP address (ADDR or ADDR/PREFIX, "
                               "e.g. 192.0.2.10/24)", ops.EXIT_USAGE) from None
    if args.action == "check":
        where = netplumb.interfaces_with(addr)
        emit(args, {"address": addr, "interfaces": where},
             lambda d: f"{addr} is on {', '.join(where)}" if where
             else f"{addr} is on no interface here")
        return ops.EXIT_OK if where else ops.EXIT_FAIL
    if args.action == "add":
        if not args.dev:
            raise ops.PhoenixError("address add needs --dev DEV", ops.EXIT_USAGE)
        added = netplumb.add_address(addr, args.dev, int(prefix) if prefix else None,
                                     announce=not args.no_announce)
        emit(args, {"address": addr, "dev": args.dev, "added": added},
             lambda d: f"{addr} {'added to' if added else 'already on'} {args.dev}")
        return ops.EXIT_OK
    left = netplumb.remove_address(addr, args.dev)
    emit(args, {"address": addr, "removed_from": left},
         lambda d: f"{addr} removed from {', '.join(left)}" if left else f"{addr} was on "
         "no interface")
    return ops.EXIT_OK


def add_parsers(sub: Any) -> None:
    ck = sub.add_parser("checkpoint", help="take, show, compare, export or import the "
                        "checkpoint in a state directory")
    cks = ck.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = cks.add_parser("now", help="capture the live target and save it")
    add_socket(p), add_state_dir(p), add_json(p)
    p.add_argument("--no-runtime", action="store_true", help="do not record connected hosts")
    p.set_defaults(func=guarded(_now))
    p = cks.add_parser("show", help="what the checkpoint holds, its age and size")
    add_state_dir(p), add_json(p)
    p.add_argument("--full", action="store_true", help="include the whole state (JSON)")
    p.set_defaults(func=guarded(_show))
    p = cks.add_parser("diff", help="checkpoint against the live target (exit 1 if they "
                       "differ)")
    add_socket(p), add_state_dir(p), add_json(p)
    p.set_defaults(func=guarded(_diff))
    p = cks.add_parser("export", help="write the checkpoint to a portable JSON file")
    p.add_argument("file", help="output file, or - for stdout")
    add_state_dir(p), add_json(p)
    p.set_defaults(func=guarded(_export))
    p = cks.add_parser("drop", help="delete the checkpoint for good: its shared-memory "
                       "region, journal and snapshot, and the directory if left empty")
    add_state_dir(p), add_json(p)
    p.set_defaults(func=guarded(_drop))
    p = cks.add_parser("import", help="make an exported file the newest checkpoint")
    p.add_argument("file", help="a file written by `checkpoint export`")
    add_state_dir(p), add_json(p)
    p.set_defaults(func=guarded(_import))

    p = sub.add_parser("restore", help="restore the checkpoint into a (restarted) target")
    add_socket(p), add_state_dir(p), add_json(p)
    p.add_argument("--from", dest="from_file", metavar="FILE",
                   help="restore an exported checkpoint file instead")
    p.add_argument("--prune", action="store_true",
                   help="delete live objects the checkpoint does not have")
    p.add_argument("--wait-hosts", type=float, default=0.0, metavar="SECONDS",
                   help="wait for the hosts connected at checkpoint time to come back "
                   "(exit 1 if some do not)")
    p.add_argument("--floating-dev", metavar="DEV", help="add listener addresses that are "
                   "on no interface to DEV (floating addresses), announced by ARP")
    p.add_argument("--floating-prefix", type=int, metavar="N",
                   help="prefix length of floating addresses (default /32, /128)")
    p.add_argument("--no-address-check", action="store_true",
                   help="do not check that listener addresses exist here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=guarded(_restore))

    p = sub.add_parser("status", help="supervisor, target and checkpoint at a glance "
                       "(exit 1 if the supervisor is not ready)")
    add_socket(p), add_state_dir(p), add_json(p)
    p.add_argument("--pid", action="store_true", help="print only the PID of the process "
                   "serving I/O (the crash-transparent worker, the supervised target)")
    p.set_defaults(func=guarded(_status))

    p = sub.add_parser("address", help="check, add or remove a (floating) listener address")
    p.add_argument("action", choices=("check", "add", "del"))
    p.add_argument("address", help="IP address, with /PREFIX for add")
    p.add_argument("--dev", help="interface (required for add)")
    p.add_argument("--no-announce", action="store_true", help="no gratuitous ARP on add")
    add_json(p)
    p.set_defaults(func=guarded(_address))

