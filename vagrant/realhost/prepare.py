#!/usr/bin/env python3
"""Prepare a real Linux NVMe/TCP host for tests: Debian's kernel + a tiny initramfs.

Everything comes from Debian's packages (qemu-system-x86, busybox-static, kmod, cpio and
the kernel package behind linux-image-amd64, resolved anew each time). Results are cached
in $NVMF_PHOENIX_REALHOST_CACHE (default ~/.cache/nvmf-phoenix/realhost); a second run
with the same kernel does nothing. Every external step runs under a timeout.

With --tools, a second initramfs, ``initrd_tools``, adds Debian's fio and nvme-cli with
every library ``ldd`` lists (packages this machine lacks are fetched with ``apt-get
download`` too): the "pair" scenario needs them, and the other scenarios boot faster
without 38 MB of them.

With NVMF_PHOENIX_REALHOST_SUITE set (e.g. ``bookworm-backports``), the kernel comes
from that Debian suite instead of this machine's own: apt runs with a private sources list
and package lists under the cache, so the machine's apt configuration is not touched. The
guest's tools still come from this machine's suite (user space does not change the host's
NVMe behaviour; its kernel does).

Prints the paths as JSON on the last line: {"kernel": ..., "initrd": ..., "version": ...,
and with --tools "initrd_tools": ...}.
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
# Guest tools: the packages, and the programs from them that go into the tools initramfs.
TOOL_PACKAGES = ["fio", "nvme-cli", "libnvme1"]
TOOL_PROGRAMS = ["usr/bin/fio", "usr/sbin/nvme"]
# Where the packages keep libraries (ceph's private directory is librados's RUNPATH).
LIBDIRS = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu",
           "usr/lib/x86_64-linux-gnu/ceph"]


def run(cmd: list[str], timeout: float = 300, **kw: object) -> str:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout,
                         **kw)  # type: ignore[call-overload]
    return str(out.stdout)


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "nvmf-phoenix" / "realhost"
    return Path(os.environ.get("NVMF_PHOENIX_REALHOST_CACHE", default))


def kernel_apt(cache: Path) -> list[str]:
    """apt options that resolve the kernel from NVMF_PHOENIX_REALHOST_SUITE (none: this
    machine's own sources)."""
    suite = os.environ.get("NVMF_PHOENIX_REALHOST_SUITE", "")
    if not suite:
        return []
    if not suite.replace("-", "").isalnum():
        raise SystemExit(f"NVMF_PHOENIX_REALHOST_SUITE={suite!r} is not a Debian suite name")
    apt = cache / f"apt-{suite}"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(f"deb http://deb.debian.org/debian {suite} main\n")
    return [f"-oDir::Etc::sourcelist={apt / 'sources.list'}", "-oDir::Etc::sourceparts=-",
            f"-oDir::State::lists={apt / 'lists'}", "-oAPT::Get::List-Cleanup=0"]


def kernel_package(apt: list[str]) -> str:
    try:
        deps = run(["apt-cache", *apt, "depends", "linux-image-amd64"], 60)
    except subprocess.CalledProcessError:
        deps = ""
    if "linux-image-" not in deps.replace("linux-image-amd64", ""):
        run(["apt-get", *apt, "update", "-qq"], 600)
        deps = run(["apt-cache", *apt, "depends", "linux-image-amd64"], 60)
    for line in deps.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split()[1]
    raise SystemExit("cannot resolve the kernel package behind linux-image-amd64")


def extract_kernel(pkg: str, cache: Path, apt: list[str]) -> Path:
    root = cache / pkg
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    run(["apt-get", *apt, "download", pkg], 600, cwd=str(root))
    deb = next(root.glob("*.deb"))
    run(["dpkg-deb", "-x", str(deb), str(root / "x")], 300)
    deb.unlink()
    (root / "done").write_text(pkg)
    return root


def installed(pkg: str) -> bool:
    probe = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True,
                           text=True, timeout=30)
    return "ok installed" in probe.stdout


def lib_depends(pkg: str) -> list[str]:
    """The library packages ``pkg`` depends on directly (alternatives and virtuals skipped:
    a real dependency is always listed plainly too)."""
    out = run(["apt-cache", "depends", "--no-recommends", "--no-suggests", pkg], 60)
    return [line.split()[1] for line in out.splitlines()
            if line.strip().startswith("Depends: lib") and "<" not in line]


def ldd(root: Path, programs: list[Path]) -> dict[str, str]:
    """soname -> resolved path (or "" when not found) for ``programs``, looking in the
    extracted packages first."""
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(str(root / "x" / d) for d in LIBDIRS))
    libs: dict[str, str] = {}
    for prog in programs:
        out = run(["ldd", str(prog)], 60, env=env)
        for line in out.splitlines():
            name, arrow, where = line.strip().partition(" => ")
            if arrow:
                path = where.split(" (")[0].strip()
                libs[name] = "" if path == "not found" else path
    return libs


def fetch_tools(cache: Path) -> Path:
    """Extract the tool packages, and the library packages this machine lacks, until
    ``ldd`` finds every library the tools need. Cached like the kernel."""
    root = cache / ("tools-" + "-".join(TOOL_PACKAGES))
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    (root / "debs").mkdir(parents=True)
    fetched: set[str] = set()
    queue = list(TOOL_PACKAGES)
    for _round in range(10):
        for pkg in queue:
            run(["apt-get", "download", pkg], 600, cwd=str(root / "debs"))
            fetched.add(pkg)
        for deb in (root / "debs").glob("*.deb"):
            run(["dpkg-deb", "-x", str(deb), str(root / "x")], 300)
            deb.unlink()
        missing = [n for n, p in ldd(root, [root / "x" / t for t in TOOL_PROGRAMS]).items()
                   if not p]
        if not missing:
            (root / "done").write_text(" ".join(sorted(fetched)))
            return root
        queue = sorted({d for p in fetched for d in lib_depends(p)
                        if d not in fetched and not installed(d)})
        if not queue:
            break
    raise SystemExit(f"no package found for the tools' libraries: {missing}")


