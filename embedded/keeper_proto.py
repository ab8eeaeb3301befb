"""The socket keeper's control protocol: every message kind, and its one encoding.

A message is one SOCK_SEQPACKET packet holding a JSON object, ``{"op": <kind>, ...}``,
with any descriptors it carries attached (SCM_RIGHTS). The keeper (embedded/keeper.py)
and its workers (embedded/keeper_client.py) both speak through :func:`send_msg` and
:func:`recv_msg`, so a kind is spelled once, here. Standard library only: the keeper
imports this, and the keeper stays small.
"""
from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

MSG_MAX = 1 << 16
SEND_TIMEOUT = 5.0


class Op(StrEnum):
    """Every kind of control message; the value is what travels as ``op``."""

    HELLO = "hello"                  # worker -> keeper: a standby is up (pid)
    STATUS = "status"                # anyone -> keeper: who is active, who stands by
    TAKEOVER = "takeover"            # keeper -> worker: you are active (RPC socket attached;
                                     # reset, listeners)
    CONN = "conn"                    # keeper -> worker: a connection (socket attached; id,
                                     # listen, peer, base_rx, base_tx)
    TAKEOVER_DONE = "takeover-done"  # keeper -> worker: every connection has been handed
    LISTEN = "listen"                # worker -> keeper: listen on addr (replied: error)
    UNLISTEN = "unlisten"            # worker -> keeper: stop listening on addr
    DROP = "drop"                    # worker -> keeper: connection conn ended, let it go
    READY = "ready"                  # worker -> keeper: everything resumed
    SHUTDOWN = "shutdown"            # worker -> keeper: stop the whole target
    REPLY = "reply"                  # keeper -> asker: the answer to request id


Message = tuple[Op | None, dict[str, Any], list[int]]   # kind (None: unknown), fields, fds


def pack(op: Op, fields: Mapping[str, Any] | None = None) -> bytes:
    return json.dumps({"op": op.value, **(fields or {})}).encode()


def unpack(data: bytes) -> tuple[Op | None, dict[str, Any]]:
    """(kind, the other fields); the kind is None when it is not one we know."""
    fields = json.loads(data)
    try:
        return Op(fields.pop("op", None)), fields
    except ValueError:
        return None, fields


def send_msg(sock: socket.socket, op: Op, fields: Mapping[str, Any] | None = None,
             fds: list[int] | None = None) -> None:
    socket.send_fds(sock, [pack(op, fields)], fds or [])


def recv_msg(sock: socket.socket) -> Message | None:
    """One message and its descriptors; None when the peer is gone."""
    try:
        data, fds, _flags, _addr = socket.recv_fds(sock, MSG_MAX, 16)
    except (ConnectionResetError, BrokenPipeError):
        return None
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    return (*unpack(data), fds)
