"""Compare two target states: readable paths to every difference, config first."""
from __future__ import annotations

from typing import Any

from nvmf_phoenix.rpc.methods import is_startup_option

from nvmf_phoenix.model import TargetState

# Containers of options where a desired state may leave a key for the target to fill in
# with its default (SPDK adds every option it has to what it reports).
OPEN = ("[params]", "[options]", "[nvmf_config]", "[crdt]", "startup")


def diff(a: TargetState, b: TargetState, runtime: bool = False,
         desired: bool = False) -> list[str]:
    """Differences between ``a`` and ``b`` as ``path: a-value != b-value`` lines.

    With ``desired``, ``a`` is a desired state: an option it does not set is not a
    difference (identity fields are never options, so they are always compared).
    """
    da = a.to_dict() if runtime else a.config_dict()
    db = b.to_dict() if runtime else b.config_dict()
    if "opaque" in da and "opaque" in db:
        if desired:   # options the desired state never set: the target's own, like OPEN
            db["opaque"] = [e for e in db["opaque"] if not unset_option(e, da["opaque"])]
        da["opaque"], db["opaque"] = opaque_keyed(da["opaque"]), opaque_keyed(db["opaque"])
    else:    # one side never recorded them: nothing to compare
        da.pop("opaque", None)
        db.pop("opaque", None)
    out: list[str] = []
    _walk(_keyed(da), _keyed(db), "", out, desired)
    return out


# The params that name what an entry configures (a bdev, a subsystem's host, a socket
# implementation): an entry's label, so a changed option reads as one changed value.
OPAQUE_IDS = ("name", "nqn", "nsid", "host", "impl_name", "trtype")


def opaque_label(entry: dict[str, Any]) -> str:
    p = entry.get("params")
    ids = [str(p[k]) for k in OPAQUE_IDS if isinstance(p, dict) and k in p]
    return " ".join([entry["method"], *ids])


def unset_option(entry: dict[str, Any], desired: list[dict[str, Any]]) -> bool:
    """An option setter of a method the desired entries never call (e.g. a checkpoint of
    a target without that module): the live target's defaults, not a difference."""
    return is_startup_option(entry["method"]) and \
        all(e["method"] != entry["method"] for e in desired)


def opaque_keyed(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Opaque entries by label (order aside, as SPDK's load_config would take them)."""
    out: dict[str, Any] = {}
    for e in entries:
        label, n = opaque_label(e), 2
        while label in out:
            label, n = f"{opaque_label(e)} #{n}", n + 1
        out[label] = e.get("params")
    return out


def _keyed(obj: Any) -> Any:
    """Turn lists of named objects into dicts so differences have stable paths."""
    if isinstance(obj, list):
        if obj and all(isinstance(x, dict) for x in obj):
            key = next((k for k in ("nqn", "name", "nsid", "trtype", "address")
                        if all(k in x for x in obj)), None)
            if key is not None:
                return {_label(x[key]): _keyed(x) for x in obj}
        return [_keyed(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _keyed(v) for k, v in obj.items()}
    return obj


def _label(v: Any) -> str:
    if isinstance(v, dict) and "traddr" in v:
        return f"{v['traddr']}:{v.get('trsvcid', '')}"
    return str(v)


def _walk(a: Any, b: Any, path: str, out: list[str], desired: bool = False) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            sub = f"{path}[{k}]" if path else str(k)
            if k not in a:
                if not (desired and path.endswith(OPEN)):
                    out.append(f"{sub}: missing != {b[k]!r}")
            elif k not in b:
                out.append(f"{sub}: {a[k]!r} != missing")
            else:
                _walk(a[k], b[k], sub, out, desired)
    elif a != b:
        out.append(f"{path}: {a!r} != {b!r}")
