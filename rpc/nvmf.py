"""Typed wrappers for SPDK's nvmf_* methods (parameter names exactly as SPDK's).

``listen_address`` arguments are dicts as SPDK takes them: ``{"trtype": "tcp", "adrfam":
"ipv4", "traddr": "127.0.0.1", "trsvcid": "4420"}``; :func:`listen_address` builds one.
"""
from __future__ import annotations

from typing import Any

from nvmf_phoenix.rpc.framework import Caller, params


def listen_address(traddr: str, trsvcid: str | int, trtype: str = "tcp",
                   adrfam: str = "ipv4") -> dict[str, str]:
    return {"trtype": trtype, "adrfam": adrfam, "traddr": traddr, "trsvcid": str(trsvcid)}


def nvmf_set_config(client: Caller, **options: Any) -> bool:
    """STARTUP only (target started with --wait-for-rpc)."""
    return client.call("nvmf_set_config", params(**options))


def nvmf_set_max_subsystems(client: Caller, max_subsystems: int) -> bool:
    """STARTUP only."""
    return client.call("nvmf_set_max_subsystems", {"max_subsystems": max_subsystems})


def nvmf_set_crdt(client: Caller, crdt1: int | None = None, crdt2: int | None = None,
                  crdt3: int | None = None) -> bool:
    """STARTUP only."""
    return client.call("nvmf_set_crdt", params(crdt1=crdt1, crdt2=crdt2, crdt3=crdt3))


def nvmf_create_transport(client: Caller, trtype: str, **options: Any) -> bool:
    return client.call("nvmf_create_transport", params(trtype=trtype, **options))


def nvmf_get_transports(client: Caller, trtype: str | None = None) -> list[dict[str, Any]]:
    return client.call("nvmf_get_transports", params(trtype=trtype))


def nvmf_create_subsystem(client: Caller, nqn: str, serial_number: str | None = None,
                          model_number: str | None = None, allow_any_host: bool | None = None,
                          max_namespaces: int | None = None, ana_reporting: bool | None = None,
                          min_cntlid: int | None = None, max_cntlid: int | None = None,
                          **extra: Any) -> bool:
    return client.call("nvmf_create_subsystem", params(
        nqn=nqn, serial_number=serial_number, model_number=model_number,
        allow_any_host=allow_any_host, max_namespaces=max_namespaces,
        ana_reporting=ana_reporting, min_cntlid=min_cntlid, max_cntlid=max_cntlid, **extra))


def nvmf_delete_subsystem(client: Caller, nqn: str) -> bool:
    return client.call("nvmf_delete_subsystem", {"nqn": nqn})


def nvmf_get_subsystems(client: Caller, nqn: str | None = None) -> list[dict[str, Any]]:
    return client.call("nvmf_get_subsystems", params(nqn=nqn))


def nvmf_subsystem_add_ns(client: Caller, nqn: str, bdev_name: str, nsid: int | None = None,
                          uuid: str | None = None, nguid: str | None = None,
                          eui64: str | None = None, anagrpid: int | None = None,
                          ptpl_file: str | None = None, no_auto_visible: bool | None = None
                          ) -> int:
    ns = params(bdev_name=bdev_name, nsid=nsid, uuid=uuid, nguid=nguid, eui64=eui64,
                anagrpid=anagrpid, ptpl_file=ptpl_file, no_auto_visible=no_auto_visible)
    return client.call("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": ns})


def nvmf_subsystem_remove_ns(client: Caller, nqn: str, nsid: int) -> bool:
    return client.call("nvmf_subsystem_remove_ns", {"nqn": nqn, "nsid": nsid})


def nvmf_ns_add_host(client: Caller, nqn: str, nsid: int, host: str) -> bool:
    """Let ``host`` see namespace ``nsid`` (one added with no_auto_visible)."""
    return client.call("nvmf_ns_add_host", {"nqn": nqn, "nsid": nsid, "host": host})


def nvmf_ns_remove_host(client: Caller, nqn: str, nsid: int, host: str) -> bool:
    return client.call("nvmf_ns_remove_host", {"nqn": nqn, "nsid": nsid, "host": host})


def nvmf_subsystem_add_host(client: Caller, nqn: str, host: str, psk: str | None = None,
                            dhchap_key: str | None = None,
                            dhchap_ctrlr_key: str | None = None) -> bool:
    return client.call("nvmf_subsystem_add_host", params(
        nqn=nqn, host=host, psk=psk, dhchap_key=dhchap_key,
        dhchap_ctrlr_key=dhchap_ctrlr_key))


def nvmf_subsystem_remove_host(client: Caller, nqn: str, host: str) -> bool:
    return client.call("nvmf_subsystem_remove_host", {"nqn": nqn, "host": host})


def nvmf_subsystem_allow_any_host(client: Caller, nqn: str, allow_any_host: bool) -> bool:
    return client.call("nvmf_subsystem_allow_any_host",
                       {"nqn": nqn, "allow_any_host": allow_any_host})


def nvmf_subsystem_add_listener(client: Caller, nqn: str, listen_address: dict[str, str],
                                ana_state: str | None = None,
                                secure_channel: bool | None = None) -> bool:
    return client.call("nvmf_subsystem_add_listener", params(
        nqn=nqn, listen_address=listen_address, ana_state=ana_state,
        secure_channel=secure_channel))


def nvmf_subsystem_remove_listener(client: Caller, nqn: str,
                                   listen_address: dict[str, str]) -> bool:
    return client.call("nvmf_subsystem_remove_listener",
                       {"nqn": nqn, "listen_address": listen_address})


def nvmf_subsystem_listener_set_ana_state(client: Caller, nqn: str,
                                          listen_address: dict[str, str], ana_state: str,
                                          anagrpid: int | None = None) -> bool:
    return client.call("nvmf_subsystem_listener_set_ana_state", params(
        nqn=nqn, listen_address=listen_address, ana_state=ana_state, anagrpid=anagrpid))


def nvmf_subsystem_get_listeners(client: Caller, nqn: str) -> list[dict[str, Any]]:
    """Pauses the subsystem's admin queues while it runs: do not poll it often."""
    return client.call("nvmf_subsystem_get_listeners", {"nqn": nqn})


def nvmf_subsystem_get_controllers(client: Caller, nqn: str) -> list[dict[str, Any]]:
    """Pauses the subsystem's admin queues while it runs: do not poll it often."""
    return client.call("nvmf_subsystem_get_controllers", {"nqn": nqn})


def nvmf_subsystem_get_qpairs(client: Caller, nqn: str) -> list[dict[str, Any]]:
    """Pauses the subsystem's admin queues while it runs: do not poll it often."""
    return client.call("nvmf_subsystem_get_qpairs", {"nqn": nqn})


def nvmf_get_stats(client: Caller) -> dict[str, Any]:
    return client.call("nvmf_get_stats")


def nvmf_discovery_add_referral(client: Caller, address: dict[str, str],
                                subnqn: str | None = None,
                                secure_channel: bool | None = None) -> bool:
    return client.call("nvmf_discovery_add_referral", params(
        address=address, subnqn=subnqn, secure_channel=secure_channel))


def nvmf_discovery_get_referrals(client: Caller) -> list[dict[str, Any]]:
    return client.call("nvmf_discovery_get_referrals")
