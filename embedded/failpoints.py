"""Failpoints: kill this process at a named point, for tests of the worst instant.

A random SIGKILL rarely lands in the few microseconds that matter most (bytes read but not
yet committed, a commit half written, a PDU half sent). A failpoint puts it there.
``NVMF_PHOENIX_FAILPOINT=name:n:marker`` makes the n-th :func:`hit` of ``name`` SIGKILL the
process, once per marker file: the marker is created first (O_EXCL), so of all the workers
that inherit the setting exactly one dies, and a test re-arms it by removing the marker.
Unset, a hit costs one comparison.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable

_spec = os.environ.get("NVMF_PHOENIX_FAILPOINT", "")
_name, _, _rest = _spec.partition(":")
_nth_text, _, _marker = _rest.partition(":")
_nth = int(_nth_text or 0)
_count = 0
ARMED = bool(_spec)


def hit(name: str, prepare: Callable[[], None] | None = None) -> None:
    """Die here if this is the armed failpoint's n-th hit and its marker is new;
    ``prepare`` first sets the scene a death mid-operation would leave."""
    global _count
    if name != _name:
        return
    _count += 1
    if _count != _nth:
        return
    try:
        os.close(os.open(_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError:
        return   # already fired in an earlier worker
    if prepare is not None:
        prepare()
    os.kill(os.getpid(), signal.SIGKILL)
