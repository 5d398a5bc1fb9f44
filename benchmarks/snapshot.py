"""Snapshot, restore and fork of a tiny guest: kvmvm against QEMU's migrate/-incoming.

    .venv/bin/python benchmarks/snapshot.py [--runs 10] [--vms 100] [--parts LIST] [--json]

The guest is the counter tiny guest with 8 MiB of memory filled (touch=8), 128 MiB of RAM.
kvmvm: snapshot time and size (Machine.snapshot), restore to running in VMM time (from
Machine.restore's call until the vCPUs run) for 128 MiB and 1 GiB guests, end to end
(`kvmvm restore` spawned until the guest's first console line), fork latency (first child,
per child for 4 as Machine.fork reports it, and per further child: fork(4)'s total less
fork(1)'s, over 3), and the memory of --vms VMs restored from one snapshot in this process
against one (each guest has read back the 8 MiB it filled), and of --processes `kvmvm
restore` processes of it against one. QEMU (microvm, same guest,
same run): `stop` + `migrate "exec:cat > FILE"` until completed, and `-incoming "exec:cat
FILE"` + `cont` spawned until the guest's first console line.
--parts: a comma-separated subset of fork,restore,e2e,memory,processes,qemu (snapshots are always
taken: the other parts need them).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import benchlib as bl

bl.use_kvmvm_tree()

CMDLINE = "touch=8 delay=20000"


def wait_line(stream, prefix: bytes, timeout: float = 60.0) -> float:
    """Read lines until one starts with prefix; the perf_counter time (s) it arrived."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            raise RuntimeError("the guest's console ended")
        if line.startswith(prefix):
            return time.perf_counter()
    raise RuntimeError(f"no {prefix!r} line within {timeout} s")