def stage_tools(tools: Path, stage: Path) -> None:
    """fio and nvme with their libraries where the dynamic loader looks by default."""
    progs = [tools / "x" / t for t in TOOL_PROGRAMS]
    libdir = stage / "lib" / "x86_64-linux-gnu"
    libdir.mkdir(parents=True, exist_ok=True)
    for name, path in ldd(tools, progs).items():
        shutil.copy(path, libdir / name)
    (stage / "lib64").mkdir(exist_ok=True)
    shutil.copy("/lib64/ld-linux-x86-64.so.2", stage / "lib64" / "ld-linux-x86-64.so.2")
    for prog in progs:
        shutil.copy(prog, stage / "bin" / prog.name)
    (stage / "etc" / "nvme").mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "pair.sh", stage / "pair.sh")


def module_name(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("_", "-")


def module_order(moddir: Path) -> list[Path]:
    """Modules and their dependencies (modinfo), dependencies first; those built into
    this kernel (newer kernels build in some crypto and virtio) are skipped."""
    index = {module_name(p.name): p for p in moddir.rglob("*.ko*")}
    builtin_list = moddir.parent / "modules.builtin"
    builtin = ({module_name(line) for line in builtin_list.read_text().split()}
               if builtin_list.exists() else set())
    order: list[Path] = []

    def visit(name: str) -> None:
        if module_name(name) in builtin:
            return
        path = index[module_name(name)]
        if path in order:
            return
        deps = run(["/sbin/modinfo", "-F", "depends", str(path)], 30).strip()
        for d in filter(None, deps.split(",")):
            visit(d)
        order.append(path)

    for m in MODULES:
        visit(Path(m).name)
    return order


def copy_module(src: Path, dst: Path) -> None:
    """Copy a module uncompressed: busybox's insmod loads plain .ko files only."""
    if src.name.endswith(".ko"):
        shutil.copy(src, dst)
        return
    tool = {".xz": "xz", ".zst": "zstd", ".gz": "gzip"}[src.suffix]
    with open(dst, "wb") as out:
        subprocess.run([tool, "-dc", str(src)], stdout=out, check=True, timeout=60)


def build_initrd(root: Path, out: Path, tools: Path | None = None) -> None:
    version = next((root / "x" / "lib" / "modules").iterdir()).name
    mods = module_order(root / "x" / "lib" / "modules" / version / "kernel")
    stage = root / ("initramfs-tools" if tools else "initramfs")
    shutil.rmtree(stage, ignore_errors=True)
    for d in ("bin", "dev", "proc", "sys", "tmp", "mods", "sys/kernel/config"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy(busybox, stage / "bin" / "busybox")
    for i, m in enumerate(mods):
        copy_module(m, stage / "mods" / f"{i:02d}-{m.name.split('.ko')[0]}.ko")
    shutil.copy(HERE / "init.sh", stage / "init")
    (stage / "init").chmod(0o755)
    if tools is not None:
        stage_tools(tools, stage)
    listing = run(["sh", "-c", "find . | sort"], 60, cwd=str(stage))
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=listing.encode(),
                          cwd=str(stage), capture_output=True, check=True, timeout=120)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        subprocess.run(["gzip", "-1"], input=cpio.stdout, stdout=f, check=True, timeout=120)
    tmp.rename(out)


def main(tools: bool) -> None:
    missing = [p for p, exe in (("qemu-system-x86", "qemu-system-x86_64"),
                                ("busybox-static", "busybox"), ("cpio", "cpio"))
               if not shutil.which(exe)]
    if missing:
        raise SystemExit(f"missing Debian packages: {' '.join(missing)} "
                         "(run .ci/install-system-deps as root)")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    apt = kernel_apt(cache)
    pkg = kernel_package(apt)
    root = extract_kernel(pkg, cache, apt)
    kernel = next((root / "x" / "boot").glob("vmlinuz-*"))
    initrd = root / "initrd.gz"
    stamp = root / "initrd.stamp"
    want = (HERE / "init.sh").read_text() + "\n".join(MODULES)
    if not initrd.exists() or not stamp.exists() or stamp.read_text() != want:
        build_initrd(root, initrd)
        stamp.write_text(want)
    out = {"kernel": str(kernel), "initrd": str(initrd), "version": pkg,
           "initrd_bytes": initrd.stat().st_size}
    if tools:
        tools_initrd = root / "initrd-tools.gz"
        tools_stamp = root / "initrd-tools.stamp"
        want += "\n" + " ".join(TOOL_PACKAGES) + "\n" + (HERE / "pair.sh").read_text()
        if not tools_initrd.exists() or not tools_stamp.exists() or \
                tools_stamp.read_text() != want:
            build_initrd(root, tools_initrd, fetch_tools(cache))
            tools_stamp.write_text(want)
        out.update(initrd_tools=str(tools_initrd),
                   initrd_tools_bytes=tools_initrd.stat().st_size)
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main("--tools" in sys.argv[1:])
    except subprocess.CalledProcessError as exc:
        sys.exit(f"prepare failed: {' '.join(exc.cmd)}: {exc.stderr}")
