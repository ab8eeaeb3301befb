"""Changes: what one acknowledged call did to the configuration, in the model's terms.

Re-capturing and re-saving the whole configuration after every mutating call costs time
in proportion to its size (19 ms at 64 subsystems of 4 namespaces). So for the calls users
make all the time the front journals only the change: a short list of operations on the
model ("put this namespace", "drop that host"), built from the call, its answer and a
narrow read-back of what the target chose itself (a bdev's uuid, a namespace's nsid,
uuid and nguid, a subsystem's serial number, ANA states). A checkpoint is then the last
full state plus the changes journaled after it; :func:`apply` replays them.

Pure functions over the state model. What each method changes is declared in
:mod:`nvmf_phoenix.rpc.methods` (its ``ops``, ``readback`` and ``ana_touching``); this
module adds what is common to all of them and replays operations. The front does the I/O
(the read-back calls come from :func:`readback`); anything not modelled
(:class:`NotModelled`) takes the old path: capture everything and save it whole. The
operations' journal form is described in :mod:`nvmf_phoenix.rpc.method_rules`.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from nvmf_phoenix.recovery.capture import ana_states
from nvmf_phoenix.rpc.method_rules_ns_hosts import apply_ns_host
from nvmf_phoenix.rpc.methods import (
    METHODS,
    Call,
    ModelMismatch,
    NotModelled,
    Op,
    method,
)

from nvmf_phoenix.model import (
    Bdev,
    Host,
    Key,
    Kind,
    ListenAddress,
    Listener,
    Namespace,
    Subsystem,
    TargetState,
)

__all__ = ["MODELLED", "Call", "ModelMismatch", "NotModelled", "Op", "apply", "between",
           "is_modelled", "ops_for", "readback"]

# The methods whose change is journaled on its own.
MODELLED = tuple(m.name for m in METHODS.values() if m.ops is not None)


def _p(params: Any) -> dict[str, Any]:
    if not isinstance(params, dict) or "tgt_name" in params:
        raise NotModelled("parameters not an object, or a named target")
    return params


def _sub(model: TargetState, nqn: Any) -> Subsystem:
    sub = model.subsystems.get(nqn) if isinstance(nqn, str) else None
    if sub is None or sub.is_discovery:
        raise ModelMismatch(f"no subsystem {nqn!r} in the model")
    return sub


def is_modelled(name: str, params: Any, model: TargetState) -> bool:
    """Whether :func:`ops_for` can describe this call's change (checked before sending)."""
    m = method(name)
    if m.ops is None:
        return False
    try:
        p = _p(params)
        if m.on_subsystem:
            _sub(model, p.get("nqn"))
        return m.modelled_if(p, model)
    except NotModelled:
        return False


def _reads_ana(name: str, p: dict[str, Any], model: TargetState) -> bool:
    return method(name).ana_touching and _sub(model, p.get("nqn")).ana_reporting


def readback(name: str, params: Any, result: Any, model: TargetState) -> list[Call]:
    """The calls (to the target that answered) reading what the target chose itself."""
    p = _p(params)
    calls = list(method(name).readback(p, result))
    if _reads_ana(name, p, model):
        calls.append(("nvmf_subsystem_get_listeners", {"nqn": p.get("nqn")}))
    return calls


def ops_for(name: str, params: Any, result: Any, answers: list[Any],
            model: TargetState) -> list[Op]:
    """The operations a successful call made, given :func:`readback`'s answers in order."""
    p = _p(params)
    m = method(name)
    if m.ops is None:
        raise NotModelled(name)
    ops = m.ops(p, result, answers, model)
    if _reads_ana(name, p, model):
        states = ana_states(answers[-1])
        ops.append({"op": Kind.ANA, "nqn": p["nqn"], "listeners": [
            {"address": a.to_dict(), "ana_states": {str(g): s for g, s in st.items()}}
            for a, st in states.items()]})
    return ops


def apply(model: TargetState, ops: list[Op]) -> None:
    """Apply ``ops`` to ``model`` in place, all or none: every operation is checked
    against the model first (ModelMismatch if one does not fit)."""
    for op in ops:
        _target(model, op)
    for op in ops:
        _put(model, op)


def _target(model: TargetState, op: Op) -> Subsystem | None:
    """The subsystem an operation changes (None for top-level objects)."""
    kind = op.get("op")
    if kind in (Kind.BDEV, Kind.KEY, Kind.SUBSYSTEM):
        return None
    if kind in (Kind.HOST, Kind.NS, Kind.LISTENER, Kind.ALLOW_ANY_HOST, Kind.ANA):
        return _sub(model, op.get("nqn"))
    if kind == Kind.NS_HOST:
        sub = _sub(model, op.get("nqn"))
        if op.get("nsid") not in sub.namespaces:
            raise ModelMismatch(f"no namespace {op.get('nsid')!r} in {sub.nqn}")
        return sub
    raise ModelMismatch(f"unknown operation {kind!r}")


