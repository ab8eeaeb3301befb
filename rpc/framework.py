"""Typed wrappers: framework, RPC introspection, version, keyring.

Like SPDK's python/spdk/rpc: one thin function per method, the client first, parameter
names exactly as SPDK's, unset optional parameters omitted.
"""
from __future__ import annotations

from typing import Any, Protocol


class Caller(Protocol):
    """Anything with SPDK's ``call(method, params)``: our RpcClient or an adapter."""

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any: ...


def params(**kwargs: Any) -> dict[str, Any] | None:
    """SPDK's remove_null: drop None values; no params at all when nothing is left."""
    out = {k: v for k, v in kwargs.items() if v is not None}
    return out or None


def spdk_get_version(client: Caller) -> dict[str, Any]:
    return client.call("spdk_get_version")


def rpc_get_methods(client: Caller, current: bool | None = None,
                    include_aliases: bool | None = None) -> list[str]:
    return client.call("rpc_get_methods", params(current=current,
                                                 include_aliases=include_aliases))


def framework_wait_init(client: Caller) -> bool:
    return client.call("framework_wait_init")


def framework_start_init(client: Caller) -> bool:
    return client.call("framework_start_init")


def framework_get_subsystems(client: Caller) -> list[dict[str, Any]]:
    return client.call("framework_get_subsystems")


def framework_get_config(client: Caller, name: str) -> list[dict[str, Any]]:
    return client.call("framework_get_config", {"name": name})


def save_config(client: Caller) -> dict[str, Any]:
    """What ``spdk-rpc save_config`` prints: every subsystem's framework_get_config."""
    subsystems = []
    for entry in framework_get_subsystems(client):
        name = entry["subsystem"]
        subsystems.append({"subsystem": name, "config": framework_get_config(client, name)})
    return {"subsystems": subsystems}


def spdk_kill_instance(client: Caller, sig_name: str = "SIGTERM") -> Any:
    return client.call("spdk_kill_instance", {"sig_name": sig_name})


def keyring_file_add_key(client: Caller, name: str, path: str) -> bool:
    return client.call("keyring_file_add_key", {"name": name, "path": path})


def keyring_file_remove_key(client: Caller, name: str) -> bool:
    return client.call("keyring_file_remove_key", {"name": name})


def keyring_get_keys(client: Caller) -> list[dict[str, Any]]:
    return client.call("keyring_get_keys")
