"""Checkpoint operations shared by ``spdk-rpc --plugin nvmf_phoenix.plugin`` and the CLI.

Each function takes an RPC client (anything with ``call``/``pipeline``: our RpcClient or
an SPDK client wrapped in SpdkClientAdapter) and a state directory, does one thing, and
returns plain data (dicts) that both front ends print. Failures are :class:`PhoenixError`
with a message that says what to do next and the exit code the CLI should use.

Where checkpoints live: a *state directory* (``--state-dir``; default
``$NVMF_PHOENIX_STATE_DIR`` or ``/var/lib/nvmf-phoenix``, the supervisor's default too)
holds the journal and snapshot; its shared-memory region is named after the directory
(``CheckpointStore.for_state_dir``), so the CLI, the plugin and a supervisor using the
same directory all see the same checkpoint. Writers take the directory's lock. ``drop``
removes all of it, region included.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from nvmf_phoenix.persist import shm
from nvmf_phoenix.persist.atomic import atomic_write
from nvmf_phoenix.recovery.capture import capture, capture_config
from nvmf_phoenix.recovery.diff import diff
from nvmf_phoenix.recovery.executor import Progress
from nvmf_phoenix.recovery.restore import RestoreReport, restore
from nvmf_phoenix.recovery.store import (
    CheckpointStore,
    Loaded,
    StateDirBusy,
    find_region,
    lock_state_dir,
)
from nvmf_phoenix.recovery.verify import expectations, verify_reconnect

from nvmf_phoenix.model import DISCOVERY_NQN, TargetState

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NO_CHECKPOINT = 0, 1, 2, 3, 4
FORMAT = "nvmf-phoenix-checkpoint"
FORMAT_VERSION = 1
LAST_RESTORE = "last-restore.json"


class PhoenixError(Exception):
    """An operation failed; ``str()`` says what happened and what to do about it."""

    def __init__(self, message: str, exit_code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def default_state_dir() -> str:
    return os.environ.get("NVMF_PHOENIX_STATE_DIR", "/var/lib/nvmf-phoenix")


@contextlib.contextmanager
def _locked(state_dir: str) -> Iterator[None]:
    """Hold the directory's writer lock (refused while a supervisor owns it)."""
    try:
        fd = lock_state_dir(state_dir)
    except StateDirBusy as exc:
        raise PhoenixError(f"{exc}: talk to the supervisor's socket instead (it "
                           "checkpoints every change), or use another --state-dir") from None
    except OSError as exc:
        raise PhoenixError(f"cannot use state directory {state_dir}: {exc.strerror} "
                           "(choose a writable one with --state-dir)") from None
    try:
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _writer(state_dir: str) -> Iterator[CheckpointStore]:
    """The store, opened for writing under the directory's lock."""
    with _locked(state_dir):
        store = CheckpointStore.for_state_dir(state_dir, region_dir=None)
        try:
            yield store
        finally:
            store.close()


def load(state_dir: str) -> tuple[Loaded, CheckpointStore]:
    """The newest checkpoint in ``state_dir`` (PhoenixError with exit 4 if there is none)."""
    hint = (f"take one with `nvmf-phoenix checkpoint now -s SOCKET --state-dir {state_dir}` "
            "or import one with `nvmf-phoenix checkpoint import FILE`")
    if not os.path.isdir(state_dir):
        raise PhoenixError(f"no checkpoint: {state_dir} does not exist; {hint}",
                           EXIT_NO_CHECKPOINT)
    store = CheckpointStore.for_state_dir(state_dir, region_dir=None)
    loaded = store.load()
    if loaded.state is None:
        problems = f" ({'; '.join(loaded.problems)})" if loaded.problems else ""
        raise PhoenixError(f"no checkpoint in {state_dir}{problems}; {hint}",
                           EXIT_NO_CHECKPOINT)
    return loaded, store


def _ours(name: str) -> bool:
    """Files a state directory holds because of us: journal (and damaged journals set
    aside), snapshot, lock, the last restore's record, the supervised target's output,
    atomic writes' temp files."""
    return (name in ("journal", "snapshot", "lock", LAST_RESTORE, "target.log")
            or name.startswith(("journal.damaged-", "journal.tmp.", "snapshot.tmp.",
                                f"{LAST_RESTORE}.tmp.")))


