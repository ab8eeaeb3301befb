"""What each JSON-RPC method means: the one table every layer derives from.

Whether a method only reads is a fact about the method, needed by the write-ahead front
(which journals mutations and passes reads straight through) and by the crash-transparent
target (which saves its configuration after a batch of mutations), so it is declared here,
below both.
"""
from __future__ import annotations

READ_ONLY_PREFIXES = ("spdk_get_version", "rpc_get_methods", "framework_wait_init",
                      "framework_get_", "bdev_get_", "nvmf_get_", "keyring_get_",
                      "nvmf_subsystem_get_", "nvmf_discovery_get_", "save_config")


def is_read_only(method: str) -> bool:
    """True for a call that changes nothing on the target."""
    return method.startswith(READ_ONLY_PREFIXES)
