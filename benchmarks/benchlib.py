"""Shared helpers for kvmvm's benchmark scripts (plain Python, no dependencies).

Every script in benchmarks/ can be run on its own with the project's venv
(`.venv/bin/python benchmarks/<name>.py [--json]`); `kvmvm bench` runs them and
merges their JSON. The helpers here are what tests/unit/test_bench.py checks:
statistics, ratios, "missing: reason" entries, and the text report.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "guest-images" / "tiny" / "out"


def kvmvm_bin() -> str:
    """The kvmvm CLI: $KVMVM_BIN, else the project's venv, else the one on PATH."""
    if os.environ.get("KVMVM_BIN"):
        return os.environ["KVMVM_BIN"]
    venv = REPO / ".venv" / "bin" / "kvmvm"
    if venv.exists():
        return str(venv)
    return shutil.which("kvmvm") or str(venv)


def use_kvmvm_tree() -> None:
    """For the in-process benchmarks: import kvmvm from $KVMVM_PYTHONPATH when set
    (e.g. a snapshot of a commit with its own built _native), else from the repo."""
    p = os.environ.get("KVMVM_PYTHONPATH") or str(REPO)
    if p not in sys.path:
        sys.path.insert(0, p)


def guest(name: str) -> str:
    return str(TINY / f"{name}.elf")


# QEMU's fastest fair configuration for the tiny guests on this host: microvm without
# option ROMs, ACPI, PIT, PIC or RTC; an ISA serial port on stdio and the isa-debug-exit
# device (kvmvm provides the same two devices). Measured faster than the default microvm
# (acpi/pit/pic on) by the tiny-guest work; tiny_boot.py --qemu-variants re-checks it.
QEMU_MACHINE = "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off,pit=off,pic=off"
QEMU_MACHINE_DEFAULTISH = "microvm,x-option-roms=off,isa-serial=on,rtc=off"


def qemu_bin() -> str | None:
    return shutil.which("qemu-system-x86_64")


# microvm's firmware: qboot, which loads -kernel itself in a few milliseconds. QEMU 7.2 in
# Debian 12 uses it by default; Debian's QEMU 10 (bookworm-backports) defaults to a SeaBIOS
# build that cannot boot -kernel without option ROMs, and with them takes seconds.
QBOOT_PATHS = ("/usr/share/qemu/qboot.rom", "/usr/share/qboot/bios.bin")


def qemu_firmware() -> list[str]:
    """``-bios`` arguments naming qboot where it is installed (else QEMU's default)."""
    for p in QBOOT_PATHS:
        if os.path.isfile(p):
            return ["-bios", p]
    return []


def qemu_cmd(kernel: str, append: str = "", memory_mib: int = 128, machine: str = QEMU_MACHINE,
             serial: str = "stdio") -> list[str]:
    cmd = [qemu_bin() or "qemu-system-x86_64", *qemu_firmware(), "-M", machine, "-enable-kvm",
           "-cpu", "host,-arch-capabilities", "-m", str(memory_mib), "-nographic", "-no-reboot",
           "-nodefaults", "-serial", serial, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
           "-kernel", kernel]
    if append:
        cmd += ["-append", append]
    return cmd


# kvmvm with the same devices as QEMU_MACHINE (no ACPI tables, no virtio-rng): the like-for-like
# pair for the tiny guests. kvmvm's default adds ACPI and rng, which QEMU_MACHINE leaves out.
KVMVM_BARE = ["--no-rng", "--no-acpi"]


def kvmvm_cmd(kernel: str, cmdline: str = "", memory_mib: int = 128, as_json: bool = False,
              extra: list[str] | None = None) -> list[str]:
    cmd = [kvmvm_bin(), "boot", "--kernel", kernel, "--memory", str(memory_mib)] + list(extra or [])
    if cmdline:
        cmd += ["--cmdline", cmdline]
    if as_json:
        cmd.append("--json")
    return cmd


# ---------------------------------------------------------------- clocks

_TSC_HZ: float | None = None


def _rdtsc_fn():
    """A callable returning the TSC (x86-64 only): 'rdtsc; shl rdx,32; or rax,rdx; ret' in an
    executable page (the guests time their loops with the same counter)."""
    import ctypes
    import mmap

    code = bytes.fromhex("0f31" "48c1e220" "4809d0" "c3")
    buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    buf.write(code)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    fn = ctypes.CFUNCTYPE(ctypes.c_uint64)(addr)
    fn._keep = buf
    return fn


def tsc_hz() -> float:
    """The TSC's real rate, measured: TSC ticks over 200 ms of CLOCK_MONOTONIC_RAW (median of
    three), not /proc/cpuinfo's "cpu MHz" (the current core clock, which differs from the TSC
    on most CPUs). Falls back to the kernel's own calibration in dmesg."""
    global _TSC_HZ
    if _TSC_HZ is not None:
        return _TSC_HZ
    try:
        if platform.machine() != "x86_64":
            raise OSError("not x86-64")
        rdtsc = _rdtsc_fn()
        rates = []
        for _ in range(3):
            t0, c0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW), rdtsc()
            time.sleep(0.2)
            t1, c1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW), rdtsc()
            rates.append((c1 - c0) * 1e9 / (t1 - t0))
        _TSC_HZ = statistics.median(rates)
    except (OSError, ValueError, TypeError):
        import re

        out = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
        m = re.findall(r"tsc: (?:Refined TSC clocksource calibration|Detected): ([\d.]+) MHz", out)
        if not m:
            raise RuntimeError("cannot determine the TSC rate (no x86-64 rdtsc, nothing in dmesg)")
        _TSC_HZ = float(m[-1]) * 1e6
    return _TSC_HZ


