"""A small index of the cached default guest (kernel + initramfs), so `kvmvm boot` with the
default kernel finds them with a few stat() calls: no dpkg query, no hashing, none of the
build code (kvmvm.image.default writes the index whenever it sees a complete set).

<home>/default-index.json maps an installed kvmvm (the directory of this package) to the
artifact paths and the (size, mtime, inode) of every input file the cache keys depend on:
the kernel config fragment, /init, the linux-source tarball and busybox. Any change to
one of them, or a missing artifact, makes `lookup` return None and the caller take the
full path, which checks the real keys and writes the index again.
"""

from __future__ import annotations

import json
import os

VERSION = 1
NAME = "default-index.json"
_HERE = os.path.dirname(os.path.abspath(__file__))


def home_dir() -> str:
    """The cache root: $KVMVM_HOME, else $XDG_CACHE_HOME/kvmvm, else ~/.cache/kvmvm."""
    env = os.environ.get("KVMVM_HOME")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = os.path.expanduser(xdg) if xdg else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.abspath(os.path.join(base, "kvmvm"))


def _sig(path: str) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _read(home: str) -> dict:
    try:
        with open(os.path.join(home, NAME)) as f:
            idx = json.load(f)
    except (OSError, ValueError):
        return {}
    return idx if isinstance(idx, dict) and idx.get("version") == VERSION else {}


def lookup(home: str | None = None) -> dict | None:
    """The recorded artifacts ({"vmlinux", "bzimage", "initramfs", "key", ...}) when every
    input is unchanged and every artifact is there; None otherwise."""
    e = _read(home or home_dir()).get("entries", {}).get(_HERE)
    try:
        if any(_sig(p) != sig for p, sig in e["inputs"]):
            return None
        if not all(os.path.isfile(e[k]) for k in ("vmlinux", "bzimage", "initramfs")):
            return None
    except (TypeError, KeyError, ValueError):
        return None
    return e


def record(home: str, artifacts: dict, inputs: list[str]) -> None:
    """Remember `artifacts` (paths) for this installed kvmvm and the current `inputs`.
    Best effort: a cache that cannot be written only costs the next boot some time."""
    entry = {**artifacts, "inputs": [[p, _sig(p)] for p in inputs]}
    idx = _read(home)
    entries = idx.get("entries") if isinstance(idx.get("entries"), dict) else {}
    if entries.get(_HERE) == entry:
        return
    entries[_HERE] = entry
    path = os.path.join(home, NAME)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump({"version": VERSION, "entries": entries}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