def drop(state_dir: str) -> dict[str, Any]:
    """Remove a state directory's checkpoint for good: its shared-memory region (which
    would otherwise stay until the next boot), journal, snapshot and lock, then the
    directory if nothing else is in it. Refused while a supervisor owns the directory.
    A directory already deleted by hand still has its region removed."""
    removed: list[str] = []
    kept: list[str] = []
    freed = 0
    region = find_region(state_dir)
    if os.path.isdir(state_dir):
        with _locked(state_dir):
            region = find_region(state_dir)     # under the lock: no one is writing
            for name in sorted(os.listdir(state_dir)):
                path = os.path.join(state_dir, name)
                if _ours(name) and os.path.isfile(path):
                    freed += os.path.getsize(path)
                    os.unlink(path)
                    removed.append(path)
                else:
                    kept.append(name)
            if region:
                freed += os.path.getsize(region)
                shm.remove(region)
                removed.append(region)
        if not kept:
            os.rmdir(state_dir)
            removed.append(state_dir)
    elif region:
        freed += os.path.getsize(region)
        shm.remove(region)
        removed.append(region)
    return {"state_dir": state_dir, "removed": removed, "kept": kept, "freed_bytes": freed}


def summary(state: TargetState) -> dict[str, int]:
    subs = [s for s in state.subsystems.values() if s.nqn != DISCOVERY_NQN]
    return {"subsystems": len(subs),
            "namespaces": sum(len(s.namespaces) for s in subs),
            "hosts": sum(len(s.hosts) for s in subs),
            "listeners": sum(len(s.listeners) for s in state.subsystems.values()),
            "bdevs": len(state.bdevs), "transports": len(state.transports),
            "keys": len(state.keys), "referrals": len(state.referrals),
            "opaque_entries": len(state.opaque or []),
            "connected_controllers": len(state.runtime.controllers)}


def _sizes(store: CheckpointStore) -> dict[str, int]:
    def size(path: str | None) -> int:
        return os.path.getsize(path) if path and os.path.exists(path) else 0

    return {"journal_bytes": size(store.journal_path),
            "snapshot_bytes": size(store.snapshot_path),
            "region_bytes": size(store.region_path())}


def info(loaded: Loaded, store: CheckpointStore, full: bool = False) -> dict[str, Any]:
    """What a checkpoint is, where it came from, how old and how big it is."""
    assert loaded.state is not None
    doc = {"state_dir": store.directory, "seq": loaded.seq, "source": loaded.source,
           "changes": loaded.changes, "reason": loaded.reason, "problems": loaded.problems,
           "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(loaded.saved_at)),
           "age_s": round(max(0.0, time.time() - loaded.saved_at), 3),
           "state_bytes": len(json.dumps(loaded.state.to_dict(), separators=(",", ":"))),
           **_sizes(store), "summary": summary(loaded.state)}
    if full:
        doc["state"] = loaded.state.to_dict()
    return doc


def show(state_dir: str, full: bool = False) -> dict[str, Any]:
    loaded, store = load(state_dir)
    return info(loaded, store, full)


def checkpoint_now(client: Any, state_dir: str, runtime: bool = True) -> dict[str, Any]:
    """Capture the live target (with who is connected, unless told not to) and save it."""
    state = capture(client, runtime=runtime)
    with _writer(state_dir) as store:
        store.save(state)
        return info(store.load(), store)


def diff_live(client: Any, state_dir: str) -> dict[str, Any]:
    """Differences between the checkpoint (as desired) and the live configuration."""
    loaded, _ = load(state_dir)
    assert loaded.state is not None
    differences = diff(loaded.state, capture_config(client), desired=True)
    return {"seq": loaded.seq, "same": not differences, "differences": differences}


