"""``nvmf-phoenix io``: put I/O on an NVMe/TCP target and say what a host saw.

In the manner of SPDK's perf (``-q`` queue depth, ``-o`` I/O size, ``-w`` pattern, ``-M``
read share), but with the project's own initiator, so it runs wherever Python does: no
nvme-cli, no kernel nvme-tcp, no hugepages. It exists so that anyone can check the
project's claim for themselves: drive a target with ``--verify``, ``kill -9`` it, and read
"0 errors, longest stall N ms" in the summary.

The driver behaves like a host driver: when the connection drops it reconnects (a new
controller, the same queues) for up to ``--ctrl-loss-tmo`` seconds and sends again the
commands that were outstanding, counting the reconnect instead of failing them. It sends
Keep Alive on the admin queue at a quarter of the keep-alive timeout. Progress goes to
stderr once a second; the summary to stdout (``--json`` for scripts). The exit code is 1
when any command failed or any read differed from what was written.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nvmf_phoenix.initiator.connection import DEFAULT_HOSTNQN, NvmeError
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.plugin import io_multipath
from nvmf_phoenix.plugin.cli_common import DefaultsShown
from nvmf_phoenix.plugin.io_workload import PATTERNS, CliWorkload, Pattern
from nvmf_phoenix.plugin.ops import EXIT_FAIL, EXIT_OK, EXIT_UNREACHABLE, PhoenixError

STALL_THRESHOLD = 0.010     # gaps between completions longer than this count as stalls


@dataclass
class Target:
    """Where to connect, as whom."""

    traddr: str
    trsvcid: str
    nqn: str
    hostnqn: str = DEFAULT_HOSTNQN
    queues: int = 1
    sqsize: int = 127
    kato_ms: int = 10000
    digests: bool = False

    def connect(self) -> Host:
        host = Host(self.traddr, self.trsvcid, self.nqn, hostnqn=self.hostnqn,
                    kato_ms=self.kato_ms, hdgst=self.digests, ddgst=self.digests)
        try:
            host.create_io_queues(self.queues, self.sqsize)
        except BaseException:
            host.close()
            raise
        return host


@dataclass
class Run:
    """What happened beyond the workload's own statistics."""

    started: float
    ended: float = 0.0
    reconnects: int = 0
    reconnect_reasons: list[str] = field(default_factory=list)
    readback: int = 0
    main: tuple[int, int, int, int] = (0, 0, 0, 0)   # completed, reads, writes, latencies
    max_gap: float = 0.0         # the longest stall of the run proper
    failure: str = ""            # why the run ended early (reconnect gave up)


def reconnect(target: Target, deadline: float) -> Host:
    """A new controller with its I/O queues, retried (every 50 ms, backing off to 0.5 s)
    until ``deadline``: the target may be restarting, or its address moving."""
    delay = 0.05
    while True:
        try:
            return target.connect()
        except (NvmeError, OSError) as exc:
            if time.monotonic() + delay > deadline:
                raise PhoenixError(f"could not reconnect to {target.traddr}:"
                                   f"{target.trsvcid}: {exc}") from None
        time.sleep(delay)   # a host's reconnect delay, not a synchronisation
        delay = min(0.5, delay * 2)


