"""The per-method parts of the method table (:mod:`.methods`), grouped by the object they
touch: how params become model objects and back, the journaled change of a call, and how
its effect shows after a lost answer. Pure functions over the state model.

Change operations (the journal's dict form, one per object touched; ``op`` is a
:class:`~nvmf_phoenix.model.Kind`, ``value`` None means removed):

    {"op": "bdev", "name": n, "value": Bdev | None}
    {"op": "key", "name": n, "value": Key | None}
    {"op": "subsystem", "nqn": q, "value": Subsystem | None}
    {"op": "host", "nqn": q, "host": h, "value": Host | None}
    {"op": "ns", "nqn": q, "nsid": i, "value": Namespace | None}
    {"op": "listener", "nqn": q, "address": a, "value": Listener | None}
    {"op": "allow_any_host", "nqn": q, "value": bool}
    {"op": "ana", "nqn": q, "listeners": [{"address": a, "ana_states": {group: state}}]}
    {"op": "ns_host", "nqn": q, "nsid": i, "host": h, "value": h | None}
        (a namespace's visibility list: :mod:`.method_rules_ns_hosts`)
"""
from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any

from nvmf_phoenix.model import (
    Bdev,
    Host,
    Key,
    Kind,
    ListenAddress,
    Listener,
    Namespace,
    Referral,
    StartupOptions,
    Subsystem,
    TargetState,
    Transport,
)

Params = dict[str, Any]
Op = dict[str, Any]
Call = tuple[str, dict[str, Any] | None]


class NotModelled(Exception):
    """This call's change cannot be journaled as operations: capture the whole state."""


class ModelMismatch(NotModelled):
    """The operations do not fit the model (it lacks the object they change)."""


def put_op(kind: Kind, value: Any, **where: Any) -> Op:
    """One change operation: ``where`` names the object, ``value`` is its dict form."""
    return {"op": kind, **where, "value": value}


def nothing(p: Params, result: Any) -> list[Call]:
    return []


def always(p: Params, model: TargetState) -> bool:
    return True


def true(p: Params, before: TargetState, after: TargetState) -> Any:
    return True


def no_params(*objs: Any) -> Any:
    return None


def _sub(st: TargetState, p: Params) -> Subsystem | None:
    nqn = p.get("nqn")
    return st.subsystems.get(nqn) if isinstance(nqn, str) else None


def _appears(present: Callable[[TargetState, Params], bool]) -> Callable[..., bool]:
    """The effect of a call that adds what ``present`` looks for."""
    return lambda p, before, after: present(after, p) and not present(before, p)


def _vanishes(present: Callable[[TargetState, Params], bool]) -> Callable[..., bool]:
    return lambda p, before, after: present(before, p) and not present(after, p)


def _put_in(items: Callable[[Subsystem], dict[Any, Any]], parse: Callable[[Params], Any],
            key: Callable[[Any], Any]) -> Callable[[TargetState, Params], None]:
    """``put`` for an object that lives in a subsystem: parsed from the params, filed
    under its key in the subsystem the params name (skipped if that one is unknown)."""
    def put(st: TargetState, p: Params) -> None:
        sub = _sub(st, p)
        if sub is not None:
            obj = parse(p)
            items(sub)[key(obj)] = obj
    return put


def _in(items: Callable[[Subsystem], Container[Any]],
        key: Callable[[Params], Any]) -> Callable[[TargetState, Params], bool]:
    """Whether ``key(params)`` is among ``items`` of the subsystem the params name."""
    def present(st: TargetState, p: Params) -> bool:
        sub = _sub(st, p)
        return sub is not None and key(p) in items(sub)
    return present


# -- bdevs -----------------------------------------------------------------------------
def bdev_put(kind: str) -> Callable[[TargetState, Params], None]:
    def put(st: TargetState, p: Params) -> None:
        bdev = Bdev.from_create_params(kind, p)
        st.bdevs[bdev.name] = bdev
    return put


def bdev_params(b: Bdev) -> Params:
    return b.to_create_params()


def bdev_name(b: Bdev) -> Params:
    return {"name": b.name}


