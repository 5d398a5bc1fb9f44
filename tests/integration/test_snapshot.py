"""Snapshot, restore and fork of running tiny guests on the local /dev/kvm.

The counter guest counts ("tick N"), echoes console input and prints the VM generation ID
when it changes; blk-stream keeps virtio-blk requests in flight. Machines run in this
process through the Python API (Machine.pause/snapshot/restore/fork); refusals and the
sharing of pages between restored VMs go through the CLI, as a user would.
"""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import time
from pathlib import Path

import pytest

from kvmvm.machine import Machine, MachineConfig
from tests.integration.conftest import KVMVM, ROOT, TINY_OUT, kvmvm

pytestmark = pytest.mark.host


def elf(name: str) -> str:
    return str(TINY_OUT / f"{name}.elf")


def wait_for(path: Path, pattern: str, timeout: float = 30.0) -> re.Match:
    """The first match of pattern in the file's text, waiting for it to appear."""
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, path.read_text(errors="replace"))
        if m:
            return m
        assert time.monotonic() < deadline, f"{pattern!r} not in {path.name}:\n{path.read_text()[-2000:]}"
        time.sleep(0.05)


def ticks(path: Path) -> list[int]:
    return [int(x) for x in re.findall(r"^tick (\d+)$", path.read_text(), re.M)]


def out_file(tmp_path: Path, name: str):
    p = tmp_path / name
    f = open(p, "wb")
    return p, f


def start_counter(tmp_path: Path, name: str = "parent.out", cmdline: str = "delay=20000", **kw):
    p, f = out_file(tmp_path, name)
    m = Machine(MachineConfig(kernel=elf("counter"), cmdline=cmdline, serial_out_fd=f.fileno(), **kw))
    m.start()
    return m, p, f


def end(m: Machine) -> None:
    m.stop()
    assert m.wait(5) is not None, "the VM did not stop within 5 s"
    m.close()


def test_pause_holds_the_guest_and_resume_lets_it_go(kvm_ok, tiny_images, tmp_path):
    m, out, f = start_counter(tmp_path)
    try:
        wait_for(out, r"tick 2\n")
        m.pause()
        assert m.paused
        n = ticks(out)[-1]
        time.sleep(0.5)
        assert ticks(out)[-1] == n, "the guest ran while paused"
        m.resume()
        wait_for(out, rf"tick {n + 2}\n")
    finally:
        end(m)


def test_counter_continues_from_the_same_count_after_restore(kvm_ok, tiny_images, tmp_path):
    m, out, f = start_counter(tmp_path)
    try:
        wait_for(out, r"tick 3\n")
        m.pause()
        snap = m.snapshot(str(tmp_path / "snap"))
        n = ticks(out)[-1]
        time.sleep(0.3)
        assert m.paused and ticks(out)[-1] == n     # stays paused after the snapshot
    finally:
        end(m)
    hdr = json.loads((tmp_path / "snap" / "snapshot.json").read_text())
    assert hdr["version"] == 1 and hdr["memory"][0]["size"] == 128 << 20
    mem = tmp_path / "snap" / "memory-0.raw"
    assert mem.stat().st_size == 128 << 20
    assert mem.stat().st_blocks * 512 < 8 << 20, "the memory file is not sparse"
    assert snap.header["state"]["sha256"]

    out2, f2 = out_file(tmp_path, "restored.out")
    r = Machine.restore(str(tmp_path / "snap"), serial_out_fd=f2.fileno())
    try:
        wait_for(out2, r"tick \d+\n(.|\n)*tick \d+\n")
        assert ticks(out2)[:2] == [n + 1, n + 2], out2.read_text()[:200]
        # a restored VM snapshots again (its RAM is a MAP_PRIVATE file mapping now)
        wait_for(out2, rf"tick {n + 3}\n")
        r.pause()
        r.snapshot(str(tmp_path / "snap2"))
        n2 = ticks(out2)[-1]
    finally:
        end(r)
    out3, f3 = out_file(tmp_path, "restored2.out")
    r2 = Machine.restore(str(tmp_path / "snap2"), serial_out_fd=f3.fileno())
    try:
        wait_for(out3, r"tick \d+\n")
        assert ticks(out3)[0] == n2 + 1
    finally:
        end(r2)


