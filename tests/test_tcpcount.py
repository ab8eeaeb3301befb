"""The kernel's byte counters, read while a peer keeps sending: a takeover trusts them to
the byte (embedded/tcpcount.py), so they must never be caught half-updated."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

from nvmf_phoenix.embedded.tcpcount import TCP_INFO, TCP_INFO_LEN, kernel_progress

SENDER = """
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
end = time.monotonic() + 20
while time.monotonic() < end:
    try:
        s.send(b"x" * 100)
    except OSError:
        break
"""


def test_counters_stay_exact_while_bytes_arrive() -> None:
    """Nobody reads the socket, so 'bytes read by every process' must stay at the
    accept-time value on every one of many reads taken while a sender in another process
    streams small segments into it. Reading tcp_info and SIOCINQ once each (the earlier
    code) was caught off by up to a segment dozens of times per second here."""
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen()
        sender = subprocess.Popen([sys.executable, "-c", SENDER, str(ls.getsockname()[1])])
        try:
            conn, _ = ls.accept()
            with conn:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
                base = kernel_progress(conn)[:2]
                reads, wrong = 0, []
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:
                    got = kernel_progress(conn)[:2]
                    reads += 1
                    if got != base:
                        wrong.append(got)
                received = TCP_INFO.unpack_from(conn.getsockopt(
                    socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN))[1]
        finally:
            sender.kill()
            sender.wait(10)
    print(f"{reads} reads while {received} bytes arrived")
    assert received > 0 and reads > 1000
    assert wrong == []

