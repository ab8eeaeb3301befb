"""The cluster on the command line: one node's supervisor, and ``cluster status``.

``nvmf-phoenix supervise --store etcd://... --node NAME --node-address ADDR`` runs one
node of a cluster for one group (:class:`~nvmf_phoenix.recovery.cluster.ClusterNode`);
``nvmf-phoenix cluster status --store etcd://...`` reads the cluster from etcd alone: the
nodes (address, slot, how long registered, lease time left), and per group the owner,
epoch, newest committed seq and the nodes standing by, flagging a group with none.

With ``--floating-address ADDR[/PREFIX] --floating-dev DEV`` the group also has an
address that moves with ownership (``netplumb.Floating``): the owner holds it on DEV,
announced by gratuitous ARP, and listens on it; hosts that know one address use it.
"""
from __future__ import annotations

import argparse
import ipaddress
import shlex
import signal
import sys
import threading
import time
from typing import Any

from nvmf_phoenix.persist.etcd import Endpoints, EtcdClient, EtcdError
from nvmf_phoenix.persist.etcd_keys import ClusterKeys, decode
from nvmf_phoenix.plugin import metrics
from nvmf_phoenix.plugin.cli_common import add_json, emit
from nvmf_phoenix.plugin.ops import PhoenixError
from nvmf_phoenix.recovery.cluster import ClusterNode
from nvmf_phoenix.recovery.cluster_target import FloatingAddress
from nvmf_phoenix.recovery.ownership import DEFAULT_LEASE_TTL


def add_supervise_flags(p: argparse.ArgumentParser) -> None:
    """The cluster flags of ``supervise`` (``--store``/``--group`` only where the
    single-node etcd store has not declared them already)."""
    g = p.add_argument_group("cluster node (with --store: owner or standby of --group)")
    if "--store" not in p._option_string_actions:
        g.add_argument("--store", metavar="etcd://HOST:PORT[,HOST:PORT...]/PREFIX",
                       help="the etcd cluster holding the group's checkpoint")
    if "--group" not in p._option_string_actions:
        g.add_argument("--group", default="default", help="the configuration's name in "
                       "--store (one supervisor per node and group)")
    g.add_argument("--node", metavar="NAME", help="this node's name in the cluster: run as "
                   "one of up to 4 nodes serving --group (owner or standby)")
    g.add_argument("--node-address", metavar="ADDR", help="this node's address: its "
                   "target listens here, on the ports the configuration names")
    g.add_argument("--lease-ttl", type=float, default=DEFAULT_LEASE_TTL, metavar="SECONDS",
                   help="the node's lease in etcd: a silent node's groups move after this "
                   "long; it fences itself (listeners inaccessible) 3/4 of it after its "
                   "last renewal")


def floating_from(args: argparse.Namespace) -> FloatingAddress | None:
    """``--floating-address``/``--floating-dev`` checked (PhoenixError says what is wrong)."""
    if not args.floating_address:
        return None
    # Here, not at the top: pyroute2 takes half a second to import, which every other
    # command would pay (cli.py and cli_checkpoint.py import netplumb the same way).
    from nvmf_phoenix.plugin import netplumb

    if not args.floating_dev:
        raise PhoenixError("--floating-address needs --floating-dev (the interface the "
                           "owner puts it on)")
    try:
        floating = netplumb.Floating(args.floating_address, args.floating_dev)
        ip = ipaddress.ip_address(floating.address)
        if floating.prefixlen is not None and not 0 < floating.prefixlen <= ip.max_prefixlen:
            raise ValueError(f"prefix /{floating.prefixlen}")
    except ValueError as exc:
        raise PhoenixError(f"--floating-address {args.floating_address}: {exc}") from None
    if floating.address == args.node_address:
        raise PhoenixError("--floating-address must differ from --node-address (the "
                           "node's own address stays with the node)")
    floating.check()
    return floating