def bdev_readback(p: Params, result: Any) -> list[Call]:
    return [("bdev_get_bdevs", {"name": str(result)})]


def bdev_ops(kind: str) -> Callable[..., list[Op]]:
    """The bdev as capture would record it: the call's params with the uuid (and for aio
    the block size) the target settled on."""
    def ops(p: Params, result: Any, answers: list[Any], model: TargetState) -> list[Op]:
        (got,) = answers[0]
        entry = {**p, "name": str(result), "uuid": got["uuid"]}
        if kind == "aio":
            entry["block_size"] = got["block_size"]
        bdev = Bdev.from_create_params(kind, entry)
        return [put_op(Kind.BDEV, bdev.to_dict(), name=bdev.name)]
    return ops


def bdev_gone(p: Params, result: Any, answers: list[Any], model: TargetState) -> list[Op]:
    return [put_op(Kind.BDEV, None, name=p["name"])]


def bdev_unused(p: Params, model: TargetState) -> bool:
    """Deleting a bdev a namespace uses removes the namespace too, asynchronously in
    SPDK: what the target ends up with is better read than predicted."""
    return not any(ns.bdev_name == p.get("name") for s in model.subsystems.values()
                   for ns in s.namespaces.values())


def _bdev_named(st: TargetState, p: Params) -> bool:
    """A modelled bdev, or one of another module carried verbatim (TargetState.opaque)."""
    return p["name"] in st.bdevs or any(
        e.get("subsystem") == "bdev" and isinstance(e.get("params"), dict) and
        e["params"].get("name") == p["name"] for e in st.opaque or [])


def bdev_appears(p: Params, before: TargetState, after: TargetState) -> bool | None:
    return _appears(_bdev_named)(p, before, after) if "name" in p else None


def bdev_vanishes(p: Params, before: TargetState, after: TargetState) -> bool | None:
    return _vanishes(_bdev_named)(p, before, after) if "name" in p else None


def bdev_result(p: Params, before: TargetState, after: TargetState) -> Any:
    """A create answers with the bdev's name (chosen by the target if not given)."""
    if "name" in p:
        return p["name"]
    new = [n for n in after.bdevs if n not in before.bdevs]
    return new[0] if len(new) == 1 else True


# -- keys ------------------------------------------------------------------------------
def key_put(st: TargetState, p: Params) -> None:
    key = Key.from_create_params(p)
    st.keys[key.name] = key


def key_params(k: Key) -> Params:
    return k.to_create_params()


def key_ops(p: Params, result: Any, answers: list[Any], model: TargetState) -> list[Op]:
    key = Key.from_create_params(p)
    return [put_op(Kind.KEY, key.to_dict(), name=key.name)]


def key_gone(p: Params, result: Any, answers: list[Any], model: TargetState) -> list[Op]:
    return [put_op(Kind.KEY, None, name=p["name"])]


# -- STARTUP options and transports ----------------------------------------------------
def startup_config_put(st: TargetState, p: Params) -> None:
    st.startup.nvmf_config = dict(p)


def startup_config_params(s: StartupOptions) -> Params:
    return dict(s.nvmf_config)


def max_subsystems_put(st: TargetState, p: Params) -> None:
    st.startup.max_subsystems = p.get("max_subsystems")


def max_subsystems_params(s: StartupOptions) -> Params:
    return {"max_subsystems": s.max_subsystems}


def crdt_put(st: TargetState, p: Params) -> None:
    st.startup.crdt = dict(p)


def crdt_params(s: StartupOptions) -> Params:
    return dict(s.crdt)


def transport_put(st: TargetState, p: Params) -> None:
    tr = Transport.from_create_params(p)
    st.transports[tr.trtype] = tr


def transport_params(t: Transport) -> Params:
    return t.to_create_params()


def transport_appears(p: Params, before: TargetState, after: TargetState) -> bool:
    tr = str(p.get("trtype", "")).upper()
    return tr in after.transports and tr not in before.transports


# -- subsystems ------------------------------------------------------------------------
def subsystem_put(st: TargetState, p: Params) -> None:
    sub = Subsystem.from_create_params(p)
    st.subsystems[sub.nqn] = sub


