"""kvmvm boots its own Linux kernel + initramfs (linux tier: standard KVM only).

On PVM machines scripts/test.sh runs these inside the kvmhost L1; the kernel is built on the
host beforehand (`kvmvm kernel build`) into the KVMVM_HOME shared with L1.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from kvmvm.image import cached_default

KVMVM = [sys.executable, "-m", "kvmvm"]
TIMEOUT = 240


@pytest.fixture(scope="module")
def art():
    a = cached_default()
    assert a.complete, ("kvmvm's default kernel/initramfs are not built: run `kvmvm kernel build` "
                        f"on the host first (KVMVM_HOME={a.home})")
    return a


def boot(script: str, *args: str, timeout: float = TIMEOUT):
    p = subprocess.run([*KVMVM, "boot", "--timeout", str(timeout - 20), *args], input=script,
                       capture_output=True, text=True, errors="replace", timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def test_default_boot_runs_piped_commands_smp(art):
    rc, out, err = boot("uname -r\ncat /proc/cpuinfo | grep -c ^processor\n", "--cpus", "2", "--json")
    assert rc == 0, f"{err}\n{out[-3000:]}"
    assert "kvmvm: init ready" in out
    assert re.search(rf"^{re.escape(art.kernel_version)}\S*\r?$", out, re.M) or art.kernel_version in out
    assert re.search(r"^2\r?$", out, re.M), out[-2000:]
    res = json.loads(out.strip().splitlines()[-1])
    assert res["reason"] == "poweroff"
    t = res["timings_ms"]
    assert t["boot_signal"] is not None and t["first_kvm_run"] < t["boot_signal"] < t["end"]


def test_memory_size_shows_in_meminfo(art):
    rc, out, err = boot("grep MemTotal /proc/meminfo\n", "--memory", "256")
    assert rc == 0, err
    kib = int(re.search(r"MemTotal:\s+(\d+) kB", out).group(1))
    assert 200 * 1024 < kib <= 256 * 1024


def test_bzimage_boots(art):
    rc, out, err = boot("echo bz-$((6*7))\n", "--bzimage")
    assert rc == 0, f"{err}\n{out[-3000:]}"
    assert "bz-42" in out


def test_vmlinux_64bit_entry_and_acpi_tables(art):
    rc, out, err = boot("ls /sys/firmware/acpi/tables\ncat /sys/bus/platform/devices/QEMU0001:00/driver/module 2>/dev/null; ls /sys/bus/platform/drivers\n",
                        "--entry", "64", "--cpus", "2")
    assert rc == 0, f"{err}\n{out[-3000:]}"
    for t in ("APIC", "DSDT", "FACP"):
        assert t in out


def test_reboot_ends_the_vm_cleanly(art):
    rc, out, err = boot("reboot -f\n", "--json")
    assert rc == 0, err
    assert json.loads(out.strip().splitlines()[-1])["reason"] == "reset"


def test_panic_exits_nonzero_with_a_clear_line(art):
    from kvmvm.cli.booting import DEFAULT_LINUX_CMDLINE

    rc, out, err = boot("", "--cmdline", DEFAULT_LINUX_CMDLINE.replace(" quiet", "") + " rdinit=/nonexistent root=/dev/nothing")
    assert rc == 3, f"{err}\n{out[-3000:]}"
    assert "Kernel panic" in out
    assert err.strip().splitlines()[-1] == "kvmvm: guest kernel panicked (pvpanic); see its console output above"
