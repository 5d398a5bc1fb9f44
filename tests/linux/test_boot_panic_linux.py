"""A panicking Linux guest ends `kvmvm boot` with status 3 and one line (pvpanic); linux tier.

On PVM machines scripts/test.sh runs these inside the kvmhost L1; the kernel is built on the
host beforehand (`kvmvm kernel build`) into the KVMVM_HOME shared with L1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from kvmvm.image import cached_default

KVMVM = [sys.executable, "-m", "kvmvm"]
# generous inside the emulated test host (~50x slower than hardware), tight elsewhere
TIMEOUT = 240 if os.environ.get("KVMHOST_INSIDE") == "1" else 60


@pytest.fixture(scope="module")
def art():
    a = cached_default()
    assert a.complete, ("kvmvm's default kernel/initramfs are not built: run `kvmvm kernel build` "
                        f"on the host first (KVMVM_HOME={a.home})")
    return a


# boot_params.hdr.type_of_loader (offset 0x210) as the guest kernel saw it
LOADER = "echo loader=$(od -An -tx1 -j 528 -N 1 /sys/kernel/boot_params/data | tr -d ' ')\n"


def boot(script: str, *args: str, timeout: float = TIMEOUT):
    p = subprocess.run([*KVMVM, "boot", "--timeout", str(timeout - 20), *args], input=script,
                       capture_output=True, text=True, errors="replace", timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def test_panic_exits_nonzero_with_a_clear_line(art):
    from kvmvm.cli.booting import DEFAULT_LINUX_CMDLINE

    rc, out, err = boot("", "--cmdline", DEFAULT_LINUX_CMDLINE.replace(" quiet", "") + " rdinit=/nonexistent root=/dev/nothing")
    assert rc == 3, f"{err}\n{out[-3000:]}"
    assert "Kernel panic" in out
    assert err.strip().splitlines()[-1] == "kvmvm: guest kernel panicked (pvpanic); see its console output above"
