"""The L1 image: Debian's stock kernel plus a small initramfs, built once and cached.

Cached under ``${KVMVM_HOME:-~/.cache/kvmvm}/kvmhost/<key>/`` (outside the clone), where
key hashes every input: kernel package and version, busybox version, the init script, the
module list. A build happens in a temporary directory beside the cache and is renamed into
place, under a lock, so a concurrent or interrupted build never leaves a half-written image.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .cpio import Cpio

FORMAT = 2
KERNEL_META_PACKAGE = "linux-image-amd64"
# In load order of intent; dependencies are resolved from modules.dep and loaded first.
MODULES = (
    "irqbypass", "ccp", "kvm", "kvm_amd",
    "netfs", "fscache", "9pnet", "virtio_ring", "virtio", "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev", "virtio_pci", "9pnet_virtio", "9p",
    "tun",
    "dummy",        # a default route in a test's network namespace (passt copies its addresses)
    "overlay",      # podman's default storage driver (containers in benchmarks/)
)
# npt=0: L1's KVM runs its guests on shadow page tables, not on the nested paging that QEMU's
# TCG emulates. With npt=1, Linux guests in L1 crashed now and then (restored ones most: a
# kernel write fault on a copy-on-write page it had just been given; the 50-thread sandbox
# test lost a guest in most rounds); with npt=0 the same test passed 5 of 5 rounds with no
# crash (stop 23). Hardware hosts keep their NPT/EPT: this is the test host's setting only.
MODULE_OPTIONS = {"kvm_amd": "nested=1 npt=0"}
BUSYBOX = Path("/bin/busybox")
INIT_TEMPLATE = Path(__file__).with_name("init.sh")


class KvmhostError(Exception):
    """A failure of the test host itself (not of the command it runs); one clear line."""


@dataclass(frozen=True)
class Image:
    """A ready L1 image, and what it was built from.

    ``kernel`` is Debian's bzImage; ``vmlinux`` the same kernel uncompressed, booted through
    its PVH entry point, which saves the ~5 s TCG spends decompressing (None if unavailable).
    """
    dir: Path
    kernel: Path
    initrd: Path
    kernel_package: str
    kernel_version: str
    kernel_release: str
    vmlinux: Path | None = None


def kvmvm_home() -> Path:
    return Path(os.environ.get("KVMVM_HOME") or Path.home() / ".cache" / "kvmvm")


def cache_root() -> Path:
    return kvmvm_home() / "kvmhost"


def _out(cmd: list[str], **kw) -> str:
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout
    except FileNotFoundError:
        raise KvmhostError(f"{cmd[0]} not found") from None
    except subprocess.CalledProcessError as e:
        msg = (e.stderr or e.stdout or "").strip().splitlines()
        raise KvmhostError(f"{' '.join(cmd[:3])} failed: {msg[-1] if msg else e.returncode}") from None


APT_LISTS = Path("/var/lib/apt/lists")


def _apt_lists_stamp() -> str:
    """Changes whenever apt-get update changes apt's package lists."""
    try:
        st = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(APT_LISTS) if e.is_file())
    except OSError:
        return ""
    return hashlib.sha256(repr(st).encode()).hexdigest()[:16]


def _apt_kernel() -> tuple[str, str] | None:
    """(package, version) of the current Debian kernel image, or None if apt does not know.

    apt-cache takes ~1.3 s here, so the answer is remembered until apt's lists change.
    """
    override = os.environ.get("KVMHOST_KERNEL_PACKAGE")
    meta = override or KERNEL_META_PACKAGE
    memo = cache_root() / ".apt-lookup.json"
    stamp = _apt_lists_stamp()
    try:
        m = json.loads(memo.read_text())
        if stamp and m["stamp"] == stamp and m["meta"] == meta:
            return m["package"], m["version"]
    except (OSError, ValueError, KeyError):
        pass
    try:
        show = _out(["apt-cache", "show", "--no-all-versions", meta])
    except KvmhostError:
        return None
    fields = dict(line.split(": ", 1) for line in show.splitlines() if ": " in line and not line.startswith(" "))
    if override:
        found = (override, fields.get("Version", ""))
    else:  # the metapackage depends on exactly one versioned image package
        dep = re.match(r"(linux-image-[\w.+-]+) \(= ([^)]+)\)", fields.get("Depends", ""))
        found = (dep.group(1), dep.group(2)) if dep else ("", "")
    if not all(found):
        return None
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps({"stamp": stamp, "meta": meta, "package": found[0], "version": found[1]}))
    except OSError:
        pass
    return found


def _busybox_version() -> str:
    try:
        ver = _out(["dpkg-query", "-W", "-f=${Version}", "busybox-static"]).strip()
    except KvmhostError:
        ver = ""
    if not ver or not BUSYBOX.exists():
        raise KvmhostError("busybox-static is not installed (apt-get install busybox-static)")
    return ver


