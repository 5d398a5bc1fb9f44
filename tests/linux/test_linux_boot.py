"""kvmvm boots its own Linux kernel + initramfs (linux tier: standard KVM only).

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


def test_default_boot_runs_piped_commands_smp(art):
    rc, out, err = boot("uname -r\necho cpus=$(grep -c ^processor /proc/cpuinfo)\n" + LOADER,
                        "--cpus", "2", "--json")
    assert rc == 0, f"{err}\n{out[-3000:]}"
    assert "kvmvm: init ready" in out
    lines = [l.strip() for l in out.splitlines()]
    assert any(re.fullmatch(rf"{re.escape(art.kernel_version)}\S*", l) for l in lines), out[-2000:]
    assert "cpus=2" in lines, out[-2000:]
    # PVH entry (the default for kvmvm's vmlinux): Linux's PVH code fills boot_params itself
    # and, outside Xen, names the loader QEMU (type_of_loader 0xb0); kvmvm's own 64-bit entry
    # writes 0xff (see test_vmlinux_64bit_entry_and_acpi_tables)
    assert "loader=b0" in lines, out[-2000:]
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
    assert "bz-42" in [l.strip() for l in out.splitlines()]


def test_vmlinux_64bit_entry_and_acpi_tables(art):
    rc, out, err = boot("ls /sys/firmware/acpi/tables\n" + LOADER, "--entry", "64", "--cpus", "2")
    assert rc == 0, f"{err}\n{out[-3000:]}"
    lines = [l.strip() for l in out.splitlines()]
    # the 64-bit entry: kvmvm wrote boot_params itself, loader "undefined" (0xff)
    assert "loader=ff" in lines, out[-2000:]
    tables = " ".join(l for l in lines if not l.startswith(("ls ", "echo ")))
    for t in ("APIC", "DSDT", "FACP"):
        assert re.search(rf"\b{t}\b", tables), out[-2000:]


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


def test_each_console_line_runs_as_it_arrives(art):
    """`kvmvm boot` with a pipe for stdin: a line is run when it arrives, not when the next
    one does (busybox cat's sendfile from the tty once held every line back by one)."""
    import threading
    import time

    p = subprocess.Popen([*KVMVM, "boot", "--timeout", str(TIMEOUT * 2)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    seen: list[str] = []
    t = threading.Thread(target=lambda: seen.extend(iter(p.stdout.readline, "")), daemon=True)
    t.start()

    def answered(want: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(l.strip() == want for l in list(seen)):
                return True
            time.sleep(0.05)
        return False

    try:
        assert answered("kvmvm: init ready", TIMEOUT), "".join(seen)[-2000:]
        for i in range(8):      # each line right after the previous answer; never a next one
            p.stdin.write(f"echo step{i}-$(({i}*7))\n")
            p.stdin.flush()
            assert answered(f"step{i}-{i * 7}", 60 if i else TIMEOUT), f"line {i} not run:\n" + "".join(seen)[-2000:]
        p.stdin.close()         # end of input: ^D, the shell exits, the VM powers off
        assert p.wait(TIMEOUT) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
