"""Linux tier smoke test: the local /dev/kvm boots a stock Linux guest (QEMU microvm).

Run inside the kvmhost L1 on PVM machines (scripts/test.sh does it), directly on a host with
hardware KVM. The guest kernel is Debian's, from the kvmhost image (inside L1: the image L1
itself booted from, found through KVMHOST_L1_DIR on the shared KVMVM_HOME); its initramfs is
busybox and an /init that prints a marker and triple-faults (reboot=t), which ends QEMU.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from benchlib import qemu_firmware  # noqa: E402  (qboot: QEMU 10's default SeaBIOS takes seconds)

from tests.kvmhost import prepare
from tests.kvmhost.cpio import Cpio
from tests.kvmhost.image import BUSYBOX

MARKER = "kvmvm-l2: reached /init"


@pytest.fixture(scope="module")
def l2_initrd(tmp_path_factory):
    c = Cpio()
    for d in ("bin", "dev", "proc"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.copy("bin/busybox", BUSYBOX)
    c.file("init", f"#!/bin/busybox sh\n/bin/busybox echo '{MARKER}'\n/bin/busybox reboot -f\n".encode(), 0o755)
    path = tmp_path_factory.mktemp("l2") / "initramfs.gz"
    c.write(path)
    return path


def l2_kernel():
    """Inside the test host: the Debian kernel L1 itself booted (already there). On a host with
    hardware KVM: kvmvm's own guest kernel (built by scripts/test.sh before this tier), rather
    than building the whole test-host image just to get a kernel."""
    if os.environ.get("KVMHOST_L1_DIR"):
        image = prepare()
        return image.vmlinux or image.kernel  # uncompressed with a PVH note: no decompression
    from kvmvm.image import cached_default

    art = cached_default()
    assert art.complete, f"kvmvm's guest kernel is not built: run `kvmvm image build` (KVMVM_HOME={art.home})"
    return art.vmlinux


def test_qemu_microvm_boots_linux_to_init(l2_initrd):
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu, "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
    # rtc=on: without an RTC the guest spends ~8 s probing for one
    kernel = l2_kernel()
    t0 = time.monotonic()
    proc = subprocess.run(
        [qemu, *qemu_firmware(), "-M", "microvm,rtc=on", "-enable-kvm", "-cpu", "host", "-m", "256", "-smp", "1",
         "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
         "-kernel", str(kernel), "-initrd", str(l2_initrd),
         "-append", "console=ttyS0 reboot=t panic=-1 quiet cryptomgr.notests mitigations=off"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=120)
    took = time.monotonic() - t0
    print(f"L2 QEMU run: {took:.1f} s, exit {proc.returncode}")
    assert MARKER in proc.stdout, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-2000:]}"
    assert proc.returncode == 0, proc.stderr
