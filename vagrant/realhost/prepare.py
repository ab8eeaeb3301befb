#!/usr/bin/env python3
"""Prepare a real Linux NVMe/TCP host for tests: Debian's kernel + a tiny initramfs.

Everything comes from Debian's packages (qemu-system-x86, busybox-static, kmod, cpio and
the kernel package behind linux-image-amd64, resolved anew each time). Results are cached
in $NVMF_PHOENIX_REALHOST_CACHE (default ~/.cache/nvmf-phoenix/realhost); a second run
with the same kernel does nothing. Every external step runs under a timeout.

Prints the paths as JSON on the last line: {"kernel": ..., "initrd": ..., "version": ...}.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Crypto helpers first: nvme-core (t10-pi) and the digests look them up by name at run
# time, and the initramfs has no modprobe to fetch them on demand.
MODULES = ["crypto/crct10dif_generic", "crypto/crc64_rocksoft_generic",
           "crypto/crc32c_generic", "drivers/virtio/virtio_pci", "drivers/net/virtio_net",
           "drivers/nvme/host/nvme-tcp", "drivers/nvme/target/nvmet-tcp",
           "drivers/block/brd"]
HOST_PACKAGES = ["qemu-system-x86", "busybox-static", "kmod", "cpio"]


def run(cmd: list[str], timeout: float = 300, **kw: object) -> str:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout,
                         **kw)  # type: ignore[call-overload]
    return str(out.stdout)


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "nvmf-phoenix" / "realhost"
    return Path(os.environ.get("NVMF_PHOENIX_REALHOST_CACHE", default))


def kernel_package() -> str:
    try:
        deps = run(["apt-cache", "depends", "linux-image-amd64"], 60)
    except subprocess.CalledProcessError:
        deps = ""
    if "linux-image-" not in deps.replace("linux-image-amd64", ""):
        run(["apt-get", "update", "-qq"], 600)
        deps = run(["apt-cache", "depends", "linux-image-amd64"], 60)
    for line in deps.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split()[1]
    raise SystemExit("cannot resolve the kernel package behind linux-image-amd64")


def extract_kernel(pkg: str, cache: Path) -> Path:
    root = cache / pkg
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    run(["apt-get", "download", pkg], 600, cwd=str(root))
    deb = next(root.glob("*.deb"))
    run(["dpkg-deb", "-x", str(deb), str(root / "x")], 300)
    deb.unlink()
    (root / "done").write_text(pkg)
    return root


def module_order(moddir: Path) -> list[Path]:
    """Modules and their dependencies (modinfo), dependencies first."""
    index = {p.name.split(".ko")[0].replace("_", "-"): p for p in moddir.rglob("*.ko*")}
    order: list[Path] = []

    def visit(name: str) -> None:
        path = index[name.replace("_", "-")]
        if path in order:
            return
        deps = run(["/sbin/modinfo", "-F", "depends", str(path)], 30).strip()
        for d in filter(None, deps.split(",")):
            visit(d)
        order.append(path)

    for m in MODULES:
        visit(Path(m).name)
    return order


def build_initrd(root: Path, out: Path) -> None:
    version = next((root / "x" / "lib" / "modules").iterdir()).name
    mods = module_order(root / "x" / "lib" / "modules" / version / "kernel")
    stage = root / "initramfs"
    shutil.rmtree(stage, ignore_errors=True)
    for d in ("bin", "dev", "proc", "sys", "tmp", "mods", "sys/kernel/config"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy(busybox, stage / "bin" / "busybox")
    for i, m in enumerate(mods):
        shutil.copy(m, stage / "mods" / f"{i:02d}-{m.name}")
    shutil.copy(HERE / "init.sh", stage / "init")
    (stage / "init").chmod(0o755)
    listing = run(["sh", "-c", "find . | sort"], 60, cwd=str(stage))
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=listing.encode(),
                          cwd=str(stage), capture_output=True, check=True, timeout=120)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        subprocess.run(["gzip", "-1"], input=cpio.stdout, stdout=f, check=True, timeout=120)
    tmp.rename(out)


def main() -> None:
    missing = [p for p, exe in (("qemu-system-x86", "qemu-system-x86_64"),
                                ("busybox-static", "busybox"), ("cpio", "cpio"))
               if not shutil.which(exe)]
    if missing:
        raise SystemExit(f"missing Debian packages: {' '.join(missing)} "
                         "(run .ci/install-system-deps as root)")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    pkg = kernel_package()
    root = extract_kernel(pkg, cache)
    kernel = next((root / "x" / "boot").glob("vmlinuz-*"))
    initrd = root / "initrd.gz"
    stamp = root / "initrd.stamp"
    want = (HERE / "init.sh").read_text() + "\n".join(MODULES)
    if not initrd.exists() or not stamp.exists() or stamp.read_text() != want:
        build_initrd(root, initrd)
        stamp.write_text(want)
    print(json.dumps({"kernel": str(kernel), "initrd": str(initrd), "version": pkg,
                      "initrd_bytes": initrd.stat().st_size}))


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        sys.exit(f"prepare failed: {' '.join(exc.cmd)}: {exc.stderr}")
