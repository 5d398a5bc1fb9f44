"""Hostile guests against the VMM's availability: whatever a guest does, a stop request
(--timeout, SIGINT, SIGTERM) ends the VM within a second, no host thread spins, and the
other devices keep working. Every case runs a real tiny guest on the local /dev/kvm.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import KVMVM, ROOT, kvmvm
from tests.integration.test_virtio import ETH_P, elf, env_for, exited_normally, netns, packet_socket_in  # noqa: F401

pytestmark = pytest.mark.host

STOP_LIMIT_S = 1.0          # a stop request ends any VM within this
CLK_TCK = os.sysconf("SC_CLK_TCK")


def start(*args: str, env=None, stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([*KVMVM, "boot", *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=stdout, stderr=subprocess.PIPE)


def wait_line(p: subprocess.Popen, text: str, timeout: float = 20) -> str:
    """Read p's stdout until a line containing text; returns what was read."""
    got = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in got:
        left = deadline - time.monotonic()
        assert left > 0 and p.poll() is None, f"no {text!r} from the guest: {got!r}"
        r, _, _ = select.select([p.stdout], [], [], min(left, 0.5))
        if r:
            chunk = os.read(p.stdout.fileno(), 65536)
            assert chunk, f"stdout closed before {text!r}: {got!r}"
            got += chunk
    return got.decode(errors="replace")


