"""A TCP proxy on loopback whose path can be cut: a node's way to etcd, for fencing tests.

``cut()`` closes every connection through it at once and refuses new ones (a connect gets
RST), so the node behind it loses etcd while everything else (hosts, the other nodes) is
untouched; ``restore()`` lets connections through again.
"""
from __future__ import annotations

import contextlib
import select
import socket
import threading


class CutProxy:
    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self.listener = socket.create_server((host, 0))
        self.address = f"{host}:{self.listener.getsockname()[1]}"
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                _reset(conn)
                continue
            try:
                up = socket.create_connection(self.target, timeout=2)
            except OSError:
                _reset(conn)
                continue
            with self._lock:
                self._pairs.append((conn, up))
            threading.Thread(target=self._pump, args=(conn, up), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self._cut.is_set():
                ready, _, _ = select.select([a, b], [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self._cut.set()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            _reset(a)
            with contextlib.suppress(OSError):
                b.close()

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self.listener.close()


def _reset(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
