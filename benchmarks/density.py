#!/usr/bin/env python3
"""Density: how many idle microVMs (tiny `halt` guest, 128 MiB each) the host holds at
once, and the creation rate (VMs/s) getting there.

Modes:
  kvmvm-api   many VMs in ONE Python process through kvmvm's API
              (Machine(cfg).build(); vm.start(), one after the other);
  kvmvm-proc  one `kvmvm boot --kernel halt.elf` process per VM;
  qemu        one QEMU microvm process per VM (same guest, same flags as startup).
Like for like: the kvmvm/QEMU ratios compare kvmvm-proc with qemu (one process per VM on
both sides); kvmvm-api is reported on its own (QEMU has no in-process equivalent).
Each mode also gives the per-VM latency (spawn or build+start to "halt: now" for process
modes; build+start for the API) as median, min and max over every VM.
A VM counts once it printed "halt: now" (then it idles in hlt; with the in-kernel
irqchip a halted vCPU sleeps). Process modes keep up to --inflight VMs booting at a
time. Each mode stops at the cap, the time limit, or when MemAvailable would fall
below the floor (max(4 GiB, 25% of RAM)), whichever first, and says which. Memory
per VM = drop of the host's MemAvailable / VMs held. Everything is torn down at the
end (VMs stopped and closed; processes killed and reaped).

    .venv/bin/python benchmarks/density.py [--cap 300] [--time-limit 120] [--modes ...] [--json]
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

MODES = ["kvmvm-api", "kvmvm-proc", "qemu"]


def meminfo() -> dict:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])   # KiB
    return out


def mem_floor_kib() -> int:
    return max(4 << 20, meminfo()["MemTotal"] // 4)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _result(mode, n, t_all, stopped_by, avail0, avail1, extra=None) -> dict:
    r = {"vms": n, "seconds": round(t_all, 3),
         "vms_per_s": round(n / t_all, 2) if n and t_all > 0 else 0.0,
         "stopped_by": stopped_by,
         "host_mem_per_vm_mib": round((avail0 - avail1) / 1024 / n, 2) if n else None}
    r.update(extra or {})
    return r


def density_api(cap: int, time_limit: float, memory_mib: int = 128) -> dict:
    bl.use_kvmvm_tree()
    from kvmvm.machine import Machine, MachineConfig

    _raise_nofile()
    halt = bl.guest("halt")
    floor = mem_floor_kib()
    out = tempfile.NamedTemporaryFile(prefix="kvmvm-density-", delete=False)
    fd = os.open(out.name, os.O_WRONLY | os.O_APPEND)
    machines, stopped_by = [], "cap"
    lat_ms: list[float] = []
    avail0 = meminfo()["MemAvailable"]
    t0 = time.perf_counter()
    try:
        while len(machines) < cap:
            if time.perf_counter() - t0 > time_limit:
                stopped_by = "time limit"
                break
            if meminfo()["MemAvailable"] < floor:
                stopped_by = "memory floor"
                break
            try:
                t_vm = time.perf_counter()
                m = Machine(MachineConfig(kernel=halt, memory_mib=memory_mib, serial_out_fd=fd))
                m.build()
                m.vm.start()
                lat_ms.append((time.perf_counter() - t_vm) * 1000)
            except Exception as e:  # noqa: BLE001 - reported
                stopped_by = f"failure: {type(e).__name__}: {e}"
                break
            machines.append(m)
        # all counted VMs must have reached hlt
        def halted():
            with open(out.name, "rb") as f:
                return f.read().count(b"halt: now")
        deadline = time.perf_counter() + 30
        while halted() < len(machines) and time.perf_counter() < deadline:
            time.sleep(0.01)
        t_all = time.perf_counter() - t0
        n_ok = halted()
        alive = sum(1 for m in machines if m.vm.wait(0) is None)
        time.sleep(0.5)
        avail1 = meminfo()["MemAvailable"]
        rss = _self_rss_kib()
        extra = {"halted": n_ok, "still_running": alive, "process_rss_mib": round(rss / 1024, 1),
                 "process_rss_per_vm_mib": round(rss / 1024 / max(1, len(machines)), 2),
                 "how": "one Python process, kvmvm API, VMs built and started one after another",
                 "per_vm_ms": bl.summarize(lat_ms) if lat_ms else None}
        n = min(n_ok, alive)
    finally:
        t_close = time.perf_counter()
        for m in machines:
            try:
                if m.vm is not None:
                    m.vm.stop()
                    m.vm.wait(5)
                m.close()
            except Exception:  # noqa: BLE001 - best effort teardown
                pass
        os.close(fd)
        os.unlink(out.name)
    r = _result("kvmvm-api", n, t_all, stopped_by, avail0, avail1, extra)
    r["teardown_s"] = round(time.perf_counter() - t_close, 3)
    return r


def _self_rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


def density_procs(cmd: list[str], cap: int, time_limit: float, inflight: int, how: str) -> dict:
    _raise_nofile()
    floor = mem_floor_kib()
    procs, booting, ready = [], {}, 0      # booting: fd -> (proc, buffer, spawn time)
    lat_ms: list[float] = []
    stopped_by = "cap"
    avail0 = meminfo()["MemAvailable"]
    t0 = time.perf_counter()
    try:
        while True:
            now = time.perf_counter()
            if ready >= cap and not booting:
                break
            if now - t0 > time_limit:
                stopped_by = "time limit"
                break
            can_spawn = len(procs) < cap and stopped_by == "cap"
            if can_spawn and meminfo()["MemAvailable"] < floor:
                stopped_by = "memory floor"
                can_spawn = False
            while can_spawn and len(booting) < inflight and len(procs) < cap:
                p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
                procs.append(p)
                booting[p.stdout.fileno()] = [p, b"", time.perf_counter()]
            if not booting:
                break
            r, _, _ = select.select(list(booting), [], [], 0.5)
            for fd in r:
                p, buf, t_spawn = booting[fd]
                chunk = os.read(fd, 4096)
                buf += chunk
                booting[fd][1] = buf
                if b"halt: now" in buf:
                    del booting[fd]
                    ready += 1
                    lat_ms.append((time.perf_counter() - t_spawn) * 1000)
                elif not chunk:
                    del booting[fd]
                    stopped_by = f"failure: a VM process exited {p.wait()} before halting"
        t_all = time.perf_counter() - t0
        time.sleep(0.5)
        alive = sum(1 for p in procs if p.poll() is None)
        avail1 = meminfo()["MemAvailable"]
        rss = sum(_rss_kib(p.pid) for p in procs if p.poll() is None)
    finally:
        t_close = time.perf_counter()
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
            p.stdout.close()
    n = min(ready, alive)
    r = _result("proc", n, t_all, stopped_by, avail0, avail1,
                {"halted": ready, "still_running": alive, "inflight": inflight, "how": how,
                 "process_rss_per_vm_mib": round(rss / 1024 / max(1, alive), 2),
                 "per_vm_ms": bl.summarize(lat_ms) if lat_ms else None})
    r["teardown_s"] = round(time.perf_counter() - t_close, 3)
    return r


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(cap: int, time_limit: float, modes=None, inflight: int = 4) -> dict:
    halt = bl.guest("halt")
    res, cmds = {}, {}
    for mode in modes or MODES:
        try:
            if mode == "kvmvm-api":
                cmds[mode] = "python: Machine(MachineConfig(kernel=halt.elf, memory_mib=128)).build(); vm.start()"
                res[mode] = density_api(cap, time_limit)
            elif mode == "kvmvm-proc":
                c = bl.kvmvm_cmd(halt)
                cmds[mode] = " ".join(c)
                res[mode] = density_procs(c, cap, time_limit, inflight, "one kvmvm process per VM")
            elif mode == "qemu":
                if not bl.qemu_bin():
                    res[mode] = bl.missing("qemu-system-x86_64 not installed")
                    continue
                c = bl.qemu_cmd(halt)
                cmds[mode] = " ".join(c)
                res[mode] = density_procs(c, cap, time_limit, inflight, "one QEMU process per VM")
        except Exception as e:  # noqa: BLE001 - reported as missing
            res[mode] = bl.missing(f"{type(e).__name__}: {e}")
        if not bl.is_missing(res[mode]) and res[mode]["vms"] == 0:
            res[mode] = bl.missing(f"no VM came up ({res[mode]['stopped_by']})")
    kp, q = res.get("kvmvm-proc"), res.get("qemu")
    both = kp is not None and q is not None and not bl.is_missing(kp) and not bl.is_missing(q)
    return {"benchmark": "density",
            "what": "idle halt-guest microVMs (128 MiB each) held at once; creation rate",
            "cap": cap, "time_limit_s": time_limit, "mem_floor_mib": mem_floor_kib() // 1024,
            "commands": cmds, "results": res,
            "ratio_pair": "kvmvm-proc/qemu (one process per VM on both sides)",
            "ratio_kvmvm_proc_qemu_vms_per_s": bl.ratio(kp["vms_per_s"], q["vms_per_s"]) if both else None,
            "ratio_kvmvm_proc_qemu_mem_per_vm": bl.ratio(kp["host_mem_per_vm_mib"], q["host_mem_per_vm_mib"]) if both else None,
            "host": bl.host_info()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cap", type=int, default=300)
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per mode")
    ap.add_argument("--inflight", type=int, default=4, help="process modes: VMs booting at once")
    ap.add_argument("--modes", type=str, default=",".join(MODES))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = measure(a.cap, a.time_limit, [m for m in a.modes.split(",") if m], a.inflight)
    lines = [f"density (cap {a.cap}, {a.time_limit:g} s per mode)"]
    for k, v in r["results"].items():
        if bl.is_missing(v):
            lines.append(f"  {k:<11} missing: {v['missing']}")
        else:
            lat = v.get("per_vm_ms")
            lines.append(f"  {k:<11} {v['vms']:>4} VMs held, {v['vms_per_s']:.1f} VMs/s, "
                         f"{v['host_mem_per_vm_mib']} MiB host memory per VM (stopped by {v['stopped_by']})"
                         + (f"; per VM {bl.fmt_entry(lat)}" if lat else ""))
    lines.append(f"  {r['ratio_pair']}: VMs/s x{r['ratio_kvmvm_proc_qemu_vms_per_s']}, "
                 f"memory per VM x{r['ratio_kvmvm_proc_qemu_mem_per_vm']} (kvmvm-api is not in a ratio)")
    bl.emit(r, a.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
