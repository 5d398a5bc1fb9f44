"""Firecracker API latency: kvmvm firecracker against QEMU's QMP, same host, same run.

Three numbers, each alternating kvmvm and QEMU run by run:
- ready: process spawn until the control socket answers (kvmvm: GET / answered; QEMU: the
  QMP greeting read and qmp_capabilities answered);
- round trip: one request on an open keep-alive connection (kvmvm: GET /; QEMU: QMP
  query-status), over `--requests` requests; and kvmvm's PUT /machine-config (a body parsed
  and checked; QMP has no pre-boot configuration request to set beside it);
- start to exit: the tiny exitcode guest configured first, then the time from sending
  InstanceStart (QEMU started with -S: the QMP `cont`) to the process's exit.

    .venv/bin/python benchmarks/api.py [--runs 10] [--requests 500] [--json]
    KVMVM_FIRECRACKER_BIN=SNAPSHOT/kvmvm-firecracker .venv/bin/python benchmarks/api.py ...
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

AIMS = {"ready_ms": 15.0, "round_trip_ms": 1.0}


def firecracker_bin() -> list[str]:
    """$KVMVM_FIRECRACKER_BIN (another build's command, e.g. a snapshot of a commit), else the
    venv's kvmvm-firecracker."""
    if os.environ.get("KVMVM_FIRECRACKER_BIN"):
        return [os.environ["KVMVM_FIRECRACKER_BIN"]]
    venv = bl.REPO / ".venv" / "bin" / "kvmvm-firecracker"
    return [str(venv)] if venv.exists() else [sys.executable, "-m", "kvmvm", "firecracker"]


def _connect(path: str, deadline: float, proc) -> socket.socket:
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if proc.poll() is not None:
                raise RuntimeError(f"exited {proc.returncode} before its socket was ready")
            if time.monotonic() > deadline:
                raise RuntimeError("control socket not ready after 10 s")
            time.sleep(0.0005)


class Http:
    """Minimal HTTP/1.1 keep-alive client (the measurement should not be the client)."""

    def __init__(self, s: socket.socket):
        self.s = s
        self.f = s.makefile("rb")

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        self.s.sendall(head.encode() + b"\r\n" + data)
        status = int(self.f.readline().split()[1])
        length = 0
        while True:
            line = self.f.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            if k.lower() == "content-length":
                length = int(v)
        return status, self.f.read(length) if length else b""


class Qmp:
    def __init__(self, s: socket.socket):
        self.s = s
        self.f = s.makefile("rb")
        json.loads(self.f.readline())                     # the greeting
        self.execute("qmp_capabilities")

    def execute(self, cmd: str) -> dict:
        self.s.sendall(json.dumps({"execute": cmd}).encode() + b"\n")
        while True:
            msg = json.loads(self.f.readline())
            if "return" in msg or "error" in msg:
                return msg


def spawn_kvmvm(sock: str):
    t0 = time.perf_counter_ns()
    p = subprocess.Popen(firecracker_bin() + ["--api-sock", sock], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    s = _connect(sock, time.monotonic() + 10, p)
    t_conn = time.perf_counter_ns()
    c = Http(s)
    st, _ = c.request("GET", "/")
    assert st == 200
    return p, c, (t_conn - t0) / 1e6, (time.perf_counter_ns() - t0) / 1e6


def spawn_qemu(sock: str, kernel: str, append: str = ""):
    t0 = time.perf_counter_ns()
    cmd = bl.qemu_cmd(kernel, append, serial="null") + ["-S", "-qmp", f"unix:{sock},server=on,wait=off"]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    s = _connect(sock, time.monotonic() + 10, p)
    t_conn = time.perf_counter_ns()
    q = Qmp(s)
    return p, q, (t_conn - t0) / 1e6, (time.perf_counter_ns() - t0) / 1e6


def _reap(p) -> None:
    if p.poll() is None:
        p.kill()
    p.wait()


# Runs the kvmvm-firecracker script as is, but reports the process's CPU time (user + system,
# from exec) when the API socket starts listening, and exits there: a figure the load of a
# shared machine does not move, unlike the spawn-to-connect wall time.
_AT_LISTEN = """
import _socket, os, sys, time
class _S(_socket.socket):
    def listen(self, *a):
        super().listen(*a)
        os.write(1, b"%d" % time.process_time_ns())
        os._exit(0)
_socket.socket = _S
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(script))
exec(compile(open(script).read(), script, "exec"), {"__name__": "__main__"})
"""


def cpu_to_listen(runs: int, tmp: str) -> dict:
    """CPU ms from exec to listen() of the kvmvm-firecracker script, and of `python -c` alone
    (the same interpreter, reporting its CPU time at once)."""
    cmd = firecracker_bin()
    try:
        with open(cmd[0], "rb") as f:
            interp = f.readline()[2:].split()
    except OSError:
        interp = []
    if len(cmd) != 1 or not interp:
        why = bl.missing("needs kvmvm-firecracker as a Python script")
        return {"kvmvm": why, "python": why}
    interp = [x.decode() for x in interp]
    out: dict = {"kvmvm": [], "python": []}
    sock = os.path.join(tmp, "cpu.sock")
    for _ in range(runs):
        p = subprocess.run(interp + ["-c", _AT_LISTEN, cmd[0], "--api-sock", sock], capture_output=True)
        out["kvmvm"].append(int(p.stdout) / 1e6)
        os.unlink(sock)
        p = subprocess.run(interp + ["-c", "import os, time; os.write(1, b'%d' % time.process_time_ns())"],
                           capture_output=True)
        out["python"].append(int(p.stdout) / 1e6)
    return {k: bl.summarize(v) for k, v in out.items()}


def measure(runs: int, requests: int) -> dict:
    load_at_start = os.getloadavg()
    kernel = bl.guest("exitcode")
    tmp = tempfile.mkdtemp(prefix="kvmvm-bench-api-")
    res: dict = {"ready": {}, "connect": {}, "round_trip": {}, "round_trip_put": {}, "start_to_exit": {}}
    floor = []      # the interpreter alone: spawn to exit of `python -c pass` (context for "ready")
    floor_s = []    # the same without site (-S): what the venv's .pth files and site add
    samples = {k: {"kvmvm": [], "qemu": []} for k in res}
    have_qemu = bl.qemu_bin() is not None
    missing = {}
    for i in range(runs + 1):           # round 0 warms caches and is dropped
        t = time.perf_counter_ns()
        subprocess.run([str(bl.REPO / ".venv" / "bin" / "python"), "-c", "pass"], check=True)
        if i:
            floor.append((time.perf_counter_ns() - t) / 1e6)
        t = time.perf_counter_ns()
        subprocess.run([str(bl.REPO / ".venv" / "bin" / "python"), "-S", "-c", "pass"], check=True)
        if i:
            floor_s.append((time.perf_counter_ns() - t) / 1e6)
        # kvmvm
        sock = os.path.join(tmp, f"fc{i}.sock")
        p, c, conn, ready = spawn_kvmvm(sock)
        try:
            rt = []
            for _ in range(requests):
                t = time.perf_counter_ns()
                c.request("GET", "/")
                rt.append((time.perf_counter_ns() - t) / 1e6)
            rt_put = []
            for _ in range(requests):
                t = time.perf_counter_ns()
                st, body = c.request("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
                rt_put.append((time.perf_counter_ns() - t) / 1e6)
            assert st == 204, body
            st, body = c.request("PUT", "/boot-source", {"kernel_image_path": kernel, "boot_args": "3"})
            assert st == 204, body
            t = time.perf_counter_ns()
            st, body = c.request("PUT", "/actions", {"action_type": "InstanceStart"})
            assert st == 204, body
            rc = bl.wait_exact(p, 10)
            start_exit = (time.perf_counter_ns() - t) / 1e6
            assert rc == 7, f"kvmvm exited {rc}: {p.stderr.read().decode()}"
        finally:
            _reap(p)
        if i:
            samples["connect"]["kvmvm"].append(conn)
            samples["ready"]["kvmvm"].append(ready)
            samples["round_trip"]["kvmvm"].append(sorted(rt)[len(rt) // 2])
            samples["round_trip_put"]["kvmvm"].append(sorted(rt_put)[len(rt_put) // 2])
            samples["start_to_exit"]["kvmvm"].append(start_exit)
        if not have_qemu or "qemu" in missing:
            continue
        sock = os.path.join(tmp, f"qmp{i}.sock")
        try:
            p, q, conn, ready = spawn_qemu(sock, kernel, "3")
        except Exception as e:  # noqa: BLE001 - reported as missing
            missing["qemu"] = f"{type(e).__name__}: {e}"
            continue
        try:
            rt = []
            for _ in range(requests):
                t = time.perf_counter_ns()
                q.execute("query-status")
                rt.append((time.perf_counter_ns() - t) / 1e6)
            t = time.perf_counter_ns()
            q.s.sendall(b'{"execute": "cont"}\n')
            rc = bl.wait_exact(p, 10)
            start_exit = (time.perf_counter_ns() - t) / 1e6
            if rc != 7:
                missing["qemu"] = f"qemu exited {rc}"
                continue
        finally:
            _reap(p)
            if os.path.exists(sock):
                os.unlink(sock)
        if i:
            samples["connect"]["qemu"].append(conn)
            samples["ready"]["qemu"].append(ready)
            samples["round_trip"]["qemu"].append(sorted(rt)[len(rt) // 2])
            samples["start_to_exit"]["qemu"].append(start_exit)
    cpu = cpu_to_listen(runs, tmp)
    os.rmdir(tmp) if not os.listdir(tmp) else None
    for k in res:
        for who in ("kvmvm", "qemu"):
            if who == "qemu" and k == "round_trip_put":
                res[k][who] = bl.missing("QMP has no pre-boot configuration request like it")
            elif who == "qemu" and not have_qemu:
                res[k][who] = bl.missing("qemu-system-x86_64 not installed")
            elif who in missing:
                res[k][who] = bl.missing(missing[who])
            else:
                res[k][who] = bl.summarize(samples[k][who])
        res[k]["ratio_kvmvm_qemu_median"] = bl.ratio(res[k]["kvmvm"], res[k]["qemu"])
    res["python_floor"] = bl.summarize(floor)
    res["python_floor_no_site"] = bl.summarize(floor_s)
    res["cpu_to_listen"] = cpu
    return {"benchmark": "api", "runs": runs, "requests_per_run": requests, "aims_ms": AIMS,
            "commands": {"kvmvm": " ".join(firecracker_bin() + ["--api-sock", "SOCK"]),
                         "qemu": " ".join(bl.qemu_cmd(kernel, "3", serial="null")
                                          + ["-S", "-qmp", "unix:SOCK,server=on,wait=off"])},
            "host": bl.host_info(), "load_at_start": load_at_start, "load_at_end": os.getloadavg(), "results": res}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--requests", type=int, default=500, help="round trips per run")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = measure(a.runs, a.requests)
    lines = []
    titles = {"connect": "spawn to control socket accepting", "ready": "spawn to first answer",
              "round_trip": "request round trip, GET / | QMP query-status (median of each run)",
              "round_trip_put": "request round trip, PUT /machine-config (median of each run)",
              "start_to_exit": "InstanceStart / cont to guest exit (exitcode guest)"}
    for k, title in titles.items():
        rows = {w: r["results"][k][w] for w in ("kvmvm", "qemu")}
        unit = "ms"
        if k.startswith("round_trip"):      # microseconds: tenths of a ms would all read 0.1
            unit = "us"
            rows = {w: e if bl.is_missing(e) else {x: (v * 1000 if x != "n" else v) for x, v in e.items()}
                    for w, e in rows.items()}
        lines += bl.report_lines(f"{title}, {a.runs} runs", rows, unit, baseline="qemu")
    lines += bl.report_lines("context: the venv's python, spawn to exit",
                             {"-c pass": r["results"]["python_floor"],
                              "-S -c pass": r["results"]["python_floor_no_site"]}, "ms")
    lines += bl.report_lines("CPU time (user + system) from exec: kvmvm to listen(), python -c to its first line",
                             r["results"]["cpu_to_listen"], "ms")
    lines.append(f"  load average at start: {r['load_at_start']}, at the end: {r['load_at_end']}")
    bl.emit(r, a.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
