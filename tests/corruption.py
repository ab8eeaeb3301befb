"""Random damage to a checkpoint store's files, and what loading must make of it.

One trial: a CheckpointStore saves a few known states (sometimes compacting, so a snapshot
file exists too; in half the trials some of them are journaled as changes from the state
before rather than saved whole), is closed, and then the shared-memory region, the
journal and/or the snapshot get bytes flipped, zeroed, overwritten with garbage, or cut
short, at random. The store is then loaded, and must

- never raise, and never return a state other than the one saved under the sequence
  number it reports (nothing restored wrongly);
- fall back: when any copy of the newest state is untouched, load that;
- report: when it returns anything older than the newest state, say why (``problems``);
- stay usable: a fresh store on the same files saves a new state and loads it back.

Used by tests/test_corruption.py (bounded) and benchmarks/corrupt_store.py (many trials).
"""
from __future__ import annotations

import random
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nvmf_phoenix.recovery.store as store_mod
from nvmf_phoenix.persist.record import CRC
from nvmf_phoenix.persist.region import HEADER_SIZE, SLOT_HDR_SIZE, Region
from nvmf_phoenix.recovery.journal import FILE_HDR, REC_HDR, read_journal
from nvmf_phoenix.recovery.store import CheckpointStore

from nvmf_phoenix.model import Namespace, Subsystem, TargetState

SLOT = 64 << 10   # small regions: a trial reads and writes every file whole


def open_store(base: Path) -> CheckpointStore:
    return CheckpointStore(str(base / "ckpt"), name="t", region_dir=str(base / "shm"),
                           slot_size=SLOT)


def state(i: int) -> TargetState:
    """A distinct, recognisable state for sequence number ``i``."""
    st = TargetState.empty()
    nqn = f"nqn.2016-06.io.phx:c{i % 3}"
    sub = Subsystem(nqn=nqn, serial_number=f"SN{i:06d}", max_namespaces=8)
    for n in range(1, 1 + i % 4):
        sub.namespaces[n] = Namespace(nsid=n, bdev_name=f"B{i}-{n}", anagrpid=n,
                                      uuid=f"00000000-0000-4000-8000-{i:06d}{n:06d}")
    st.subsystems[nqn] = sub
    return st


def damage(path: Path, rng: random.Random) -> str:
    """One random injury to ``path``; returns what was done."""
    data = bytearray(path.read_bytes())
    if not data:
        return f"{path.name}: empty already"
    kind = rng.choice(("flip", "flip", "zero", "garbage", "truncate"))
    # Most of a region is unused space: aim inside what was written as often as not.
    span = len(data) if rng.random() < 0.3 else min(len(data), 8 << 10)
    at = rng.randrange(span)
    if kind == "flip":
        data[at] ^= 1 << rng.randrange(8)
    elif kind == "zero":
        n = rng.choice((1, 4, 64, 4096))
        data[at:at + n] = bytes(len(data[at:at + n]))
    elif kind == "garbage":
        n = rng.choice((1, 8, 100))
        data[at:at + n] = rng.randbytes(len(data[at:at + n]))
    else:
        del data[at:]
    path.write_bytes(bytes(data))
    return f"{path.name}: {kind} at {at}"


def change(i: int) -> list[dict[str, Any]]:
    """The change turning ``state(i - 1)`` into ``state(i)``, as the front journals it."""
    old, new = state(i - 1), state(i)
    drop: list[dict[str, Any]] = [{"op": "subsystem", "nqn": n, "value": None}
            for n, sub in old.subsystems.items() if not sub.is_discovery]
    return drop + [{"op": "subsystem", "nqn": n, "value": sub.to_dict()}
                   for n, sub in new.subsystems.items() if not sub.is_discovery]


