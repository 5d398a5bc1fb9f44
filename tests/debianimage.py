"""A Debian test image: a bookworm minbase rootfs made with `mmdebstrap`, turned into a
three-layer OCI image layout with umoci, cached outside the clone by its inputs.

    layer 1  the Debian base (mmdebstrap --variant=minbase, merged /usr, no docs/man/locales)
    layer 2  deletes a file and a directory of the base (whiteouts `.wh.NAME`) and replaces
             the contents of /etc/skel (an opaque directory, `.wh..wh..opq`)
    layer 3  a small one: a release file, a script in /usr/local/bin, an empty /dev (the base
             has no device nodes, like Debian's images on registries)

The layout lives in ``${KVMVM_HOME:-~/.cache/kvmvm}/test-images/<key>/oci`` (tag ``TAG``),
where key hashes every input (suite, variant, package list, dpkg excludes, mmdebstrap's
version, BUILDER_VERSION, what layers 2 and 3 hold). A build happens in a temporary directory
beside it, under a lock, and is renamed into place when complete and checked (umoci stat,
skopeo inspect); older builds are then removed. mmdebstrap needs a Debian mirror (reachable
on our machines and in CI); the first build takes ~75-95 s here, later calls take
milliseconds. Inside the kvmhost L1 there is no network: scripts/test.sh builds the image
on the host before the linux tier (``python -m tests.debianimage --for PATHS``), and inside
L1 a missing image is an error saying so, never a skip.

    python -m tests.debianimage            build (or find) it and print the layout's path
    python -m tests.debianimage --for P..  the same, only when one of the test paths P uses it
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from kvmvm.image.cache import cache_key, kvmvm_home, locked, read_meta, staging

BUILDER_VERSION = 2
SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES: tuple[str, ...] = ()          # minbase already holds apt, dpkg, bash, coreutils
# merged /usr as debootstrap makes it (else `usrmerge` is installed and pulls in perl: +49 MB)
HOOKS = ("/usr/share/mmdebstrap/hooks/merged-usr",)
# no device nodes in the image, as in Debian's images on registries (the runtime provides /dev;
# and a store on a file system that refuses mknod, like the test host's 9p share, takes it)
SKIP = ("output/dev",)
DPKG_OPTS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
MIRROR = os.environ.get("KVMVM_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BUILD_TIMEOUT = 1200
KIND = "test-images"
TAG = "bookworm"
NAME = f"localhost/kvmvm-debian:{TAG}"
MARKER = "debianimage"                  # test files that use this image name it (see --for)

# What layers 2 and 3 do; the tests check the merged result against these.
DELETED_FILE = "etc/issue"              # in the base (base-files), whited out by layer 2
DELETED_DIR = "etc/update-motd.d"       # a directory of the base, whited out by layer 2
OPAQUE_DIR = "etc/skel"                 # base: .bashrc .profile .bash_logout; layer 2: only these
OPAQUE_FILES = {
    "etc/skel/kvmvm-layer2.txt": b"from layer 2\n",
    "etc/skel/sub/inner.txt": b"inner, layer 2\n",
}
RELEASE = ("etc/kvmvm-release", b"kvmvm debian test image, layer 3\n")
SCRIPT = ("usr/local/bin/kvmvm-hello", b"#!/bin/sh\necho \"hello from layer 3: $*\"\n")
ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "KVMVM_TEST=debian")
CMD = ("cat", "/etc/debian_version")
MTIME = 1_700_000_000


class DebianImageError(RuntimeError):
    """The test image cannot be built or found (a missing prerequisite fails loudly)."""


@dataclass(frozen=True)
class DebianImage:
    dir: Path
    meta: dict

    @property
    def layout(self) -> Path:
        return self.dir / "oci"

    @property
    def ref(self) -> str:
        """The image as skopeo and `kvmvm image import` take it (oci:LAYOUT:TAG)."""
        return f"oci:{self.layout}:{TAG}"

    @property
    def base_opaque_files(self) -> list[str]:
        """What the base held in OPAQUE_DIR (hidden by layer 2's opaque marker)."""
        return self.meta["base_opaque_files"]


def _sh(argv, what: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, **kw)
    except subprocess.TimeoutExpired:
        raise DebianImageError(f"{what}: {argv[0]} did not finish within {timeout} s") from None
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
        raise DebianImageError(f"{what}: {argv[0]} exited with {p.returncode}:\n{tail}")
    return p


def _need(*tools: str) -> None:
    pkgs = {"mmdebstrap": "mmdebstrap", "umoci": "umoci", "skopeo": "skopeo"}
    for t in tools:
        if not shutil.which(t):
            raise DebianImageError(f"{t} is not installed (Debian package {pkgs.get(t, t)}, "
                                   "in scripts/apt-packages.txt: run scripts/setup.sh)")


def mmdebstrap_version() -> str:
    _need("mmdebstrap")
    p = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "mmdebstrap"], capture_output=True, text=True)
    if p.returncode == 0 and p.stdout.strip():
        return p.stdout.strip()
    return _sh(["mmdebstrap", "--version"], "mmdebstrap --version").stdout.strip()