def stop_with(p: subprocess.Popen, sig: int) -> float:
    """Send sig and return how long the process took to exit."""
    t0 = time.monotonic()
    p.send_signal(sig)
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        pytest.fail(f"kvmvm ignored signal {sig} for 15 s (SIGKILL needed)")
    return time.monotonic() - t0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of pid so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def kill_quietly(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
        p.wait()


@pytest.fixture
def disk(tmp_path) -> Path:
    p = tmp_path / "disk.img"
    p.write_bytes(bytes(1 << 20))
    return p


# --- floods: the guest never stops asking ---

FLOODS = ["rng", "blk", "reset", "mmio", "pio", "serial", "halt"]


@pytest.mark.parametrize("mode", FLOODS)
def test_flood_ends_at_timeout(tiny_images, kvm_ok, disk, mode):
    t0 = time.monotonic()
    r = kvmvm("boot", "--kernel", elf("flood"), "--drive", str(disk), "--cmdline", f"mode={mode}",
              "--timeout", "1.5", timeout=30)
    took = time.monotonic() - t0
    exited_normally(r)
    assert r.status == 124, r.out[-2000:] + r.err
    assert f"flood {mode}: running" in r.out
    assert "timed out after 1.5 s" in r.err
    # start-up (a Python interpreter, tiny boot) + 1.5 s + at most STOP_LIMIT_S of stopping
    assert took < 1.5 + 2.5 + STOP_LIMIT_S, f"took {took:.2f} s"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("mode", ["rng", "blk", "reset", "mmio"])
def test_flood_stops_on_signal(tiny_images, kvm_ok, disk, mode, sig):
    p = start("--kernel", elf("flood"), "--drive", str(disk), "--cmdline", f"mode={mode}",
              "--timeout", "60")
    try:
        wait_line(p, f"flood {mode}: running")
        time.sleep(0.3)
        took = stop_with(p, sig)
    finally:
        kill_quietly(p)
    err = p.stderr.read().decode()
    assert p.returncode == 130, err
    assert "VM stopped on request" in err and "Traceback" not in err
    assert took < STOP_LIMIT_S, f"stop took {took:.2f} s"


def small_pipe() -> tuple[int, int]:
    """A pipe that holds one page: the guest's console fills it quickly."""
    import fcntl

    r_fd, w_fd = os.pipe()
    fcntl.fcntl(w_fd, 1031, 4096)       # F_SETPIPE_SZ
    return r_fd, w_fd


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_console_nobody_reads(tiny_images, kvm_ok, sig):
    """stdout is a pipe nobody reads: the vCPU keeps running, output is dropped, stop works."""
    r_fd, w_fd = small_pipe()
    try:
        p = start("--kernel", elf("flood"), "--cmdline", "mode=serial", "--timeout", "60",
                  stdout=w_fd)
        os.close(w_fd)
        time.sleep(1.5)     # the 4 KiB pipe is full after ~0.5 s of guest output
        assert p.poll() is None
        assert len(os.read(r_fd, 1 << 16)) > 3500 and p.poll() is None   # it was full
        time.sleep(1.0)     # full again
        took = stop_with(p, sig)
    finally:
        kill_quietly(p)
        os.close(r_fd)
    err = p.stderr.read().decode()
    assert p.returncode == 130, err
    assert took < STOP_LIMIT_S, f"stop took {took:.2f} s"


def test_console_nobody_reads_timeout(tiny_images, kvm_ok):
    r_fd, w_fd = small_pipe()
    try:
        t0 = time.monotonic()
        p = start("--kernel", elf("flood"), "--cmdline", "mode=serial", "--timeout", "1",
                  stdout=w_fd)
        os.close(w_fd)
        p.wait(timeout=15)
        took = time.monotonic() - t0
    finally:
        kill_quietly(p)
        os.close(r_fd)
    assert p.returncode == 124, p.stderr.read().decode()
    assert took < 1 + 2.5 + STOP_LIMIT_S, f"took {took:.2f} s"


def test_console_output_complete_when_read(tiny_images, kvm_ok):
    """Buffered output still reaches a reader in full, and in order."""
    r = kvmvm("boot", "--kernel", elf("flood"), "--cmdline", "mode=serial", "--timeout", "1",
              "--json", timeout=30)
    assert r.status == 124, r.err
    import json

    at = r.out.rindex('{"outcome"')     # the guest's last line may be cut short by the stop
    assert json.loads(r.out[at:])["status"] == 124
    lines = r.out[:at].splitlines()
    assert lines[0] == "flood serial: running"
    body = lines[1:-1]
    assert len(body) > 100
    assert all(ln == "flood serial: 0123456789abcdefghijklmnopqrstuvwxyz" for ln in body)


def test_queue_ready_zero_stops_the_old_rings(tiny_images, kvm_ok):
    r = kvmvm("boot", "--kernel", elf("flood"), "--cmdline", "mode=qoff", "--timeout", "30")
    exited_normally(r)
    assert r.status == 0, r.out + r.err
    assert "qoff: QueueReady reads 0" in r.out
    assert "qoff: no answer from a switched-off queue" in r.out
    assert "qoff: recovered after reset" in r.out


# --- exit storms from every vCPU at once ---

STORM_CPUS = 4


def vcpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds so far of each of pid's vCPU threads (kvmvm names them vcpuN)."""
    out = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (t / "comm").read_text().strip()
            if name.startswith("vcpu"):
                f = (t / "stat").read_text().rsplit(")", 1)[1].split()
                out[name] = (int(f[11]) + int(f[12])) / CLK_TCK
        except OSError:
            pass
    return out


def read_for(fd: int, seconds: float) -> bytes:
    got = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            got += chunk
    return got


def assert_all_storm(out: bytes) -> None:
    """Every vCPU took part: each wrote its digit to the UART during the storm."""
    digits = {chr(c) for c in out if chr(c).isdigit()}
    assert digits == {str(i) for i in range(STORM_CPUS)}, f"console output from vCPUs {digits}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_exit_storm_from_every_vcpu_stops_on_signal(tiny_images, kvm_ok, disk, sig):
    """All vCPUs hammer the UART, unmapped ports, every virtio-mmio register and unmapped
    MMIO at once: a signal still ends the VM within a second."""
    p = start("--kernel", elf("flood"), "--cpus", str(STORM_CPUS), "--drive", str(disk),
              "--cmdline", f"mode=storm cpus={STORM_CPUS}", "--timeout", "60")
    try:
        wait_line(p, f"flood storm: {STORM_CPUS} cpus running")
        c0 = vcpu_seconds(p.pid)
        out = read_for(p.stdout.fileno(), 1.0)
        c1 = vcpu_seconds(p.pid)
        assert p.poll() is None
        took = stop_with(p, sig)
    finally:
        kill_quietly(p)
    err = p.stderr.read().decode()
    assert_all_storm(out)
    assert sorted(c1) == [f"vcpu{i}" for i in range(STORM_CPUS)], c1
    busy = {n: round(c1[n] - c0.get(n, 0), 3) for n in c1}
    assert all(v > 0.02 for v in busy.values()), f"vCPU CPU seconds during 1 s of storm: {busy}"
    assert p.returncode == 130, err
    assert "VM stopped on request" in err and "Traceback" not in err, err
    assert took < STOP_LIMIT_S, f"stop took {took:.2f} s"


def test_exit_storm_from_every_vcpu_machine_api(tiny_images, kvm_ok, disk):
    """The same storm through the Python API: the calling thread stays responsive (stats()
    answers at once, every exit kind climbs) and Machine.stop() ends the VM within a second."""
    from kvmvm.machine import Machine, MachineConfig

    r_fd, w_fd = os.pipe()
    m = Machine(MachineConfig(kernel=elf("flood"), cmdline=f"mode=storm cpus={STORM_CPUS}",
                              cpus=STORM_CPUS, drives=[str(disk)], serial_out_fd=w_fd))
    try:
        m.start()
        got = b""
        deadline = time.monotonic() + 20
        while b"cpus running" not in got:
            assert time.monotonic() < deadline, f"the storm did not start: {got!r}"
            got += read_for(r_fd, 0.2)
        s0 = m.vm.stats()
        slowest = 0.0
        out = b""
        for _ in range(10):
            out += read_for(r_fd, 0.1)
            t = time.monotonic()
            s1 = m.vm.stats()
            slowest = max(slowest, time.monotonic() - t)
        assert m.wait(0) is None, "the VM ended by itself"
        assert slowest < 0.1, f"stats() took {slowest * 1000:.0f} ms during the storm"
        for kind in ("exits_io", "exits_mmio", "io_unhandled", "mmio_unhandled"):
            assert s1[kind] > s0[kind], f"{kind} did not climb: {s0[kind]} -> {s1[kind]}"
        assert_all_storm(out)
        t0 = time.monotonic()
        m.stop()
        res = m.wait(STOP_LIMIT_S)
        took = time.monotonic() - t0
        assert res is not None, f"Machine.stop() did not end the VM within {STOP_LIMIT_S} s"
        assert res.outcome == "stopped", res
        assert took < STOP_LIMIT_S, f"stop took {took:.2f} s"
    finally:
        m.close()
        os.close(r_fd)
        os.close(w_fd)


# --- vsock: host-side states a guest can leave hanging ---

def _vsock_vm(tmp_path, mode: str, extra: str = ""):
    uds = str(tmp_path / "v.sock")
    p = start("--kernel", elf("vsock-evil"), "--vsock", f"cid=9,uds={uds}", "--cmdline",
              f"mode={mode} {extra}".strip(), "--timeout", "60")
    return p, uds


def _connect(uds: str, port: int = 1234) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(uds)
    s.sendall(f"CONNECT {port}\n".encode())
    return s


def _assert_quiet(pid: int, seconds: float = 1.5) -> None:
    """No thread of kvmvm may spin while the guest leaves the device hanging."""
    c0 = cpu_seconds(pid)
    time.sleep(seconds)
    used = cpu_seconds(pid) - c0
    assert used < 0.3 * seconds, f"kvmvm burnt {used:.2f} s of CPU in {seconds} s"


def _end(p: subprocess.Popen, uds: str) -> None:
    took = stop_with(p, signal.SIGTERM)
    assert p.returncode == 130, p.stderr.read().decode()
    assert took < STOP_LIMIT_S, f"stop took {took:.2f} s"
    assert not os.path.exists(uds), "the vsock socket was left behind"


@pytest.mark.parametrize("mode", ["norx", "noanswer"])
def test_vsock_unanswered_connect_is_reset(tiny_images, kvm_ok, tmp_path, mode):
    p, uds = _vsock_vm(tmp_path, mode)
    try:
        wait_line(p, f"vsock-evil {mode}: ready")
        s = _connect(uds)
        t0 = time.monotonic()
        _assert_quiet(p.pid)
        s.settimeout(10)
        assert s.recv(100) == b"", "a connection the guest never answered stayed open"
        assert time.monotonic() - t0 < 8    # the 5 s deadline, and some
        s.close()
        _end(p, uds)
    finally:
        kill_quietly(p)


def test_vsock_zero_credit_is_reset(tiny_images, kvm_ok, tmp_path):
    p, uds = _vsock_vm(tmp_path, "zerocredit")
    try:
        wait_line(p, "vsock-evil zerocredit: ready")
        s = _connect(uds)
        line = b""
        while not line.endswith(b"\n"):
            line += s.recv(1)
        assert line.startswith(b"OK ")
        s.sendall(b"x" * 1000)      # data for a guest that gives no credit
        _assert_quiet(p.pid)
        s.settimeout(10)
        try:
            assert s.recv(100) == b"", "a stream without credit stayed open"
        except ConnectionResetError:
            pass        # closed with our bytes unread: a reset is as good as an EOF
        s.close()
        _end(p, uds)
    finally:
        kill_quietly(p)


def test_vsock_peer_hangup_without_rx_buffers(tiny_images, kvm_ok, tmp_path):
    uds = str(tmp_path / "v.sock")
    lst = socket.socket(socket.AF_UNIX)
    lst.bind(uds + "_5000")
    lst.listen(1)
    lst.settimeout(20)
    p = start("--kernel", elf("vsock-evil"), "--vsock", f"cid=9,uds={uds}", "--cmdline",
              "mode=hup", "--timeout", "60")
    try:
        c, _ = lst.accept()
        c.close()           # the host side hangs up at once: EPOLLHUP for ever
        wait_line(p, "vsock-evil hup: ready")
        _assert_quiet(p.pid)
        _end(p, uds)
    finally:
        kill_quietly(p)
        lst.close()


def test_vsock_short_rx_buffer_comes_back_with_interrupt(tiny_images, kvm_ok, tmp_path):
    p, uds = _vsock_vm(tmp_path, "shortrx")
    try:
        seen = wait_line(p, "vsock-evil shortrx: ready")
        s = _connect(uds)
        out, err = p.communicate(timeout=30)
        s.close()
    finally:
        kill_quietly(p)
    out = seen + out.decode()
    assert p.returncode == 0, out + err.decode()
    assert "vsock-evil shortrx: len 0 isr 1" in out


# --- the smaller defects ---

def test_blk_capacity_of_a_block_device(tiny_images, kvm_ok, tmp_path):
    img = tmp_path / "loop.img"
    img.write_bytes(b"KVMVM-DISK-L".ljust(16, b".") + bytes((3 << 20) - 16))
    dev = subprocess.run(["losetup", "--find", "--show", str(img)], capture_output=True, text=True)
    assert dev.returncode == 0, f"losetup failed: {dev.stderr}"
    loop = dev.stdout.strip()
    try:
        r = kvmvm("boot", "--kernel", elf("virtio-blk"), "--drive", f"{loop},ro", "--timeout", "30")
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True)
    exited_normally(r)
    assert "blk0: capacity 6144 " in r.out, r.out + r.err     # 3 MiB / 512
    assert "blk0: sector0 'KVMVM-DISK-L....'" in r.out