def test_console_output_and_input_continue_across_restore(kvm_ok, tiny_images, tmp_path):
    rd, wr = os.pipe()
    m, out, f = start_counter(tmp_path, serial_in_fd=rd)
    try:
        wait_for(out, r"counter: ready")
        os.write(wr, b"a")
        wait_for(out, r"input a\n")
        m.pause()
        m.snapshot(str(tmp_path / "snap"))
    finally:
        end(m)
        os.close(rd)
        os.close(wr)
    rd, wr = os.pipe()
    out2, f2 = out_file(tmp_path, "restored.out")
    r = Machine.restore(str(tmp_path / "snap"), serial_out_fd=f2.fileno(), serial_in_fd=rd)
    try:
        wait_for(out2, r"tick \d+\n")
        os.write(wr, b"xy\x04")
        res = r.wait(30)
        assert res is not None and res.status == 0, res
        text = out2.read_text()
        assert "input x\ninput y\n" in text and re.search(r"counter: end \d+\n", text), text[-300:]
    finally:
        r.close()
        os.close(rd)
        os.close(wr)


def test_blk_requests_in_flight_complete_after_restore(kvm_ok, tiny_images, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    p, f = out_file(tmp_path, "parent.out")
    count = 1500
    m = Machine(MachineConfig(kernel=elf("blk-stream"), cmdline=f"count={count}",
                              drives=[str(disk)], serial_out_fd=f.fileno()))
    m.start()
    try:
        # pause and resume while requests stream (each pause parks the worker between
        # batches), then snapshot mid-stream
        wait_for(p, r"blk-stream: 32 ok")
        for _ in range(5):
            m.pause()
            m.resume()
            time.sleep(0.02)
        m.pause()
        m.snapshot(str(tmp_path / "snap"))
        done = re.findall(r"blk-stream: (\d+) ok", p.read_text())
        assert "done" not in p.read_text(), "the stream ended before the snapshot: make count larger"
    finally:
        end(m)
    out2, f2 = out_file(tmp_path, "restored.out")
    r = Machine.restore(str(tmp_path / "snap"), serial_out_fd=f2.fileno())
    try:
        res = r.wait(120)
        assert res is not None, "blk-stream did not finish"
        text = out2.read_text()
        assert "FAIL" not in text and f"blk-stream: done {count}" in text, text[-500:]
        first = int(re.findall(r"blk-stream: (\d+) ok", text)[0])
        assert first == int(done[-1]) + 32 if done else True
        assert r.virtio and not __import__("kvmvm.devices.virtio", fromlist=["info"]).info(
            r.vm, r.virtio[0].base)["broken"]
    finally:
        r.close()
    # the file holds what the last request to each sector wrote
    data = disk.read_bytes()
    for sector in (0, 1, 37, 63):
        i = max(k for k in range(1, count + 1) if k % 64 == sector)
        want = bytearray((i * 7 + k) & 0xFF for k in range(512))
        want[:8] = struct.pack("<Q", i)
        assert data[sector * 512:(sector + 1) * 512] == bytes(want), f"sector {sector}"


def counter_snapshot(tmp_path: Path, **kw) -> Path:
    """A counter guest's snapshot, taken once it has ticked (``kw``: more devices)."""
    m, out, f = start_counter(tmp_path, **kw)
    try:
        wait_for(out, r"tick 1\n")
        m.snapshot(str(tmp_path / "snap"))
    finally:
        end(m)
    return tmp_path / "snap"


@pytest.fixture
def snapshot_dir(kvm_ok, tiny_images, tmp_path) -> Path:
    return counter_snapshot(tmp_path)


def one_line_status_2(snap: Path, what: str) -> None:
    r = kvmvm("restore", str(snap), "--timeout", "5")
    assert r.status == 2, (r.status, r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and what in lines[0] and "Traceback" not in r.err, r.err


def test_truncated_memory_file_is_refused(snapshot_dir):
    mem = snapshot_dir / "memory-0.raw"
    os.truncate(mem, mem.stat().st_size // 2)
    one_line_status_2(snapshot_dir, "memory file memory-0.raw is truncated")


def test_corrupt_state_file_is_refused(snapshot_dir):
    st = snapshot_dir / "state.bin"
    data = bytearray(st.read_bytes())
    data[100] ^= 0xFF
    st.write_bytes(bytes(data))
    one_line_status_2(snapshot_dir, "state file state.bin is corrupt")


def test_other_format_version_is_refused(snapshot_dir):
    hp = snapshot_dir / "snapshot.json"
    hdr = json.loads(hp.read_text())
    hdr["version"] = 99
    hp.write_text(json.dumps(hdr))
    one_line_status_2(snapshot_dir, "snapshot format version 99")


def test_other_cpu_is_refused(snapshot_dir):
    hp = snapshot_dir / "snapshot.json"
    hdr = json.loads(hp.read_text())
    hdr["host_cpu"]["model"] += 1
    hp.write_text(json.dumps(hdr))
    one_line_status_2(snapshot_dir, "CPU")


def test_missing_snapshot_is_refused(kvm_ok, tmp_path):
    one_line_status_2(tmp_path, "not a kvmvm snapshot")


def test_cli_restore_runs_the_guest_on(snapshot_dir):
    # stdin is an empty pipe: the guest reads the end of input (Ctrl-D) after its next tick
    p = subprocess.run([*KVMVM, "restore", str(snapshot_dir), "--timeout", "20"], cwd=ROOT,
                       input="", capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert re.fullmatch(r"tick 2\n(gen [0-9a-f]+\n|tick \d+\n)*counter: end \d+\n", p.stdout), p.stdout[:200]


def test_fork_children_diverge_independently(kvm_ok, tiny_images, tmp_path):
    m, out, f = start_counter(tmp_path)
    kids = []
    try:
        gen0 = wait_for(out, r"counter: ready gen ([0-9a-f]+)").group(1)
        wait_for(out, r"tick 2\n")
        files = [out_file(tmp_path, f"child{k}.out") for k in range(3)]
        kids = m.fork(3, serial_out_fds=[fh.fileno() for _, fh in files])
        n0 = ticks(out)[-1]
        gens = []
        for p, _ in files:
            gens.append(wait_for(p, r"gen ([0-9a-f]+)\n").group(1))
            wait_for(p, r"tick \d+\n(.|\n)*tick \d+\n")
            assert ticks(p)[0] == n0 + 1, "a child did not continue from the fork's count"
        assert len(set(gens + [gen0])) == 4, "the children's VM generation IDs are not all new"
        # children are independent: stopping one leaves the others and the parent running
        kids[0].stop()
        assert kids[0].wait(5) is not None
        n1, n2, np_ = ticks(files[1][0])[-1], ticks(files[2][0])[-1], ticks(out)[-1]
        wait_for(files[1][0], rf"tick {n1 + 2}\n")
        wait_for(files[2][0], rf"tick {n2 + 2}\n")
        wait_for(out, rf"tick {np_ + 2}\n")
        assert "gen " not in out.read_text().split(f"tick {n0}\n", 1)[1], "the parent's ID changed"
    finally:
        for k in kids:
            end(k)
        end(m)


def pss_rss_kib(pid: int, name: str) -> tuple[int, int]:
    """Pss and Rss (KiB) of the mappings of files called name in process pid."""
    pss = rss = 0
    inside = False
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                inside = line.rstrip().endswith("/" + name)
            elif inside and line.startswith("Pss:"):
                pss += int(line.split()[1])
            elif inside and line.startswith("Rss:"):
                rss += int(line.split()[1])
    return pss, rss


def test_restored_vms_share_guest_memory(kvm_ok, tiny_images, tmp_path):
    m, out, f = start_counter(tmp_path, cmdline="touch=8 delay=20000")
    try:
        wait_for(out, r"tick 1\n", timeout=60)
        m.snapshot(str(tmp_path / "snap"))
    finally:
        end(m)
    n = 4
    procs = [subprocess.Popen([*KVMVM, "restore", str(tmp_path / "snap"), "--timeout", "30"], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(n)]
    try:
        deadline = time.monotonic() + 30
        while True:
            vals = [pss_rss_kib(p.pid, "memory-0.raw") for p in procs]
            if all(rss >= 8 * 1024 for _, rss in vals) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        pss, rss = sum(v[0] for v in vals), sum(v[1] for v in vals)
        # every guest read back the 8 MiB it filled before the snapshot (after its new
        # generation ID); the page cache holds them once for all
        assert all(r >= 8 * 1024 for _, r in vals), vals
        print(f"guest RAM of {n} restored VMs: PSS {pss} KiB, RSS {rss} KiB")
        assert pss < rss * 0.5, f"PSS {pss} KiB is not well below the summed RSS {rss} KiB"
    finally:
        for p in procs:
            p.kill()
            p.wait()



def test_a_pause_that_times_out_leaves_the_guest_running(kvm_ok, tiny_images, tmp_path):
    """A vCPU busy in a slow (Python) device handler cannot park within the timeout: the
    pause gives up, and that vCPU, told to leave KVM_RUN, must run the guest again (it spun
    on EINTR for ever, the guest frozen). pio-loop writes port 0x80 200 times."""
    import threading

    from kvmvm.vm import BUS_PIO

    class SlowPort:
        def __init__(self):
            self.writes = 0

        def read(self, offset, size):
            return b"\0" * size

        def write(self, offset, data):
            self.writes += 1
            time.sleep(0.01)

    port = SlowPort()
    p, f = out_file(tmp_path, "pio.out")
    m = Machine(MachineConfig(kernel=elf("pio-loop"), cmdline="200", serial_out_fd=f.fileno()))
    m.build()
    m.vm.add_py_device(BUS_PIO, 0x80, 1, port)
    res = {}
    t = threading.Thread(target=lambda: res.update(r=m.run()), daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while port.writes < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        gave_up = None
        for _ in range(100):    # the vCPU is mostly in the handler; a kick between two
            seen = port.writes  # writes lets it park in time, and then we just resume
            while port.writes == seen and time.monotonic() < deadline + 20:
                time.sleep(0.001)   # back in the handler (not parked at once after a resume)
            try:
                m.pause(timeout=0.002)
            except Exception as e:
                gave_up = str(e)
                break
            m.resume()
        assert gave_up and "did not stop within" in gave_up, gave_up
        assert not m.paused
        t.join(30)
        assert not t.is_alive(), f"the guest froze after the pause gave up ({port.writes} of 200 writes)"
        assert res["r"].status == 0 and port.writes == 200
    finally:
        if t.is_alive():
            m.stop()
            t.join(5)


# The VIRTIO section (kvmvm/native/virtio_state.c, docs/snapshot-format.md): the state
# file is the guest's as much as the host's, so restore takes only a transport state its
# registers could have reached. These inputs came from the state-loader fuzzer
# (tests/fuzz/fuzz_state.c, tests/fuzz/corpus/state/regress-*).
SEC_VIRTIO = 65
VIRTIO_STATUS_OFF, DRV_FEATURES_OFF = 36, 16
DRIVER_RUNNING = 1 | 2 | 8 | 4       # ACK, DRIVER, FEATURES_OK, DRIVER_OK
VERSION_1 = 1 << 32


def state_sections(data: bytes) -> list[list]:
    """The state stream as [tag, index, version, bytearray] items, END included."""
    out, off = [], 0
    while off < len(data):
        tag, index, n, version = struct.unpack_from("<4I", data, off)
        out.append([tag, index, version, bytearray(data[off + 16:off + 16 + n])])
        off += 16 + ((n + 7) & ~7)
    return out


def rewrite_state(snap: Path, secs: list[list]) -> None:
    """state.bin from secs, with the header's size and SHA-256 to match (a forged file)."""
    data = b"".join(struct.pack("<4I", t, i, len(b), v) + bytes(b) + bytes(-len(b) % 8)
                    for t, i, v, b in secs)
    (snap / "state.bin").write_bytes(data)
    hp = snap / "snapshot.json"
    hdr = json.loads(hp.read_text())
    hdr["state"]["size"] = len(data)
    hdr["state"]["sha256"] = __import__("hashlib").sha256(data).hexdigest()
    hp.write_text(json.dumps(hdr))


@pytest.fixture
def blk_snapshot_dir(kvm_ok, tiny_images, tmp_path) -> Path:
    """A counter guest's snapshot with a virtio-blk device (its driver never touched it)."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 16))
    return counter_snapshot(tmp_path, drives=[str(disk)])


def virtio_running(sec: bytearray, features: int = VERSION_1) -> None:
    struct.pack_into("<Q", sec, DRV_FEATURES_OFF, features)
    struct.pack_into("<I", sec, VIRTIO_STATUS_OFF, DRIVER_RUNNING)


def test_state_with_a_virtio_section_twice_is_refused(blk_snapshot_dir):
    # before: the second section started the device's worker again (a second thread, the
    # first one's epoll fd leaked)
    secs = state_sections((blk_snapshot_dir / "state.bin").read_bytes())
    k = next(i for i, s in enumerate(secs) if s[0] == SEC_VIRTIO)
    virtio_running(secs[k][3])
    rewrite_state(blk_snapshot_dir, secs[:k + 1] + [list(secs[k])] + secs[k + 1:])
    one_line_status_2(blk_snapshot_dir, "virtio device state")


def test_state_with_features_the_device_never_offered_is_refused(blk_snapshot_dir):
    secs = state_sections((blk_snapshot_dir / "state.bin").read_bytes())
    k = next(i for i, s in enumerate(secs) if s[0] == SEC_VIRTIO)
    virtio_running(secs[k][3], VERSION_1 | (1 << 63))
    rewrite_state(blk_snapshot_dir, secs)
    one_line_status_2(blk_snapshot_dir, "virtio device state")


def test_forged_running_virtio_state_restores(blk_snapshot_dir):
    # the control: the same forgery with a state the registers can reach restores and runs
    secs = state_sections((blk_snapshot_dir / "state.bin").read_bytes())
    k = next(i for i, s in enumerate(secs) if s[0] == SEC_VIRTIO)
    virtio_running(secs[k][3])
    rewrite_state(blk_snapshot_dir, secs)
    r = Machine.restore(str(blk_snapshot_dir), serial_out_fd=os.open(os.devnull, os.O_WRONLY))
    try:
        info = __import__("kvmvm.devices.virtio", fromlist=["info"]).info(r.vm, r.virtio[0].base)
        assert info["status"] == DRIVER_RUNNING and not info["broken"], info
    finally:
        end(r)
