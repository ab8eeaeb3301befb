"""Block devices under namespaces: RAM (like SPDK's malloc), file-backed (like aio) and
null (like SPDK's null bdev: reads return zeroes, writes are dropped).

The file-backed device opens with O_DIRECT where the file system allows it (so a write
acknowledged to the host is on the device, not in our page cache), and falls back to
buffered I/O plus fsync on Flush where it does not (tmpfs), saying so in the log.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import mmap
import os
import sys

from nvmf_phoenix.embedded.config_store import BlockDevice
from nvmf_phoenix.persist import shm
from nvmf_phoenix.rpc.errors import TargetError

from nvmf_phoenix.model import Bdev

log = logging.getLogger(__name__)
_LIBC = ctypes.CDLL(None, use_errno=True)
EINVAL_ERR = (-22, "Invalid argument")


def check_geometry(block_size: int, num_blocks: int) -> None:
    """SPDK's rule: block size a power of two from 512 to 64 KiB; at least one block."""
    if block_size < 512 or block_size > 65536 or block_size & (block_size - 1) or \
            num_blocks < 1:
        raise TargetError(*EINVAL_ERR, detail=f"block size {block_size} / {num_blocks} "
                          "blocks: block size must be a power of two in 512..65536")


class MallocDevice:
    """RAM-backed: contents live as long as the process (as with SPDK's malloc bdev),
    or as long as the shared-memory file ``mem`` maps, when one is given."""

    def __init__(self, block_size: int, num_blocks: int, mem: mmap.mmap | None = None,
                 path: str | None = None) -> None:
        check_geometry(block_size, num_blocks)
        self.block_size = block_size
        self.num_blocks = num_blocks
        if mem is None:
            try:
                mem = mmap.mmap(-1, block_size * num_blocks)
            except (OverflowError, OSError, MemoryError):   # SPDK: spdk_zmalloc() failed
                raise TargetError(-12, "Cannot allocate memory",
                                  f"{num_blocks} blocks of {block_size} bytes") from None
        self.mem = mem
        self.view = memoryview(self.mem)[:block_size * num_blocks]
        self.path = path

    def read(self, offset: int, length: int) -> memoryview:
        return self.view[offset:offset + length]

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self.view[offset:offset + len(data)] = data

    def flush(self) -> None:
        pass

    def discard(self, offset: int, length: int) -> None:
        self.write_zeroes(offset, length)

    def write_zeroes(self, offset: int, length: int) -> None:
        self.view[offset:offset + length] = bytes(length)

    def close(self) -> None:
        """The bdev is deleted: its memory goes, shared or not."""
        self.view.release()
        self.mem.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


class NullDevice:
    """SPDK's null bdev: a size and nothing behind it, for benchmarks and tests of the
    paths above the media. Reads return zeroes; writes, flushes and deallocations are
    acknowledged and dropped."""

    def __init__(self, block_size: int, num_blocks: int) -> None:
        check_geometry(block_size, num_blocks)
        self.block_size = block_size
        self.num_blocks = num_blocks

    def read(self, offset: int, length: int) -> bytes:
        return bytes(length)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        pass

    def flush(self) -> None:
        pass

    def discard(self, offset: int, length: int) -> None:
        pass

    def write_zeroes(self, offset: int, length: int) -> None:
        pass

    def close(self) -> None:
        pass


