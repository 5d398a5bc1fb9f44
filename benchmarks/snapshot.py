"""Snapshot, restore and fork of a tiny guest: kvmvm against QEMU's migrate/-incoming.

    .venv/bin/python benchmarks/snapshot.py [--runs 10] [--json]

The guest is the counter tiny guest with 8 MiB of memory filled (touch=8), 128 MiB of RAM.
kvmvm: snapshot time and size (Machine.snapshot), restore to running in VMM time (from
Machine.restore's call until the vCPUs run) for 128 MiB and 1 GiB guests, end to end
(`kvmvm restore` spawned until the guest's first console line), fork latency (first child,
and per child for 4). QEMU (microvm, same guest, same run): `stop` + `migrate
"exec:cat > FILE"` until completed, and `-incoming "exec:cat FILE"` + `cont` spawned until
the guest's first console line.
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


def kvmvm_side(runs: int, tmp: str) -> dict:
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
        if mib == 128:
            fork1, fork4 = [], []
            for _ in range(runs):
                kids = m.fork(1, serial_out_fds=[devnull])
                fork1.append(m.fork_ms["total"])
                for k in kids:
                    k.stop(); k.wait(5); k.close()
            for _ in range(max(1, runs // 2)):
                kids = m.fork(4, serial_out_fds=[devnull] * 4)
                fork4.append(m.fork_ms["per_child"])
                for k in kids:
                    k.stop(); k.wait(5); k.close()
            out["fork_first_child_ms"] = bl.summarize(fork1)
            out["fork_per_child_of_4_ms"] = bl.summarize(fork4)
        m.stop(); m.wait(5); m.close()
        fh.close()
    out["snapshot_ms"] = bl.summarize(snap_ms)
    out["snapshot_size"] = sizes
    for mib in (128, 1024):
        vmm = []
        for _ in range(runs):
            r = Machine.restore(snaps[mib], serial_out_fd=devnull)
            vmm.append(r.restore_vmm_ms)
            r.stop(); r.wait(5); r.close()
        out[f"restore_vmm_{mib}mib_ms"] = bl.summarize(vmm)
    e2e = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.Popen([bl.kvmvm_bin(), "restore", snaps[128], "--timeout", "30"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            t1 = wait_line(p.stdout, b"tick")
            e2e.append((t1 - t0) * 1000)
        finally:
            p.kill(); p.wait()
    out["restore_end_to_end_ms"] = bl.summarize(e2e)
    os.close(devnull)
    return out


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


def measure(runs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="kvmvm-snapbench-") as tmp:
        res = {"kvmvm": kvmvm_side(runs, tmp)}
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
        "ratio_kvmvm_qemu_restore_e2e_median": bl.ratio(k["restore_end_to_end_ms"],
                                                        q.get("restore_end_to_end_ms")),
        "load": os.getloadavg(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = measure(a.runs)
    k, q = r["results"]["kvmvm"], r["results"]["qemu"]
    lines = [f"snapshot/restore/fork, {r['guest']}, {a.runs} runs, load {r['load']}"]
    for name in ("snapshot_ms", "restore_vmm_128mib_ms", "restore_vmm_1024mib_ms",
                 "restore_end_to_end_ms", "fork_first_child_ms", "fork_per_child_of_4_ms"):
        lines.append(f"  kvmvm {name:<24} {bl.fmt_entry(k.get(name))}")
    lines.append(f"  kvmvm snapshot size          {k['snapshot_size']}")
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
