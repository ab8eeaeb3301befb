"""Drive the real Linux host's "pair" scenario against a hot-standby pair and measure it.

``run_pair`` boots the guest (vagrant/realhost/pair.sh), kills the active member whenever
the guest reports both paths live and I/O flowing, and turns the guest's markers into a
:class:`PairReport`: per kill, the worst I/O completion latency and the longest time with
no completion (both from fio's per-I/O latency log), and how long until both paths were
live again. Guest times are CLOCK_MONOTONIC; the offset to the host's clock is the
smallest (arrival - guest time) over all time-stamped markers, i.e. the serial delay of the
promptest marker, a few ms at most.

The pair only has to offer ``active``, ``addr``, ``disc_port`` and ``failover(name)``
(tests/pair_lab.py today, the supervisor's pair mode later).
"""
from __future__ import annotations

import re
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from tests import realhost

HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:7068782d-7061-6972-2d68-6f7374000001"
RECONNECT_DELAY_DEFAULT = 10.0      # Linux's default reconnect_delay (s)


class Pair(Protocol):
    """What the driver needs from a pair. ``failover(name)`` must SIGKILL member ``name``
    (the active one) and may return once the pair has recovered or at once; under the
    supervisor it only kills (the supervisor promotes and restarts). If what it returns
    has ``at`` (monotonic time of the SIGKILL), that is the kill's time."""
    addr: str
    kind: str

    @property
    def active(self) -> str: ...

    @property
    def disc_port(self) -> int: ...

    def failover(self, killed: str) -> Any: ...


@dataclass
class KillReport:
    member: str
    at_ms: float                  # guest clock
    worst_ms: float               # worst completion latency of I/O completing after the kill
    worst_at_ms: float            # when that I/O completed, from the kill (-1: below slow_ms)
    failover_worst_ms: float      # the same, I/O completing in the first 2 s after the kill
    longest_gap_ms: float         # longest time without any completion
    path_lost_ms: float | None    # the guest saw a path not live
    both_live_ms: float | None    # both paths live again (None: never, within the run)


@dataclass
class PairReport:
    kills: list[KillReport] = field(default_factory=list)
    baseline_worst_ms: float = 0.0      # before the first kill
    ios: int = 0
    fio: dict[str, str] = field(default_factory=dict)
    multipath: dict[str, str] = field(default_factory=dict)
    paths_start: list[dict[str, str]] = field(default_factory=list)
    paths_end: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    run: realhost.GuestRun | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        worst = [k.worst_ms for k in self.kills]
        back = [k.both_live_ms / 1000 for k in self.kills if k.both_live_ms is not None]
        return {
            "kills": len(self.kills), "ios": self.ios,
            "fio_rc": self.fio.get("rc"), "io_errors": self.fio.get("err"),
            "verify_failures": self.fio.get("verify_failures"),
            "baseline_worst_ms": round(self.baseline_worst_ms, 1),
            "worst_ms_per_kill_max": round(max(worst), 1) if worst else None,
            "worst_ms_per_kill_median": round(statistics.median(worst), 1) if worst else None,
            "first_2s_worst_ms_max": round(max((k.failover_worst_ms for k in self.kills),
                                               default=0), 1),
            "gap_ms_per_kill_max": round(max((k.longest_gap_ms for k in self.kills),
                                             default=0), 1),
            "both_live_s_max": round(max(back), 2) if back else None,
            "both_live_s_median": round(statistics.median(back), 2) if back else None,
            "never_back": sum(k.both_live_ms is None for k in self.kills),
            "guest_errors": self.errors, "seconds": round(self.seconds, 1)}


