"""``python -m tests.cluster_host io|write ...``: the cluster lab's host, run in its namespace.

``io``: the project's multipath initiator (what ``nvmf-phoenix io --multipath`` runs) with
verified random I/O until SIGTERM, then a drain, a read-back of every written block and
one JSON summary on stdout: errors, mismatches, every stall longer than the gap threshold
as (monotonic time, length) — CLOCK_MONOTONIC is the machine's, so the lab can put each
stall beside the node death that caused it. Paths come from discovery (following
referrals) or are named one by one. Unlike ``nvmf-phoenix io --multipath`` it takes the
keep-alive timeout and the I/O timeout, which bound how long a silently dead path holds
I/O up. While it runs it rewrites a small progress file (commands done, paths) so the
lab can wait for I/O to flow.

``write``: one write of a seeded pattern to one LBA through one address (a single path),
printing whether the target acknowledged it; the fencing check then reads the shared
file at that LBA.

:class:`HostIO` and :func:`host_write` are the lab's side: they start these in the host
namespace and read what they report.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from nvmf_phoenix.initiator.connection import NvmeError
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.initiator.mpworkload import MultipathWorkload
from nvmf_phoenix.initiator.multipath import MultipathHost

from tests.netlab import netns_cmd
from tests.waiting import wait_for


def _addr(text: str) -> tuple[str, str]:
    host, _, port = text.rpartition(":")
    return host, port


def pattern(seed: int, size: int) -> bytes:
    """The block ``write`` sends (the lab recomputes it to look for it in the file)."""
    return random.Random(seed).randbytes(size)


def _progress(path: str | None, work: MultipathWorkload, mp: MultipathHost) -> None:
    if not path:
        return
    doc = {"at": time.monotonic(), "completed": work.stats.completed,
           "errors": len(work.stats.errors), "paths": mp.paths()}
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, default=str)
    os.replace(tmp, path)


def run_io(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    options: dict[str, Any] = {"reconnect_delay": args.reconnect_delay,
                               "kato_ms": args.kato_ms, "io_timeout": args.io_timeout,
                               "connect_timeout": args.connect_timeout,
                               "command_timeout": args.command_timeout}
    if args.discover:
        traddr, trsvcid = _addr(args.discover)
        mp = MultipathHost.from_discovery(traddr, trsvcid, subnqn=args.nqn, **options)
    else:
        mp = MultipathHost(args.nqn, [_addr(p) for p in args.path], **options)
    started = time.monotonic()
    with mp:
        work = MultipathWorkload(mp, 1, args.block_size, args.blocks, qd=args.queue_depth,
                                 seed=args.seed, gap_threshold=args.gap_threshold)
        while not stop.is_set() and time.monotonic() - started < args.max_seconds:
            work.run(0.25, stop=stop.is_set)
            _progress(args.progress, work, mp)
        work.drain()
        bad = work.verify_all(lambda lba, n: mp.read(1, lba, n, args.block_size))
        summary = {**work.report(), "read_back_mismatches": len(bad),
                   "error_samples": work.stats.errors[:10],
                   "gaps": [[round(at, 4), round(length, 4)] for at, length in
                            work.stats.gaps],
                   "started": started, "ended": time.monotonic(), "paths": mp.paths()}
    print(json.dumps(summary, default=str), flush=True)
    return 0


def run_write(args: argparse.Namespace) -> int:
    traddr, trsvcid = _addr(args.path[0])
    data = pattern(args.seed, args.block_size)
    try:
        with Host(traddr, trsvcid, args.nqn, timeout=args.io_timeout) as h:
            h.create_io_queues(1)
            h.write(1, args.lba, data, args.block_size)
            h.flush(1)
    except (NvmeError, OSError) as exc:
        print(json.dumps({"acknowledged": False, "error": str(exc)}), flush=True)
        return 0
    print(json.dumps({"acknowledged": True}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests.cluster_host")
    p.add_argument("mode", choices=("io", "write"))
    p.add_argument("--nqn", required=True)
    p.add_argument("--discover", metavar="ADDR:PORT", help="paths from this discovery "
                   "service and its referrals")
    p.add_argument("--path", action="append", default=[], metavar="ADDR:PORT")
    p.add_argument("--block-size", type=int, default=4096)
    p.add_argument("--blocks", type=int, default=1024)
    p.add_argument("--queue-depth", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kato-ms", type=int, default=10000)
    p.add_argument("--io-timeout", type=float, default=10.0)
    p.add_argument("--connect-timeout", type=float, default=2.0)
    p.add_argument("--command-timeout", type=float, default=60.0)
    p.add_argument("--reconnect-delay", type=float, default=0.5)
    p.add_argument("--gap-threshold", type=float, default=0.05)
    p.add_argument("--max-seconds", type=float, default=3600.0)
    p.add_argument("--progress", help="file rewritten with progress while running")
    p.add_argument("--lba", type=int, default=0)
    args = p.parse_args(argv)
    if not args.discover and not args.path:
        p.error("--discover or --path")
    return run_io(args) if args.mode == "io" else run_write(args)


# -- the lab's side: start the host in its namespace, read what it reports -------------
class HostIO:
    """``io`` running in namespace ``ns``; its files (progress, summary, log) in
    ``workdir``. ``paths``: {"discover": "A:P"} or {"path": ["A:P", ...]}; ``options``:
    the other flags (kato_ms, io_timeout, block_size, ...)."""

    def __init__(self, ns: str, workdir: Path, nqn: str, paths: dict[str, Any],
                 options: dict[str, float | str]) -> None:
        self.progress = workdir / "host-progress.json"
        self.log = workdir / "host.log"
        self.out = workdir / "host.json"
        with contextlib.suppress(FileNotFoundError):
            self.progress.unlink()
        argv = [sys.executable, "-m", "tests.cluster_host", "io", "--nqn", nqn,
                "--progress", str(self.progress)]
        if "discover" in paths:
            argv += ["--discover", paths["discover"]]
        for p in paths.get("path", []):
            argv += ["--path", p]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        with open(self.out, "wb") as out, open(self.log, "ab") as err:
            self.proc = subprocess.Popen(netns_cmd(ns, argv), stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL)

    def status(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.progress.read_text()))
        except (OSError, ValueError):
            return None

    def completed(self) -> int:
        st = self.status()
        return int(st["completed"]) if st else 0

    def wait_flowing(self, more: int = 50, timeout: float = 60.0) -> None:
        """Wait until ``more`` commands completed beyond the count now."""
        base = self.completed()

        def flowing() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"host I/O ended early: {self.tail()}")
            return self.completed() >= base + more
        wait_for(flowing, timeout=timeout, interval=0.05,
                 what=f"{more} more host I/O commands")

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 120.0) -> dict[str, Any]:
        """End the run (drain, read back, verify) and return its summary."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"host I/O did not finish in {timeout}s: "
                                 f"{self.tail()}") from None
        lines = self.out.read_text().strip().splitlines()
        if not lines:
            raise AssertionError(f"host I/O printed no summary: {self.tail()}")
        return dict(json.loads(lines[-1]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def host_write(ns: str, nqn: str, path: str, lba: int, seed: int, block_size: int,
               timeout: float = 30.0) -> dict[str, Any]:
    """``write`` run in namespace ``ns``: {"acknowledged": bool, "error": ...}."""
    argv = [sys.executable, "-m", "tests.cluster_host", "write", "--nqn", nqn, "--path",
            path, "--lba", str(lba), "--seed", str(seed), "--block-size", str(block_size),
            "--io-timeout", "5"]
    run = subprocess.run(netns_cmd(ns, argv), capture_output=True, text=True,
                         timeout=timeout)
    out = run.stdout.strip().splitlines()
    if not out:
        raise AssertionError(f"host write printed nothing: {run.stderr[-2000:]}")
    return dict(json.loads(out[-1]))


def stall_after(summary: dict[str, Any], at: float, until: float | None = None) -> float:
    """The longest I/O stall in ``summary`` that ended after ``at`` (and before
    ``until``, the next event); a gap is recorded at its end as (end, length). 0.0 if
    none."""
    end_by = until if until is not None else float("inf")
    return max((length for end, length in summary["gaps"] if at < end <= end_by),
               default=0.0)


if __name__ == "__main__":
    sys.exit(main())
