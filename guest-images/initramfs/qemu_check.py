#!/usr/bin/env python3
"""Boot kvmvm's cached guest kernel + initramfs under QEMU with pure TCG (works on any
host, no KVM needed) and check the guest contract: `kvmvm: init ready` on the console,
commands piped to the shell run, and the VM powers itself off when the shell exits.

    guest-images/initramfs/qemu_check.py [--machine microvm-acpi|microvm|q35] [--blk]

Input is sent only after the ready line: bytes that reach the UART before the guest's
driver is up are lost. Prints the console with timestamps, then a one-line verdict.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from kvmvm.image import cached_default  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
from benchlib import qemu_firmware  # noqa: E402  (qboot: QEMU 10's default SeaBIOS cannot boot -kernel)

MACHINES = {
    # tsc_early_khz: TCG has no kvmclock and microvm no port 0x61 for PIT calibration
    "microvm-acpi": (["-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=on"], "vmlinux",
                     "console=ttyS0 reboot=t panic=-1 pci=off tsc_early_khz=2000000"),
    "microvm": (["-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off"], "vmlinux",
                "console=ttyS0 reboot=t panic=-1 pci=off tsc_early_khz=2000000"),
    "q35": (["-M", "q35"], "bzimage", "console=ttyS0 reboot=t panic=-1"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machine", choices=sorted(MACHINES), default="microvm-acpi")
    ap.add_argument("--blk", action="store_true", help="attach a virtio-blk disk (microvm only)")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--cmd", default="echo hello-from-guest; uname -r; cat /proc/cmdline")
    a = ap.parse_args()
    art = cached_default()
    if not art.complete:
        print("qemu_check: run `kvmvm kernel build` first", file=sys.stderr)
        return 2
    machine, kernel_kind, append = MACHINES[a.machine]
    firmware = qemu_firmware() if a.machine.startswith("microvm") else []
    cmd = ["qemu-system-x86_64", *firmware, *machine, "-accel", "tcg", "-cpu", "qemu64", "-m", "256",
           "-nographic", "-no-reboot", "-kernel", str(getattr(art, kernel_kind)),
           "-initrd", str(art.initramfs), "-append", append]
    shell_cmd = a.cmd
    if a.blk:
        disk = tempfile.NamedTemporaryFile(suffix=".img", delete=False)
        disk.truncate(8 << 20)
        disk.close()
        cmd += ["-drive", f"file={disk.name},format=raw,if=none,id=d0",
                "-device", "virtio-blk-device,drive=d0"]
        shell_cmd += "; ls -l /dev/vda; cat /sys/block/vda/size"
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    timer = threading.Timer(a.timeout, p.kill)
    timer.start()
    ready = None
    seen = []
    for raw in p.stdout:
        line = raw.decode(errors="replace").rstrip("\r\n")
        now = time.monotonic() - t0
        seen.append(line)
        print(f"{now:7.2f} {line}")
        if ready is None and "kvmvm: init ready" in line:
            ready = now
            p.stdin.write((shell_cmd + "\nexit\n").encode())
            p.stdin.flush()
    rc = p.wait()
    timer.cancel()
    total = time.monotonic() - t0
    ok = ready is not None and any(l.strip() == "hello-from-guest" for l in seen)
    print(f"qemu_check[{a.machine}]: {'OK' if ok else 'FAIL'} ready={ready and round(ready, 2)}s "
          f"exit={total:.2f}s qemu_rc={rc}")
    return 0 if ok and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
