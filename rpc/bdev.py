"""Typed wrappers for the bdev methods nvmf-phoenix uses (SPDK parameter names)."""
from __future__ import annotations

from typing import Any

from nvmf_phoenix.rpc.framework import Caller, params


def bdev_malloc_create(client: Caller, num_blocks: int, block_size: int,
                       name: str | None = None, uuid: str | None = None,
                       physical_block_size: int | None = None,
                       optimal_io_boundary: int | None = None, md_size: int | None = None,
                       **extra: Any) -> str:
    return client.call("bdev_malloc_create", params(
        name=name, num_blocks=num_blocks, block_size=block_size, uuid=uuid,
        physical_block_size=physical_block_size, optimal_io_boundary=optimal_io_boundary,
        md_size=md_size, **extra))


def bdev_malloc_delete(client: Caller, name: str) -> bool:
    return client.call("bdev_malloc_delete", {"name": name})


def bdev_aio_create(client: Caller, filename: str, name: str, block_size: int | None = None,
                    readonly: bool | None = None, fallocate: bool | None = None,
                    uuid: str | None = None) -> str:
    return client.call("bdev_aio_create", params(
        name=name, filename=filename, block_size=block_size, readonly=readonly,
        fallocate=fallocate, uuid=uuid))


def bdev_aio_delete(client: Caller, name: str) -> bool:
    return client.call("bdev_aio_delete", {"name": name})


def bdev_get_bdevs(client: Caller, name: str | None = None,
                   timeout: int | None = None) -> list[dict[str, Any]]:
    return client.call("bdev_get_bdevs", params(name=name, timeout=timeout))
