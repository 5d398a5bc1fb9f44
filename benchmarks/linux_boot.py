"""Linux guest boot: kvmvm vs QEMU microvm, the same kernel + initramfs, alternating runs.

Each run starts the VMM, waits for kvmvm's init to print its ready line (time to init, as
the host sees it), sends ^D so the init's shell ends, and waits for the VMM to exit after
the guest's ACPI power-off (time to exit). Both get kvmvm's own vmlinux (PVH entry) and
default initramfs, 1 vCPU, 128 MiB, the same command line.

On a PVM host (no stock Linux guest) the script re-runs itself inside the standard-KVM
test host (tests/kvmhost): those numbers are nested, software-emulated SVM: they check
that the comparison works, they are not speed figures. On hardware KVM they are.

    .venv/bin/python benchmarks/linux_boot.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import time

import benchlib

READY = b"kvmvm: init ready"
CMDLINE = ("console=ttyS0 8250.nr_uarts=1 reboot=acpi panic=-1 pci=off nomodule i8042.noaux "
           "i8042.nomux tsc=reliable quiet kvmvm.console=pipe")


def run_once(cmd: list[str], timeout: float) -> tuple[float, float]:
    """(ms to the ready line, ms to exit) for one VMM run."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    buf, ready_ms = b"", None
    try:
        while ready_ms is None:
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                raise RuntimeError("no ready line before the timeout")
            r, _, _ = select.select([p.stdout], [], [], left)
            chunk = os.read(p.stdout.fileno(), 65536) if r else b""
            if r and not chunk:
                raise RuntimeError(f"exited before init: {p.wait()} {p.stderr.read()[-300:]!r}")
            buf += chunk
            if READY in buf:
                ready_ms = (time.monotonic() - t0) * 1000
        p.stdin.write(b"\x04")           # end of input: the init's shell ends, the VM powers off
        p.stdin.close()
        p.stdout.read()
        rc = p.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        if rc != 0:
            raise RuntimeError(f"exit status {rc}: {p.stderr.read()[-300:]!r}")
        return ready_ms, (time.monotonic() - t0) * 1000
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.runs < 1:
        ap.error("--runs must be at least 1")

    if os.path.exists("/sys/module/kvm_pvm") and not os.environ.get("KVMHOST_INSIDE"):
        sys.path.insert(0, str(benchlib.REPO))
        build = subprocess.run([benchlib.kvmvm_bin(), "image", "build", "--plain"], stdout=sys.stderr)
        if build.returncode:
            return build.returncode
        print("linux_boot: PVM host: running inside the standard-KVM test host "
              "(software-emulated SVM: correctness-grade numbers)", file=sys.stderr)
        return subprocess.call([sys.executable, "-m", "tests.kvmhost", "run", "--timeout", "1500", "--",
                                sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])],
                               cwd=benchlib.REPO)

    sys.path.insert(0, str(benchlib.REPO))
    from kvmvm.image import cached_default

    art = cached_default()
    if not art.complete:
        print("linux_boot: run `kvmvm kernel build` first", file=sys.stderr)
        return 2
    kernel, initrd = str(art.vmlinux), str(art.initramfs)
    kvmvm = [benchlib.kvmvm_bin(), "boot", "--kernel", kernel, "--initrd", initrd,
             "--cmdline", CMDLINE, "--memory", "128", "--no-rng"]
    qemu = [benchlib.qemu_bin() or "qemu-system-x86_64", *benchlib.qemu_firmware(), "-M", "microvm,rtc=on", "-enable-kvm",
            "-cpu", "host", "-m", "128", "-smp", "1", "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", kernel,
            "-initrd", initrd, "-append", CMDLINE]
    samples = {"kvmvm": [], "qemu": []}

    def runner(name, cmd):
        def f():
            ready, total = run_once(cmd, a.timeout)
            samples[name].append(ready)
            print(f"linux_boot: {name}: init {ready:.0f} ms, exit {total:.0f} ms", file=sys.stderr,
                  flush=True)
            return total
        return f

    total = benchlib.alternate({"kvmvm": runner("kvmvm", kvmvm), "qemu": runner("qemu", qemu)},
                               a.runs, warmup=1)
    ready = {n: benchlib.summarize(s[-a.runs:]) if not benchlib.is_missing(total[n]) else total[n]
             for n, s in samples.items()}
    result = {"host": benchlib.host_info(), "runs": a.runs, "kernel": kernel,
              "to_init_ms": ready, "to_exit_ms": total,
              "ratio_to_init": benchlib.ratio(ready["kvmvm"], ready["qemu"]),
              "ratio_to_exit": benchlib.ratio(total["kvmvm"], total["qemu"]),
              "grade": "hardware KVM" if not os.environ.get("KVMHOST_INSIDE") else
                       "nested, software-emulated SVM (correctness-grade)"}
    lines = [f"Linux boot ({result['grade']}), {a.runs} alternating runs each, spawn to init / to exit"]
    lines += benchlib.report_lines("to init", ready, baseline="qemu")
    lines += benchlib.report_lines("to exit", total, baseline="qemu")
    benchlib.emit(result, a.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
