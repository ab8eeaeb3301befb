"""Finding whole JSON-RPC requests in a byte stream, in time linear in the bytes received.

SPDK sends requests back to back with no framing, so a server must find where each JSON
value ends. Re-parsing the whole buffer on every recv (what a client may do with a
trusted server's answers) costs O(n^2) for a request that trickles in: a client sending
4 MiB in 100-byte pieces kept the server busy for 55 s of CPU, all of it holding the GIL
the data path needs. :class:`RequestFramer` instead scans each byte once, tracking only
string/escape state and bracket depth, and hands out the raw text of each complete
top-level value; ``json.loads`` then parses it once. It is sans-I/O: bytes in, requests
out, and it refuses a request larger than ``max_request`` (SPDK's receive buffer is 256
KiB) or nested deeper than ``max_depth`` before any of it is parsed.
"""
from __future__ import annotations

import json
import re
from typing import Any

MAX_REQUEST = 256 << 10        # SPDK_JSONRPC_RECV_BUF_SIZE
MAX_DEPTH = 64
_NON_WS = re.compile(rb"[^ \t\r\n]")
_STRUCTURE = re.compile(rb'[{}\[\]"]')
_IN_STRING = re.compile(rb'["\\]')
_DELIMITER = re.compile(rb'[ \t\r\n{}\[\],:"]')   # ends a bare number or literal


class FramingError(ValueError):
    """The stream cannot hold a valid request here (too large, too deep, not JSON)."""


class RequestFramer:
    def __init__(self, max_request: int = MAX_REQUEST, max_depth: int = MAX_DEPTH) -> None:
        self.max_request = max_request
        self.max_depth = max_depth
        self._buf = bytearray()
        self._pos = 0                   # scanned up to here
        self._start: int | None = None  # where the value being scanned began
        self._depth = 0
        self._in_string = False
        self._bare = False
        self.error: str | None = None

    @property
    def partial(self) -> bool:
        """True while part of a request has arrived and the rest has not."""
        return self._start is not None

    def feed(self, data: bytes) -> list[Any]:
        """Add bytes; return every complete request before any error, decoded, in order.
        After an error (``self.error``) the stream cannot be resynchronised: the caller
        answers what was returned, then a parse error, and closes."""
        if self.error:
            return []
        self._buf += data
        found: list[bytes] = []
        out = []
        try:
            self._scan(found)
            for raw in found:
                out.append(_decode(raw))
            if self._start is not None and len(self._buf) - self._start > self.max_request:
                raise FramingError(f"request larger than {self.max_request} bytes")
        except FramingError as exc:
            self.error = str(exc)
            return out
        cut = self._start if self._start is not None else self._pos
        if cut:
            del self._buf[:cut]
            self._pos -= cut
            if self._start is not None:
                self._start = 0
        return out

    def _scan(self, found: list[bytes]) -> None:
        buf = self._buf
        while True:
            if self._start is None:
                m = _NON_WS.search(buf, self._pos)
                if m is None:
                    self._pos = len(buf)
                    return
                self._start = self._pos = m.start()
                c = buf[self._pos]
                self._bare = c not in b'{["'   # a number or literal: never a request
                if c in b"}],:":
                    self._pos += 1             # a stray '}' or ',' is a token by itself
                    self._emit(found)
                    continue
                if not self._bare:
                    self._depth, self._in_string = (0, True) if c == ord('"') else (1, False)
                    self._pos += 1
            if self._bare:
                end = _DELIMITER.search(buf, self._pos)
                if end is None:
                    self._pos = len(buf)
                    return
                self._pos = end.start()
                self._emit(found)
                continue
            if self._in_string:
                m = _IN_STRING.search(buf, self._pos)
                if m is None:
                    self._pos = len(buf)
                    return
                if buf[m.start()] == ord("\\"):
                    if m.start() + 1 >= len(buf):
                        self._pos = m.start()     # the escaped byte has not arrived
                        return
                    self._pos = m.start() + 2
                    continue
                self._in_string = False
                self._pos = m.start() + 1
            else:
                m = _STRUCTURE.search(buf, self._pos)
                if m is None:
                    self._pos = len(buf)
                    return
                c = buf[m.start()]
                self._pos = m.start() + 1
                if c == ord('"'):
                    self._in_string = True
                    continue
                self._depth += 1 if c in b"{[" else -1
                if self._depth > self.max_depth:
                    raise FramingError(f"request nested deeper than {self.max_depth}")
            if self._depth <= 0 and not self._in_string:
                self._emit(found)

    def _emit(self, found: list[bytes]) -> None:
        assert self._start is not None
        found.append(bytes(self._buf[self._start:self._pos]))
        self._start, self._depth, self._bare = None, 0, False


def _decode(raw: bytes) -> Any:
    """One request; like SPDK's parser, refuse a \\u escape that is half a surrogate pair
    (Python would hand on a string no encoder can write back)."""
    try:
        value = json.loads(raw.decode("utf-8"))
        if b"\\u" in raw:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        return value
    except (UnicodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FramingError(f"not JSON: {exc}") from None