def _key(pkg: str, ver: str, busybox: str) -> str:
    inputs = {
        "format": FORMAT, "kernel": pkg, "version": ver, "busybox": busybox,
        "init": INIT_TEMPLATE.read_text(), "modules": MODULES, "options": MODULE_OPTIONS,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _load(d: Path) -> Image:
    meta = json.loads((d / "meta.json").read_text())
    return Image(d, d / "vmlinuz", d / "initramfs.gz", meta["kernel_package"], meta["kernel_version"],
                 meta["kernel_release"], d / "vmlinux" if (d / "vmlinux").is_file() else None)


def _newest_cached() -> Image | None:
    dirs = [d for d in cache_root().glob("*") if (d / "meta.json").is_file() and not d.name.startswith(".")]
    return _load(max(dirs, key=lambda d: d.stat().st_mtime)) if dirs else None


def prepare(log=None) -> Image:
    """Return the cached L1 image, building it first if its inputs changed (~20 s, once)."""
    say = log or (lambda msg: None)
    if os.environ.get("KVMHOST_L1_DIR"):  # inside L1: the image we were booted from
        return _load(Path(os.environ["KVMHOST_L1_DIR"]))
    found = _apt_kernel()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        say("kvmhost: apt-get update (kernel package not in apt's lists)")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        found = _apt_kernel()
    if found is None:
        cached = None if os.environ.get("KVMHOST_KERNEL_PACKAGE") else _newest_cached()
        if cached:  # offline, or apt's lists gone: the image built last time will do
            return cached
        wanted = os.environ.get("KVMHOST_KERNEL_PACKAGE") or KERNEL_META_PACKAGE
        raise KvmhostError(f"Debian kernel package {wanted} not found by apt-cache (try apt-get update)")
    pkg, ver = found
    key = _key(pkg, ver, _busybox_version())
    root = cache_root()
    final = root / key
    if (final / "meta.json").is_file():
        return _load(final)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "meta.json").is_file():  # built by someone else while we waited
            return _load(final)
        say(f"kvmhost: building the L1 image from {pkg} {ver} (once) ...")
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            _build(tmp, pkg, ver)
            os.rename(tmp / "out", final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in root.iterdir():  # images of older inputs, builds left by a killed kvmhost
            if old.is_dir() and old != final:
                shutil.rmtree(old, ignore_errors=True)
    return _load(final)


def _module_order(moddir: Path) -> list[tuple[str, str]]:
    """[(name, relpath)] for MODULES and their dependencies, dependencies first."""
    norm = lambda s: Path(s).name.removesuffix(".ko").replace("-", "_")  # noqa: E731
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[norm(path)] = (path, [norm(p) for p in rest.split()])
    builtin = {norm(p) for p in (moddir / "modules.builtin").read_text().split()}
    order: list[tuple[str, str]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in deps:
            raise KvmhostError(f"kernel module {name} is neither built in nor a module of this kernel")
        for dep in deps[name][1]:
            visit(dep)
        order.append((name, deps[name][0]))

    for m in MODULES:
        visit(m)
    return order


def _build(tmp: Path, pkg: str, ver: str) -> None:
    for tool in ("apt-get", "dpkg-deb", "depmod"):
        if not shutil.which(tool) and not Path("/usr/sbin", tool).exists() and not Path("/sbin", tool).exists():
            raise KvmhostError(f"{tool} not found (needed to build the L1 image)")
    _out(["apt-get", "download", "-qq", "-o", "APT::Sandbox::User=root", f"{pkg}={ver}"], cwd=tmp)
    debs = list(tmp.glob("*.deb"))
    if not debs:
        raise KvmhostError(f"apt-get download {pkg} gave no .deb")
    x = tmp / "x"
    _out(["dpkg-deb", "-x", str(debs[0]), str(x)])
    releases = [d.name for d in (x / "lib/modules").iterdir()]
    if len(releases) != 1:
        raise KvmhostError(f"{pkg}: expected one kernel release, found {releases}")
    rel = releases[0]
    depmod = shutil.which("depmod") or "/usr/sbin/depmod"
    _out([depmod, "-b", str(x), rel])
    moddir = x / "lib/modules" / rel

    init = INIT_TEMPLATE.read_text()
    loads = "\n".join(f"load {name} {MODULE_OPTIONS.get(name, '')}".rstrip() for name, _ in _module_order(moddir))
    init = init.replace("@MODULES@", loads)

    c = Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "host", "ctl", "lib", "lib/modules"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    c.copy("bin/busybox", BUSYBOX, 0o755)
    c.symlink("bin/sh", "busybox")
    for name, rel_path in _module_order(moddir):
        c.copy(f"lib/modules/{name}.ko", moddir / rel_path, 0o644)
    c.file("init", init.encode(), 0o755)

    out = tmp / "out"
    out.mkdir()
    c.write(out / "initramfs.gz")
    shutil.copy(x / "boot" / f"vmlinuz-{rel}", out / "vmlinuz")
    shutil.copy(x / "boot" / f"config-{rel}", out / "config")
    vmlinux = pvh_vmlinux((out / "vmlinuz").read_bytes())
    if vmlinux:
        (out / "vmlinux").write_bytes(vmlinux)
    (out / "init.sh").write_text(init)
    (out / "meta.json").write_text(json.dumps(
        {"kernel_package": pkg, "kernel_version": ver, "kernel_release": rel,
         "modules": [n for n, _ in _module_order(moddir)]}, indent=1) + "\n")


def _has_pvh_note(elf: bytes) -> bool:
    """True if an ELF64 image has the Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) QEMU boots."""
    if elf[:5] != b"\x7fELF\x02":
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        ptype, _, off, _, _, filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        pos, end = off, off + filesz
        while ptype == 4 and pos + 12 <= end:  # PT_NOTE
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == 18:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def pvh_vmlinux(bzimage: bytes) -> bytes | None:
    """The uncompressed ELF kernel inside an xz-compressed bzImage, if it has a PVH entry."""
    start = bzimage.find(b"\xfd7zXZ\x00")
    if start < 0:
        return None
    try:
        elf = lzma.LZMADecompressor().decompress(bzimage[start:])
    except lzma.LZMAError:
        return None
    return elf if _has_pvh_note(elf) else None
