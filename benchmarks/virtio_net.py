"""virtio-net: the same tiny-guest driver (guest-images/tiny/programs/virtio-net-bench.c)
under kvmvm (--net tap=) and under QEMU microvm (virtio-net-device on a tap netdev, modern
virtio-mmio) on the same TAP, inside a network namespace this script creates and deletes;
alternating runs. Raw frames of ethertype 0x88b5 only, no addresses, nothing leaves the
namespace.

  tx: the guest sends --count frames of --size bytes (ring kept full, one kick per refill);
      the host counts them with an AF_PACKET socket on the TAP.
  rx: the guest announces itself with a broadcast hello; the host then writes --count frames
      into the TAP (txqueuelen sized to hold them all) and the guest counts them.

The guest times its loop with the TSC (tx: first frame posted to last completed; rx: first
frame received to the last, count-1 intervals), so VM start-up is not counted. Reports
packets/s and MB/s (frame bytes, Ethernet header included) per runtime and the kvmvm/QEMU
ratio.

    .venv/bin/python benchmarks/virtio_net.py [--runs 5] [--count 1000] [--size 1514]
        [--direction tx|rx|both] [--json]          (root: netns, TAP)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

LINE = re.compile(r"net-bench: (sent|received) (\d+) frames (\d+) bytes (\d+)")
ETH_P = 0x88B5
CLONE_NEWNET = 0x40000000
TAP = "nbtap0"
GUEST_MAC = "52:54:00:ab:cd:01"
_libc = ctypes.CDLL(None, use_errno=True)


def tsc_hz() -> float:
    """The TSC's real rate (measured; see benchlib.tsc_hz)."""
    return benchlib.tsc_hz()


def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, timeout=30)


class NetNs:
    """A network namespace with one TAP (vnet_hdr, up, no IPv6 chatter); deleted on exit."""

    def __init__(self, txqueuelen: int):
        self.name = f"kvmvm-nb{os.getpid()}"
        self.txqueuelen = txqueuelen

    def __enter__(self) -> "NetNs":
        ip("netns", "add", self.name)
        try:
            ip("-n", self.name, "tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr")
            subprocess.run(["ip", "netns", "exec", self.name, "sysctl", "-qw",
                            f"net.ipv6.conf.{TAP}.disable_ipv6=1"], capture_output=True, timeout=30)
            ip("-n", self.name, "link", "set", TAP, "txqueuelen", str(self.txqueuelen), "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)

    def wrap(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def packet_socket(self) -> socket.socket:
        """An AF_PACKET socket on the TAP, made inside the namespace (setns in a throw-away thread)."""
        out: dict = {}

        def work():
            fd = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    out["err"] = os.strerror(ctypes.get_errno())
                    return
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P))
                try:
                    s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)   # SO_RCVBUFFORCE (root)
                except OSError:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
                s.bind((TAP, ETH_P))
                out["sock"] = s
            except OSError as e:
                out["err"] = str(e)
            finally:
                os.close(fd)

        t = threading.Thread(target=work)
        t.start()
        t.join()
        if "sock" not in out:
            raise RuntimeError(f"packet socket in {self.name}: {out.get('err')}")
        return out["sock"]


def drain(s: socket.socket) -> None:
    s.setblocking(False)
    try:
        while True:
            s.recv(4096)
    except (BlockingIOError, InterruptedError):
        pass
    finally:
        s.setblocking(True)


def stop(p: subprocess.Popen) -> tuple[str, str]:
    """The process's output; killed (by its pid) if still running."""
    try:
        return p.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.communicate()