def drive(target: Target, nsid: int | None, io_size: int, qd: int, pattern_name: str,
          rwmixread: int, verify: bool, seconds: float, count: int | None,
          ctrl_loss_tmo: float = 60.0, seed: int | None = None,
          progress: Callable[[str], None] | None = None,
          stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Run the workload and return the summary (see :func:`summarize`); ``stop`` ends
    the run early (what is outstanding still completes and is counted)."""
    try:
        host = target.connect()
    except (NvmeError, OSError) as exc:
        raise PhoenixError(f"cannot connect to {target.nqn} at {target.traddr}:"
                           f"{target.trsvcid}: {exc}", EXIT_UNREACHABLE) from None
    try:
        if nsid is None:
            active = host.active_namespaces()
            if not active:
                raise PhoenixError(f"{target.nqn} has no namespace")
            nsid = active[0]
        ns = host.identify_namespace(nsid)
        lba = int(ns["block_size"])
        if not lba or not int(ns["nsze"]):
            raise PhoenixError(f"namespace {nsid} of {target.nqn} does not exist")
        if io_size % lba:
            raise PhoenixError(f"I/O size {io_size} is not a multiple of the namespace's "
                               f"block size {lba}")
        per_queue = qd // len(host.io)
        if per_queue > (host.cap & 0xFFFF):
            raise PhoenixError(f"queue depth {qd} over {len(host.io)} queues exceeds the "
                               f"target's {(host.cap & 0xFFFF)} per queue")
        random, writes = PATTERNS[pattern_name]
        pattern = Pattern(nlb=io_size // lba, random=random, verify=verify, limit=count,
                          write_fraction=1 - rwmixread / 100 if writes is None else writes)
        if pattern.nlb > int(ns["nsze"]):
            raise PhoenixError(f"I/O size {io_size} is larger than namespace {nsid}")
        work = CliWorkload(host.io, nsid, lba, int(ns["nsze"]), per_queue * len(host.io),
                           pattern, seed=seed)
        work.gap_threshold = STALL_THRESHOLD
        run = Run(started=time.monotonic())
        host = _loop(target, host, work, run, seconds, ctrl_loss_tmo, progress, stop)
    finally:
        host.close()
    return summarize(work, run, nsid, lba, io_size, pattern_name, rwmixread, target)


def _loop(target: Target, host: Host, work: CliWorkload, run: Run, seconds: float,
          ctrl_loss_tmo: float, progress: Callable[[str], None] | None,
          stop: Callable[[], bool]) -> Host:
    """Step the workload until the time or count is reached and all is complete, then
    (with --verify) read back what was written; reconnect whenever the connection goes.
    Returns the host connected at the end."""
    end = run.started + seconds
    drain_by: float | None = None
    next_ka = run.started + target.kato_ms / 4000
    last_tick, last_done = run.started, 0
    while True:
        now = time.monotonic()
        if not work.stopping and (now >= end or work.finished or stop()):
            work.stopping = True
            drain_by = now + ctrl_loss_tmo + 30.0
        if work.finished:
            if work.pattern.verify and not run.readback and work.expected and not run.failure:
                _end_main(work, run, now)
                run.readback = work.start_readback()
                # However long reading it all back takes: a target that stops answering
                # fails Keep Alive, and a reconnect is bounded by ctrl_loss_tmo.
                drain_by = None
                continue
            break
        if drain_by is not None and now > drain_by:
            work.stats.errors.append(f"{work.outstanding} commands never completed")
            break
        try:
            work.step(0.05)
            if time.monotonic() >= next_ka:
                host.keep_alive()
                next_ka = time.monotonic() + target.kato_ms / 4000
        except (NvmeError, OSError) as exc:
            run.reconnects += 1
            run.reconnect_reasons.append(str(exc))
            if progress:
                progress(f"io: connection lost ({exc}); reconnecting")
            pending = work.detach()
            host.close()
            try:
                host = reconnect(target, time.monotonic() + ctrl_loss_tmo)
            except PhoenixError as gave_up:
                run.failure = str(gave_up)
                work.stats.errors.append(f"{len(pending)} commands lost: {gave_up}")
                work.inflight = []
                break
            work.attach(host.io, pending)
            next_ka = time.monotonic() + target.kato_ms / 4000
        now = time.monotonic()
        if progress and now >= last_tick + 1.0:
            # A rate over the time since the last line: a stall (a reconnect) makes one
            # long interval, not a burst of lines.
            done = work.stats.completed
            progress(f"io: {now - run.started:4.0f} s  "
                     f"{(done - last_done) / (now - last_tick):8.0f} IOPS  "
                     f"{len(work.stats.errors)} errors  {len(work.stats.mismatches)} "
                     f"mismatches  {run.reconnects} reconnects"
                     + ("  (reading back)" if run.readback else ""))
            last_tick, last_done = now, done
    if not run.readback:
        _end_main(work, run, time.monotonic())
    return host


def _end_main(work: CliWorkload, run: Run, now: float) -> None:
    """The run proper is over: what follows (the read-back) is not measured."""
    st = work.stats
    run.main = (st.completed, st.reads, st.writes, len(st.latencies))
    run.max_gap = st.max_gap
    run.ended = now


def _percentile(ordered: list[float], p: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def summarize(work: CliWorkload, run: Run, nsid: int, lba: int, io_size: int,
              pattern: str, rwmixread: int, target: Target) -> dict[str, Any]:
    st = work.stats
    secs = max(1e-9, run.ended - run.started)
    ios, reads, writes, nlat = run.main     # the run proper, without the read-back
    lat = sorted(st.latencies[:nlat])
    gaps = [(at, gap) for at, gap in st.gaps if at <= run.ended]
    stall_at = next((at for at, gap in gaps if gap == run.max_gap), None)
    return {
        "target": f"{target.traddr}:{target.trsvcid}", "nqn": target.nqn, "nsid": nsid,
        "pattern": pattern, "rwmixread": rwmixread if PATTERNS[pattern][1] is None else None,
        "io_size": io_size, "block_size": lba, "queue_depth": work.qd,
        "queues": target.queues, "verify": work.pattern.verify,
        "seconds": round(secs, 3), "ios": ios, "reads": reads, "writes": writes,
        "iops": round(ios / secs, 1), "mib_s": round(ios * io_size / secs / (1 << 20), 2),
        "latency_us": {k: round(_percentile(lat, p) * 1e6) for k, p in
                       (("p50", 50), ("p99", 99), ("p99_9", 99.9), ("max", 100))},
        "longest_stall_ms": round(run.max_gap * 1000, 1),
        "longest_stall_at_s": None if stall_at is None else
        round(stall_at - run.max_gap - run.started, 2),
        "stalls_over_10ms": len(gaps),
        # Each of them (the first 1,000), for a soak's stall distribution.
        "stalls": [{"at_s": round(at - gap - run.started, 3), "ms": round(gap * 1000, 1)}
                   for at, gap in gaps[:1000]],
        "errors": len(st.errors), "mismatches": len(st.mismatches),
        "reconnects": run.reconnects, "retries": st.retries, "read_back": run.readback,
        "error_samples": st.errors[:10], "mismatched_lbas": st.mismatches[:10],
        "reconnect_reasons": run.reconnect_reasons[:10], "failure": run.failure}


def human(s: dict[str, Any]) -> str:
    lat = s["latency_us"]
    mix = f" ({s['rwmixread']}% reads)" if s["rwmixread"] is not None else ""
    at = f" at {s['longest_stall_at_s']} s" if s["longest_stall_at_s"] is not None else ""
    lines = [
        f"{s['pattern']}{mix} {s['io_size']} B x qd {s['queue_depth']} over "
        f"{s['queues']} queue(s) on {s['nqn']} ns {s['nsid']} at {s['target']}, "
        f"{s['seconds']:.1f} s" + (", verified" if s["verify"] else ""),
        f"  {s['ios']} I/Os ({s['reads']} reads, {s['writes']} writes): "
        f"{s['iops']:.0f} IOPS, {s['mib_s']:.2f} MiB/s",
        f"  latency us: p50 {lat['p50']}, p99 {lat['p99']}, p99.9 {lat['p99_9']}, "
        f"max {lat['max']}"]
    if s["read_back"]:
        lines.append(f"  read back {s['read_back']} blocks at the end (all written or read)")
    lines.append(f"  {s['errors']} errors, {s['mismatches']} mismatches, "
                 f"{s['reconnects']} reconnects, longest stall {s['longest_stall_ms']} ms"
                 f"{at} ({s['stalls_over_10ms']} over 10 ms)")
    lines += [f"  error: {e}" for e in s["error_samples"]]
    lines += [f"  mismatch at lba {lba}" for lba in s["mismatched_lbas"]]
    lines += [f"  reconnected after: {r}" for r in s["reconnect_reasons"]]
    if s["failure"]:
        lines.append(f"  gave up: {s['failure']}")
    return "\n".join(lines)


def _size(text: str) -> int:
    """4096, 4k, 1M: bytes."""
    units = {"k": 1 << 10, "m": 1 << 20}
    t = text.strip().lower().removesuffix("b")
    mult = units.get(t[-1:], 1)
    try:
        n = int(t[:-1] if t[-1:] in units else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (e.g. 4096, 4k, 1M)") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return n


def add_parser(sub: Any, guarded: Callable[[Callable[[argparse.Namespace], int]],
                                            Callable[[argparse.Namespace], int]]) -> None:
    p = sub.add_parser(
        "io", help="drive an NVMe/TCP target with (verified) I/O and report IOPS, "
        "latency, stalls and errors, like SPDK's perf",
        formatter_class=DefaultsShown,
        description="Connect as a host, keep QD commands outstanding for --time seconds "
        "(or --count commands), print progress every second on stderr and a summary on "
        "stdout. Reconnects and re-sends outstanding commands if the connection drops. "
        "Exit 1 if any command failed or any read differed from what was written.")
    p.add_argument("-t", "--traddr", default="127.0.0.1", help="target address")
    p.add_argument("-s", "--trsvcid", default="4420", help="target port")
    p.add_argument("-n", "--nqn", default="nqn.2016-06.io.spdk:cnode1", help="subsystem NQN")
    p.add_argument("--hostnqn", default=DEFAULT_HOSTNQN, help="host NQN to connect as")
    p.add_argument("--nsid", type=int, help="namespace (default: the first active one)")
    p.add_argument("-w", "--workload", choices=sorted(PATTERNS), default="randrw",
                   help="I/O pattern")
    p.add_argument("-M", "--rwmixread", type=int, default=50, metavar="PERCENT",
                   help="share of reads for rw and randrw")
    p.add_argument("-o", "--io-size", type=_size, default=4096, metavar="BYTES",
                   help="bytes per command (a multiple of the block size; 4k, 128k ok)")
    p.add_argument("-q", "--queue-depth", type=int, default=32, metavar="QD",
                   help="commands outstanding in all, spread over the queues")
    p.add_argument("-P", "--queues", type=int, default=1, help="I/O queues (connections)")
    p.add_argument("-T", "--time", type=float, default=10.0, metavar="SECONDS",
                   help="how long to run")
    p.add_argument("-c", "--count", type=int, metavar="N",
                   help="stop after N commands instead (still bounded by --time)")
    p.add_argument("--verify", action="store_true",
                   help="check every read against what was written (and what was read "
                   "before), and read every written block back at the end")
    p.add_argument("--kato", type=int, default=10000, metavar="MS",
                   help="keep-alive timeout; Keep Alive is sent every quarter of it")
    p.add_argument("--ctrl-loss-tmo", type=float, default=60.0, metavar="SECONDS",
                   help="give up reconnecting after this long")
    p.add_argument("--digests", action="store_true", help="ask for header and data digests")
    p.add_argument("--seed", type=int, help="random seed (offsets and mix)")
    g = p.add_argument_group("multipath (a hot-standby pair, or any ANA multipath target)")
    g.add_argument("--multipath", action="store_true", help="-t/-s name a discovery "
                   "service: connect every path it (and its referrals) lists for -n, send "
                   "I/O on the optimized one, fail over as a Linux host does")
    g.add_argument("--reconnect-delay", type=float, default=1.0, metavar="SECONDS",
                   help="with --multipath: how often a failed path is retried")
    g.add_argument("--blocks", type=int, default=2048, help="with --multipath: blocks "
                   "the verified I/O covers from LBA 0")
    g.add_argument("--block-size", type=int, default=4096, help="with --multipath: the "
                   "namespace's block size")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=guarded(run_command))


def run_command(args: argparse.Namespace) -> int:
    if not 0 <= args.rwmixread <= 100:
        raise PhoenixError("--rwmixread is a percentage (0-100)", 2)
    if args.queues < 1 or args.queue_depth < args.queues:
        raise PhoenixError("--queue-depth must be at least --queues (one command per "
                           "queue)", 2)
    per_queue = args.queue_depth // args.queues
    target = Target(args.traddr, args.trsvcid, args.nqn, args.hostnqn, args.queues,
                    sqsize=max(31, per_queue), kato_ms=args.kato, digests=args.digests)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    # Ctrl-C (or SIGTERM) ends the run early with a summary, as perf does; a second one
    # interrupts for good.
    stopped = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stopped.is_set():
            raise KeyboardInterrupt
        stopped.set()
    before = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            before[sig] = signal.signal(sig, on_signal)
    try:
        if args.multipath:
            return io_multipath.run(args, stopped)
        summary = drive(target, args.nsid, args.io_size, args.queue_depth, args.workload,
                        args.rwmixread, args.verify, args.time, args.count,
                        ctrl_loss_tmo=args.ctrl_loss_tmo, seed=args.seed,
                        progress=None if args.quiet else say, stop=stopped.is_set)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    print(json.dumps(summary, indent=2) if args.json else human(summary), flush=True)
    return EXIT_FAIL if summary["errors"] or summary["mismatches"] else EXIT_OK