def inputs() -> dict:
    """Everything the image depends on (the cache key is a hash of this)."""
    return {
        "builder": BUILDER_VERSION, "suite": SUITE, "variant": VARIANT, "packages": sorted(PACKAGES),
        "hooks": list(HOOKS), "skip": list(SKIP), "dpkg_opts": list(DPKG_OPTS), "mmdebstrap": mmdebstrap_version(),
        "layers": {"deleted": [DELETED_FILE, DELETED_DIR], "opaque": OPAQUE_DIR,
                   "opaque_files": {k: v.decode() for k, v in OPAQUE_FILES.items()},
                   "release": RELEASE[1].decode(), "script": SCRIPT[1].decode()},
        "config": {"env": list(ENV), "cmd": list(CMD)},
    }


def key_of(inp: dict) -> str:
    return cache_key(json.dumps(inp, sort_keys=True))


def cache_root() -> Path:
    return kvmvm_home() / KIND


def find() -> DebianImage | None:
    """The cached image for the current inputs, or None."""
    d = cache_root() / key_of(inputs())
    meta = read_meta(d)
    return DebianImage(d, meta) if meta and (d / "oci" / "index.json").is_file() else None


def get(log=None) -> DebianImage:
    """The cached image, built first when its inputs changed (one builder at a time)."""
    found = find()
    if found:
        return found
    if os.environ.get("KVMHOST_INSIDE"):
        raise DebianImageError(
            "the Debian test image is not in the cache and the kvmhost L1 has no network to build it: "
            f"scripts/test.sh builds it on the host first (python -m tests.debianimage --for PATHS finds "
            f"test files naming {MARKER}); or run python -m tests.debianimage before the linux tier")
    _need("mmdebstrap", "umoci", "skopeo")
    inp = inputs()
    key = key_of(inp)
    root = cache_root()
    with locked(root, "debian"):
        found = find()                  # built by someone else while we waited
        if found:
            return found
        (log or (lambda m: None))(f"debianimage: building the Debian {SUITE} {VARIANT} test image (once) ...")
        entry = root / key
        t0 = time.monotonic()
        meta = {"kind": "debian", "key": key, "inputs": inp}
        with staging(entry, meta) as tmp:
            meta.update(_build(tmp))
            meta["build_s"] = round(time.monotonic() - t0, 1)
        for old in root.iterdir():      # older inputs' builds, killed builds' leftovers (we hold the lock)
            if not old.is_dir() or old == entry:
                continue
            m = read_meta(old)
            if (m and m.get("kind") == "debian") or ".tmp-" in old.name or ".old-" in old.name:
                shutil.rmtree(old, ignore_errors=True)
    found = find()
    if not found:
        raise DebianImageError(f"built the Debian test image but {entry} is not complete")
    return found


# ---- the build ------------------------------------------------------------------------

def _tar_member(tf: tarfile.TarFile, name: str, data: bytes | None = None, mode: int = 0o644,
                type_=tarfile.REGTYPE) -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.uname, ti.gname = type_, mode, MTIME, "", ""
    if data is not None:
        ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data) if data is not None else None)


def _layer2(path: Path) -> None:
    """Whiteouts of a file and a directory; an opaque /etc/skel with new contents."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        _tar_member(tf, "etc", mode=0o755, type_=tarfile.DIRTYPE)
        for gone in (DELETED_FILE, DELETED_DIR):
            d, _, n = gone.rpartition("/")
            _tar_member(tf, f"{d}/.wh.{n}", b"")
        _tar_member(tf, OPAQUE_DIR, mode=0o755, type_=tarfile.DIRTYPE)
        _tar_member(tf, f"{OPAQUE_DIR}/.wh..wh..opq", b"")
        for name, data in OPAQUE_FILES.items():
            parent = name.rpartition("/")[0]
            if parent != OPAQUE_DIR:
                _tar_member(tf, parent, mode=0o755, type_=tarfile.DIRTYPE)
            _tar_member(tf, name, data)


def _layer3(path: Path) -> None:
    """A release file, a script, and the empty /dev that the runtime mounts over."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        _tar_member(tf, "dev", mode=0o755, type_=tarfile.DIRTYPE)
        _tar_member(tf, RELEASE[0], RELEASE[1])
        for d in ("usr", "usr/local", "usr/local/bin"):
            _tar_member(tf, d, mode=0o755, type_=tarfile.DIRTYPE)
        _tar_member(tf, SCRIPT[0], SCRIPT[1], mode=0o755)


