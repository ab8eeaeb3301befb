"""In-flight policy: a mutating call caught by a death is applied once, never twice.

The front's ``failpoint`` picks the exact moment (after the intent is journaled, after the
target answered, after the checkpoint); what happens then is real: the real target process
is SIGKILLed, or the real supervisor process kills itself. The call used, nvmf_subsystem_add_ns with
no nsid, is the kind that must not be repeated: sent twice it would fail (the bdev is
claimed) or add a second namespace.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from nvmf_phoenix.recovery import inflight
from nvmf_phoenix.recovery.capture import capture_config
from nvmf_phoenix.recovery.journal import KIND_INTENT, KIND_OUTCOME, read_journal
from nvmf_phoenix.recovery.process import socket_owner
from nvmf_phoenix.rpc import RpcClient, RpcConnectionError
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn

from nvmf_phoenix.model import Namespace, Subsystem, TargetState
from tests.support import supervised
from tests.waiting import wait_for

NQN = "nqn.2016-06.io.phx:inflight"
HOST = "nqn.2014-08.org.nvmexpress:uuid:00000001-0000-4000-8000-000000000000"


def _setup(sock: str) -> None:
    with RpcClient.connect(sock) as c:
        rb.bdev_malloc_create(c, 64, 512, name="M0")
        rn.nvmf_create_subsystem(c, NQN, serial_number="INFLIGHT")


def _namespaces(sock: str) -> dict[int, str]:
    with RpcClient.connect(sock, timeout=60) as c:
        (sub,) = rn.nvmf_get_subsystems(c, NQN)
    return {ns["nsid"]: ns["bdev_name"] for ns in sub["namespaces"]}


def _outcomes(journal: str, method: str) -> list[dict[str, Any]]:
    """The outcome records of every journaled ``method`` call."""
    recs = read_journal(journal).records
    intents = {r.seq for r in recs if r.kind == KIND_INTENT and
               json.loads(r.payload)["method"] == method}
    return [doc for r in recs if r.kind == KIND_OUTCOME and
            (doc := json.loads(r.payload))["intent"] in intents]


@pytest.mark.parametrize("step", ["after-intent", "after-forward", "after-forward+restored",
                                  "after-capture+restored", "after-checkpoint"])
def test_target_killed_mid_call_applies_it_exactly_once(tmp_path: Path, step: str) -> None:
    """"+restored": the replacement is ready before the front takes (or saves) its
    checkpoint; the replacement was restored without the call, so the front must neither
    capture it nor save what it captured before as if the call were done there."""
    with supervised(tmp_path) as sup:
        pub = str(tmp_path / "public.sock")
        _setup(pub)
        killed: list[int] = []

        def kill_once(name: str, method: str) -> None:
            if name == step.split("+")[0] and not killed and sup.proc is not None:
                killed.append(sup.proc.pid)
                gen = sup.generation
                sup.proc.send_signal(signal.SIGKILL)
                sup.proc.wait(10)
                if step.endswith("+restored"):
                    wait_for(lambda: sup.generation > gen, 20, what="replacement ready")

        sup.front.failpoint = kill_once
        with RpcClient.connect(pub, timeout=60) as c:
            nsid = rn.nvmf_subsystem_add_ns(c, NQN, "M0")
        sup.front.failpoint = None
        assert killed and nsid == 1
        assert _namespaces(pub) == {1: "M0"}
        wait_for(lambda: sup.status.restarts == 1, 10, what="one restart")
        (outcome,) = _outcomes(str(tmp_path / "state" / "journal"), "nvmf_subsystem_add_ns")
        assert outcome["ok"] is True
        # And the checkpoint has it: one more restart brings it back as it was.
        assert sup.proc is not None
        sup.proc.send_signal(signal.SIGKILL)
        assert _namespaces(pub) == {1: "M0"}


LOST_CALLS = {"nvmf_subsystem_add_ns": {"nqn": NQN, "namespace": {"bdev_name": "M0"}},
              "nvmf_create_subsystem": {"nqn": "nqn.2016-06.io.phx:lost"},
              "nvmf_ns_add_host": {"nqn": NQN, "nsid": 1, "host": HOST}}


@pytest.mark.parametrize("method", list(LOST_CALLS))
def test_answer_lost_from_a_live_target_is_resolved_by_looking(tmp_path: Path,
                                                               method: str) -> None:
    """The target applied the call and stays up, but its answer never reaches the front:
    the front must find the change on the target instead of sending the call again."""
    params = LOST_CALLS[method]
    with supervised(tmp_path) as sup:
        pub = str(tmp_path / "public.sock")
        _setup(pub)
        if method == "nvmf_ns_add_host":
            with RpcClient.connect(pub, timeout=60) as c:
                rn.nvmf_subsystem_add_ns(c, NQN, "M0", no_auto_visible=True)
        lost: list[str] = []

        def lose_answer(name: str, _method: str) -> None:
            if name == "after-forward" and not lost:
                lost.append(name)
                raise RpcConnectionError("answer lost on the way (test)", method)

        sup.front.failpoint = lose_answer
        with RpcClient.connect(pub, timeout=60) as c:
            result = c.call(method, params)
            subs = {s["nqn"]: s for s in rn.nvmf_get_subsystems(c)}
        sup.front.failpoint = None
        assert lost and sup.status.restarts == 0
        assert sup.front.stats["resolved_applied"] == 1
        assert sup.front.stats["resolved_resent"] == 0
        if method == "nvmf_subsystem_add_ns":
            assert result == 1 and _namespaces(pub) == {1: "M0"}
        elif method == "nvmf_ns_add_host":
            with RpcClient.connect(pub, timeout=60) as c:
                hosts = capture_config(c).subsystems[NQN].namespaces[1].hosts
            assert result is True and hosts == [HOST]
        else:
            assert result is True and "nqn.2016-06.io.phx:lost" in subs
        outcome = _outcomes(str(tmp_path / "state" / "journal"), method)[-1]
        assert outcome["ok"] is True and "found on the target" in outcome["how"]


SUPERVISOR = """
import os, signal, sys, threading
from nvmf_phoenix.recovery.supervisor import Supervisor
priv, pub, state, step = sys.argv[1:5]
sup = Supervisor([sys.executable, "-m", "nvmf_phoenix.embedded"], priv, pub, state)
def die(at, method):
    if (at, method) == (step, "nvmf_subsystem_add_ns"):
        os.kill(os.getpid(), signal.SIGKILL)
