"""Fixtures for tests that boot real VMs on the local /dev/kvm."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "guest-images" / "tiny"
TINY_OUT = TINY / "out"
TINY_PROGRAMS = ("hello", "exitcode", "triplefault", "pio-loop", "mmio-loop", "probe", "halt", "echo",
                 "libtest", "counter", "blk-stream")
KVMVM = [sys.executable, "-m", "kvmvm"]


@pytest.fixture(scope="session")
def tiny_images() -> Path:
    """Build every tiny guest once per session; a build failure fails loudly."""
    assert shutil.which("make"), "make not found"
    proc = subprocess.run(["make", "-C", str(TINY)], capture_output=True, text=True)
    assert proc.returncode == 0, f"make -C {TINY} failed:\n{proc.stdout}\n{proc.stderr}"
    for name in TINY_PROGRAMS:
        assert (TINY_OUT / f"{name}.elf").is_file(), f"make did not produce out/{name}.elf"
    return TINY_OUT


@pytest.fixture(scope="session")
def kvm_ok() -> None:
    assert os.access("/dev/kvm", os.R_OK | os.W_OK), "/dev/kvm is missing or not accessible"


@dataclass
class Run:
    status: int
    out: str
    err: str


def kvmvm(*args: str, timeout: float = 60, stdin=subprocess.DEVNULL, env=None) -> Run:
    """Run the kvmvm CLI as a user would; returns status, stdout, stderr."""
    p = subprocess.run([*KVMVM, *args], capture_output=True, text=True, timeout=timeout,
                       stdin=stdin, env=env, cwd=ROOT)
    return Run(p.returncode, p.stdout, p.stderr)
