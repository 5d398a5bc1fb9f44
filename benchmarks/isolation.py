#!/usr/bin/env python3
"""Isolation boundary: what the workload can see of the host.

Containers share the host kernel: inside each runtime we run busybox
`sh -c 'uname -r; echo /proc/[0-9]*'` and compare the kernel release with the
host's (equal = the host kernel is visible, and is the attack surface), and count
the PIDs visible. VMs: the guest has its own (here: no) kernel; its only interface
to the host is KVM exits (port I/O, MMIO, CPUID, hlt) handled by the VMM. We boot
the tiny `probe` guest, which reports all it can find: its RAM, its entry and
command line, and that an unmapped MMIO address reads as zero. What is measured for
VMs is only what the probe reports (searched for the host's kernel release and name);
"no host PIDs, files or syscalls" holds by construction (a tiny guest has no such
interface) and is labelled so in the output, never as a measurement.

    .venv/bin/python benchmarks/isolation.py [--json]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402
import containers  # noqa: E402

PROBE = ["/bin/sh", "-c", "uname -r; echo /proc/[0-9]*"]


def container_view(rt) -> dict:
    try:
        _, p = bl.run_timed(rt.cmd(PROBE), timeout=60)
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        return bl.missing(str(e))
    finally:
        rt.cleanup()
    lines = p.stdout.decode(errors="replace").strip().splitlines()
    if len(lines) < 2:
        return bl.missing(f"unexpected output: {lines!r}")
    pids = [w for w in lines[1].split() if w[len("/proc/"):].isdigit()]
    host = platform.release()
    return {"kernel_seen": lines[0].strip(), "host_kernel": host,
            "host_kernel_visible": lines[0].strip() == host,
            "pids_visible": len(pids), "host_pids": sum(1 for d in os.listdir("/proc") if d.isdigit()),
            "boundary": "shared host kernel (namespaces, cgroups, seccomp/capabilities)"}


def vm_view(kind: str) -> dict:
    probe = bl.guest("probe")
    cmd = bl.kvmvm_cmd(probe) if kind == "kvmvm" else bl.qemu_cmd(probe)
    if kind == "qemu" and not bl.qemu_bin():
        return bl.missing("qemu-system-x86_64 not installed")
    try:
        _, p = bl.run_timed(cmd, timeout=60)
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        return bl.missing(str(e))
    seen = p.stdout.decode(errors="replace").strip().splitlines()
    host = platform.release()
    # measured: what the probe guest reported, searched for anything of the host's
    return {"guest_reports": seen,
            "measured": {"host_kernel_in_guest_report": any(host in line for line in seen),
                         "host_hostname_in_guest_report": any(platform.node() in line for line in seen),
                         "guest_ram_kib_reported": next((int(l.split()[1]) for l in seen if l.startswith("mem: ")), None)},
            # by construction (not measured): a tiny guest has no syscall, process or file
            # interface to the host at all; its only interface is VM exits
            "by_construction": {"host_pids_visible": "none: no process interface to the host",
                                "host_files_visible": "none: no file interface to the host",
                                "host_kernel_visible": "no syscall interface; only VM exits"},
            "boundary": ("hardware virtualization (KVM): the guest's only interface is VM exits "
                         "(PIO/MMIO/CPUID/hlt) handled by the VMM process; no syscalls into the host")}


def measure(only=None) -> dict:
    names = [n for n in ["kvmvm", "qemu"] + containers.RUNTIMES if not only or n in only]
    res = {}
    work = tempfile.mkdtemp(prefix="kvmvm-bench-")
    try:
        rts = containers.runtimes(work, [n for n in names if n in containers.RUNTIMES])
        for n in names:
            if n in ("kvmvm", "qemu"):
                res[n] = vm_view(n)
            elif bl.is_missing(rts[n]):
                res[n] = rts[n]
            else:
                res[n] = container_view(rts[n])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"benchmark": "isolation", "host_kernel": platform.release(),
            "container_probe": " ".join(PROBE), "results": res, "host": bl.host_info()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", type=str, default="")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = measure([x for x in a.only.split(",") if x])
    lines = [f"isolation (host kernel {r['host_kernel']})"]
    for n, v in r["results"].items():
        if bl.is_missing(v):
            lines.append(f"  {n:<15} missing: {v['missing']}")
        elif "kernel_seen" in v:
            lines.append(f"  {n:<15} uname -r inside: {v['kernel_seen']} (host kernel visible: "
                         f"{v['host_kernel_visible']}), PIDs visible: {v['pids_visible']}")
        else:
            m = v["measured"]
            lines.append(f"  {n:<15} guest reports: {' | '.join(v['guest_reports'])}")
            lines.append(f"  {'':<15} measured: host kernel in its report: {m['host_kernel_in_guest_report']}, "
                         f"host name in its report: {m['host_hostname_in_guest_report']}")
            lines.append(f"  {'':<15} by construction (not measured): no PIDs, files or syscalls of the host")
    bl.emit(r, a.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
