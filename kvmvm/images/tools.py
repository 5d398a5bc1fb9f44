"""The external programs the image store drives, and one way to run them.

A missing program is one line naming the Debian package to install; a failing one is one
line with the tool's own last words (its stderr's last non-empty line).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional, Sequence

from kvmvm.images.errors import ImageImportError, MissingTool

# program -> Debian package that provides it (every one is in scripts/apt-packages.txt)
PACKAGES = {
    "skopeo": "skopeo",
    "umoci": "umoci",
    "mkfs.erofs": "erofs-utils",
    "fsck.erofs": "erofs-utils",
    "mkfs.ext4": "e2fsprogs",
    "podman": "podman",
    "passt": "passt",
    "zstd": "zstd",
}

_SBIN = ("/usr/sbin", "/sbin")


def which(tool: str) -> str:
    """The program's path, or MissingTool naming the package to install."""
    path = shutil.which(tool) or shutil.which(tool, path=os.pathsep.join(_SBIN))
    if path is None:
        pkg = PACKAGES.get(tool, tool)
        raise MissingTool(f"{tool} is not installed (Debian package {pkg}: apt-get install {pkg})")
    return path


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run(argv: Sequence[str], *, what: str, error=ImageImportError, env: Optional[dict] = None,
        cwd=None, timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    """Run a tool (argv[0] is looked up with `which`), capture its output, and turn a failure
    into `error("<what>: <tool's last line>")`."""
    exe = which(argv[0])
    try:
        p = subprocess.run([exe, *map(str, argv[1:])], capture_output=True, text=True,
                           env=env, cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise error(f"{what}: {argv[0]} did not finish within {timeout:.0f} s") from None
    if p.returncode != 0:
        why = last_line(p.stderr) or last_line(p.stdout) or f"exit status {p.returncode}"
        raise error(f"{what}: {why}")
    return p