def export(state_dir: str, path: str) -> dict[str, Any]:
    """Write the newest checkpoint to ``path`` (``-`` for stdout) as a portable JSON file."""
    loaded, _ = load(state_dir)
    assert loaded.state is not None
    doc = {"format": FORMAT, "version": FORMAT_VERSION, "seq": loaded.seq,
           "saved_at": loaded.saved_at, "state": loaded.state.to_dict()}
    text = json.dumps(doc, indent=1) + "\n"
    if path == "-":
        print(text, end="")
    else:
        atomic_write(path, text.encode(), mode=0o600)
    return {"exported": path, "seq": loaded.seq, "bytes": len(text),
            "summary": summary(loaded.state)}


def read_export(path: str) -> TargetState:
    """A state from an exported checkpoint file, or a PhoenixError saying why not."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except OSError as exc:
        raise PhoenixError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise PhoenixError(f"{path} is not JSON ({exc}); expected a file written by "
                           "`nvmf-phoenix checkpoint export`") from None
    if isinstance(doc, dict) and "subsystems" in doc and isinstance(doc["subsystems"], list):
        raise PhoenixError(f"{path} looks like a save_config file, not a checkpoint: start "
                           "the target with `-c FILE` to load it")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PhoenixError(f"{path} is not an nvmf-phoenix checkpoint export "
                           f"(no \"format\": \"{FORMAT}\")")
    if not isinstance(doc.get("version"), int) or doc["version"] > FORMAT_VERSION:
        raise PhoenixError(f"{path}: export format version {doc.get('version')!r} is newer "
                           f"than this nvmf-phoenix reads ({FORMAT_VERSION}): upgrade it")
    try:
        return TargetState.from_dict(doc["state"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PhoenixError(f"{path}: invalid state in checkpoint export: {exc!r}") from None


def import_(state_dir: str, path: str) -> dict[str, Any]:
    """Make an exported checkpoint the newest checkpoint of ``state_dir``."""
    state = read_export(path)
    with _writer(state_dir) as store:
        store.save(state)
        return info(store.load(), store)


def restore_checkpoint(client: Any, state: TargetState, state_dir: str | None,
                       prune: bool = False, wait_hosts: float = 0.0,
                       progress: Progress | None = None) -> tuple[RestoreReport, dict[str, Any]]:
    """Restore ``state``, then check its hosts came back (waiting up to ``wait_hosts``),
    and record the outcome in ``state_dir`` for the metrics exporter."""
    report = restore(client, state, prune=prune, progress=progress)
    hosts = reconnect_status(client, state, wait_hosts) if state.runtime.controllers \
        else None
    if state_dir is not None:
        record_restore(state_dir, report, hosts)
    return report, {**report.summary(), "hosts": hosts}


def reconnect_status(client: Any, state: TargetState, wait_s: float = 0.0) -> dict[str, Any]:
    """Which hosts connected at checkpoint time are connected now (waiting up to wait_s)."""
    expected = expectations(state.runtime)
    report = verify_reconnect(client, expected, wait_s)

    def row(e: Any) -> dict[str, Any]:
        return {"hostnqn": e.hostnqn, "nqn": e.nqn, "io_queues": e.io_queues}

    return {"ok": report.ok, "expected": len(expected),
            "reconnected": [{**row(e), "after_s": round(s, 3)}
                            for e, s in report.reconnected.items()],
            "missing": [row(e) for e in report.missing]}


def record_restore(state_dir: str, report: RestoreReport,
                   hosts: dict[str, Any] | None) -> None:
    """Leave the last restore's outcome in the state directory for the metrics exporter."""
    if not os.path.isdir(state_dir):
        return
    expected = (hosts["reconnected"] + hosts["missing"]) if hosts else []
    doc = {"at": time.time(), "ok": report.ok, "seconds": report.seconds.get("total", 0.0),
           "calls": len(report.plan.calls),
           "expected_hosts": [{"hostnqn": h["hostnqn"], "nqn": h["nqn"]} for h in expected]}
    with contextlib.suppress(OSError):
        atomic_write(os.path.join(state_dir, LAST_RESTORE), json.dumps(doc).encode(), 0o644)


def last_restore(state_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(state_dir, LAST_RESTORE)) as f:
            doc = json.load(f)
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None
