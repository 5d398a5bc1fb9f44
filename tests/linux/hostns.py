"""Helpers for linux-tier tests that need what a chroot forbids.

Inside the kvmhost L1 the tests run chrooted into the host's tree, and Linux refuses a new
user namespace to a chrooted process (unshare(CLONE_NEWUSER): EPERM). passt makes one for
its own isolation, so a test that runs passt leaves the chroot first: a new mount namespace
whose root is this root, by pivot_root.
"""
from __future__ import annotations

import os


def chrooted() -> bool:
    """True when this process's root is not its mount namespace's (PID 1's) root."""
    try:
        a, b = os.stat("/"), os.stat("/proc/1/root/.")
    except OSError:
        return False
    return (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino)


def unchrooted(argv: list[str]) -> list[str]:
    """argv run outside the chroot (unchanged when not chrooted); the cwd is kept."""
    if not chrooted():
        return argv
    return ["unshare", "-m", "sh", "-ec",
            'mount --make-rprivate /; mkdir -p /tmp/kvmvm-newroot; mount --rbind / /tmp/kvmvm-newroot; '
            'cd /tmp/kvmvm-newroot; pivot_root . mnt; cd "$0"; exec "$@"', os.getcwd(), *argv]