def wait_file(path: str, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in open(path, errors="replace").read():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{text!r} not in {path}")
        time.sleep(0.01)


PARTS = ("fork", "restore", "e2e", "memory", "processes", "qemu")


def kvmvm_side(runs: int, tmp: str, parts=PARTS, vms: int = 100, processes: int = 20) -> dict:
    from kvmvm.machine import Machine, MachineConfig

    out = {}
    devnull = os.open(os.devnull, os.O_WRONLY)
    snaps = {}
    snap_ms, sizes = [], {}
    for mib in (128, 1024):
        log = os.path.join(tmp, f"boot{mib}.out")
        fh = open(log, "wb")
        m = Machine(MachineConfig(kernel=bl.guest("counter"), cmdline=CMDLINE, memory_mib=mib,
                                  serial_out_fd=fh.fileno()))
        m.start()
        wait_file(log, "tick 1")
        for i in range(runs if mib == 128 else 1):
            d = os.path.join(tmp, f"snap{mib}-{i}")
            m.snapshot(d, resume=True)
            if mib == 128:
                snap_ms.append(m.snapshot_ms)
        snaps[mib] = d
        st = os.stat(os.path.join(d, "memory-0.raw"))
        sizes[mib] = {"apparent_bytes": st.st_size, "disk_bytes": st.st_blocks * 512,
                      "state_bytes": os.stat(os.path.join(d, "state.bin")).st_size}
        if mib == 128 and "fork" in parts:
            out.update(fork_side(m, runs, devnull))
        m.stop(); m.wait(5); m.close()
        fh.close()
    out["snapshot_ms"] = bl.summarize(snap_ms)
    out["snapshot_size"] = sizes
    for mib in (128, 1024) if "restore" in parts else ():
        vmm = []
        for _ in range(runs):
            r = Machine.restore(snaps[mib], serial_out_fd=devnull)
            vmm.append(r.restore_vmm_ms)
            r.stop(); r.wait(5); r.close()
        out[f"restore_vmm_{mib}mib_ms"] = bl.summarize(vmm)
    e2e = []
    for _ in range(runs if "e2e" in parts else 0):
        t0 = time.perf_counter()
        p = subprocess.Popen([bl.kvmvm_bin(), "restore", snaps[128], "--timeout", "30"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            t1 = wait_line(p.stdout, b"tick")
            e2e.append((t1 - t0) * 1000)
        finally:
            p.kill(); p.wait()
    if e2e:
        out["restore_end_to_end_ms"] = bl.summarize(e2e)
    if "memory" in parts:
        out["restored_memory"] = restored_memory(snaps[128], tmp, vms)
    if "processes" in parts:
        out["restored_processes_memory"] = restored_processes_memory(snaps[128], tmp, processes)
    os.close(devnull)
    return out


def fork_side(m, runs: int, devnull: int) -> dict:
    """Fork latency of the running Machine m: fork(1) and fork(4), alternating."""
    fork1, fork4_total, fork4_per = [], [], []
    for i in range(runs):
        for n in (1, 4) if i % 2 == 0 else (4, 1):
            kids = m.fork(n, serial_out_fds=[devnull] * n)
            if n == 1:
                fork1.append(m.fork_ms["total"])
            else:
                fork4_total.append(m.fork_ms["total"])
                fork4_per.append(m.fork_ms["per_child"])
            for k in kids:
                k.stop(); k.wait(5); k.close()
    s1, s4 = bl.summarize(fork1), bl.summarize(fork4_total)
    return {"fork_first_child_ms": s1, "fork_4_total_ms": s4,
            "fork_per_child_of_4_ms": bl.summarize(fork4_per),
            # what each child after the first adds, from the two medians
            "fork_further_child_ms": round((s4["median"] - s1["median"]) / 3, 3)}


def smaps_rollup_kib(pid: str = "self") -> dict:
    """/proc/PID/smaps_rollup's Rss/Pss lines, in KiB."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, rest = line.partition(":")
            if k.startswith(("Rss", "Pss")):
                out[k] = int(rest.split()[0])
    return out


KERNEL_MEMINFO = ("Slab", "KernelStack", "PageTables", "SecPageTables")


def kernel_kib() -> int:
    """The host kernel's own memory that VMs grow (KVM's and PVM's structures, shadow page
    tables, thread stacks): the sum of those /proc/meminfo lines, host-wide (others' work
    moves it too)."""
    total = 0
    with open("/proc/meminfo") as f:
        for line in f:
            k, _, rest = line.partition(":")
            if k in KERNEL_MEMINFO:
                total += int(rest.split()[0])
    return total


def wait_all(logs: list[str], text: str, timeout: float) -> None:
    """Until every console log in logs holds text."""
    deadline = time.monotonic() + timeout
    left = list(logs)
    while left:
        left = [p for p in left if text not in open(p, errors="replace").read()]
        if left and time.monotonic() > deadline:
            raise RuntimeError(f"{len(left)} of {len(logs)} VMs did not print {text!r} "
                               f"within {timeout:g} s")
        time.sleep(0.05)


def restored_memory(snap: str, tmp: str, n: int) -> dict:
    """The memory of n VMs restored from the same snapshot in this process against one:
    this process's PSS (smaps_rollup) with one VM and with n, each guest having read back
    the 8 MiB it filled after its new generation ID ("counter: verified"), and then paused
    (nothing changes while the rest are measured, and the host's 2 cores are not all
    theirs). Also against the process before any VM (base): what the VMs themselves add."""
    from kvmvm.machine import Machine

    logs = [os.path.join(tmp, f"restored-{i}.out") for i in range(n)]

    fds = []        # the consoles' fds, open as long as their VMs (the VM does not dup them)

    def one(i: int):
        fds.append(os.open(logs[i], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
        return Machine.restore(snap, serial_out_fd=fds[-1])

    ms = []
    try:
        warm = one(0)       # imports and first-use allocations, then gone again
        wait_all(logs[:1], "counter: verified", 30)
        warm.stop(); warm.wait(5); warm.close()
        time.sleep(0.5)
        base, kbase = smaps_rollup_kib(), kernel_kib()
        ms.append(one(0))
        wait_all(logs[:1], "counter: verified", 30)
        ms[0].pause()
        one_vm, kone = smaps_rollup_kib(), kernel_kib()
        batch = []      # restored, not yet verified and paused: at most 10 spin at once
        for i in range(1, n):
            ms.append(one(i))
            batch.append(i)
            if len(batch) == 10 or i == n - 1:
                wait_all([logs[j] for j in batch], "counter: verified", 120)
                for j in batch:
                    ms[j].pause()
                batch = []
        all_vms, kall = smaps_rollup_kib(), kernel_kib()
    finally:
        for m in ms:
            m.stop(); m.wait(5); m.close()
        for fd in fds:
            os.close(fd)
    pss = lambda d: d["Pss"]  # noqa: E731
    return {"n": n, "guest_touched_kib": 8 * 1024,
            "pss_base_kib": pss(base), "pss_one_vm_kib": pss(one_vm), "pss_n_vms_kib": pss(all_vms),
            "ratio_n_to_one": round(pss(all_vms) / pss(one_vm), 3),
            "ratio_n_to_one_beyond_base": round((pss(all_vms) - pss(base)) / max(1, pss(one_vm) - pss(base)), 3),
            "pss_per_extra_vm_kib": round((pss(all_vms) - pss(one_vm)) / max(1, n - 1)),
            "rollup_one_vm_kib": one_vm, "rollup_n_vms_kib": all_vms,
            # the host kernel's side (not in any PSS), host-wide /proc/meminfo: noisy
            "kernel_one_vm_kib": kone - kbase, "kernel_n_vms_kib": kall - kbase,
            "kernel_per_extra_vm_kib": round((kall - kone) / max(1, n - 1))}


def restored_processes_memory(snap: str, tmp: str, n: int) -> dict:
    """The memory of n `kvmvm restore` processes of the same snapshot against one: the sum
    of their PSS, each measured once its guest has read back its 8 MiB and the process is
    stopped (SIGSTOP: nothing changes, nothing spins); the first alone, then in batches
    of 10."""
    import signal

    logs = [os.path.join(tmp, f"proc-{i}.out") for i in range(n)]
    procs = []

    def pss(p) -> int:
        return smaps_rollup_kib(str(p.pid))["Pss"]

    try:
        one = None
        for b0, b1 in [(0, 1)] + [(b, min(n, b + 10)) for b in range(1, n, 10)]:
            batch = []
            for i in range(b0, b1):
                with open(logs[i], "wb") as fh:
                    # stdin: a pipe kept open (at EOF the console would end the guest)
                    batch.append(subprocess.Popen([bl.kvmvm_bin(), "restore", snap, "--timeout", "600"],
                                                  stdin=subprocess.PIPE, stdout=fh,
                                                  stderr=subprocess.DEVNULL))
            procs += batch
            wait_all(logs[b0:b0 + len(batch)], "counter: verified", 120)
            for p in batch:
                p.send_signal(signal.SIGSTOP)
            if one is None:
                time.sleep(0.2)
                one = pss(batch[0])     # the first alone
        time.sleep(0.2)
        total = sum(pss(p) for p in procs)
        rss1 = smaps_rollup_kib(str(procs[0].pid))["Rss"]
    finally:
        for p in procs:
            p.kill()
            p.send_signal(signal.SIGCONT)
            p.wait()
            p.stdin.close()
    return {"n": n, "pss_one_process_kib": one, "rss_one_process_kib": rss1,
            "pss_n_processes_kib": total, "ratio_n_to_one": round(total / one, 3),
            "pss_per_process_kib": round(total / n)}


class Qmp:
    def __init__(self, path: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        self.f = self.s.makefile("rwb")
        json.loads(self.f.readline())
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, **args) -> dict:
        self.f.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "return" in r or "error" in r:
                if "error" in r:
                    raise RuntimeError(f"QMP {name}: {r['error']}")
                return r["return"]

    def close(self):
        self.s.close()


def qemu_side(runs: int, tmp: str) -> dict:
    if not bl.qemu_bin():
        return {"missing": "qemu-system-x86_64 not installed"}
    out = {}
    qmp_path = os.path.join(tmp, "qmp.sock")
    base = bl.qemu_cmd(bl.guest("counter"), CMDLINE)
    p = subprocess.Popen(base + ["-qmp", f"unix:{qmp_path},server=on,wait=off"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    files = []
    try:
        wait_line(p.stdout, b"tick 1")
        q = Qmp(qmp_path)
        save = []
        for i in range(runs):
            f = os.path.join(tmp, f"qemu-{i}.mig")
            t0 = time.perf_counter()
            q.cmd("stop")
            q.cmd("migrate", uri=f"exec:cat > {f}")
            while q.cmd("query-migrate").get("status") not in ("completed", "failed"):
                time.sleep(0.001)
            save.append((time.perf_counter() - t0) * 1000)
            files.append(f)
            q.cmd("cont")
        q.close()
        out["snapshot_ms"] = bl.summarize(save)
        out["snapshot_size"] = {"file_bytes": os.stat(files[-1]).st_size}
    finally:
        p.kill(); p.wait()
        if os.path.exists(qmp_path):
            os.unlink(qmp_path)
    e2e = []
    for i in range(runs):
        t0 = time.perf_counter()
        p = subprocess.Popen(base + ["-incoming", f"exec:cat {files[-1]}", "-qmp",
                                     f"unix:{qmp_path},server=on,wait=off"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            q = Qmp(qmp_path)
            while q.cmd("query-status").get("status") == "inmigrate":
                time.sleep(0.0005)
            q.cmd("cont")
            t1 = wait_line(p.stdout, b"tick")
            e2e.append((t1 - t0) * 1000)
            q.close()
        finally:
            p.kill(); p.wait()
            if os.path.exists(qmp_path):
                os.unlink(qmp_path)
    out["restore_end_to_end_ms"] = bl.summarize(e2e)
    return out


def measure(runs: int, parts=PARTS, vms: int = 100, processes: int = 20) -> dict:
    with tempfile.TemporaryDirectory(prefix="kvmvm-snapbench-") as tmp:
        res = {"kvmvm": kvmvm_side(runs, tmp, parts, vms, processes)}
        if "qemu" not in parts:
            res["qemu"] = bl.missing("not measured (--parts)")
        else:
            try:
                res["qemu"] = qemu_side(runs, tmp)
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                res["qemu"] = bl.missing(f"{type(e).__name__}: {e}")
    k, q = res["kvmvm"], res["qemu"]
    return {
        "benchmark": "snapshot",
        "guest": f"counter.elf {CMDLINE}, 128 MiB (restore also 1 GiB)",
        "host": bl.host_info(),
        "results": res,
        "ratio_kvmvm_qemu_snapshot_median": bl.ratio(k["snapshot_ms"], q.get("snapshot_ms")),
        "ratio_kvmvm_qemu_restore_e2e_median": bl.ratio(k.get("restore_end_to_end_ms"),
                                                        q.get("restore_end_to_end_ms")),
        "load": os.getloadavg(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--vms", type=int, default=100, help="VMs restored for the memory measure")
    ap.add_argument("--processes", type=int, default=20,
                    help="`kvmvm restore` processes for the per-process memory measure")
    ap.add_argument("--parts", default=",".join(PARTS), help="a subset of " + ",".join(PARTS))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    parts = tuple(p for p in a.parts.split(",") if p)
    bad = [p for p in parts if p not in PARTS]
    if bad or a.vms < 2 or a.processes < 2 or a.runs < 1:
        ap.error(f"unknown part {bad[0]!r}" if bad else
                 "--vms and --processes must be at least 2, --runs at least 1")
    r = measure(a.runs, parts, a.vms, a.processes)
    k, q = r["results"]["kvmvm"], r["results"]["qemu"]
    lines = [f"snapshot/restore/fork, {r['guest']}, {a.runs} runs, load {r['load']}"]
    for name in ("snapshot_ms", "restore_vmm_128mib_ms", "restore_vmm_1024mib_ms",
                 "restore_end_to_end_ms", "fork_first_child_ms", "fork_4_total_ms",
                 "fork_per_child_of_4_ms", "fork_further_child_ms"):
        if name in k:
            lines.append(f"  kvmvm {name:<24} {bl.fmt_entry(k.get(name))}")
    lines.append(f"  kvmvm snapshot size          {k['snapshot_size']}")
    if "restored_memory" in k:
        rm = k["restored_memory"]
        lines.append(f"  kvmvm {rm['n']} restored VMs: PSS {rm['pss_n_vms_kib']} KiB vs one VM "
                     f"{rm['pss_one_vm_kib']} KiB = {rm['ratio_n_to_one']}x; beyond the process "
                     f"without VMs ({rm['pss_base_kib']} KiB): {rm['ratio_n_to_one_beyond_base']}x; "
                     f"{rm['pss_per_extra_vm_kib']} KiB per extra VM; host kernel "
                     f"(Slab+stacks+page tables, host-wide): {rm['kernel_one_vm_kib']} KiB for one, "
                     f"{rm['kernel_n_vms_kib']} KiB for {rm['n']}")
    if "restored_processes_memory" in k:
        rp = k["restored_processes_memory"]
        lines.append(f"  kvmvm {rp['n']} `kvmvm restore` processes: PSS {rp['pss_n_processes_kib']} KiB "
                     f"vs one {rp['pss_one_process_kib']} KiB = {rp['ratio_n_to_one']}x "
                     f"({rp['pss_per_process_kib']} KiB per process)")
    for name in ("snapshot_ms", "restore_end_to_end_ms"):
        lines.append(f"  qemu  {name:<24} {bl.fmt_entry(q.get(name)) if not bl.is_missing(q) else bl.fmt_entry(q)}")
    if not bl.is_missing(q):
        lines.append(f"  qemu  snapshot size          {q['snapshot_size']}")
    lines.append(f"  ratio kvmvm/qemu snapshot (median): {r['ratio_kvmvm_qemu_snapshot_median']}")
    lines.append(f"  ratio kvmvm/qemu restore end to end (median): {r['ratio_kvmvm_qemu_restore_e2e_median']}")
    bl.emit(r, a.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
