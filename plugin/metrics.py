"""Prometheus metrics: restarts, restore time, hosts back or missing, checkpoint, target I/O.

One collector reads everything at scrape time, so a scrape shows the state of that moment
and a dead target shows up as ``nvmf_phoenix_target_up 0`` rather than stale numbers:

- the supervisor's status (in-process, or ``phoenix_status`` over the socket when the
  exporter points at a supervisor): restarts, state, last restore and death-to-ready time;
  without a supervisor, the last ``nvmf-phoenix restore`` recorded in the state directory;
- the checkpoint in the state directory: age, size, sequence, journal and snapshot size;
- the target over JSON-RPC: ``nvmf_get_stats`` queue-pair and I/O counters per poll group,
  ``nvmf_get_subsystems`` object counts, ``bdev_get_iostat`` when the target has it;
- hosts: who is connected (``nvmf_subsystem_get_controllers``, which pauses each
  subsystem's admin queue, so at most every ``hosts_interval`` seconds), and after a restart
  which of the hosts connected before it are back.

Runs inside ``nvmf-phoenix supervise --metrics-port`` or as ``nvmf-phoenix metrics``.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from nvmf_phoenix.plugin import ops
from nvmf_phoenix.rpc import RpcClient, RpcError
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from nvmf_phoenix.model import DISCOVERY_NQN

P = "nvmf_phoenix_"
POLL_GAUGES = ("current_admin_qpairs", "current_io_qpairs", "current_unassociated_qpairs",
               "pending_bdev_io")
POLL_COUNTERS = ("admin_qpairs", "io_qpairs", "completed_nvme_io")
BDEV_COUNTERS = (("bytes_read", "read_bytes"), ("num_read_ops", "read_ops"),
                 ("bytes_written", "written_bytes"), ("num_write_ops", "write_ops"))
HostKey = tuple[str, str]   # (hostnqn, subsystem nqn)
StatusFn = Callable[[Any], dict[str, Any] | None]


def status_over_rpc(client: Any) -> dict[str, Any] | None:
    """A supervisor's status if one serves the socket, else None."""
    try:
        return client.call("phoenix_status")
    except RpcError as err:
        if err.code == -32601:
            return None
        raise


class HostTracker:
    """Hosts expected back after the last restart, and which of them are back.

    ``known`` collects every host seen connected since the last restart; at a restart it
    becomes ``expected``. Before any restart the hosts seen so far are the expectation.
    """

    def __init__(self) -> None:
        self.known: set[HostKey] = set()
        self.expected: set[HostKey] | None = None
        self.connected: set[HostKey] = set()

    def restarted(self, also_expected: set[HostKey] | None = None) -> None:
        """A restart: hosts seen since the last one are now expected back. Hosts expected
        after the last restart stay expected: one restart may be seen twice (the restart
        count changes, then a scrape lands while the target is still being restored),
        and the second sighting must not forget hosts that had no time to come back."""
        self.expected = self.known | (self.expected or set()) | (also_expected or set())
        self.known = set()
        self.connected = set()

    def observe(self, connected: set[HostKey]) -> None:
        self.connected = connected
        self.known |= connected

    def counts(self) -> tuple[int, int, int]:
        expected = self.known if self.expected is None else self.expected
        back = len(expected & self.connected)
        return len(expected), back, len(expected) - back


