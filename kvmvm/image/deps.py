"""Debian packages the guest kernel and initramfs builds need: named in one line when
missing, or installed with apt-get when asked to (`kvmvm kernel build --install-deps`, root)."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import List, Optional

from kvmvm.errors import KvmvmError, MissingPackages

from .progress import Progress


def apt_command(packages: List[str]) -> str:
    return "apt-get install -y --no-install-recommends " + " ".join(packages)


def require(packages: List[str], install: bool = False, progress: Optional[Progress] = None) -> None:
    """Return when nothing is missing; otherwise install (install=True, as root) or raise
    MissingPackages naming every package and both ways to get them."""
    packages = list(dict.fromkeys(packages))
    if not packages:
        return
    names = " ".join(packages)
    if not install:
        raise MissingPackages(f"the guest kernel build needs Debian packages that are missing: {names}; "
                              f"install them with `sudo {apt_command(packages)}` or run "
                              f"`sudo kvmvm kernel build --install-deps`", packages)
    if os.geteuid() != 0:
        raise MissingPackages(f"--install-deps runs apt-get and needs root: run it with sudo, or "
                              f"`sudo {apt_command(packages)}`", packages)
    if not shutil.which("apt-get"):
        raise MissingPackages(f"--install-deps needs apt-get (Debian or Ubuntu); install {names} "
                              "with this system's package manager", packages)
    progress = progress or Progress()
    progress.note(f"installing Debian packages: {names}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:  # stale package lists are the usual cause: refresh once, retry
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        tail = " | ".join(r.stderr.strip().splitlines()[-3:])
        raise KvmvmError(f"`{apt_command(packages)}` failed: {tail}")
