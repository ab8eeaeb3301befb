"""In-flight policy: did a mutating call whose answer was lost take effect?

When the target dies (or a connection drops) after a mutating call was sent, nobody knows
whether the target applied it. Sending it again blindly could apply it twice (a second
namespace, "already exists" for a change that did happen); dropping it would lose a
change the client is still waiting for. So the front resolves it by looking: ``before`` is
the last checkpoint (the last whole state plus the changes journaled after it, all taken
with the front's lock held, so it never includes the call) and
``after`` is the live target's configuration. A call whose effect is a change from
``before`` to ``after`` was applied and is not sent again; otherwise it was not, and it is
sent (once) to the target as it is now.

Pure functions over the state model; the front does the I/O.
"""
from __future__ import annotations

from typing import Any

from nvmf_phoenix.recovery.diff import diff

from nvmf_phoenix.model import ListenAddress, TargetState


def _sub(st: TargetState, nqn: Any) -> Any:
    return st.subsystems.get(nqn) if isinstance(nqn, str) else None


def _hosts(st: TargetState, nqn: Any) -> set[str]:
    sub = _sub(st, nqn)
    return set(sub.hosts) if sub is not None else set()


def _listeners(st: TargetState, nqn: Any) -> set[ListenAddress]:
    sub = _sub(st, nqn)
    return set(sub.listeners) if sub is not None else set()


def _nsids(st: TargetState, nqn: Any) -> dict[int, str]:
    sub = _sub(st, nqn)
    return {n: ns.bdev_name for n, ns in sub.namespaces.items()} if sub is not None else {}


def _address(p: dict[str, Any]) -> ListenAddress | None:
    try:
        return ListenAddress.from_dict(p["listen_address"])
    except (KeyError, TypeError, AttributeError):
        return None


def _ana(st: TargetState, p: dict[str, Any]) -> str | None:
    sub, addr = _sub(st, p.get("nqn")), _address(p)
    if sub is None or addr is None or addr not in sub.listeners:
        return None
    states = sub.listeners[addr].ana_states
    group = p.get("anagrpid")
    if group is None:
        vals = set(states.values())
        return vals.pop() if len(vals) == 1 else None
    return states.get(int(group))


def _new_namespace(p: dict[str, Any], before: TargetState, after: TargetState) -> int | None:
    """The nsid of a namespace on ``p``'s bdev that ``after`` has and ``before`` had not."""
    raw = p.get("namespace")
    ns: dict[str, Any] = raw if isinstance(raw, dict) else {}
    old, new = _nsids(before, p.get("nqn")), _nsids(after, p.get("nqn"))
    for nsid, bdev in new.items():
        if nsid not in old and bdev == ns.get("bdev_name") and \
                ns.get("nsid") in (None, 0, nsid):
            return nsid
    return None


def effect_present(method: str, params: Any, before: TargetState,
                   after: TargetState) -> bool:
    """True when ``after`` shows the change ``method`` makes and ``before`` did not.

    Methods not known here fall back to "the configuration changed at all": with the
    front's lock held nothing else mutates, so a change can only be this call's (changes
    made behind the front's back on the private socket are the exception, and are logged).
    """
    p = params if isinstance(params, dict) else {}
    nqn = p.get("nqn")
    if method == "nvmf_create_subsystem":
        return nqn in after.subsystems and nqn not in before.subsystems
    if method == "nvmf_delete_subsystem":
        return nqn in before.subsystems and nqn not in after.subsystems
    if method == "nvmf_subsystem_add_host":
        host = p.get("host")
        return host in _hosts(after, nqn) and host not in _hosts(before, nqn)
    if method == "nvmf_subsystem_remove_host":
        host = p.get("host")
        return host in _hosts(before, nqn) and host not in _hosts(after, nqn)
    if method == "nvmf_subsystem_add_ns":
        return _new_namespace(p, before, after) is not None
    if method == "nvmf_subsystem_remove_ns":
        nsid = p.get("nsid")
        return nsid in _nsids(before, nqn) and nsid not in _nsids(after, nqn)
    if method == "nvmf_subsystem_add_listener":
        addr = _address(p)
        return addr in _listeners(after, nqn) and addr not in _listeners(before, nqn)
    if method == "nvmf_subsystem_remove_listener":
        addr = _address(p)
        return addr in _listeners(before, nqn) and addr not in _listeners(after, nqn)
    if method == "nvmf_subsystem_listener_set_ana_state":
        want = p.get("ana_state")
        return _ana(before, p) != want and _ana(after, p) == want
    if method == "nvmf_subsystem_allow_any_host":
        want = bool(p.get("allow_any_host"))
        a, b = _sub(after, nqn), _sub(before, nqn)
        return a is not None and b is not None and a.allow_any_host == want != \
            b.allow_any_host
    if method == "nvmf_create_transport":
        tr = str(p.get("trtype", "")).upper()
        return tr in after.transports and tr not in before.transports
    if method.startswith("bdev_") and method.endswith("_create") and "name" in p:
        return p["name"] in after.bdevs and p["name"] not in before.bdevs
    if method.startswith("bdev_") and method.endswith("_delete") and "name" in p:
        return p["name"] in before.bdevs and p["name"] not in after.bdevs
    # Options the target fills in with defaults are not a change (``before`` may hold
    # journaled changes, which carry only the options the call gave).
    return bool(diff(before, after, desired=True))


def result_of(method: str, params: Any, before: TargetState, after: TargetState) -> Any:
    """The answer the target would have given for an applied call whose answer was lost."""
    p = params if isinstance(params, dict) else {}
    if method == "nvmf_subsystem_add_ns":
        return _new_namespace(p, before, after)
    if method.startswith("bdev_") and method.endswith("_create"):
        if "name" in p:
            return p["name"]
        new = [n for n in after.bdevs if n not in before.bdevs]
        return new[0] if len(new) == 1 else True
    return True
