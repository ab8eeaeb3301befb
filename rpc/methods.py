"""What each JSON-RPC method means: one declaration per method, every layer derives from it.

A :class:`Method` says, for one SPDK method name:

- whether it only reads (the write-ahead front journals mutations and passes reads
  straight through; the crash-transparent target saves its configuration after
  mutations) and in which phases a target accepts it (SPDK's STARTUP/RUNTIME mask);
- ``put``: how its params, as a call or as a framework_get_config entry, put an object
  into the model (capture);
- ``emit``: its params for model objects (the restore planner), the inverse of ``put``;
- ``ops`` and ``readback``: the journaled change of a successful call, and the calls that
  read back what the target chose itself (a bdev's uuid, a namespace's nsid);
- ``effect`` and ``result``: whether a call whose answer was lost took effect, found by
  comparing the configuration before and after, and the answer it would have had.

A field left at its default means "not modelled": the caller takes the general path
(capture everything, compare whole configurations). The embedded target's handlers live
in ``embedded/`` under the same names (a test checks that each has a declaration). The
method-specific functions are in :mod:`.method_rules`, each next to its siblings.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nvmf_phoenix.rpc import method_rules as r
from nvmf_phoenix.rpc import method_rules_ns_hosts as nh
from nvmf_phoenix.rpc.method_rules import Call, ModelMismatch, NotModelled, Op, Params

from nvmf_phoenix.model import TargetState

__all__ = ["METHODS", "RUNTIME", "STARTUP", "Call", "Method", "ModelMismatch", "NotModelled",
           "Op", "Params", "bdev_method", "emit", "is_read_only", "is_startup_option",
           "makes_bdevs", "method"]

STARTUP, RUNTIME = "startup", "runtime"
BOTH = frozenset({STARTUP, RUNTIME})
STARTUP_ONLY = frozenset({STARTUP})
RUNTIME_ONLY = frozenset({RUNTIME})
# Methods not declared here are read-only when their names say so (SPDK's naming).
READ_ONLY_PREFIXES = ("spdk_get_version", "rpc_get_methods", "framework_wait_init",
                      "framework_get_", "bdev_get_", "nvmf_get_", "keyring_get_",
                      "nvmf_subsystem_get_", "nvmf_discovery_get_", "save_config",
                      "sock_get_", "sock_impl_get_", "iobuf_get_")

Effect = Callable[[Params, TargetState, TargetState], bool | None]


@dataclass(frozen=True)
class Method:
    """One JSON-RPC method; see the module docstring for what each part is for."""

    name: str
    read_only: bool = False
    phases: frozenset[str] = RUNTIME_ONLY
    put: Callable[[TargetState, Params], None] | None = None
    emit: Callable[..., Params | None] | None = None
    ops: Callable[[Params, Any, list[Any], TargetState], list[Op]] | None = None
    readback: Callable[[Params, Any], list[Call]] = r.nothing
    # names an NVM subsystem (params "nqn") that must be in the model for ops to apply
    on_subsystem: bool = False
    # changes listener ANA states when the subsystem reports ANA (read back, journaled)
    ana_touching: bool = False
    # whether the change of this call, with these params, is modelled at all
    modelled_if: Callable[[Params, TargetState], bool] = r.always
    # True/False: the change is/is not there; None: compare whole configurations
    effect: Effect | None = None
    result: Callable[[Params, TargetState, TargetState], Any] = r.true


def _table(*methods: Method) -> dict[str, Method]:
    table: dict[str, Method] = {}
    for m in methods:
        if m.name in table:
            raise ValueError(f"{m.name} declared twice")
        table[m.name] = m
    return table


def _reads(name: str, phases: frozenset[str] = BOTH) -> Method:
    return Method(name, read_only=True, phases=phases)


METHODS = _table(
    # -- framework, introspection ----------------------------------------------------
    _reads("spdk_get_version"),
    _reads("rpc_get_methods"),
    _reads("framework_wait_init"),
    Method("framework_start_init", phases=STARTUP_ONLY, emit=r.no_params),
    _reads("framework_get_subsystems"),
    _reads("framework_get_config"),
    Method("spdk_kill_instance", phases=BOTH),
    # -- bdevs -----------------------------------------------------------------------
    Method("bdev_malloc_create", put=r.bdev_put("malloc"), emit=r.bdev_params,
           ops=r.bdev_ops("malloc"), readback=r.bdev_readback,
           effect=r.bdev_appears, result=r.bdev_result),
    Method("bdev_aio_create", put=r.bdev_put("aio"), emit=r.bdev_params,
           ops=r.bdev_ops("aio"), readback=r.bdev_readback,
           effect=r.bdev_appears, result=r.bdev_result),
    Method("bdev_malloc_delete", emit=r.bdev_name, ops=r.bdev_gone,
           modelled_if=r.bdev_unused, effect=r.bdev_vanishes),
    Method("bdev_aio_delete", emit=r.bdev_name, ops=r.bdev_gone,
           modelled_if=r.bdev_unused, effect=r.bdev_vanishes),
    _reads("bdev_get_bdevs", RUNTIME_ONLY),
    Method("bdev_set_options", phases=STARTUP_ONLY),
    Method("bdev_wait_for_examine"),   # waits for nothing here; not read-only in SPDK's names
    # -- keyring ---------------------------------------------------------------------
    Method("keyring_file_add_key", put=r.key_put, emit=r.key_params, ops=r.key_ops),
    Method("keyring_file_remove_key", ops=r.key_gone),
    _reads("keyring_get_keys", RUNTIME_ONLY),
    # -- nvmf: STARTUP options, transports ---------------------------------------------
    Method("nvmf_set_config", phases=STARTUP_ONLY, put=r.startup_config_put,
           emit=r.startup_config_params),
    Method("nvmf_set_max_subsystems", phases=STARTUP_ONLY, put=r.max_subsystems_put,
           emit=r.max_subsystems_params),
    Method("nvmf_set_crdt", phases=STARTUP_ONLY, put=r.crdt_put, emit=r.crdt_params),
    Method("nvmf_create_transport", put=r.transport_put, emit=r.transport_params,
           effect=r.transport_appears),
    _reads("nvmf_get_transports", RUNTIME_ONLY),
    # -- nvmf: subsystems and what hangs off them ---------------------------------------
    Method("nvmf_create_subsystem", put=r.subsystem_put, emit=r.subsystem_params,
           ops=r.subsystem_ops, readback=r.subsystem_readback,
           effect=r.subsystem_appears),
    Method("nvmf_delete_subsystem", emit=r.subsystem_nqn, ops=r.subsystem_gone,
           effect=r.subsystem_vanishes),
    _reads("nvmf_get_subsystems", RUNTIME_ONLY),
    Method("nvmf_subsystem_add_ns", put=r.ns_put, emit=r.ns_params, ops=r.ns_ops,
           readback=r.subsystem_readback, on_subsystem=True, ana_touching=True,
           effect=r.ns_appears, result=r.ns_result),
    Method("nvmf_subsystem_remove_ns", emit=r.ns_nsid, ops=r.ns_gone, on_subsystem=True,
           ana_touching=True, effect=r.ns_vanishes),
    Method("nvmf_subsystem_add_host", put=r.host_put, emit=r.host_params, ops=r.host_ops,
           on_subsystem=True, effect=r.host_appears),
    Method("nvmf_subsystem_remove_host", emit=r.host_nqn, ops=r.host_gone,
           on_subsystem=True, effect=r.host_vanishes),
    # -- nvmf: who sees a no_auto_visible namespace -------------------------------------
    Method("nvmf_ns_add_host", put=nh.ns_host_put, emit=nh.ns_host_params,
           ops=nh.ns_host_ops, on_subsystem=True, modelled_if=nh.ns_known,
           effect=nh.ns_host_appears),
    Method("nvmf_ns_remove_host", emit=nh.ns_host_params, ops=nh.ns_host_gone,
           on_subsystem=True, modelled_if=nh.ns_known, effect=nh.ns_host_vanishes),
    Method("nvmf_subsystem_allow_any_host", emit=r.allow_any_host_params,
           ops=r.allow_any_host_ops, on_subsystem=True, effect=r.allow_any_host_set),
    Method("nvmf_subsystem_add_listener", put=r.listener_put, emit=r.listener_params,
           ops=r.listener_ops, on_subsystem=True, ana_touching=True,
           effect=r.listener_appears),
    Method("nvmf_subsystem_remove_listener", emit=r.listener_address,
           ops=r.listener_gone, on_subsystem=True, effect=r.listener_vanishes),
    Method("nvmf_subsystem_listener_set_ana_state", emit=r.ana_params, ops=r.ana_ops,
           on_subsystem=True, ana_touching=True, effect=r.ana_set),
    _reads("nvmf_subsystem_get_listeners", RUNTIME_ONLY),
    _reads("nvmf_subsystem_get_controllers", RUNTIME_ONLY),
    _reads("nvmf_subsystem_get_qpairs", RUNTIME_ONLY),
    _reads("nvmf_get_stats", RUNTIME_ONLY),
    # -- nvmf: discovery ---------------------------------------------------------------
    Method("nvmf_discovery_add_referral", put=r.referral_put, emit=r.referral_params),
    Method("nvmf_discovery_remove_referral"),
    _reads("nvmf_discovery_get_referrals", RUNTIME_ONLY),
    # -- null bdevs (reads return zeroes, writes are dropped) ---------------------------
    Method("bdev_null_create", put=r.bdev_put("null"), emit=r.bdev_params,
           ops=r.bdev_ops("null"), readback=r.bdev_readback,
           effect=r.bdev_appears, result=r.bdev_result),
    Method("bdev_null_delete", emit=r.bdev_name, ops=r.bdev_gone,
           modelled_if=r.bdev_unused, effect=r.bdev_vanishes),
    Method("bdev_null_resize"),   # not modelled as an op: capture reads the new size
    # -- bdev statistics: I/O counters and latency histograms ---------------------------
    _reads("bdev_get_iostat", RUNTIME_ONLY),
    _reads("bdev_get_histogram", RUNTIME_ONLY),
    Method("bdev_enable_histogram"),
    Method("bdev_reset_iostat"),
    Method("bdev_aio_rescan"),
    # Carried opaquely; named here because pair mode refuses them (recovery/pair_view.py):
    # their data or metadata belongs to one process.
    Method("bdev_lvol_create_lvstore"),
    Method("bdev_lvol_create"),
    Method("bdev_nvme_attach_controller"),    # not modelled as an op: capture reads the new size
    # -- nvmf targets: one, "nvmf_tgt", on the embedded target -------------------------
    Method("nvmf_create_target"),
    Method("nvmf_delete_target"),
    _reads("nvmf_get_targets", RUNTIME_ONLY),
    # mDNS pull registration requests: nvmf_tgt built without avahi answers -95 (as here)
    Method("nvmf_publish_mdns_prr"),
    Method("nvmf_stop_mdns_prr"),
    # -- nvmf: a namespace's ANA group, a host's DH-HMAC-CHAP keys (general path) ------
    Method("nvmf_subsystem_set_ns_ana_group", on_subsystem=True, ana_touching=True),
    Method("nvmf_subsystem_set_keys", on_subsystem=True),
    # -- framework: scheduler, reactors, CPU core locks ---------------------------------
    # On the embedded target these are remembered and reported, without effect.
    Method("framework_set_scheduler", phases=BOTH),
    _reads("framework_get_scheduler"),
    _reads("framework_get_reactors", RUNTIME_ONLY),
    _reads("framework_get_governor", RUNTIME_ONLY),
    _reads("framework_get_pci_devices", RUNTIME_ONLY),
    Method("framework_enable_cpumask_locks", phases=BOTH),
    Method("framework_disable_cpumask_locks", phases=BOTH),
    # -- options of libraries and modules a save_config carries -------------------------
    # The embedded target accepts, remembers and reports them; they have no effect there
    # (no socket implementations, iobuf pools, accel engine, NVMe or RAID bdevs).
    Method("sock_impl_set_options", phases=STARTUP_ONLY),
    _reads("sock_impl_get_options"),
    Method("sock_set_default_impl", phases=STARTUP_ONLY),
    _reads("sock_get_default_impl"),
    Method("iobuf_set_options", phases=STARTUP_ONLY),
    _reads("iobuf_get_stats", RUNTIME_ONLY),
    Method("accel_set_options", phases=STARTUP_ONLY),
    Method("accel_assign_opc", phases=STARTUP_ONLY),   # which accel module runs an opcode
    Method("bdev_nvme_set_options", phases=BOTH),
    Method("bdev_nvme_set_hotplug"),
    Method("bdev_raid_set_options", phases=BOTH),
)
# Which method creates (and deletes) a bdev of each kind.
BDEV_CREATE = {"malloc": "bdev_malloc_create", "aio": "bdev_aio_create",
               "null": "bdev_null_create"}
BDEV_DELETE = {"malloc": "bdev_malloc_delete", "aio": "bdev_aio_delete",
               "null": "bdev_null_delete"}


def method(name: str) -> Method:
    """The declaration of ``name``; for a method not declared here, what its name says:
    read-only by SPDK's naming, and a ``bdev_*_create``/``_delete`` of another bdev module
    recognised after a lost answer by the ``name`` it was given."""
    m = METHODS.get(name)
    if m is not None:
        return m
    if name.startswith("bdev_") and name.endswith("_create"):
        return Method(name, effect=r.bdev_appears, result=r.bdev_result)
    if name.startswith("bdev_") and name.endswith("_delete"):
        return Method(name, effect=r.bdev_vanishes)
    return Method(name, read_only=name.startswith(READ_ONLY_PREFIXES))


def is_read_only(name: str) -> bool:
    """True for a call that changes nothing on the target."""
    return method(name).read_only


def emit(name: str, *objs: Any) -> Any:
    """``name``'s params for model objects ``objs`` (what the planner sends)."""
    make = METHODS[name].emit
    if make is None:
        raise NotModelled(f"{name} declares no params for model objects")
    return make(*objs)


