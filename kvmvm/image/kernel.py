"""kvmvm's guest kernel: Debian's linux-source-6.1 built with our Kconfig fragment.

Steps: extract the source tarball once into the cache, configure an out-of-tree build
directory (`allnoconfig` + fragment, `olddefconfig`), check that every symbol of the
fragment survived, `make vmlinux bzImage`, then publish vmlinux, bzImage and .config as
one cache entry keyed by the fragment, the source package version and BUILDER_VERSION.
The build directory is kept, so a changed fragment rebuilds incrementally.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import List, Optional

from kvmvm.errors import ConfigError, KvmvmError

from . import cache, deps, kconfig
from .progress import Progress

BUILDER_VERSION = "kernel-1"
PACKAGE = "linux-source-6.1"
TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
FRAGMENT = "microvm-6.1.config"
ARCH = "x86_64"
# Steps (`CC`, `LD`, ... lines) of a full build with the fragment; only sizes the bar.
EXPECTED_STEPS = 1800
# what the build needs on the host -> the Debian package that provides it
HOST_TOOLS = {"make": "make", "gcc": "gcc", "flex": "flex", "bison": "bison", "bc": "bc",
              "xz": "xz-utils", "perl": "perl-base"}
HOST_HEADERS = {"/usr/include/gelf.h": "libelf-dev", "/usr/include/openssl/opensslv.h": "libssl-dev"}

_STEP = re.compile(r"^\s{2}[A-Z][A-Z0-9_\[\] ]{1,8}\s")


def fragment_text() -> bytes:
    """The Kconfig fragment shipped in this package (firmware/README.md points here)."""
    return resources.files(__package__).joinpath(FRAGMENT).read_bytes()


def fragment_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), FRAGMENT)


def source_version(tarball: Path = TARBALL) -> Optional[str]:
    """The installed linux-source package version (e.g. '6.1.192-2'), None if the tarball
    is missing; without dpkg, the tarball's size and mtime stand in for a version."""
    if not tarball.is_file():
        return None
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", PACKAGE],
                           capture_output=True, text=True, timeout=30)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    st = tarball.stat()
    return f"file-{st.st_size}-{int(st.st_mtime)}"


def kernel_key(fragment: bytes, version: str, builder: str = BUILDER_VERSION) -> str:
    """The cache key: changes with the fragment, the source version or the builder."""
    return cache.cache_key(builder, fragment, version)


@dataclass
class Kernel:
    vmlinux: Path
    bzimage: Path
    key: str
    kernel_version: str


def _from_entry(entry: Path) -> Optional[Kernel]:
    meta = cache.read_meta(entry)
    if meta is None or not (entry / "vmlinux").is_file() or not (entry / "bzImage").is_file():
        return None
    return Kernel(entry / "vmlinux", entry / "bzImage", entry.name, meta.get("kernel_version", "?"))


def cached(home: Optional[Path] = None) -> Optional[Kernel]:
    """The cached kernel for the current fragment and source, or None. If the source
    package is gone, the newest entry built from this fragment still counts."""
    home = home or cache.kvmvm_home()
    frag = fragment_text()
    version = source_version()
    if version is not None:
        return _from_entry(cache.entry_dir("kernel", kernel_key(frag, version), home))
    frag_key = cache.cache_key(frag)
    best = None
    for entry in sorted((home / "kernel").glob("[0-9a-f]*")):
        meta = cache.read_meta(entry) or {}
        if meta.get("fragment_key") == frag_key and meta.get("builder") == BUILDER_VERSION:
            k = _from_entry(entry)
            if k and (best is None or entry.stat().st_mtime > best[0]):
                best = (entry.stat().st_mtime, k)
    return best[1] if best else None


def missing_packages() -> List[str]:
    """The Debian packages the build needs that are not installed (tools, headers, source)."""
    missing = [] if TARBALL.is_file() else [PACKAGE]
    missing += sorted({pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)}
                      | {pkg for hdr, pkg in HOST_HEADERS.items() if not os.path.exists(hdr)})
    return missing


def ensure_host(progress: Progress, install_deps: bool = False) -> str:
    """Make sure the source tarball and build tools are there (naming what is missing, or
    installing it with install_deps as root); returns the source version."""
    deps.require(missing_packages(), install_deps, progress)
    version = source_version()
    if version is None:
        raise KvmvmError(f"{TARBALL} is still missing after installing {PACKAGE}")
    return version