def run_once(ns: NetNs, s: socket.socket, cmd: list[str], direction: str, count: int, size: int,
             timeout: float) -> dict | str:
    drain(s)
    deadline = time.monotonic() + timeout
    p = subprocess.Popen(ns.wrap(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    host = {}
    try:
        s.settimeout(0.2)
        if direction == "tx":          # count what the guest sends
            seen, first, last = 0, None, None
            while seen < count and time.monotonic() < deadline:
                try:
                    f = s.recv(4096)
                except socket.timeout:
                    if p.poll() is not None:
                        break
                    continue
                if f[14:19] == b"bench":
                    last = time.perf_counter()
                    first = first or last
                    seen += 1
            host = {"delivered": seen}
            if seen > 1:
                host["host_pps"] = round((seen - 1) / (last - first))
        else:                          # wait for the hello, then write the burst into the TAP
            guest = None
            while guest is None and time.monotonic() < deadline:
                try:
                    f = s.recv(4096)
                except socket.timeout:
                    if p.poll() is not None:
                        break
                    continue
                if f[14:25] == b"kvmvm-hello":
                    guest = f[6:12]
            if guest is None:
                out, err = stop(p)
                return f"no hello from the guest (status {p.returncode}): {(out + err).strip()[-200:]}"
            head = guest + b"\x02\x00\x00\x00\x00\x01" + struct.pack(">H", ETH_P) + b"bench"
            s.settimeout(None)
            t0 = time.perf_counter()
            for i in range(count):
                s.send((head + struct.pack(">I", i)).ljust(size, b"\0"))
            host = {"host_send_pps": round(count / max(time.perf_counter() - t0, 1e-9))}
        out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return f"timed out after {timeout:.0f} s: {(out + err).strip()[-200:]}"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    m = LINE.search(out)
    if not m:
        return f"no result (status {p.returncode}): {(out + err).strip()[-200:]}"
    n, fsize, ticks = int(m.group(2)), int(m.group(3)), int(m.group(4))
    if direction == "tx" and host.get("delivered") != n:
        return f"guest sent {n} frames, host saw {host.get('delivered')}"
    return dict(host, frames=n, size=fsize, ticks=ticks)


def commands(direction: str, count: int, size: int, guest_ms: int) -> dict[str, list[str]]:
    args = f"count={count} size={size} ms={guest_ms}" + (" rx" if direction == "rx" else "")
    elf = benchlib.guest("virtio-net-bench")
    cmds = {
        "kvmvm": benchlib.kvmvm_cmd(elf, args) +
                 ["--net", f"tap={TAP},mac={GUEST_MAC}", "--no-rng", "--timeout", str(guest_ms / 1000 + 30)],
        "qemu": benchlib.qemu_cmd(elf, args) +
                ["-global", "virtio-mmio.force-legacy=false",
                 "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
                 "-device", f"virtio-net-device,netdev=n0,mac={GUEST_MAC}"],
    }
    if not benchlib.qemu_bin():
        del cmds["qemu"]
    return cmds


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)     # so the namespace and VMs are cleaned up


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="alternating kvmvm/QEMU pairs (>= 1)")
    ap.add_argument("--count", type=int, default=1000, help="frames per run")
    ap.add_argument("--size", type=int, default=1514, help="frame bytes incl. Ethernet header, 60-1514")
    ap.add_argument("--direction", choices=["tx", "rx", "both"], default="both")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per run")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    a.size = min(max(a.size, 60), 1514)
    a.count = max(a.count, 2)
    if os.geteuid() != 0:
        print("virtio_net.py needs root (network namespace, TAP)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _sigterm)
    hz = tsc_hz()
    directions = ["tx", "rx"] if a.direction == "both" else [a.direction]
    guest_ms = int(a.timeout * 1000)
    result = {"benchmark": "virtio_net", "count": a.count, "size": a.size, "tsc_hz": hz,
              "host": benchlib.host_info(), "directions": {}}
    with NetNs(txqueuelen=a.count + 256) as ns:
        s = ns.packet_socket()
        try:
            for direction in directions:
                cmds = commands(direction, a.count, a.size, guest_ms)
                samples: dict[str, list[float]] = {k: [] for k in cmds}
                extra: dict[str, list[dict]] = {k: [] for k in cmds}
                errors: dict[str, str] = {}
                for _ in range(a.runs):
                    for name, cmd in cmds.items():   # alternate runtimes every round
                        r = run_once(ns, s, cmd, direction, a.count, a.size, a.timeout)
                        if isinstance(r, str):
                            errors[name] = r
                            continue
                        intervals = r["frames"] - (1 if direction == "rx" else 0)
                        samples[name].append(intervals / (r["ticks"] / hz))
                        extra[name].append({k: v for k, v in r.items() if k.startswith("host") or k == "delivered"})
                d = {"runtimes": {}}
                for name in cmds:
                    if not samples[name]:
                        d["runtimes"][name] = benchlib.missing(errors.get(name, "no samples"))
                        continue
                    med = statistics.median(samples[name])
                    d["runtimes"][name] = {"packets_per_s": round(med), "mb_per_s": round(med * a.size / 1e6, 2),
                                           "samples": [round(x) for x in samples[name]],
                                           "failed_runs": a.runs - len(samples[name]), "host_side": extra[name]}
                    if name in errors:
                        d["runtimes"][name]["last_error"] = errors[name]
                k, q = d["runtimes"].get("kvmvm"), d["runtimes"].get("qemu")
                if k and q and "packets_per_s" in k and "packets_per_s" in q:
                    d["ratio_kvmvm_over_qemu"] = round(k["packets_per_s"] / q["packets_per_s"], 3)
                result["directions"][direction] = d
        finally:
            s.close()
    if a.json:
        print(json.dumps(result))
    else:
        print(f"virtio-net, {a.count} frames of {a.size} bytes, {a.runs} alternating runs, "
              f"load average {' '.join(result['host'].get('loadavg', []))}")
        for direction, d in result["directions"].items():
            for name, e in d["runtimes"].items():
                print(f"{direction} {name:6} " + (
                    f"{e['packets_per_s']} pkt/s  {e['mb_per_s']} MB/s  samples {e['samples']}"
                    + (f"  ({e['failed_runs']} failed: {e.get('last_error')})" if e["failed_runs"] else "")
                    if "packets_per_s" in e else f"missing: {e['missing']}"))
            if "ratio_kvmvm_over_qemu" in d:
                print(f"{direction} ratio kvmvm/QEMU: {d['ratio_kvmvm_over_qemu']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
