"""The pair supervisor's death watch (recovery/deathwatch.py), on real processes.

It must (1) abort the TCP connections of a process it is pointed at, leaving its
other sockets and the process itself alone, and (2) report a watched process dying of a
signal, and only that: a watched process exiting normally is no death to act on.
"""
from __future__ import annotations

import queue
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from nvmf_phoenix.recovery.deathwatch import DeathWatch, killed_by, release_sockets

# A child holding one TCP connection to the test and one AF_UNIX pair, until stdin closes.
HOLDER = """
import socket, sys
tcp = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
a, b = socket.socketpair()
print("ready", flush=True)
sys.stdin.read()
a.send(b"x"); print("unix", b.recv(1).decode(), flush=True)
"""


@pytest.fixture
def watch() -> Iterator[tuple[DeathWatch, queue.Queue[int]]]:
    seen: queue.Queue[int] = queue.Queue()
    dw = DeathWatch(on_killed=seen.put)
    if not dw.available:
        pytest.skip(dw.why_not)
    yield dw, seen
    dw.close()


def test_release_ends_the_tcp_connections_of_a_live_process_and_nothing_else() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        child = subprocess.Popen([sys.executable, "-c", HOLDER,
                                  str(srv.getsockname()[1])],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdin is not None and child.stdout is not None
        try:
            assert child.stdout.readline().strip() == "ready"
            conn, _ = srv.accept()
            conn.settimeout(10)
            assert release_sockets(child.pid) == 1
            with pytest.raises(ConnectionResetError):     # the peer got a reset
                conn.recv(1)
            assert child.poll() is None           # the process itself was left alone
            child.stdin.close()                   # its AF_UNIX pair still works
            assert child.stdout.readline().strip() == "unix x"
            assert child.wait(timeout=10) == 0
            conn.close()
        finally:
            child.kill()
            child.wait()


def test_release_of_a_gone_process_is_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert release_sockets(child.pid) == 0


def test_a_watched_process_killed_is_reported_one_exiting_normally_is_not(
        watch: tuple[DeathWatch, queue.Queue[int]]) -> None:
    dw, seen = watch
    calm = subprocess.Popen([sys.executable, "-c", "pass"])
    dw.watch(calm.pid)
    calm.wait(timeout=10)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    unwatched = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dw.watch(victim.pid)
    for p in (unwatched, victim):            # the unwatched one dies first
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
    # Events arrive in order: the normal exit and the unwatched death came before.
    assert seen.get(timeout=10) == victim.pid
    assert seen.empty()


def test_the_wait_status_names_the_fatal_signal() -> None:
    assert killed_by(signal.SIGKILL) == signal.SIGKILL
    assert killed_by(signal.SIGSEGV | 0x80) == signal.SIGSEGV     # with a core dump
    assert killed_by(3 << 8) == 0                                 # exit(3)