def _check_base(tar: Path) -> list[str]:
    """The base must hold what layer 2 deletes or hides (else the test proves nothing);
    returns the base's files in OPAQUE_DIR."""
    names = set()
    with tarfile.open(tar) as tf:
        for m in tf:
            names.add(m.name.removeprefix("./").rstrip("/"))
    for must in (DELETED_FILE, DELETED_DIR, OPAQUE_DIR, "etc/debian_version", "usr/bin/apt-get"):
        if must not in names:
            raise DebianImageError(f"the mmdebstrap rootfs has no /{must}: the test layers need it")
    hidden = sorted(n for n in names if n.startswith(OPAQUE_DIR + "/"))
    if not hidden:
        raise DebianImageError(f"the mmdebstrap rootfs has an empty /{OPAQUE_DIR}: nothing to hide")
    return hidden


def _build(tmp: Path) -> dict:
    base = tmp / "base.tar"
    argv = ["mmdebstrap", f"--variant={VARIANT}", "--format=tar", "--quiet"]
    argv += [f"--hook-dir={h}" for h in HOOKS] + [f"--skip={s}" for s in SKIP]
    argv += [f"--dpkgopt={o}" for o in DPKG_OPTS]
    if PACKAGES:
        argv.append("--include=" + ",".join(PACKAGES))
    argv += [SUITE, base, MIRROR]
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(MTIME))
    _sh(argv, f"mmdebstrap of Debian {SUITE} (mirror {MIRROR})", timeout=BUILD_TIMEOUT, env=env)
    hidden = _check_base(base)
    base_size = base.stat().st_size

    layout = tmp / "oci"
    img = f"{layout}:{TAG}"
    _sh(["umoci", "init", "--layout", layout], "umoci init")
    _sh(["umoci", "new", "--image", img], "umoci new")
    _sh(["umoci", "raw", "add-layer", "--image", img, "--history.created_by",
         f"mmdebstrap --variant={VARIANT} {SUITE}", base], "umoci raw add-layer (base)")
    base.unlink()
    for i, make in ((2, _layer2), (3, _layer3)):
        t = tmp / f"layer{i}.tar"
        make(t)
        _sh(["umoci", "raw", "add-layer", "--image", img, "--history.created_by", f"kvmvm test layer {i}", t],
            f"umoci raw add-layer (layer {i})")
        t.unlink()
    cfg = [x for e in ENV for x in ("--config.env", e)] + [x for c in CMD for x in ("--config.cmd", c)]
    _sh(["umoci", "config", "--image", img, "--config.workingdir", "/root", *cfg], "umoci config")
    _sh(["umoci", "gc", "--layout", layout], "umoci gc")
    check = validate(layout)
    blobs = sum(f.stat().st_size for f in (layout / "blobs").rglob("*") if f.is_file())
    return {"base_tar_bytes": base_size, "layout_bytes": blobs, "layers": check["layers"],
            "base_opaque_files": hidden, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def validate(layout: Path) -> dict:
    """umoci and skopeo both read the layout: three layers, the config set; returns skopeo's view."""
    stat = json.loads(_sh(["umoci", "stat", "--image", f"{layout}:{TAG}", "--json"], "umoci stat").stdout)
    layers = [h for h in stat.get("history", []) if not h.get("empty_layer")]
    if len(layers) != 3:
        raise DebianImageError(f"umoci stat: {len(layers)} layers in the history, expected 3")
    info = json.loads(_sh(["skopeo", "inspect", f"oci:{layout}:{TAG}"], "skopeo inspect").stdout)
    cfg = json.loads(_sh(["skopeo", "inspect", "--config", f"oci:{layout}:{TAG}"], "skopeo inspect --config").stdout)
    if len(info.get("Layers", [])) != 3:
        raise DebianImageError(f"skopeo inspect: {len(info.get('Layers', []))} layers, expected 3")
    if cfg["config"].get("Cmd") != list(CMD) or cfg["config"].get("Env") != list(ENV):
        raise DebianImageError(f"skopeo inspect --config: unexpected config {cfg['config']}")
    return {"layers": info["Layers"], "config": cfg}


def used_by(paths: list[str]) -> bool:
    """True when one of these test paths (files, or directories of test_*.py) names MARKER."""
    files: list[Path] = []
    for p in paths:
        q = Path(p.split("::")[0])
        files += sorted(q.rglob("test_*.py")) if q.is_dir() else [q]
    for f in files:
        try:
            if MARKER in f.read_text(errors="replace"):
                return True
        except OSError:
            continue
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.debianimage", description=__doc__.split("\n\n")[0])
    ap.add_argument("--for", dest="paths", nargs="*", metavar="PATH",
                    help="build only when one of these test paths uses the image")
    a = ap.parse_args(argv)
    if a.paths is not None and not used_by(a.paths):
        return 0
    try:
        img = get(log=lambda m: print(m, file=sys.stderr, flush=True))
    except DebianImageError as e:
        print(f"debianimage: {e}", file=sys.stderr)
        return 1
    print(img.layout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