def subsystem_params(s: Subsystem) -> Params:
    return s.to_create_params()


def subsystem_nqn(s: Subsystem) -> Params:
    return {"nqn": s.nqn}


def subsystem_readback(p: Params, result: Any) -> list[Call]:
    return [("nvmf_get_subsystems", {"nqn": p.get("nqn")})]


def subsystem_ops(p: Params, result: Any, answers: list[Any],
                  model: TargetState) -> list[Op]:
    """As the target answers nvmf_get_subsystems, which does not report ana_reporting
    and enable_nssr: those are as the call asked."""
    (got,) = answers[0]
    sub = Subsystem.from_create_params(
        {**got, "nqn": p["nqn"], "ana_reporting": bool(p.get("ana_reporting", False)),
         "enable_nssr": bool(p.get("enable_nssr", False))})
    return [put_op(Kind.SUBSYSTEM, sub.to_dict(), nqn=p.get("nqn"))]


def subsystem_gone(p: Params, result: Any, answers: list[Any],
                   model: TargetState) -> list[Op]:
    return [put_op(Kind.SUBSYSTEM, None, nqn=p.get("nqn"))]


def _subsystem_named(st: TargetState, p: Params) -> bool:
    return p.get("nqn") in st.subsystems


subsystem_appears = _appears(_subsystem_named)
subsystem_vanishes = _vanishes(_subsystem_named)


def allow_any_host_params(s: Subsystem) -> Params:
    return {"nqn": s.nqn, "allow_any_host": s.allow_any_host}


def allow_any_host_ops(p: Params, result: Any, answers: list[Any],
                       model: TargetState) -> list[Op]:
    return [put_op(Kind.ALLOW_ANY_HOST, bool(p.get("allow_any_host")), nqn=p.get("nqn"))]


def allow_any_host_set(p: Params, before: TargetState, after: TargetState) -> bool:
    want = bool(p.get("allow_any_host"))
    a, b = _sub(after, p), _sub(before, p)
    return a is not None and b is not None and a.allow_any_host == want != b.allow_any_host


# -- namespaces ------------------------------------------------------------------------
ns_put = _put_in(lambda s: s.namespaces, lambda p: Namespace.from_create_params(
    p["namespace"]), lambda ns: ns.nsid)


def ns_params(s: Subsystem, ns: Namespace) -> Params:
    return {"nqn": s.nqn, "namespace": ns.to_create_params()}


def ns_nsid(s: Subsystem, ns: Namespace) -> Params:
    return {"nqn": s.nqn, "nsid": ns.nsid}


def ns_ops(p: Params, result: Any, answers: list[Any], model: TargetState) -> list[Op]:
    """The namespace as asked, with the identities the target reports for it."""
    nsid = int(result)
    (got,) = answers[0]
    seen = next((n for n in got.get("namespaces", []) if n.get("nsid") == nsid), None)
    if seen is None:
        raise NotModelled(f"namespace {nsid} not found when read back")
    asked = p.get("namespace") or {}
    ns = Namespace.from_create_params({**asked, "nsid": nsid,
                                       **{k: seen.get(k) for k in Namespace.IDENTITY}})
    return [put_op(Kind.NS, ns.to_dict(), nqn=p.get("nqn"), nsid=nsid)]


def ns_gone(p: Params, result: Any, answers: list[Any], model: TargetState) -> list[Op]:
    return [put_op(Kind.NS, None, nqn=p.get("nqn"), nsid=int(p["nsid"]))]


def _new_namespace(p: Params, before: TargetState, after: TargetState) -> int | None:
    """The nsid of a namespace on ``p``'s bdev that ``after`` has and ``before`` had not."""
    raw = p.get("namespace")
    asked: Params = raw if isinstance(raw, dict) else {}
    old, new = _sub(before, p), _sub(after, p)
    had = set(old.namespaces) if old is not None else set()
    for nsid, ns in (new.namespaces.items() if new is not None else ()):
        if nsid not in had and ns.bdev_name == asked.get("bdev_name") and \
                asked.get("nsid") in (None, 0, nsid):
            return nsid
    return None