def test_net_header_from_guest_is_not_passed_on(tiny_images, kvm_ok, netns):
    """GSO/checksum requests in the guest's virtio_net_hdr (nothing negotiated) are zeroed:
    the TAP accepts the frame instead of the kernel acting on (or rejecting) them."""
    s = packet_socket_in(netns, "ktap0")
    s.settimeout(15)
    vm = subprocess.Popen(["ip", "netns", "exec", netns, *KVMVM, "boot", "--kernel",
                           elf("virtio-net"), "--net", "tap=ktap0,mac=52:54:00:aa:bb:02",
                           "--cmdline", "count=1 badhdr", "--timeout", "30"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            f = s.recv(2048)
            if f[14:25] == b"kvmvm-hello":
                break
        assert f[6:12] == bytes.fromhex("525400aabb02")
        s.send(f[6:12] + b"\x02\x00\x00\x00\x00\x01" + struct.pack(">H", ETH_P) +
               b"ping 0".ljust(46, b"\0"))
        while True:
            f = s.recv(2048)
            if f[14:18] == b"pong":
                break
        out, err = vm.communicate(timeout=30)
    finally:
        kill_quietly(vm)
        s.close()
    assert vm.returncode == 0, out + err
    assert "virtio-net: ok" in out


def test_second_wait_returns_after_the_vcpus_stopped(tiny_images, kvm_ok):
    from kvmvm.machine import Machine, MachineConfig

    r_fd, w_fd = os.pipe()
    m = Machine(MachineConfig(kernel=elf("flood"), cmdline="mode=pio", serial_out_fd=w_fd))
    try:
        m.build()
        vm = m.vm
        vm.start()
        time.sleep(0.3)
        got = []
        waiters = [threading.Thread(target=lambda: got.append(vm.wait(None))) for _ in range(3)]
        for t in waiters:
            t.start()
        vm.stop()
        for t in waiters:
            t.join(5)
        assert len(got) == 3 and all(g.reason == "stopped" for g in got)
        e0 = vm.stats()["exits"]
        time.sleep(0.2)
        assert vm.stats()["exits"] == e0, "a vCPU still ran after every wait returned"
    finally:
        m.close()
        os.close(r_fd)
        os.close(w_fd)