# ---------------------------------------------------------------- statistics

def summarize(samples_ms: list[float]) -> dict:
    """min/median/max/mean (ms, 3 decimals) and n of a list of samples."""
    if not samples_ms:
        raise ValueError("no samples")
    s = sorted(float(x) for x in samples_ms)
    r = lambda v: round(v, 3)  # noqa: E731
    return {"n": len(s), "min": r(s[0]), "median": r(statistics.median(s)), "max": r(s[-1]),
            "mean": r(statistics.fmean(s))}


def ratio(a: dict | float | None, b: dict | float | None, key: str = "median") -> float | None:
    """a/b of two summaries (by `key`) or two numbers; None when either is missing or b is 0."""
    def val(x):
        if isinstance(x, dict):
            if is_missing(x):
                return None
            x = x.get(key)
        return x
    va, vb = val(a), val(b)
    if va is None or vb is None or vb == 0:
        return None
    return round(va / vb, 3)


def missing(reason: str) -> dict:
    """The entry for a runtime that is absent or failed: a reason, never a number."""
    reason = " ".join(str(reason).split())[:300] or "unknown reason"
    return {"missing": reason}


def is_missing(entry) -> bool:
    return isinstance(entry, dict) and "missing" in entry


def fmt_entry(entry, unit: str = "ms") -> str:
    """One table cell: 'missing: reason' or 'median (min-max) unit'."""
    if entry is None:
        return "-"
    if is_missing(entry):
        return f"missing: {entry['missing']}"
    if isinstance(entry, dict) and "median" in entry:
        return f"{entry['median']:.1f} {unit} (min {entry['min']:.1f}, max {entry['max']:.1f}, n={entry['n']})"
    if isinstance(entry, float):
        return f"{entry:.3g} {unit}".strip()
    return f"{entry} {unit}".strip()


def report_lines(title: str, rows: dict, unit: str = "ms", baseline: str | None = None) -> list[str]:
    """A plain-text report: one line per row; with `baseline`, the median ratio to it."""
    width = max([len(k) for k in rows] + [8])
    out = [title]
    for name, entry in rows.items():
        line = f"  {name:<{width}}  {fmt_entry(entry, unit)}"
        if baseline and name != baseline and not is_missing(entry):
            r = ratio(entry, rows.get(baseline))
            if r is not None:
                line += f"   x{r:.2f} of {baseline}"
        out.append(line)
    return out


# ---------------------------------------------------------------- running things

def wait_exact(p: subprocess.Popen, timeout: float) -> int:
    """p's exit status, by a blocking wait (waitpid), so that a time taken around it is exact:
    Popen.wait(timeout=...) polls with sleeps doubling from 0.5 ms, which rounds an exit up
    to the next of 1.5, 3.5, 7.5, 15.5, 31.5 ... ms. A timer kills p after timeout seconds
    (then RuntimeError)."""
    import threading

    guard = threading.Timer(timeout, p.kill)
    guard.start()
    t0 = time.monotonic()
    try:
        rc = p.wait()
    finally:
        guard.cancel()
    if time.monotonic() - t0 >= timeout:
        raise RuntimeError(f"{os.path.basename(str(p.args[0]))} did not exit within {timeout:g} s")
    return rc


def run_timed(cmd: list[str], timeout: float = 30.0, stdin=subprocess.DEVNULL, env=None,
              ok_codes=(0,)) -> tuple[float, subprocess.CompletedProcess]:
    """Spawn `cmd`, wait for its exit; wall ms from just before the spawn to the exit.

    Raises RuntimeError (with the tail of stderr) when the exit status is not in ok_codes.
    """
    t0 = time.perf_counter_ns()
    p = subprocess.run(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout, env=env)
    dt = (time.perf_counter_ns() - t0) / 1e6
    if ok_codes is not None and p.returncode not in ok_codes:
        tail = (p.stderr or b"").decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{os.path.basename(cmd[0])} exited {p.returncode}: {' | '.join(tail)}")
    return dt, p


def alternate(runners: dict, runs: int, warmup: int = 1) -> dict:
    """Run each callable (returning wall ms) in turn, `runs` rounds, alternating.

    A runner that fails (raises) once is dropped and reported as missing with the reason.
    Returns name -> summary or missing entry (plus the raw samples under "samples").
    """
    samples = {n: [] for n in runners}
    failed: dict[str, str] = {}
    for _ in range(warmup):
        for n, f in runners.items():
            if n in failed:
                continue
            try:
                f()
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                failed[n] = f"{type(e).__name__}: {e}"
    for _ in range(runs):
        for n, f in runners.items():
            if n in failed:
                continue
            try:
                samples[n].append(f())
            except Exception as e:  # noqa: BLE001
                failed[n] = f"{type(e).__name__}: {e}"
    out = {}
    for n in runners:
        if n in failed:
            out[n] = missing(failed[n])
        else:
            out[n] = dict(summarize(samples[n]), samples=[round(x, 3) for x in samples[n]])
    return out


def host_info() -> dict:
    """What the numbers were measured on."""
    info = {"kernel": platform.release(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    info["mem_total_mib"] = int(line.split()[1]) // 1024
                    break
        with open("/proc/loadavg") as f:
            info["loadavg"] = f.read().split()[:3]
    except OSError:
        pass
    info["kvm"] = "pvm" if os.path.exists("/sys/module/kvm_pvm") else (
        "kvm_intel" if os.path.exists("/sys/module/kvm_intel") else
        "kvm_amd" if os.path.exists("/sys/module/kvm_amd") else "unknown")
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    info["os"] = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return info


def emit(result: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print("\n".join(lines))
