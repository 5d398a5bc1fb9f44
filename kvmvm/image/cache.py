"""The artifact cache under $KVMVM_HOME (default ~/.cache/kvmvm).

Layout: <home>/<kind>/<key>/ holds one finished artifact set (kind is `kernel` or
`initramfs`; key is the first 16 hex digits of a sha256 over everything the result depends
on). Entries are built in a sibling temporary directory and renamed into place only when
complete, so an interrupted build never leaves an entry that looks finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

META = "meta.json"


def kvmvm_home() -> Path:
    """The cache root: $KVMVM_HOME, else $XDG_CACHE_HOME/kvmvm, else ~/.cache/kvmvm."""
    from .index import home_dir

    return Path(home_dir())


def cache_key(*parts) -> str:
    """sha256 over the parts (bytes or str), each length-prefixed so that boundaries
    matter; 16 hex digits are plenty to tell builds apart."""
    h = hashlib.sha256()
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:16]


def entry_dir(kind: str, key: str, home: Optional[Path] = None) -> Path:
    return (home or kvmvm_home()) / kind / key


def read_meta(entry: Path) -> Optional[dict]:
    """The entry's metadata, or None if the entry does not exist (or is not finished)."""
    try:
        return json.loads((entry / META).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def locked(home: Path, name: str) -> Iterator[None]:
    """An exclusive lock so two kvmvm processes never build the same thing at once."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def staging(entry: Path, meta: dict) -> Iterator[Path]:
    """Yield an empty temporary directory next to `entry`; when the body finishes
    without an exception, write meta.json and rename the directory to `entry`
    (replacing an older entry). On any exception the temporary directory is removed."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a VMM running as another user reads it
        yield tmp
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        old = None
        if entry.exists():
            old = entry.parent / f".{entry.name}.old-{os.getpid()}"
            os.rename(entry, old)
        os.rename(tmp, entry)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file so readers see either the old or the whole new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())    # else a crash (or a test host killed over 9p) can leave
        os.replace(tmp, path)       # the rename on disk without the data: an empty file
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
