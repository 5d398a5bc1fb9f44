"""A small index of the cached default guest (kernel + initramfs), so `kvmvm boot` with the
default kernel finds them with a few stat() calls: no dpkg query, no hashing, none of the
build code (kvmvm.image.default writes the index whenever it sees a complete set).

<home>/default-index.txt maps an installed kvmvm (the directory of this package) to the
artifact paths and the (size, mtime, inode) of every input file the cache keys depend on:
the kernel config fragment, /init, the linux-source tarball and busybox. Any change to
one of them, or a missing artifact, makes `lookup` return None and the caller take the
full path, which checks the real keys and writes the index again.

The format is plain text, one tab-separated record per line, because `import json` costs
more than the rest of this lookup (it imports `re`):

    kvmvm-default-index<TAB>1
    entry<TAB><package dir>          starts an entry; then, for it:
    <name><TAB><value>               vmlinux, bzimage, initramfs, key, kernel_version, ...
    input<TAB><size> <mtime_ns> <inode><TAB><path>     ("-" for a missing file)
"""

from __future__ import annotations

import os

MAGIC = "kvmvm-default-index\t1"
NAME = "default-index.txt"
_HERE = os.path.dirname(os.path.abspath(__file__))


def home_dir() -> str:
    """The cache root: $KVMVM_HOME, else $XDG_CACHE_HOME/kvmvm, else ~/.cache/kvmvm."""
    env = os.environ.get("KVMVM_HOME")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = os.path.expanduser(xdg) if xdg else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.abspath(os.path.join(base, "kvmvm"))


def _sig(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}"


def _read(home: str) -> dict:
    """package dir -> {name: value, "inputs": [(sig, path)]}; {} when absent or damaged."""
    try:
        with open(os.path.join(home, NAME)) as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError):
        return {}
    if not lines or lines[0] != MAGIC:
        return {}
    out: dict = {}
    cur = None
    for line in lines[1:]:
        parts = line.split("\t")
        if parts[0] == "entry" and len(parts) == 2:
            cur = out[parts[1]] = {"inputs": []}
        elif cur is not None and parts[0] == "input" and len(parts) == 3:
            cur["inputs"].append((parts[1], parts[2]))
        elif cur is not None and len(parts) == 2:
            cur[parts[0]] = parts[1]
    return out


def lookup(home: str | None = None) -> dict | None:
    """The recorded artifacts ({"vmlinux", "bzimage", "initramfs", "key", ...}) when every
    input is unchanged and every artifact is there; None otherwise."""
    e = _read(home or home_dir()).get(_HERE)
    if not e or not e["inputs"]:
        return None
    if any(_sig(path) != sig for sig, path in e["inputs"]):
        return None
    if not all(os.path.isfile(e.get(k, "")) for k in ("vmlinux", "bzimage", "initramfs")):
        return None
    return e


def record(home: str, artifacts: dict, inputs: list[str]) -> None:
    """Remember `artifacts` (name -> path or text) for this installed kvmvm and the current
    `inputs`. Best effort: a cache that cannot be written only costs the next boot time."""
    entry = {k: str(v) for k, v in artifacts.items() if v is not None}
    entry["inputs"] = [(_sig(p), p) for p in inputs]
    if any("\t" in v or "\n" in v for k, v in entry.items() if k != "inputs") or \
            any("\t" in p or "\n" in p for p in inputs):
        return      # not representable; lookups simply miss
    entries = _read(home)
    if entries.get(_HERE) == entry:
        return
    entries[_HERE] = entry
    lines = [MAGIC]
    for pkg, e in entries.items():
        lines.append(f"entry\t{pkg}")
        lines += [f"{k}\t{v}" for k, v in e.items() if k != "inputs"]
        lines += [f"input\t{sig}\t{p}" for sig, p in e["inputs"]]
    path = os.path.join(home, NAME)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
