"""``changes.between``: the change from one whole state to the next, as operations.

A cluster's owner learns each change as a new whole state; it commits only the
operations between the two. The claim: replaying them onto the old state gives exactly
the new one, for any mix of changes, and anything no operation describes is refused (a
whole state is committed instead).
"""
from __future__ import annotations

import copy
import json
import random

from nvmf_phoenix.recovery import changes

from nvmf_phoenix.model import (
    Bdev,
    Host,
    Key,
    ListenAddress,
    Listener,
    Namespace,
    Subsystem,
    TargetState,
    Transport,
)


def _mutate(st: TargetState, r: random.Random, n: int) -> None:
    """``n`` random edits of the kinds a configuration call makes."""
    for i in range(n):
        subs = [s for s in st.subsystems.values() if not s.is_discovery]
        roll = r.randrange(11)
        if roll == 0 or not subs:
            nqn = f"nqn.2016-06.io.phx:s{r.randrange(1000)}"
            st.subsystems[nqn] = Subsystem(nqn=nqn, serial_number=f"SN{i}")
        elif roll == 1:
            del st.subsystems[r.choice(subs).nqn]
        elif roll == 2:
            name = f"b{r.randrange(50)}"
            st.bdevs[name] = Bdev(name=name, kind="malloc", uuid=f"u-{name}-{i}",
                                  block_size=512, num_blocks=r.choice((64, 128)))
        elif roll == 3 and st.bdevs:
            del st.bdevs[r.choice(list(st.bdevs))]
        elif roll == 4:
            sub = r.choice(subs)
            h = f"nqn.2014-08.org.nvmexpress:h{r.randrange(20)}"
            sub.hosts[h] = Host(nqn=h, psk=r.choice((None, "key0")))
        elif roll == 5 and any(s.hosts for s in subs):
            sub = r.choice([s for s in subs if s.hosts])
            del sub.hosts[r.choice(list(sub.hosts))]
        elif roll == 6:
            sub = r.choice(subs)
            nsid = r.randrange(1, 9)
            sub.namespaces[nsid] = Namespace(nsid=nsid, bdev_name=f"b{i}", uuid=f"ns-{i}")
        elif roll == 7 and any(s.namespaces for s in subs):
            sub = r.choice([s for s in subs if s.namespaces])
            del sub.namespaces[r.choice(list(sub.namespaces))]
        elif roll == 8:
            sub = r.choice(subs)
            addr = ListenAddress(traddr="10.0.0.1", trsvcid=str(4420 + r.randrange(4)))
            sub.listeners[addr] = Listener(address=addr,
                                           ana_states={1: r.choice(("optimized",
                                                                    "inaccessible"))})
        elif roll == 9:
            sub = r.choice(subs)
            sub.allow_any_host = not sub.allow_any_host
        else:
            r.choice(subs).model_number = f"model {i}"
            st.keys[f"k{i % 3}"] = Key(name=f"k{i % 3}", path=f"/keys/{i}")


def test_replaying_the_operations_gives_the_new_state() -> None:
    r = random.Random(20261203)
    st = TargetState.empty()
    _mutate(st, r, 30)
    for _round in range(300):
        new = copy.deepcopy(st)
        _mutate(new, r, r.randrange(0, 6))
        ops = changes.between(st, new)
        assert ops is not None
        ops = json.loads(json.dumps(ops))       # what etcd and the journal hold
        replayed = copy.deepcopy(st)
        changes.apply(replayed, ops)
        assert replayed == new
        assert (ops == []) == (st == new)
        st = new


def test_an_unchanged_state_is_no_operations_and_a_one_object_change_is_one() -> None:
    st = TargetState.empty()
    _mutate(st, random.Random(7), 20)
    assert changes.between(st, copy.deepcopy(st)) == []
    new = copy.deepcopy(st)
    sub = next(s for s in new.subsystems.values() if not s.is_discovery)
    sub.hosts["nqn.2014-08.org.nvmexpress:one"] = Host(nqn="nqn.2014-08.org.nvmexpress:one")
    assert changes.between(st, new) == [
        {"op": "host", "nqn": sub.nqn, "host": "nqn.2014-08.org.nvmexpress:one",
         "value": sub.hosts["nqn.2014-08.org.nvmexpress:one"].to_dict()}]


def test_what_no_operation_describes_is_refused() -> None:
    st = TargetState.empty()
    for edit in (lambda s: s.transports.update(TCP=Transport(trtype="TCP")),
                 lambda s: setattr(s.startup, "max_subsystems", 8),
                 lambda s: setattr(s, "opaque", [])):
        new = copy.deepcopy(st)
        edit(new)
        assert changes.between(st, new) is None
