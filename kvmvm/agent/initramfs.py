"""The container guest's initramfs: kvmvm-agent as /init and nothing else (no shell).

Cached under $KVMVM_HOME/agent-initramfs/<key>/, keyed by the agent binary's bytes; an
uncompressed newc archive (the kernel unpacks it without a decompressor; it is ~100 KB).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from kvmvm.errors import KvmvmError

BUILDER_VERSION = "agent-initramfs-1"
NAME = "initramfs.cpio"
SOURCE_DIR = Path(__file__).resolve().parents[2] / "guest-images" / "agent"


def agent_binary() -> Path:
    """The static agent: $KVMVM_AGENT, else guest-images/agent/out/kvmvm-agent, built
    with make when the sources are here and the binary is missing or older."""
    env = os.environ.get("KVMVM_AGENT")
    if env:
        path = Path(env)
        if not path.is_file():
            raise KvmvmError(f"KVMVM_AGENT={env}: no such file")
        return path
    out = SOURCE_DIR / "out" / "kvmvm-agent"
    srcs = list(SOURCE_DIR.glob("*.[ch]")) + [SOURCE_DIR / "Makefile"]
    stale = not out.is_file() or any(s.stat().st_mtime > out.stat().st_mtime for s in srcs if s.exists())
    if stale and (SOURCE_DIR / "Makefile").is_file():
        r = subprocess.run(["make", "-s", "-C", str(SOURCE_DIR)], capture_output=True, text=True)
        if r.returncode != 0:
            tail = " | ".join(r.stderr.strip().splitlines()[-2:])
            raise KvmvmError(f"building the guest agent failed ({tail}); it needs musl-tools "
                             f"(apt-get install musl-tools)")
    if not out.is_file():
        raise KvmvmError(f"the guest agent is not built: run `make -C {SOURCE_DIR}` (needs musl-tools)")
    return out


def build(home: Path | None = None) -> Path:
    """The agent initramfs for the current agent binary, packed on first use."""
    from kvmvm.image import cache
    from kvmvm.image.initramfs import Entry, newc

    home = home or cache.kvmvm_home()
    agent = agent_binary().read_bytes()
    key = cache.cache_key(BUILDER_VERSION, agent)
    entry = cache.entry_dir("agent-initramfs", key, home)
    if (entry / NAME).is_file():
        return entry / NAME
    ents = [Entry(d, "d", 0o755) for d in ("dev", "proc", "sys", "lower", "rw", "newroot")]
    ents += [Entry("dev/console", "c", 0o600, rdev=(5, 1)),
             Entry("dev/null", "c", 0o666, rdev=(1, 3)),
             Entry("init", "f", 0o755, agent)]
    with cache.locked(home, "agent-initramfs"):
        if not (entry / NAME).is_file():
            with cache.staging(entry, {"kind": "agent-initramfs", "key": key, "builder": BUILDER_VERSION,
                                       "agent_bytes": len(agent)}) as tmp:
                (tmp / NAME).write_bytes(newc(ents))
    return entry / NAME
