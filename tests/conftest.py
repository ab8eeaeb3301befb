"""Command-line options of the test suite, and its check that nothing is left behind."""
from __future__ import annotations

import contextlib
import json
import os
import sys

import pytest

_BEFORE = pytest.StashKey[set[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--torture-kills", type=int, default=10,
                     help="SIGKILLs in the supervisor torture test (issue 7 asks for at "
                     "least 100 in a benchmark-style run)")
    parser.addoption("--damage-trials", type=int, default=10,
                     help="damaged queue-pair states in test_corruption (RELIABILITY.md "
                     "records a run of 300)")
    parser.addoption("--keeper-fuzz-examples", type=int, default=400,
                     help="fuzzed sessions against the crash-transparent target while its "
                     "worker is killed (RELIABILITY.md records a long run)")
    parser.addoption("--keeper-fuzz-kills", type=int, default=8,
                     help="SIGKILLs during that fuzzing")


# -- nothing left behind ------------------------------------------------------------------
# Shared memory outlives the processes that made it, on purpose; a suite that forgets a
# region or a scratch directory eats hugepages on every run. So the session compares what
# lies in nvmf-phoenix's shared-memory directories (every hugetlbfs mount and /dev/shm,
# owner records included) before and after, and fails a green run that left anything new.
def _shm_entries() -> set[str]:
    from nvmf_phoenix.persist import shm

    bases = [os.path.join(m, shm.ROOT) for m in shm.hugetlbfs_mounts()]
    bases += [os.path.join(shm.SHM_DIR, shm.ROOT), shm.OWNERS]
    found: set[str] = set()
    for base in bases:
        with contextlib.suppress(OSError):
            found |= {os.path.join(base, n) for n in os.listdir(base)}
    return found - {shm.OWNERS}


def _session_dir(session: pytest.Session) -> str:
    factory = getattr(session.config, "_tmp_path_factory", None)
    return str(factory.getbasetemp()) if factory is not None else ""


def _record(path: str) -> dict[str, object] | None:
    """The owner record of an entry (an owner record describes itself by its ``path``)."""
    from nvmf_phoenix.persist import shm

    if os.path.dirname(path) == shm.OWNERS:
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                doc = json.load(f)
            return doc if isinstance(doc, dict) else None
        return None
    return shm.read_owner(path)


def _descends(pid: int, ancestor: int) -> bool:
    for _ in range(64):
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid <= 1:
            return False
    return False


def _foreign(path: str, mine: str) -> bool:
    """An entry of another test session running beside this one (two suites at once):
    its owner lies in another session's temporary directory, or the process that made it
    is alive and not ours. Anything else new is this session's (no record: ours too)."""
    from nvmf_phoenix.persist import shm

    rec = _record(path)
    if rec is None:
        return False
    owner = str(rec.get("owner", ""))
    if mine and (owner == mine or owner.startswith(mine + os.sep)):
        return False
    if mine and owner.startswith(os.path.dirname(mine) + os.sep):
        return True       # under pytest-of-<user>/ but not our pytest-N/
    pid = rec.get("pid")
    return isinstance(pid, int) and shm.process_start(pid) == rec.get("pid_start") and \
        not _descends(pid, os.getpid())


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = _shm_entries()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_BEFORE, None)
    if before is None or exitstatus != 0 or session.testscollected == 0:
        return          # a failed or interrupted run may leave its state for a post-mortem
    mine = _session_dir(session)
    left = sorted(e for e in _shm_entries() - before if not _foreign(e, mine))
    if left:
        print("\nshared memory left behind by the test session (remove it with "
              "`nvmf-phoenix shm clean`):\n  " + "\n  ".join(left), file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