class PhoenixCollector:
    def __init__(self, rpc_socket: str, state_dir: str, status: StatusFn = status_over_rpc,
                 hosts_interval: float = 10.0, timeout: float = 5.0) -> None:
        self.rpc_socket = rpc_socket
        self.state_dir = state_dir
        self.status = status
        self.hosts_interval = hosts_interval
        self.timeout = timeout
        self.hosts = HostTracker()
        self._marker: tuple[Any, ...] | None = None
        self._last_hosts_poll = float("-inf")
        self._was_down = False

    def collect(self) -> Iterator[Metric]:
        out: list[Metric] = []
        try:
            with RpcClient.connect(self.rpc_socket, timeout=self.timeout) as c:
                sup = self.status(c)
                out += self._target(c)
                self._track(c, sup)
            up = 1
        except RpcError:
            sup, up = None, 0
            self._was_down = True
        g = GaugeMetricFamily(P + "target_up", "1 if the target answers JSON-RPC")
        g.add_metric([], up)
        out.append(g)
        out += self._supervisor(sup) + self._checkpoint() + self._host_metrics()
        yield from out

    # -- restarts and restores -------------------------------------------------------------
    def _supervisor(self, sup: dict[str, Any] | None) -> list[Metric]:
        out: list[Metric] = []
        last = ops.last_restore(self.state_dir)
        restore_s = sup["last_restore_s"] if sup else (last or {}).get("seconds")
        if sup:
            c = CounterMetricFamily(P + "restarts", "target restarts by the supervisor")
            c.add_metric([], sup["restarts"])
            st = GaugeMetricFamily(P + "supervisor_state", "supervisor state (1 = current)",
                                   labels=["state"])
            for s in ("starting", "ready", "restarting", "failed", "stopped"):
                st.add_metric([s], 1 if sup["state"] == s else 0)
            d = GaugeMetricFamily(P + "death_to_ready_seconds",
                                  "last target death to restored and ready")
            d.add_metric([], sup["last_death_to_ready_s"])
            out += [c, st, d]
            if sup.get("mode") == "pair":
                out += _pair(sup)
            elif sup.get("mode") == "cluster":
                out += _cluster(sup)
        if restore_s is not None:
            r = GaugeMetricFamily(P + "restore_seconds", "duration of the last restore")
            r.add_metric([], float(restore_s))
            out.append(r)
        if last:
            t = GaugeMetricFamily(P + "last_restore_timestamp_seconds",
                                  "when the last `nvmf-phoenix restore` ran (Unix time)")
            t.add_metric([], float(last.get("at", 0)))
            ok = GaugeMetricFamily(P + "last_restore_ok", "1 if the last restore was complete")
            ok.add_metric([], 1 if last.get("ok") else 0)
            out += [t, ok]
        return out

    # -- checkpoint ------------------------------------------------------------------------
    def _checkpoint(self) -> list[Metric]:
        try:
            loaded, store = ops.load(self.state_dir)
            d = ops.info(loaded, store)
        except ops.PhoenixError:
            d = None
        present = GaugeMetricFamily(P + "checkpoint_present", "1 if a checkpoint is usable")
        present.add_metric([], 1 if d else 0)
        out: list[Metric] = [present]
        if d:
            for name, value, text in (
                    ("checkpoint_age_seconds", d["age_s"], "age of the newest checkpoint"),
                    ("checkpoint_bytes", d["state_bytes"], "size of the saved state"),
                    ("checkpoint_seq", d["seq"], "sequence number of the newest checkpoint"),
                    ("journal_bytes", d["journal_bytes"], "size of the durable journal"),
                    ("snapshot_bytes", d["snapshot_bytes"], "size of the compacted snapshot")):
                g = GaugeMetricFamily(P + name, text)
                g.add_metric([], value)
                out.append(g)
        return out

    # -- the target ------------------------------------------------------------------------
    def _target(self, c: Any) -> list[Metric]:
        out: list[Metric] = []
        try:
            stats = c.call("nvmf_get_stats")
        except RpcError:
            stats = {"poll_groups": []}    # STARTUP phase: nothing to count yet
        for field in POLL_GAUGES:
            g = GaugeMetricFamily(P + "nvmf_" + field, f"nvmf_get_stats {field}",
                                  labels=["poll_group"])
            for pg in stats.get("poll_groups", []):
                g.add_metric([pg["name"]], pg.get(field, 0))
            out.append(g)
        for field in POLL_COUNTERS:
            k = CounterMetricFamily(P + "nvmf_" + field, f"nvmf_get_stats {field} (since "
                                    "target start)", labels=["poll_group"])
            for pg in stats.get("poll_groups", []):
                k.add_metric([pg["name"]], pg.get(field, 0))
            out.append(k)
        try:
            subs = [s for s in c.call("nvmf_get_subsystems") if s["nqn"] != DISCOVERY_NQN]
        except RpcError:
            subs = []
        for name, value in (("subsystems", len(subs)),
                            ("namespaces", sum(len(s.get("namespaces", [])) for s in subs)),
                            ("listeners", sum(len(s.get("listen_addresses", [])) for s in subs)),
                            ("allowed_hosts", sum(len(s.get("hosts", [])) for s in subs))):
            g = GaugeMetricFamily(P + name, f"{name} configured on the target")
            g.add_metric([], value)
            out.append(g)
        return out + self._bdev_io(c)

    def _bdev_io(self, c: Any) -> list[Metric]:
        try:
            io = c.call("bdev_get_iostat")
        except RpcError:
            return []    # the embedded target has no per-bdev statistics
        out: list[Metric] = []
        for field, name in BDEV_COUNTERS:
            k = CounterMetricFamily(P + "bdev_" + name, f"bdev_get_iostat {field}",
                                    labels=["bdev"])
            for b in io.get("bdevs", []):
                k.add_metric([b["name"]], b.get(field, 0))
            out.append(k)
        return out

    # -- hosts -----------------------------------------------------------------------------
    def _track(self, c: Any, sup: dict[str, Any] | None) -> None:
        last = ops.last_restore(self.state_dir) or {}
        marker = ((sup or {}).get("restarts"), last.get("at"))
        if self._marker is None:
            if last.get("expected_hosts"):    # exporter started after a restore
                self.hosts.restarted(_keys(last["expected_hosts"]))
        elif marker != self._marker or self._was_down:
            self.hosts.restarted(_keys(last.get("expected_hosts", []))
                                 if marker[1] != self._marker[1] else None)
            self._last_hosts_poll = float("-inf")
        self._marker, self._was_down = marker, False
        now = time.monotonic()
        if now - self._last_hosts_poll < self.hosts_interval:
            return
        try:
            nqns = [s["nqn"] for s in c.call("nvmf_get_subsystems")
                    if s["nqn"] != DISCOVERY_NQN]
            connected = {(ctrl["hostnqn"], nqn) for nqn in nqns
                         for ctrl in c.call("nvmf_subsystem_get_controllers", {"nqn": nqn})}
        except RpcError:
            return
        self._last_hosts_poll = now
        self.hosts.observe(connected)

    def _host_metrics(self) -> list[Metric]:
        expected, back, missing = self.hosts.counts()
        out: list[Metric] = []
        for name, value, text in (
                ("hosts_expected", expected, "hosts connected before the last restart"),
                ("hosts_reconnected", back, "of those, hosts connected again"),
                ("hosts_missing", missing, "of those, hosts not connected")):
            g = GaugeMetricFamily(P + name, text)
            g.add_metric([], value)
            out.append(g)
        return out