class KillDriver:
    """Kills the active member from the marker stream: once I/O flows and both paths have
    been live for ``hold`` seconds. The failover runs in its own thread so the serial
    console keeps being read (marker arrival times stay honest)."""

    def __init__(self, pair: Pair, kills: int, hold: float = 1.0) -> None:
        self.pair, self.wanted, self.hold = pair, kills, hold
        self.kills: list[tuple[str, float]] = []        # (member, host monotonic)
        self.both_live_since: float | None = None
        self.awaiting_loss = False      # killed, and the guest has not yet lost a path
        self.io_seen = 0
        self.worker: threading.Thread | None = None
        self.failures: list[str] = []

    def on_marker(self, m: realhost.Marker) -> None:
        if m.event == "paths":
            full = m.fields.get("live") == m.fields.get("of") != "0"
            self.both_live_since = (self.both_live_since or m.at) if full else None
            self.awaiting_loss = self.awaiting_loss and full
        elif m.event == "io" and int(m.fields.get("reads", 0)) + int(
                m.fields.get("writes", 0)) > 0:
            self.io_seen += 1
            self._maybe_kill(m.at)

    def _maybe_kill(self, now: float) -> None:
        if len(self.kills) >= self.wanted or self.io_seen < 2 or self.awaiting_loss or (
                self.worker is not None and self.worker.is_alive()):
            return
        if self.both_live_since is None or now - self.both_live_since < self.hold:
            return
        victim = self.pair.active
        self.kills.append((victim, time.monotonic()))
        self.both_live_since = None
        self.awaiting_loss = True
        self.worker = threading.Thread(target=self._failover, args=(victim,), daemon=True)
        self.worker.start()

    def _failover(self, victim: str) -> None:
        try:
            fo = self.pair.failover(victim)
            at = getattr(fo, "at", None)
            if at is not None:      # the SIGKILL's own time, when the pair reports it
                self.kills[-1] = (victim, at)
        except Exception as exc:   # reported, and the run's asserts fail on it
            self.failures.append(f"failover of {victim}: {exc!r}")

    def join(self, timeout: float = 30) -> None:
        if self.worker is not None:
            self.worker.join(timeout)


def clock_offset(run: realhost.GuestRun) -> float:
    """Host monotonic seconds minus guest monotonic seconds."""
    stamps = [m.at - int(m.fields["up_ms"]) / 1000 for m in run.markers
              if "up_ms" in m.fields and m.fields["up_ms"].isdigit()]
    if not stamps:
        raise AssertionError("the guest sent no time-stamped marker")
    return min(stamps)


def analyse(run: realhost.GuestRun, kills: list[tuple[str, float]],
            slow_ms: float) -> PairReport:
    rep = PairReport(run=run, seconds=run.seconds)
    rep.errors = [m.text for m in run.all("error")]
    fio, lat, mp = run.first("fio"), run.first("latency"), run.first("multipath")
    rep.fio = dict(fio.fields) if fio else {}
    rep.ios = int(lat.fields["ios"]) if lat else 0
    rep.multipath = dict(mp.fields) if mp else {}
    paths = [m.fields for m in run.all("path")]
    count = int(rep.multipath.get("paths", 2))       # a pair has 2, a 3-node cluster 3
    rep.paths_start, rep.paths_end = paths[:count], paths[count:]
    io_start = run.first("io-start")
    if not kills or io_start is None:
        return rep
    off = clock_offset(run)
    end = run.first("io-end")
    end_ms = float(end.fields["up_ms"]) if end else float("inf")
    slow = [(int(m.fields["t_ms"]), int(m.fields["lat_us"]) / 1000) for m in run.all("slowio")]
    gaps = [(int(m.fields["t_ms"]), int(m.fields["ms"])) for m in run.all("gap")]
    seconds = [(int(m.fields["t_s"]), int(m.fields["max_us"]) / 1000)
               for m in run.all("second")]
    states = [(int(m.fields["up_ms"]), m.fields["live"] == m.fields["of"])
              for m in run.all("paths")]
    starts = [(at - off) * 1000 for _, at in kills]
    bounds = [*starts[1:], end_ms]

    def worst_at(lo: float, hi: float) -> float:
        found = [(ms, t) for t, ms in slow if lo <= t < hi]
        return max(found)[1] - lo if found else -1.0

    def worst_in(lo: float, hi: float) -> float:
        found = [ms for t, ms in slow if lo <= t < hi]
        if found:
            return max(found)
        # Nothing reached slow_ms: the per-second maxima that overlap bound it.
        return min(slow_ms, max((ms for s, ms in seconds if s * 1000 + 1000 > lo
                                 and s * 1000 < hi), default=0.0))

    rep.baseline_worst_ms = worst_in(float(io_start.fields["up_ms"]), starts[0])
    for (member, _), lo, hi in zip(kills, starts, bounds, strict=True):
        lost = next((t for t, full in states if t >= lo and not full), None)
        back = next((t for t, full in states if lost is not None and t > lost and full),
                    None)
        rep.kills.append(KillReport(
            member=member, at_ms=lo, worst_ms=worst_in(lo, hi), worst_at_ms=worst_at(lo, hi),
            failover_worst_ms=worst_in(lo, min(hi, lo + 2000)),
            longest_gap_ms=max((g for t, g in gaps if lo <= t < hi), default=0.0),
            path_lost_ms=None if lost is None else lost - lo,
            both_live_ms=None if back is None else back - lo))
    return rep