def bdev_method(kind: str, create: bool = True) -> str:
    """The method that creates (or deletes) a bdev of ``kind``."""
    return (BDEV_CREATE if create else BDEV_DELETE)[kind]


# Bdev module calls that make bdevs without ending in _create (SPDK's naming otherwise).
BDEV_MAKERS = ("bdev_nvme_attach_controller", "bdev_nvme_start_discovery",
               "bdev_nvme_start_mdns_discovery")


def makes_bdevs(name: str) -> bool:
    """Whether ``name`` makes bdevs (the other calls of the bdev subsystem's configuration
    set something on a bdev made before: QoS, histograms, examine, multipath policy)."""
    return name.endswith("_create") or name in BDEV_MAKERS


# SPDK names the methods that set a module's options so (iobuf_set_options,
# sock_impl_set_options, sock_set_default_impl, bdev_nvme_set_options...; the
# scheduler's framework_set_scheduler).
OPTION_SUFFIXES = ("_set_options", "_set_default_impl", "_set_scheduler")


def is_startup_option(name: str) -> bool:
    """Whether ``name`` sets options that belong before framework_start_init: declared
    STARTUP-only, or an option setter (by SPDK's naming) a STARTUP target accepts."""
    m = METHODS.get(name)
    if m is not None and m.phases == STARTUP_ONLY:
        return True
    return name.endswith(OPTION_SUFFIXES) and (m is None or STARTUP in m.phases)