class FileDevice:
    """A file or block device; O_DIRECT with aligned bounce buffers when supported."""

    def __init__(self, path: str, block_size: int, readonly: bool = False) -> None:
        flags = os.O_RDONLY if readonly else os.O_RDWR
        try:
            self.fd = os.open(path, flags | os.O_DIRECT)
            self.direct = True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise TargetError(-exc.errno if exc.errno else -5, os.strerror(exc.errno or 5),
                                  f"cannot open {path}: {exc.strerror}") from None
            self.fd = os.open(path, flags)
            self.direct = False
            log.warning("%s: file system refuses O_DIRECT; using buffered I/O with fsync "
                        "on flush", path)
        size = os.lseek(self.fd, 0, os.SEEK_END)
        if size % block_size or size == 0:
            os.close(self.fd)
            raise TargetError(*EINVAL_ERR, detail=f"{path} is {size} bytes, not a non-zero "
                              f"multiple of the block size {block_size}")
        check_geometry(block_size, size // block_size)
        self.path = path
        self.block_size = block_size
        self.num_blocks = size // block_size
        self.readonly = readonly
        self._bounce = mmap.mmap(-1, 1 << 20)   # page-aligned, as O_DIRECT needs

    def _buffer(self, length: int) -> memoryview:
        if length > len(self._bounce):
            self._bounce.close()
            self._bounce = mmap.mmap(-1, (length + 4095) & ~4095)
        return memoryview(self._bounce)[:length]

    def read(self, offset: int, length: int) -> bytes | memoryview:
        if not self.direct:
            return os.pread(self.fd, length, offset)
        buf = self._buffer(length)
        got = os.preadv(self.fd, [buf], offset)
        return bytes(buf[:got]).ljust(length, b"\0")

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if not self.direct:
            os.pwrite(self.fd, data, offset)
            return
        buf = self._buffer(len(data))
        buf[:] = data
        os.pwritev(self.fd, [buf], offset)

    def flush(self) -> None:
        os.fsync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        try:
            _punch_hole(self.fd, offset, length)
        except OSError:
            self.write_zeroes(offset, length)

    def write_zeroes(self, offset: int, length: int) -> None:
        step = 1 << 20
        zeros = bytes(min(step, length))
        for pos in range(offset, offset + length, step):
            self.write(pos, memoryview(zeros)[:min(step, offset + length - pos)])

    def close(self) -> None:
        os.close(self.fd)
        self._bounce.close()


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """fallocate(PUNCH_HOLE|KEEP_SIZE) through libc; deallocated blocks then read zeroes."""
    if _LIBC.fallocate(fd, 0x02 | 0x01, ctypes.c_long(offset), ctypes.c_long(length)) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")


class SharedBdevs:
    """Bdev opener for the crash-transparent target: RAM bdevs live in shared-memory
    files under the target's scratch directory, so what a host wrote survives the
    serving process. With ``attach`` set (a successor resuming) an existing file is
    mapped as it is; otherwise it is created zeroed, as a new malloc bdev must be."""

    def __init__(self, sub: str, directory: str | None = None) -> None:
        self.sub = sub
        self.directory = directory
        self.attach = False

    def __call__(self, bdev: Bdev) -> BlockDevice:
        if bdev.kind != "malloc":
            return open_bdev(bdev)
        check_geometry(bdev.block_size, bdev.num_blocks)
        size = bdev.block_size * bdev.num_blocks
        if size > sys.maxsize:      # no file that large can be mapped: SPDK's ENOMEM
            raise TargetError(-12, "Cannot allocate memory",
                              f"malloc bdev {bdev.name}: {size} bytes")
        name = "bdev-" + hashlib.sha1(bdev.name.encode()).hexdigest()
        path = shm.find(name, self.directory, self.sub) if self.attach else None
        try:
            if path is not None and os.path.getsize(path) >= size:
                mem = shm.map_file(path, os.path.getsize(path), create=False)
            else:
                path, mem, _ = shm.place(name, size, self.directory, self.sub)
        except OSError as exc:
            raise TargetError(-12, "Cannot allocate memory",
                              f"malloc bdev {bdev.name}: {exc.strerror}") from None
        return MallocDevice(bdev.block_size, bdev.num_blocks, mem, path)


def open_bdev(bdev: Bdev) -> BlockDevice:
    """Open the backend for a configured bdev (the TargetCore's bdev opener)."""
    if bdev.kind == "malloc":
        return MallocDevice(bdev.block_size, bdev.num_blocks)
    if bdev.kind == "null":
        return NullDevice(bdev.block_size, bdev.num_blocks)
    if bdev.kind == "aio":
        if not bdev.filename:
            raise TargetError(-22, "Invalid argument", "aio bdev without a filename")
        dev = FileDevice(bdev.filename, bdev.block_size,
                         bool(bdev.params.get("readonly", False)))
        bdev.num_blocks = dev.num_blocks
        return dev
    raise TargetError(-22, "Invalid argument", f"unknown bdev kind {bdev.kind}")
