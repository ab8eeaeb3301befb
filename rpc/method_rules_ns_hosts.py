"""The per-method parts of nvmf_ns_add_host / nvmf_ns_remove_host: who sees a namespace
created with ``no_auto_visible`` (the rest of the method table is in :mod:`.method_rules`).

SPDK keeps each such namespace's host list newest first and its save_config lists the
hosts so (one ``nvmf_ns_add_host`` entry each, after every ``nvmf_subsystem_add_ns``).
The model keeps the list in that order: capture appends entries as they come, a journaled
call puts its host at the head, and the planner replays the list oldest first, which gives
a target the same list back. Change operation (journal form, ``value`` None: removed):

    {"op": "ns_host", "nqn": q, "nsid": i, "host": h, "value": h | None}
"""
from __future__ import annotations

from typing import Any

from nvmf_phoenix.rpc.method_rules import Op, Params, put_op

from nvmf_phoenix.model import Kind, Namespace, Subsystem, TargetState


def _ns(st: TargetState, p: Params) -> Namespace | None:
    nqn, nsid = p.get("nqn"), p.get("nsid")
    sub = st.subsystems.get(nqn) if isinstance(nqn, str) else None
    if sub is None or isinstance(nsid, bool) or not isinstance(nsid, int):
        return None
    return sub.namespaces.get(nsid)


def ns_host_put(st: TargetState, p: Params) -> None:
    """One framework_get_config entry: entries come newest first, so each goes last."""
    ns = _ns(st, p)
    host = p.get("host")
    if ns is not None and isinstance(host, str) and host not in ns.hosts:
        ns.hosts.append(host)


def ns_host_params(s: Subsystem, ns: Namespace, host: str) -> Params:
    return {"nqn": s.nqn, "nsid": ns.nsid, "host": host}


def ns_known(p: Params, model: TargetState) -> bool:
    """The change is journaled only for a namespace the model has."""
    return _ns(model, p) is not None


def ns_host_ops(p: Params, result: Any, answers: list[Any], model: TargetState) -> list[Op]:
    return [put_op(Kind.NS_HOST, p["host"], nqn=p["nqn"], nsid=int(p["nsid"]),
                   host=p["host"])]


def ns_host_gone(p: Params, result: Any, answers: list[Any],
                 model: TargetState) -> list[Op]:
    return [put_op(Kind.NS_HOST, None, nqn=p["nqn"], nsid=int(p["nsid"]), host=p["host"])]


def _listed(st: TargetState, p: Params) -> bool:
    ns = _ns(st, p)
    return ns is not None and p.get("host") in ns.hosts


def ns_host_appears(p: Params, before: TargetState, after: TargetState) -> bool:
    return _listed(after, p) and not _listed(before, p)


def ns_host_vanishes(p: Params, before: TargetState, after: TargetState) -> bool:
    return _listed(before, p) and not _listed(after, p)


def apply_ns_host(ns: Namespace, host: str, value: Any) -> None:
    """A journaled change on ``ns``'s list: a new host goes to the head, as in SPDK."""
    if value and host not in ns.hosts:
        ns.hosts.insert(0, host)
    elif not value and host in ns.hosts:
        ns.hosts.remove(host)