def ns_appears(p: Params, before: TargetState, after: TargetState) -> bool:
    return _new_namespace(p, before, after) is not None


def ns_result(p: Params, before: TargetState, after: TargetState) -> Any:
    return _new_namespace(p, before, after)


ns_vanishes = _vanishes(_in(lambda s: s.namespaces, lambda p: p.get("nsid")))


# -- hosts -----------------------------------------------------------------------------
host_put = _put_in(lambda s: s.hosts, Host.from_create_params, lambda h: h.nqn)


def host_params(s: Subsystem, h: Host) -> Params:
    return h.to_create_params(s.nqn)


def host_nqn(s: Subsystem, h: Host) -> Params:
    return {"nqn": s.nqn, "host": h.nqn}


def host_ops(p: Params, result: Any, answers: list[Any], model: TargetState) -> list[Op]:
    host = Host.from_create_params(p)
    return [put_op(Kind.HOST, host.to_dict(), nqn=p.get("nqn"), host=host.nqn)]


def host_gone(p: Params, result: Any, answers: list[Any], model: TargetState) -> list[Op]:
    return [put_op(Kind.HOST, None, nqn=p.get("nqn"), host=p["host"])]


_host_listed = _in(lambda s: s.hosts, lambda p: p.get("host"))
host_appears = _appears(_host_listed)
host_vanishes = _vanishes(_host_listed)


# -- listeners and ANA -----------------------------------------------------------------
def _address(p: Params) -> ListenAddress | None:
    try:
        return ListenAddress.from_dict(p["listen_address"])
    except (KeyError, TypeError, AttributeError):
        return None


listener_put = _put_in(lambda s: s.listeners, Listener.from_create_params,
                       lambda ls: ls.address)


def listener_params(s: Subsystem, ls: Listener) -> Params:
    return ls.to_create_params(s.nqn)


def listener_address(s: Subsystem, ls: Listener) -> Params:
    return {"nqn": s.nqn, "listen_address": ls.address.to_dict()}


def listener_ops(p: Params, result: Any, answers: list[Any],
                 model: TargetState) -> list[Op]:
    ls = Listener.from_create_params(p)
    return [put_op(Kind.LISTENER, ls.to_dict(), nqn=p.get("nqn"),
                   address=ls.address.to_dict())]


def listener_gone(p: Params, result: Any, answers: list[Any],
                  model: TargetState) -> list[Op]:
    addr = ListenAddress.from_dict(p.get("listen_address") or {})
    return [put_op(Kind.LISTENER, None, nqn=p.get("nqn"), address=addr.to_dict())]


_listening = _in(lambda s: s.listeners, _address)
listener_appears = _appears(_listening)
listener_vanishes = _vanishes(_listening)


def ana_params(s: Subsystem, ls: Listener, state: str, group: int | None = None) -> Params:
    p: Params = {"nqn": s.nqn, "listen_address": ls.address.to_dict(), "ana_state": state}
    if group is not None:
        p["anagrpid"] = group
    return p


def ana_ops(p: Params, result: Any, answers: list[Any], model: TargetState) -> list[Op]:
    return []    # only ANA-reporting subsystems keep ANA states: read back (ana_touching)


def _ana(st: TargetState, p: Params) -> str | None:
    """The listener's ANA state for the call's group (or its only state for all groups)."""
    sub, addr = _sub(st, p), _address(p)
    if sub is None or addr is None or addr not in sub.listeners:
        return None
    states = sub.listeners[addr].ana_states
    group = p.get("anagrpid")
    if group is None:
        vals = set(states.values())
        return vals.pop() if len(vals) == 1 else None
    return states.get(int(group))


def ana_set(p: Params, before: TargetState, after: TargetState) -> bool:
    want = p.get("ana_state")
    return _ana(before, p) != want and _ana(after, p) == want


# -- referrals -------------------------------------------------------------------------
def referral_put(st: TargetState, p: Params) -> None:
    st.referrals.append(Referral.from_create_params(p))


def referral_params(ref: Referral) -> Params:
    return ref.to_create_params()
