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

Pure functions over the state model; the front does the I/O. How each method's effect
shows is declared with the method (:mod:`nvmf_phoenix.rpc.methods`, ``effect`` and
``result``); this module adds the rule for the methods that declare none.
"""
from __future__ import annotations

from typing import Any

from nvmf_phoenix.recovery.diff import diff
from nvmf_phoenix.rpc.methods import method

from nvmf_phoenix.model import TargetState


def effect_present(name: str, params: Any, before: TargetState,
                   after: TargetState) -> bool:
    """True when ``after`` shows the change ``name`` makes and ``before`` did not.

    Methods that declare no way to tell fall back to "the configuration changed at all":
    with the front's lock held nothing else mutates, so a change can only be this call's
    (changes made behind the front's back on the private socket are the exception, and
    are logged).
    """
    p = params if isinstance(params, dict) else {}
    effect = method(name).effect
    found = effect(p, before, after) if effect is not None else None
    if found is not None:
        return found
    # Options the target fills in with defaults are not a change (``before`` may hold
    # journaled changes, which carry only the options the call gave).
    return bool(diff(before, after, desired=True))


def result_of(name: str, params: Any, before: TargetState, after: TargetState) -> Any:
    """The answer the target would have given for an applied call whose answer was lost."""
    p = params if isinstance(params, dict) else {}
    return method(name).result(p, before, after)