@dataclass
class Trial:
    saved: int = 0
    injuries: list[str] = field(default_factory=list)
    loaded_seq: int = 0
    changes: int = 0               # journaled changes the load replayed
    source: str = ""
    problems: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def files(store: CheckpointStore) -> dict[str, Path]:
    region = store.region_path()
    out = {"journal": Path(store.journal_path), "snapshot": Path(store.snapshot_path)}
    if region:
        out["region"] = Path(region)
    return {k: p for k, p in out.items() if p.exists()}


def run_trial(base: Path, rng: random.Random) -> Trial:
    """Save, damage, load, check (see the module docstring); ``base`` is emptied."""
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    t = Trial(saved=rng.randrange(1, 7))
    old = store_mod.COMPACT_AT
    store_mod.COMPACT_AT = rng.choice((1 << 40, 1 << 40, 1, 3000))   # compact never/often
    as_changes = rng.random() < 0.5
    last_whole = 0
    try:
        store = open_store(base)
        for i in range(1, t.saved + 1):
            if as_changes and i > 1 and rng.random() < 0.6:
                store.record(i, change(i))
            else:
                store.save(state(i))
                last_whole = i
        store.close()
    finally:
        store_mod.COMPACT_AT = old
    original = {k: p.read_bytes() for k, p in files(store).items()}
    # The newest state as changes depends on its whole state and every change after it,
    # spread over files: claimed intact only when nothing at all was damaged.
    newest = _newest_ranges(store, original) if last_whole == t.saved else {}
    for name in rng.sample(sorted(original), rng.randrange(1, len(original) + 1)):
        for _ in range(rng.choice((1, 1, 2, 3))):
            t.injuries.append(damage(files(store)[name], rng))
    now = {k: p.read_bytes() for k, p in files(store).items()}
    intact = {k for k, ranges in newest.items()
              if k in now and len(now[k]) == len(original[k]) and
              all(now[k][x:y] == original[k][x:y] for x, y in ranges)}
    if now == original:
        intact.add("every file")
    try:
        got = open_store(base).load()
        t.loaded_seq, t.source, t.problems = got.seq, got.source, got.problems
        t.changes = got.changes
        if got.state is not None and got.state != state(got.seq):
            t.failures.append(f"restored wrongly: seq {got.seq} from {got.source}")
        if got.seq < t.saved and not got.problems:
            t.failures.append(f"older state (seq {got.seq} of {t.saved}) without a reason")
        if intact and got.seq != t.saved:
            t.failures.append(f"the newest state (seq {t.saved}) was untouched in "
                              f"{sorted(intact)}, loaded {got.seq} from {got.source}")
        again = open_store(base)
        seq = again.save(state(100))
        again.close()
        back = open_store(base)
        after = back.load()
        if after.state != state(100) or after.seq != seq or seq <= got.seq:
            t.failures.append(f"store unusable after damage: saved seq {seq}, loaded "
                              f"{after.seq} from {after.source}")
    except Exception:
        t.failures.append("raised: " + traceback.format_exc(limit=4))
    return t


def _newest_ranges(store: CheckpointStore, original: dict[str, bytes]
                   ) -> dict[str, list[tuple[int, int]]]:
    """For each file holding the newest state, the byte ranges that state depends on (its
    file's header and its own record or slot). Damage elsewhere must not keep it from
    being loaded."""
    out: dict[str, list[tuple[int, int]]] = {}
    records = read_journal(store.journal_path).records
    if records:   # the newest state is the journal's last record
        size = len(original["journal"])
        last = size - REC_HDR.size - CRC.size - len(records[-1].payload)
        out["journal"] = [(0, FILE_HDR.size), (last, size)]
    elif "snapshot" in original:
        out["snapshot"] = [(0, len(original["snapshot"]))]
    region = Region.open(str(files(store)["region"]))
    try:
        slots = [(s[0], i, len(s[1])) for i in (0, 1) if (s := region._slot(i))]
        _, i, length = max(slots)
        out["region"] = [(0, HEADER_SIZE),
                         (region.slots[i], region.slots[i] + SLOT_HDR_SIZE + length)]
    finally:
        region.close()
    return out
