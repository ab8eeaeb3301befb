"""Access: hosts off a subsystem's list, and other users of the machine.

Host access (a host not allowed cannot connect, and does not see the subsystem in
discovery) is in tests/test_protocol.py; here, a host that knows another host's cntlid
cannot join its controller. User access is tested with a real second uid (``nobody``,
65534) running real syscalls against a running supervisor's files and sockets, which
sit in a directory anyone may traverse, so only our own modes stand in the way.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from nvmf_phoenix.initiator.connection import NvmeStatusError, QueueConn, connect_data, connect_sqe
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.persist.region import Region, RegionError
from nvmf_phoenix.recovery.store import CheckpointStore
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import nvmf as rn
from nvmf_phoenix.wire import nvme

from tests.support import supervised
from tests.target_fixture import NQN, running_target

OTHER_UID = 65534


# The probe runs as the other user, who cannot enter root's home (where pyenv and our
# venv may live): a system Python it may execute, stdlib only.
SYSTEM_PYTHON = next((p for p in ("/usr/bin/python3", "/bin/python3")
                      if os.access(p, os.X_OK)), None)


def _other_user_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root to switch to a second uid"
    try:
        pwd.getpwuid(OTHER_UID)
    except KeyError:
        return f"no user with uid {OTHER_UID}"
    if SYSTEM_PYTHON is None:
        return "no system python3 for the other user to run"
    return None


needs_root = pytest.mark.skipif(_other_user_available() is not None,
                                reason=_other_user_available() or "")


def _drop_privileges() -> None:
    os.setgroups([])
    os.setgid(OTHER_UID)
    os.setuid(OTHER_UID)


# Runs as the other user: tries each operation, reports 'allowed' or the errno name.
PROBE = r"""
import errno, json, os, socket, sys
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "allowed"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
def read(p):
    with open(p, "rb") as f:
        f.read(1)
def connect(p):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(p)
    finally:
        s.close()
for name, kind, path in json.loads(sys.argv[1]):
    attempt(name, {"read": lambda p=path: read(p), "list": lambda p=path: os.listdir(p),
                   "connect": lambda p=path: connect(p),
                   "write": lambda p=path: open(p, "ab").close()}[kind])
print(json.dumps(out))
"""


def probe(targets: list[tuple[str, str, str]], as_other: bool = True) -> dict[str, str]:
    run = subprocess.run([str(SYSTEM_PYTHON), "-c", PROBE, json.dumps(targets)],
                         capture_output=True, text=True, timeout=60,
                         preexec_fn=_drop_privileges if as_other else None)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A directory anyone may enter (pytest's tmp_path is 0700 and would hide all)."""
    base = Path(tempfile.mkdtemp(prefix="phx-access-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@needs_root
def test_another_user_cannot_read_state_or_region_nor_use_the_rpc_sockets(
        open_base: Path) -> None:
    with supervised(open_base) as sup, RpcClient.connect(str(open_base / "public.sock")) as c:
        rn.nvmf_create_subsystem(c, "nqn.2016-06.io.phx:secret", serial_number="S3CR3T")
        region = sup.store.region_path()
        assert region is not None
        targets = [
            ("state dir", "list", sup.store.directory),
            ("journal", "read", sup.store.journal_path),
            ("region dir", "list", str(Path(region).parent)),
            ("region", "read", region),
            ("region write", "write", region),
            ("public rpc socket", "connect", str(open_base / "public.sock")),
            ("target rpc socket", "connect", str(open_base / "private.sock")),
            ("rpc lock", "read", str(open_base / "public.sock") + ".lock"),
            # The crash-transparent target's keeper socket (SO_PEERCRED as well as 0600)
            # and its connection state: tests/test_transparent.py::
            # test_other_users_get_no_descriptors_and_no_state.
        ]
        as_us = probe(targets, as_other=False)
        assert set(as_us.values()) == {"allowed"}, as_us   # the probe itself works
        as_them = probe(targets)
        assert as_them == {name: "EACCES" for name, _, _ in targets}, as_them
        modes = {p: os.stat(p).st_mode & 0o777 for p in (
            sup.store.directory, sup.store.journal_path, str(Path(region).parent), region)}
        assert sorted(modes.values()) == [0o600, 0o600, 0o700, 0o700], modes


@needs_root
def test_a_directory_another_user_controls_is_never_used(open_base: Path) -> None:
    """/dev/shm is world-writable: another user could create our region directory
    first, then swap files in it or plant a symlink where we create one."""
    open_base.chmod(0o1777)   # world-writable and sticky, as /dev/shm and /tmp are
    for name in ("shm", "state"):
        path = str(open_base / name)
        subprocess.run([str(SYSTEM_PYTHON), "-c",
                        f"import os; os.mkdir({path!r}); os.chmod({path!r}, 0o777)"],
                       check=True, timeout=30, preexec_fn=_drop_privileges)
    victim = open_base / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, open_base / "shm" / "x.region")
    with pytest.raises(RegionError, match="owned by this user"):
        Region.create("x.region", slot_size=4096, directory=str(open_base / "shm"))
    assert victim.read_bytes() == b"precious"   # not truncated through the symlink
    with pytest.raises(PermissionError):
        CheckpointStore(str(open_base / "state"))


def test_loose_modes_left_by_others_are_tightened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    store = CheckpointStore(str(state), region_dir=str(tmp_path / "shm"))
    from tests.corruption import state as known
    store.save(known(1))
    store.close()
    (state / "journal").chmod(0o644)
    (tmp_path / "shm").chmod(0o755)
    region = next((tmp_path / "shm").iterdir())
    region.chmod(0o644)
    store = CheckpointStore(str(state), region_dir=str(tmp_path / "shm"))
    store.close()
    Region.create(region.name, slot_size=1 << 16,
                  directory=str(tmp_path / "shm")).close()
    assert [p.stat().st_mode & 0o777 for p in (state, state / "journal",
                                               tmp_path / "shm", region)] == \
        [0o700, 0o600, 0o700, 0o600]


def test_an_io_queue_cannot_join_another_hosts_controller() -> None:
    owner = "nqn.2014-08.org.nvmexpress:uuid:0a0a0a0a-0000-4000-8000-000000000001"
    intruder = "nqn.2014-08.org.nvmexpress:uuid:0b0b0b0b-0000-4000-8000-000000000002"
    with running_target(hosts=[owner, intruder]) as rt, \
            Host("127.0.0.1", rt.port, NQN, hostnqn=owner) as h:
        h.set_features(nvme.FEAT_NUM_QUEUES, 1 | (1 << 16))
        q = QueueConn("127.0.0.1", rt.port)
        with pytest.raises(NvmeStatusError) as err:   # allowed on the subsystem, but the
            q.execute("Connect", connect_sqe(1, 31, 0),   # controller is not its own
                      connect_data("0b0b0b0b-0000-4000-8000-000000000002", h.cntlid, NQN,
                                   intruder))
        assert err.value.status == nvme.SC_CONNECT_INVALID_PARAMETERS
        q.close()
        h.create_io_queues(1)                         # the owner's own queue still joins
        h.write(1, 0, b"\x33" * 4096, 4096)
        assert h.read(1, 0, 1, 4096) == b"\x33" * 4096