def run_pair(pair: Pair, kills: int, opts: str = "", slow_ms: int = 30,
             per_kill: float | None = None, hold: float = 1.0) -> PairReport:
    """Boot the guest against ``pair`` and SIGKILL the active member ``kills`` times.
    ``per_kill`` bounds the time one kill-and-recover cycle may take (default
    reconnect_delay + 5 s); the guest stops its I/O 3 s after the last recovery."""
    delay = RECONNECT_DELAY_DEFAULT
    for opt in opts.split(","):
        if opt.startswith("reconnect_delay="):
            delay = float(opt.split("=", 1)[1])
    cycle = per_kill if per_kill is not None else delay + 5
    seconds = int(10 + kills * cycle)
    driver = KillDriver(pair, kills, hold)
    run = realhost.boot("pair", port=pair.disc_port, addr=pair.addr, hostnqn=HOSTNQN,
                        opts=opts, seconds=seconds, tools=True, timeout=seconds + 150,
                        extra={"kills": str(kills), "slow_ms": str(slow_ms)},
                        on_marker=driver.on_marker)
    driver.join()
    rep = analyse(run, driver.kills, slow_ms)
    rep.errors += driver.failures
    return rep


def format_report(rep: PairReport) -> str:
    lines = [f"{'#':>3} {'killed':>6} {'worst ms':>9} {'at s':>6} {'first 2s':>9} "
             f"{'gap ms':>7} {'lost ms':>8} {'both live s':>11}"]
    for i, k in enumerate(rep.kills, 1):
        lost = "-" if k.path_lost_ms is None else f"{k.path_lost_ms:.0f}"
        back = "never" if k.both_live_ms is None else f"{k.both_live_ms / 1000:.2f}"
        at = "-" if k.worst_at_ms < 0 else f"{k.worst_at_ms / 1000:.2f}"
        lines.append(f"{i:>3} {k.member:>6} {k.worst_ms:>9.1f} {at:>6} "
                     f"{k.failover_worst_ms:>9.1f} {k.longest_gap_ms:>7.0f} {lost:>8} "
                     f"{back:>11}")
    lines.append(f"summary: {rep.summary()}")
    return "\n".join(lines)


def kmsg_by_kill(rep: PairReport, after_s: float = 14.0) -> list[str]:
    """The guest's kernel messages (its dmesg at the end of the run) from 1 s before each
    kill to ``after_s`` after it, in seconds from the kill (the guest's clock)."""
    if rep.run is None:
        return []
    stamped = []
    for text in rep.run.kmsg():
        found = re.search(r"\[\s*([0-9.]+)\]", text)
        if found:
            stamped.append((float(found.group(1)), text))
    lines = []
    for i, k in enumerate(rep.kills, 1):
        lines.append(f"kill {i} ({k.member}):")
        at = k.at_ms / 1000
        lines += [f"  {t - at:6.2f} s  {text}" for t, text in stamped if -1 < t - at < after_s]
    return lines

