"""How far every process together got on a TCP socket, from the kernel's own counters.

The socket keeper reads these at accept (the zero of both streams) and a successor worker
reads them again when it takes a connection over: the difference is exactly how many
bytes the dead worker read and wrote, whatever its own bookkeeping says. Kept free of
heavy imports: the keeper, which must have nothing to crash on, uses it too.

Reads use ``tcp_info`` (tcpi_bytes_received, tcpi_bytes_acked) and SIOCINQ/SIOCOUTQ,
which are separate system calls. Bytes or ACKs arriving between them would make the sums
wrong by that much (seen: a host's H2CData landing mid-read put ``consumed`` 288 bytes
short), so the ``tcp_info`` read is repeated until it is the same on both sides of the
queue reads. Nobody reads or writes the socket meanwhile, so then the four agree.
"""
from __future__ import annotations

import errno
import fcntl
import socket
import struct
import termios

# tcpi_bytes_acked, tcpi_bytes_received (Linux 4.x+ struct tcp_info layout); byte 0 is
# tcpi_state
TCP_INFO = struct.Struct("<120xQQ")
TCP_INFO_LEN = 512
TCP_ESTABLISHED = 1
TRIES = 1000


def kernel_progress(sock: socket.socket) -> tuple[int, int, int]:
    """(consumed, written, tcp state): bytes every process ever read from ``sock`` and
    bytes every process ever wrote into it. OSError if traffic never paused long enough
    to read a consistent set (then nothing can be trusted about the connection)."""
    fd = sock.fileno()
    buf = bytearray(4)
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
    for _ in range(TRIES):
        fcntl.ioctl(fd, termios.FIONREAD, buf)       # SIOCINQ: received, not yet read
        inq = int.from_bytes(buf, "little")
        fcntl.ioctl(fd, termios.TIOCOUTQ, buf)       # SIOCOUTQ: written, not yet acked
        outq = int.from_bytes(buf, "little")
        again = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
        acked, received = TCP_INFO.unpack_from(again)
        if TCP_INFO.unpack_from(info) == (acked, received):
            return received - inq, acked + outq, again[0]
        info = again
    raise OSError(errno.EAGAIN, f"TCP counters still moving after {TRIES} reads")