def ensure_source(home: Path, version: str, progress: Progress) -> Path:
    """The extracted source tree for `version`, extracting the tarball (~25 s) if needed.
    Extraction goes to a temporary directory renamed into place when complete."""
    srcroot = home / "src"
    src = srcroot / f"{PACKAGE}_{version}"
    if (src / "Makefile").is_file():
        return src
    srcroot.mkdir(parents=True, exist_ok=True)
    progress.phase(f"extracting {TARBALL.name} ({version})")
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=srcroot))
    try:
        r = subprocess.run(["tar", "-xf", str(TARBALL), "-C", str(tmp)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise KvmvmError(f"extracting {TARBALL} failed: {r.stderr.strip()[-300:]}")
        inner = tmp / PACKAGE
        if not (inner / "Makefile").is_file():
            raise KvmvmError(f"{TARBALL} does not contain {PACKAGE}/Makefile")
        if src.exists():
            shutil.rmtree(src)
        os.rename(inner, src)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return src


def _make_env() -> dict:
    # fixed build identity: the banner (`uname -v`) then depends on the inputs only
    return dict(os.environ, LC_ALL="C", KBUILD_BUILD_USER="kvmvm", KBUILD_BUILD_HOST="kvmvm",
                KBUILD_BUILD_TIMESTAMP="2024-01-01", ARCH=ARCH)


def _run_make(src: Path, out: Path, args: List[str], log: Path, progress: Progress,
              steps: bool = False) -> None:
    """Run make in `src` with O=`out`, append output to `log`, report lines as steps.
    On failure, raise KvmvmError quoting the log's last lines; on interrupt, stop make's
    whole process group."""
    cmd = ["make", "-C", str(src), f"O={out}", f"ARCH={ARCH}", *args]
    last = deque(maxlen=12)
    with open(log, "a") as lf:
        lf.write(f"$ {' '.join(cmd)}\n")
        lf.flush()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             errors="replace", env=_make_env(), start_new_session=True)
        try:
            for line in p.stdout:
                lf.write(line)
                last.append(line.rstrip())
                if steps and _STEP.match(line):
                    progress.step(line.rstrip())
            rc = p.wait()
        except BaseException:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            p.wait()
            raise
    if rc != 0:
        tail = "\n  ".join(last)
        raise KvmvmError(f"kernel build failed (`make {' '.join(args)}` exited {rc}); "
                         f"full log: {log}; last lines:\n  {tail}")


def configure(src: Path, out: Path, fragment: Path, log: Path, progress: Progress) -> None:
    """allnoconfig + fragment, olddefconfig, then verify every fragment symbol."""
    progress.phase("configuring (allnoconfig + microvm-6.1.config, olddefconfig)")
    out.mkdir(parents=True, exist_ok=True)
    _run_make(src, out, ["allnoconfig", f"KCONFIG_ALLCONFIG={fragment}"], log, progress)
    _run_make(src, out, ["olddefconfig"], log, progress)
    bad = kconfig.verify_files(fragment, out / ".config")
    if bad:
        raise KvmvmError(f"kernel config lacks {len(bad)} wanted symbol(s): {kconfig.describe(bad)} "
                         f"(dependencies not met; see {out / '.config'})")


def build(home: Optional[Path] = None, jobs: Optional[int] = None, force: bool = False,
          progress: Optional[Progress] = None, install_deps: bool = False) -> Kernel:
    """Build (or find in the cache) the guest kernel; returns the vmlinux/bzImage paths."""
    progress = progress or Progress()
    home = home or cache.kvmvm_home()
    if jobs is None:
        jobs = os.cpu_count() or 1
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, not {jobs}")
    frag = fragment_text()
    hit = None if force else cached(home)
    if hit:     # entries are published atomically: no lock needed to find one (another
        progress.note(f"kernel: cached {hit.vmlinux.parent}")   # build may hold it for long)
        return hit
    with cache.locked(home, "kernel"):
        hit = cached(home)
        if hit and not force:
            progress.note(f"kernel: cached {hit.vmlinux.parent}")
            return hit
        version = ensure_host(progress, install_deps)
        key = kernel_key(frag, version)
        entry = cache.entry_dir("kernel", key, home)
        src = ensure_source(home, version, progress)
        out = home / "build" / f"linux_{version}"
        out.mkdir(parents=True, exist_ok=True)
        log = out / "kvmvm-build.log"
        log.write_text("")
        fragment = out / "kvmvm-fragment.config"
        fragment.write_bytes(frag)
        t0 = time.monotonic()
        configure(src, out, fragment, log, progress)
        progress.phase(f"building vmlinux + bzImage (make -j{jobs})", total=EXPECTED_STEPS)
        _run_make(src, out, [f"-j{jobs}", "vmlinux", "bzImage"], log, progress, steps=True)
        seconds = round(time.monotonic() - t0, 1)
        release = (out / "include" / "config" / "kernel.release").read_text().strip()
        meta = {"kind": "kernel", "key": key, "builder": BUILDER_VERSION,
                "fragment_key": cache.cache_key(frag), "source_package": PACKAGE,
                "source_version": version, "kernel_version": release,
                "build_seconds": seconds, "jobs": jobs}
        with cache.staging(entry, meta) as tmp:
            shutil.copyfile(out / "vmlinux", tmp / "vmlinux")
            shutil.copyfile(out / "arch" / "x86" / "boot" / "bzImage", tmp / "bzImage")
            shutil.copyfile(out / ".config", tmp / "config")
            shutil.copyfile(fragment, tmp / FRAGMENT)
            shutil.copyfile(log, tmp / "build.log")
        progress.note(f"kernel {release}: built in {seconds:.0f}s -> {entry}")
        return Kernel(entry / "vmlinux", entry / "bzImage", key, release)