sup.front.failpoint = die
sup.start()
print("ready", flush=True)
threading.Event().wait()
"""


@contextmanager
def _supervisor_killed_mid_call(tmp_path: Path, step: str) -> Iterator[tuple[int, Path]]:
    """Run a supervisor process that SIGKILLs itself at ``step`` of an add_ns call; its
    target lives on. Yields the target's pid and the state directory; the orphaned target
    never outlives the test (signalled through a pidfd: never a recycled pid)."""
    state = tmp_path / "state"
    pub, priv = str(tmp_path / "public.sock"), str(tmp_path / "private.sock")
    sup = subprocess.Popen([sys.executable, "-c", SUPERVISOR, priv, pub, str(state), step],
                           stdout=subprocess.PIPE, text=True)
    fd = None
    try:
        assert sup.stdout is not None and sup.stdout.readline().strip() == "ready"
        _setup(pub)
        target = socket_owner(priv)
        fd = os.pidfd_open(target)
        with RpcClient.connect(pub, timeout=60) as c, pytest.raises(RpcConnectionError):
            rn.nvmf_subsystem_add_ns(c, NQN, "M0")      # no answer: the front died
        assert sup.wait(10) == -signal.SIGKILL
        yield target, state
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait(10)
        if fd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            os.close(fd)


def _resolutions(state: Path) -> list[dict[str, Any]]:
    return [doc for r in read_journal(str(state / "journal")).records
            if r.kind == KIND_OUTCOME and "resolved" in (doc := json.loads(r.payload))]


@pytest.mark.parametrize("step,verdict", [("after-intent", "not applied"),
                                          ("after-forward", "applied"),
                                          ("after-checkpoint", "applied")])
def test_supervisor_killed_mid_call_resolves_it_by_looking(tmp_path: Path, step: str,
                                                           verdict: str) -> None:
    """The target survives the supervisor: the next supervisor adopts it (never starts a
    second one), finds whether the call took effect and records that, sending nothing."""
    with _supervisor_killed_mid_call(tmp_path, step) as (target, state), \
            supervised(tmp_path) as sup:
        assert sup.proc is not None and sup.proc.pid == target
        assert [v["resolved"] for v in _resolutions(state)] == [verdict]
        want = {1: "M0"} if verdict == "applied" else {}
        assert _namespaces(str(tmp_path / "public.sock")) == want
        saved = sup.store.load().state
        assert saved is not None and list(saved.subsystems[NQN].namespaces) == list(want)
        sup.proc.send_signal(signal.SIGKILL)           # the adopted target is watched too
        wait_for(lambda: sup.status.restarts == 1, 20, what="adopted target replaced")
        assert _namespaces(str(tmp_path / "public.sock")) == want


@pytest.mark.parametrize("step,verdict", [("after-forward", "not applied"),
                                          ("after-checkpoint", "applied")])
def test_supervisor_and_target_killed_mid_call(tmp_path: Path, step: str,
                                               verdict: str) -> None:
    """Both die (as when the node does): the new target comes from the checkpoint, which
    has the call only if it was taken; either way it is whole, and never applied twice."""
    with _supervisor_killed_mid_call(tmp_path, step) as (target, state):
        os.kill(target, signal.SIGKILL)            # alive until now: not a recycled pid
        _both_killed_then(tmp_path, state, verdict)


def _both_killed_then(tmp_path: Path, state: Path, verdict: str) -> None:
    with supervised(tmp_path):
        assert [v["resolved"] for v in _resolutions(state)] == [verdict]
        pub = str(tmp_path / "public.sock")
        if verdict == "applied":
            assert _namespaces(pub) == {1: "M0"}
            return
        assert _namespaces(pub) == {}
        with RpcClient.connect(pub) as c:               # the client's retry applies it once
            assert rn.nvmf_subsystem_add_ns(c, NQN, "M0") == 1
        assert _namespaces(pub) == {1: "M0"}


def test_effect_checks_are_specific_to_the_call() -> None:
    before = TargetState.empty()
    before.subsystems[NQN] = Subsystem(nqn=NQN)
    after = TargetState.from_dict(before.to_dict())
    after.subsystems[NQN].namespaces[1] = Namespace(nsid=1, bdev_name="M0")
    add = {"nqn": NQN, "namespace": {"bdev_name": "M0"}}
    assert inflight.effect_present("nvmf_subsystem_add_ns", add, before, after)
    assert inflight.result_of("nvmf_subsystem_add_ns", add, before, after) == 1
    assert not inflight.effect_present("nvmf_subsystem_add_ns", add, after, after)
    other = {"nqn": NQN, "namespace": {"bdev_name": "M1"}}
    assert not inflight.effect_present("nvmf_subsystem_add_ns", other, before, after)
    rm = {"nqn": NQN, "nsid": 1}
    assert inflight.effect_present("nvmf_subsystem_remove_ns", rm, after, before)
    assert not inflight.effect_present("nvmf_subsystem_remove_ns", rm, before, before)
    host = {"nqn": NQN, "host": "nqn.2014-08.org.h:1"}
    assert not inflight.effect_present("nvmf_subsystem_add_host", host, before, after)
    # Unknown methods: any configuration change counts as theirs.
    assert inflight.effect_present("vendor_frob", {}, before, after)
    assert not inflight.effect_present("vendor_frob", {}, before, before)


def test_namespace_host_effects_are_specific_to_host_and_namespace() -> None:
    before = TargetState.empty()
    before.subsystems[NQN] = Subsystem(nqn=NQN)
    before.subsystems[NQN].namespaces[1] = Namespace(nsid=1, bdev_name="M0",
                                                      no_auto_visible=True)
    after = TargetState.from_dict(before.to_dict())
    after.subsystems[NQN].namespaces[1].hosts = [HOST]
    add = {"nqn": NQN, "nsid": 1, "host": HOST}
    assert inflight.effect_present("nvmf_ns_add_host", add, before, after)
    assert not inflight.effect_present("nvmf_ns_add_host", add, after, after)
    assert inflight.effect_present("nvmf_ns_remove_host", add, after, before)
    assert not inflight.effect_present("nvmf_ns_remove_host", add, before, before)
    for other in ({**add, "nsid": 2}, {**add, "host": HOST + "0"}):
        assert not inflight.effect_present("nvmf_ns_add_host", other, before, after)
    assert inflight.result_of("nvmf_ns_add_host", add, before, after) is True