def _put(model: TargetState, op: Op) -> None:
    kind, value = op["op"], op.get("value")
    if kind == Kind.BDEV:
        _set(model.bdevs, op["name"], Bdev.from_dict(value) if value else None)
    elif kind == Kind.KEY:
        _set(model.keys, op["name"], Key.from_dict(value) if value else None)
    elif kind == Kind.SUBSYSTEM:
        _set(model.subsystems, op["nqn"], Subsystem.from_dict(value) if value else None)
    else:
        sub = _sub(model, op["nqn"])
        if kind == Kind.HOST:
            _set(sub.hosts, op["host"], Host.from_dict(value) if value else None)
        elif kind == Kind.NS:
            _set(sub.namespaces, int(op["nsid"]),
                 Namespace.from_dict(value) if value else None)
        elif kind == Kind.LISTENER:
            _set(sub.listeners, ListenAddress.from_dict(op["address"]),
                 Listener.from_dict(value) if value else None)
        elif kind == Kind.ALLOW_ANY_HOST:
            sub.allow_any_host = bool(value)
        elif kind == Kind.NS_HOST:
            apply_ns_host(sub.namespaces[int(op["nsid"])], op["host"], value)
        else:
            for ls in op["listeners"]:
                addr = ListenAddress.from_dict(ls["address"])
                sub.listeners.setdefault(addr, Listener(address=addr)).ana_states = {
                    int(g): s for g, s in ls["ana_states"].items()}


def _set(where: dict[Any, Any], key: Any, value: Any) -> None:
    if value is None:
        where.pop(key, None)
    else:
        where[key] = value


def between(old: TargetState, new: TargetState) -> list[Op] | None:
    """Operations that turn ``old`` into ``new`` (so that ``apply(old, ops)`` equals
    ``new``), or None when something differs that no operation describes (startup
    options, transports, referrals, opaque entries, runtime): commit a whole state then.

    For writers that learn a change as a whole new state (a cluster's owner captures its
    target whole, in its own form, and turns it into the logical one) but should still
    send only the change: objects are compared as dataclasses, which costs far less than
    encoding and sending the whole state.
    """
    if (old.startup, old.transports, old.referrals, old.opaque, old.runtime) != \
            (new.startup, new.transports, new.referrals, new.opaque, new.runtime):
        return None
    ops: list[Op] = []
    _named(ops, Kind.KEY, "name", old.keys, new.keys)
    _named(ops, Kind.BDEV, "name", old.bdevs, new.bdevs)
    for nqn in [*old.subsystems, *(n for n in new.subsystems if n not in old.subsystems)]:
        was, now = old.subsystems.get(nqn), new.subsystems.get(nqn)
        if was == now:
            continue
        if was is None or now is None or was.is_discovery or now.is_discovery or \
                _own_fields(was) != _own_fields(now):
            ops.append({"op": Kind.SUBSYSTEM, "nqn": nqn,
                        "value": now.to_dict() if now else None})
            continue
        _named(ops, Kind.HOST, "host", was.hosts, now.hosts, nqn)
        _named(ops, Kind.NS, "nsid", was.namespaces, now.namespaces, nqn)
        for addr in [*was.listeners, *(a for a in now.listeners if a not in was.listeners)]:
            a, b = was.listeners.get(addr), now.listeners.get(addr)
            if a != b:
                ops.append({"op": Kind.LISTENER, "nqn": nqn, "address": addr.to_dict(),
                            "value": b.to_dict() if b else None})
        if was.allow_any_host != now.allow_any_host:
            ops.append({"op": Kind.ALLOW_ANY_HOST, "nqn": nqn, "value": now.allow_any_host})
    return ops


# What a subsystem's own operations change (everything else changes it whole).
_SUBSYSTEM_PARTS = frozenset({"hosts", "namespaces", "listeners", "allow_any_host"})


def _own_fields(sub: Subsystem) -> dict[str, Any]:
    """A subsystem's own attributes: what no host, namespace or listener op changes."""
    return {f.name: getattr(sub, f.name) for f in fields(sub)
            if f.name not in _SUBSYSTEM_PARTS}


def _named(ops: list[Op], kind: Kind, key: str, old: dict[Any, Any], new: dict[Any, Any],
           nqn: str | None = None) -> None:
    """Put or drop operations for the objects of one kind that differ between two maps."""
    for name in [*old, *(n for n in new if n not in old)]:
        was, now = old.get(name), new.get(name)
        if was != now:
            ops.append({"op": kind, **({"nqn": nqn} if nqn else {}), key: name,
                        "value": now.to_dict() if now is not None else None})