def _keys(rows: list[dict[str, Any]]) -> set[HostKey]:
    return {(r["hostnqn"], r["nqn"]) for r in rows}


def serve(collector: PhoenixCollector, port: int, address: str = "0.0.0.0") -> Any:
    """Serve /metrics on a daemon thread; returns the server (call ``shutdown()``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, _ = start_http_server(port, addr=address, registry=registry)
    return server


class MetricsPortError(Exception):
    """The supervisor's metrics port cannot be bound (the message is for the user)."""


def serve_supervisor(args: Any, status: Callable[[], dict[str, Any]]) -> Any:
    """``supervise``'s /metrics as its options ask (``--metrics-port``, address, hosts
    interval), over ``status`` (a supervisor's, a pair's or a cluster node's status
    dict); None without a port. Raises MetricsPortError when the port cannot be bound."""
    if args.metrics_port is None:
        return None
    collector = PhoenixCollector(args.target_socket, args.state_dir,
                                 status=lambda _c: status(),
                                 hosts_interval=args.metrics_hosts_interval)
    try:
        return serve(collector, args.metrics_port, args.metrics_address)
    except OSError as exc:
        raise MetricsPortError(f"nvmf-phoenix supervise: metrics port {args.metrics_port}: "
                               f"{exc.strerror}") from None


def shut(server: Any) -> None:
    """Stop what :func:`serve_supervisor` started (nothing for None)."""
    if server is not None:
        server.shutdown()
        server.server_close()


def _pair(sup: dict[str, Any]) -> list[Metric]:
    """A hot-standby pair: failovers, redundancy, and each member's role and state."""
    f = CounterMetricFamily(P + "pair_failovers", "active deaths turned into a failover")
    f.add_metric([], sup["failovers"])
    r = GaugeMetricFamily(P + "pair_redundant", "1 if a standby is ready to take over")
    r.add_metric([], 1 if sup["redundant"] else 0)
    s = GaugeMetricFamily(P + "pair_failover_seconds",
                          "last active death to the standby's paths optimized")
    s.add_metric([], sup["last_failover_s"])
    m = GaugeMetricFamily(P + "pair_member_up", "1 if the member serves its role",
                          labels=["member", "role"])
    for name, mem in sorted(sup["members"].items()):
        m.add_metric([name, mem["role"]], 1 if mem["state"] == "ready" else 0)
    return [f, r, s, m]


def _cluster(sup: dict[str, Any]) -> list[Metric]:
    """A cluster node: its role in its group, the group's epoch, its lease, fencing,
    the floating address."""
    group, node = sup["group"], sup["node"]
    role = GaugeMetricFamily(P + "cluster_role", "this node's role in the group "
                             "(1 = current)", labels=["group", "node", "role"])
    for r in ("owner", "standby", "fenced"):
        role.add_metric([group, node, r], 1 if sup["role"] == r else 0)
    epoch = GaugeMetricFamily(P + "cluster_epoch", "the group's epoch (grows on every "
                              "change of owner)", labels=["group"])
    epoch.add_metric([group], sup["epoch"])
    ttl = GaugeMetricFamily(P + "cluster_lease_ttl_seconds", "seconds the node's lease "
                            "certainly has left (by its own conservative clock)")
    ttl.add_metric([], sup["lease"]["ttl_left"])
    fenced = GaugeMetricFamily(P + "cluster_fenced", "1 while the node is fenced "
                               "(listeners inaccessible: no lease renewal in time)")
    fenced.add_metric([], 1 if sup["lease"]["fenced"] else 0)
    take = CounterMetricFamily(P + "cluster_takeovers", "groups this node took over")
    take.add_metric([], sup["takeovers"])
    out: list[Metric] = [role, epoch, ttl, fenced, take]
    if sup.get("floating"):
        held = GaugeMetricFamily(P + "cluster_floating_held", "1 while this node holds "
                                 "the group's floating address", labels=["group", "address"])
        held.add_metric([group, sup["floating"]["address"]],
                        1 if sup["floating"]["held"] else 0)
        out.append(held)
    return out