def supervise_node(args: argparse.Namespace) -> int:
    """``supervise --node``: run this node for the group in the foreground."""
    if not args.store or not args.node_address:
        print("nvmf-phoenix supervise: --node needs --store etcd://... and --node-address",
              file=sys.stderr)
        return 2
    if getattr(args, "standby", False):
        print("nvmf-phoenix supervise: --node runs the standby on another node; leave "
              "--standby out", file=sys.stderr)
        return 2
    try:
        ep = Endpoints.parse(args.store)
    except ValueError as exc:
        print(f"nvmf-phoenix supervise: --store: {exc}", file=sys.stderr)
        return 2
    try:
        floating = floating_from(args)
    except PhoenixError as exc:
        print(f"nvmf-phoenix supervise: {exc}", file=sys.stderr)
        return 2
    cmd = shlex.split(args.target_cmd) if args.target_cmd else \
        [sys.executable, "-m", "nvmf_phoenix.embedded"]
    node = ClusterNode(EtcdClient(ep.urls), ep.prefix, args.group, args.node,
                       args.node_address, cmd, args.target_socket, args.rpc_socket,
                       args.state_dir, lease_ttl=args.lease_ttl,
                       ping_interval=args.ping_interval, misses=args.misses,
                       floating=floating)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node.start()
    except Exception as exc:
        print(f"nvmf-phoenix supervise: cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        server = metrics.serve_supervisor(args, node.status_dict)
    except metrics.MetricsPortError as exc:
        print(exc, file=sys.stderr)
        node.stop()
        return 1
    print(f"nvmf-phoenix supervisor ready: rpc={args.rpc_socket} target={args.target_socket}"
          f" state={args.state_dir} node={args.node} address={args.node_address} "
          f"slot={node.lease.slot} group={args.group} store={args.store}"
          + (f" floating={floating.address} dev={floating.dev}" if floating else ""),
          flush=True)
    stop.wait()
    metrics.shut(server)
    node.stop()
    return 0


def node_lines(sup: dict[str, Any]) -> list[str]:
    """``status`` of a cluster node: its role, the owner, the epoch, its lease."""
    lease = sup["lease"]
    owner = f"{sup['owner']} at {sup['owner_address']}" if sup["owner"] else "nobody"
    lines = [f"cluster: node {sup['node']} ({sup['address']}, slot {sup['slot']}) is "
             f"{sup['role'].upper()} for group {sup['group']}, epoch {sup['epoch']}, "
             f"owner {owner}; {sup['takeovers']} takeovers, {sup['fences']} fences",
             f"  lease {lease['lease']}: ttl {lease['ttl']} s, {lease['ttl_left']} s left"
             + (", FENCED" if lease["fenced"] else "")]
    floating = sup.get("floating")
    if floating:
        lines.append(f"  floating address {floating['address']}: "
                     + ("held by this node" if floating["held"] else "not held here"))
    return lines


# -- cluster status ----------------------------------------------------------------------
def cluster_status(client: EtcdClient, prefix: str) -> dict[str, Any]:
    """The cluster as etcd has it, in one read of the prefix plus a lease query per node."""
    keys = ClusterKeys(prefix)
    _rev, kvs = client.prefix(prefix + "/")
    now = time.time()
    nodes: dict[str, dict[str, Any]] = {}
    slots: dict[int, str] = {}
    groups: dict[str, dict[str, Any]] = {}
    for kv in kvs:
        key = kv.key.decode()
        if key.startswith(keys.nodes):
            doc = _json(kv.value)
            ttl = client.lease_ttl(kv.lease) if kv.lease else -1
            nodes[doc.get("node", key[len(keys.nodes):])] = {
                "address": doc.get("address"), "slot": doc.get("slot"),
                "registered_s": round(now - float(doc.get("since", now)), 1),
                "ttl_left": ttl, "alive": True, "group": doc.get("group"),
                "role": doc.get("role"), "floating": doc.get("floating")}
        elif key.startswith(keys.slots):
            slots[int(key[len(keys.slots):])] = kv.value.decode()
        elif key.startswith(keys.groups):
            name, _, rest = key[len(keys.groups):].partition("/")
            g = groups.setdefault(name, {"owner": None, "epoch": 0, "seq": 0})
            if rest == "owner":
                g["owner"] = _json(kv.value).get("node")
            elif rest == "epoch":
                g["epoch"] = int(kv.value or 0)
            elif rest == "head":
                g["seq"] = int(_json(kv.value).get("seq", 0))
    for slot, name in slots.items():
        nodes.setdefault(name, {"address": None, "slot": slot, "registered_s": None,
                                "ttl_left": -1, "alive": False, "group": None,
                                "role": None, "floating": None})
    for name, g in groups.items():
        g["standbys"] = sorted(n for n, d in nodes.items() if d["alive"] and
                               d["group"] == name and d["role"] == "standby")
        g["no_standby"] = not g["standbys"]
        # The owner registers the floating address it holds (nobody: none, or moving).
        g["floating"] = {n: d["floating"] for n, d in nodes.items() if d["alive"] and
                         d["group"] == name and d["floating"]}
    return {"prefix": prefix, "nodes": dict(sorted(nodes.items())),
            "groups": dict(sorted(groups.items()))}


def human_cluster(d: dict[str, Any]) -> str:
    lines = [f"cluster {d['prefix']}: {len(d['nodes'])} nodes, {len(d['groups'])} groups"]
    for name, n in d["nodes"].items():
        if n["alive"]:
            lines.append(f"  node {name}: {n['address']}, slot {n['slot']}, alive, "
                         f"registered {n['registered_s']} s ago, lease {n['ttl_left']} s "
                         f"left; {n['role'] or '?'} of group {n['group'] or '?'}")
        else:
            lines.append(f"  node {name}: slot {n['slot']}, NOT ALIVE (no lease)")
    for name, g in d["groups"].items():
        lines.append(f"  group {name}: owner {g['owner'] or 'NONE'}, epoch {g['epoch']}, "
                     f"seq {g['seq']}, standby "
                     + (", ".join(g["standbys"]) if g["standbys"] else "NONE (no standby)")
                     + "".join(f"; floating address {a} held by {n}"
                               for n, a in sorted(g["floating"].items())))
    return "\n".join(lines)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        doc = decode(raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        ep = Endpoints.parse(args.store)
    except ValueError as exc:
        raise PhoenixError(f"--store: {exc}") from None
    client = EtcdClient(ep.urls)
    try:
        doc = cluster_status(client, ep.prefix)
    except EtcdError as exc:
        raise PhoenixError(f"etcd: {exc}") from None
    finally:
        client.close()
    emit(args, doc, human_cluster)
    return 1 if any(g["no_standby"] or not g["owner"] for g in doc["groups"].values()) \
        else 0


def add_parsers(sub: Any, guarded: Any) -> None:
    p = sub.add_parser("cluster", help="the cluster of nodes sharing an etcd store")
    csub = p.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)
    s = csub.add_parser("status", help="nodes, owners, epochs, leases, groups without a "
                        "standby (exit 1 if a group has no owner or no standby)")
    s.add_argument("--store", required=True, metavar="etcd://HOST:PORT[,...]/PREFIX")
    add_json(s)
    s.set_defaults(func=guarded(_cmd_status))
