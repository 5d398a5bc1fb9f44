"""Firecracker's API driving real tiny guests: `kvmvm firecracker` booted through the API as
Firecracker's getting-started guide does, --config-file, and `kvmvm boot --api-sock`.
Every response is checked against the swagger (tests/apischema.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kvmvm.api.errors import NOT_AFTER_BOOT
from kvmvm.machine import Machine
from tests.fcclient import FcClient, wait_socket

FC = [sys.executable, "-m", "kvmvm", "firecracker"]
CAD_STATUS = (0x2A << 1) | 1      # the kbd guest's debug-exit status after Ctrl+Alt+Del
CAN_PAUSE = hasattr(Machine, "pause")
KVMVM = [sys.executable, "-m", "kvmvm"]


def _spawn(cmd, tmp_path, **kw):
    out = open(tmp_path / "stdout.txt", "wb")
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, **kw)
    p.stdout_path = tmp_path / "stdout.txt"
    return p


def _end(p, timeout=30):
    try:
        p.wait(timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode


@pytest.fixture
def fc(tmp_path, kvm_ok, tiny_images):
    sock = str(tmp_path / "fc.sock")
    p = _spawn(FC + ["--api-sock", sock, "--id", "itest"], tmp_path)
    wait_socket(sock, p)
    c = FcClient(sock)
    c.proc = p
    yield c
    c.close()
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    _end(p)
    assert not os.path.exists(sock), "API socket left behind"


def _pause_resume(api):
    if not CAN_PAUSE:
        msg = api.fault("PATCH", "/vm", {"state": "Paused"})
        assert msg.startswith("kvmvm does not support pausing")
        return
    api.ok("PATCH", "/vm", {"state": "Paused"})
    assert api.ok("GET", "/")["state"] == "Paused"
    api.ok("PATCH", "/vm", {"state": "Paused"})             # idempotent, as Firecracker
    api.ok("PATCH", "/vm", {"state": "Resumed"})
    assert api.ok("GET", "/")["state"] == "Running"


def test_getting_started_boot_pause_flush_ctrl_alt_del(fc, tmp_path, tiny_images):
    log, metrics = tmp_path / "fc.log", tmp_path / "metrics.json"
    fc.ok("PUT", "/logger", {"log_path": str(log), "level": "Info", "show_level": True})
    fc.ok("PUT", "/metrics", {"metrics_path": str(metrics)})
    fc.ok("PUT", "/boot-source", {"kernel_image_path": str(tiny_images / "kbd.elf"),
                                  "boot_args": "console=ttyS0 reboot=k panic=1"})
    fc.ok("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64})
    fc.ok("PUT", "/entropy", {})
    assert fc.ok("GET", "/")["state"] == "Not started"
    t = time.monotonic()
    fc.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    assert time.monotonic() - t < 5
    assert fc.ok("GET", "/") == {"id": "itest", "state": "Running", "vmm_version": fc.ok("GET", "/")["vmm_version"],
                                 "app_name": "kvmvm"}
    assert fc.fault("PUT", "/actions", {"action_type": "InstanceStart"}) == NOT_AFTER_BOOT
    assert fc.fault("PUT", "/boot-source", {"kernel_image_path": "x"}) == NOT_AFTER_BOOT
    assert fc.fault("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 64}) == NOT_AFTER_BOOT
    cfg = fc.ok("GET", "/vm/config")
    assert cfg["machine-config"]["mem_size_mib"] == 64 and cfg["entropy"] == {}
    assert fc.fault("PUT", "/snapshot/create", {"mem_file_path": str(tmp_path / "m"),
                                                 "snapshot_path": str(tmp_path / "s")}).startswith(
        "Create snapshot error: the microVM must be paused")
    _pause_resume(fc)
    time.sleep(0.3)                       # let the guest poll the controller a while
    fc.ok("PUT", "/actions", {"action_type": "FlushMetrics"})
    m = json.loads(metrics.read_text().splitlines()[-1])
    assert m["vcpu"]["exit_io_in_out"] > 0          # the guest's polling of the i8042
    assert m["put_api_requests"]["actions_count"] >= 2
    fc.ok("PUT", "/actions", {"action_type": "SendCtrlAltDel"})
    assert _end(fc.proc) == CAD_STATUS
    out = fc.proc.stdout_path.read_text()
    assert "kbd: ctrl-alt-del" in out, out
    text = log.read_text()
    assert ":INFO] Successfully started microvm." in text
    assert 'Put request on "/actions" with body' in text


def test_snapshot_create_and_load_in_a_fresh_process(fc, tmp_path, tiny_images):
    fc.ok("PUT", "/boot-source", {"kernel_image_path": str(tiny_images / "kbd.elf")})
    fc.ok("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 32})
    fc.ok("PUT", "/entropy", {})
    fc.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    time.sleep(0.2)
    fc.ok("PATCH", "/vm", {"state": "Paused"})
    snap, mem = tmp_path / "snapshot_file", tmp_path / "mem_file"
    fc.ok("PUT", "/snapshot/create", {"snapshot_path": str(snap), "mem_file_path": str(mem),
                                      "snapshot_type": "Full"})
    assert mem.is_file() and mem.stat().st_size == 32 << 20
    assert "diff snapshots" in fc.fault("PUT", "/snapshot/create", {
        "snapshot_path": str(snap), "mem_file_path": str(mem), "snapshot_type": "Diff"})
    fc.proc.send_signal(signal.SIGTERM)
    assert _end(fc.proc) == 130
    moved = tmp_path / "elsewhere.mem"
    mem.rename(moved)                       # clients name the memory file at load time
    sock = str(tmp_path / "fc2.sock")
    p = _spawn(FC + ["--api-sock", sock], tmp_path)
    wait_socket(sock, p)
    c = FcClient(sock)
    try:
        c.ok("PUT", "/snapshot/load", {"snapshot_path": str(snap), "mem_backend": {
            "backend_type": "File", "backend_path": str(moved)}, "resume_vm": False})
        assert c.ok("GET", "/")["state"] == "Paused"
        cfg = c.ok("GET", "/vm/config")
        assert cfg["machine-config"]["mem_size_mib"] == 32 and "boot-source" not in cfg
        assert c.fault("PUT", "/actions", {"action_type": "InstanceStart"}) == NOT_AFTER_BOOT
        c.ok("PATCH", "/vm", {"state": "Resumed"})
        assert c.ok("GET", "/")["state"] == "Running"
        c.ok("PUT", "/actions", {"action_type": "SendCtrlAltDel"})
        assert _end(p) == CAD_STATUS
    finally:
        c.close()
        if p.poll() is None:
            p.kill()
    assert "kbd: ctrl-alt-del" in p.stdout_path.read_text()


def test_instance_start_errors_are_400_and_leave_it_configurable(fc, tmp_path, tiny_images):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes((tiny_images / "exitcode.elf").read_bytes())
    fc.ok("PUT", "/boot-source", {"kernel_image_path": str(kernel)})
    kernel.unlink()
    msg = fc.fault("PUT", "/actions", {"action_type": "InstanceStart"})
    assert msg.startswith("Start microVM error: kernel image not found"), msg
    kernel.write_bytes(b"not a kernel")
    msg = fc.fault("PUT", "/actions", {"action_type": "InstanceStart"})
    assert msg.startswith("Start microVM error:") and "not an ELF or bzImage" in msg, msg
    assert fc.ok("GET", "/")["state"] == "Not started"
    fc.ok("PUT", "/boot-source", {"kernel_image_path": str(tiny_images / "exitcode.elf"), "boot_args": "4"})
    fc.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    assert _end(fc.proc) == 9


def test_exit_status_and_serial_file(fc, tmp_path, tiny_images):
    fc.ok("PUT", "/boot-source", {"kernel_image_path": str(tiny_images / "exitcode.elf"), "boot_args": "9"})
    fc.ok("PUT", "/serial", {"serial_out_path": str(tmp_path / "console.txt")})
    fc.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    assert _end(fc.proc) == (9 << 1) | 1
    assert (tmp_path / "console.txt").read_text() == "exitcode 9\n"


def test_config_file_same_json_as_vm_config(fc, tmp_path, tiny_images):
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    fc.ok("PUT", "/boot-source", {"kernel_image_path": str(tiny_images / "exitcode.elf"), "boot_args": "3"})
    fc.ok("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 32})
    fc.ok("PUT", "/drives/data", {"drive_id": "data", "path_on_host": str(disk), "is_root_device": False,
                                  "is_read_only": True})
    cfg = fc.ok("GET", "/vm/config")
    path = tmp_path / "vm.json"
    path.write_text(json.dumps(cfg))
    p = _spawn(FC + ["--no-api", "--config-file", str(path)], tmp_path)
    assert _end(p) == 7, p.stderr.read()
    assert "exitcode 3" in p.stdout_path.read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(cfg, **{"machine-config": {"vcpu_count": 1}})))
    p = _spawn(FC + ["--no-api", "--config-file", str(bad)], tmp_path)
    assert _end(p) == 2
    err = p.stderr.read().decode()
    assert err.count("\n") == 1 and "missing field `mem_size_mib`" in err, err


def test_config_file_with_api_serves_the_running_vm(tmp_path, kvm_ok, tiny_images):
    cfg = {"boot-source": {"kernel_image_path": str(tiny_images / "kbd.elf")},
           "machine-config": {"vcpu_count": 1, "mem_size_mib": 32}}
    (tmp_path / "vm.json").write_text(json.dumps(cfg))
    sock = str(tmp_path / "fc.sock")
    log = tmp_path / "fc.log"
    p = _spawn(FC + ["--api-sock", sock, "--config-file", str(tmp_path / "vm.json"), "--boot-timer",
                     "--log-path", str(log), "--level", "Info"], tmp_path)
    wait_socket(sock, p)
    c = FcClient(sock)
    assert c.ok("GET", "/")["state"] == "Running"
    deadline = time.monotonic() + 30
    while "Guest-boot-time =" not in log.read_text():       # the guest wrote the boot timer
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    c.ok("PUT", "/actions", {"action_type": "SendCtrlAltDel"})
    c.close()
    assert _end(p) == CAD_STATUS
    assert not os.path.exists(sock)


@pytest.mark.parametrize("args,word", [(["--seccomp-filter", "f"], "--seccomp-filter"),
                                       (["--enable-pci"], "--enable-pci"),
                                       (["--no-api"], "--config-file"),
                                       (["--id", "bad id"], "--id")])
def test_flags_refused_with_one_line(tmp_path, args, word):
    p = subprocess.run(FC + args, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and word in p.stderr, p.stderr


def test_sigterm_ends_vm_and_removes_socket(fc, tiny_images):
    fc.ok("PUT", "/boot-source", {"kernel_image_path": str(tiny_images / "halt.elf")})
    fc.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    t = time.monotonic()
    fc.proc.send_signal(signal.SIGTERM)
    assert _end(fc.proc) == 130
    assert time.monotonic() - t < 3


def test_kvmvm_boot_api_sock(tmp_path, kvm_ok, tiny_images):
    sock = str(tmp_path / "boot.sock")
    p = _spawn([sys.executable, "-m", "kvmvm", "boot", "--kernel", str(tiny_images / "halt.elf"),
                "--memory", "32", "--api-sock", sock], tmp_path)
    wait_socket(sock, p)
    c = FcClient(sock)
    assert c.ok("GET", "/")["state"] == "Running"
    cfg = c.ok("GET", "/vm/config")
    assert cfg["boot-source"]["kernel_image_path"].endswith("halt.elf")
    assert cfg["machine-config"]["mem_size_mib"] == 32
    assert c.fault("PUT", "/boot-source", {"kernel_image_path": "x"}) == NOT_AFTER_BOOT
    assert c.fault("PUT", "/actions", {"action_type": "InstanceStart"}) == NOT_AFTER_BOOT
    _pause_resume(c)
    c.ok("PUT", "/actions", {"action_type": "FlushMetrics"})
    c.close()
    p.send_signal(signal.SIGTERM)
    assert _end(p) == 130
    assert not os.path.exists(sock)


def test_patch_drive_swaps_the_backing_file(fc, tmp_path, tiny_images):
    one, two = tmp_path / "one.img", tmp_path / "two.img"
    one.write_bytes(b"first disk".ljust(4096, b"\0"))
    two.write_bytes(b"second disk, larger".ljust(8192, b"\0"))
    fc.ok("PUT", "/boot-source", {"kernel_image_path": str(tiny_images / "blk-watch.elf")})
    fc.ok("PUT", "/drives/data", {"drive_id": "data", "path_on_host": str(one), "is_root_device": False,
                                  "is_read_only": True})
    assert fc.fault("PATCH", "/drives/data", {"drive_id": "data", "path_on_host": str(two)}) == \
        "The requested operation is not supported before starting the microVM."
    fc.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    deadline = time.monotonic() + 30
    while "blk-watch: 8 first disk" not in fc.proc.stdout_path.read_text():
        assert time.monotonic() < deadline and fc.proc.poll() is None, fc.proc.stdout_path.read_text()
        time.sleep(0.05)
    assert "cannot open" in fc.fault("PATCH", "/drives/data", {"drive_id": "data",
                                                              "path_on_host": str(tmp_path / "none")})
    assert fc.fault("PATCH", "/drives/nodrive", {"drive_id": "nodrive", "path_on_host": str(two)}) == \
        "Invalid block device ID: nodrive"
    fc.ok("PATCH", "/drives/data", {"drive_id": "data", "path_on_host": str(two)})
    assert fc.ok("GET", "/vm/config")["drives"][0]["path_on_host"] == str(two)
    assert _end(fc.proc) == (0x21 << 1) | 1
    assert "blk-watch: 16 second disk, larger" in fc.proc.stdout_path.read_text()


def _bench_drive(fc, tmp_path, tiny_images, count: int, rate_limiter=None):
    disk = tmp_path / "bench.img"
    disk.write_bytes(b"\0" * (1 << 20))
    fc.ok("PUT", "/boot-source", {"kernel_image_path": str(tiny_images / "virtio-blk-bench.elf"),
                                  "boot_args": f"count={count} size=4096"})
    drive = {"drive_id": "bench", "path_on_host": str(disk), "is_root_device": False, "is_read_only": True}
    if rate_limiter:
        drive["rate_limiter"] = rate_limiter
    fc.ok("PUT", "/drives/bench", drive)


@pytest.mark.parametrize("limiter", [{"ops": {"size": 10, "refill_time": 500}},
                                     {"bandwidth": {"size": 10 * 4096, "refill_time": 500}}],
                         ids=["ops", "bandwidth"])
def test_drive_rate_limiter_holds_requests_back(fc, tmp_path, tiny_images, limiter):
    # 10 reads of 4 KiB at once (a full bucket), then 20/s: 40 reads need at least 1.5 s
    _bench_drive(fc, tmp_path, tiny_images, 40, limiter)
    t = time.monotonic()
    fc.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    status = _end(fc.proc, 30)
    elapsed = time.monotonic() - t
    out = fc.proc.stdout_path.read_text()
    assert status == 0 and "bench: 40 requests" in out, out
    assert elapsed >= 1.4, f"40 rate-limited reads took only {elapsed:.2f} s"


def test_drive_rate_limiter_patched_while_running(fc, tmp_path, tiny_images):
    # one op, then one per 100 s: the guest's second read waits until the PATCH lifts it
    _bench_drive(fc, tmp_path, tiny_images, 5, {"ops": {"size": 1, "refill_time": 100000}})
    fc.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    time.sleep(0.5)
    assert fc.proc.poll() is None, fc.proc.stdout_path.read_text()
    fc.ok("PATCH", "/drives/bench", {"drive_id": "bench",
                                     "rate_limiter": {"ops": {"size": 0, "refill_time": 0}}})
    assert _end(fc.proc, 10) == 0
    assert "bench: 5 requests" in fc.proc.stdout_path.read_text()


def test_kvmvm_vm_client_against_kvmvm_boot_api_sock(tmp_path, kvm_ok, tiny_images):
    """The snapshot work's `kvmvm vm` client against this server: pause, resume, snapshot
    (a kvmvm snapshot directory), stop; then the snapshot restored through the API."""
    sock = str(tmp_path / "boot.sock")
    p = _spawn(KVMVM + ["boot", "--kernel", str(tiny_images / "kbd.elf"), "--memory", "32",
                        "--api-sock", sock], tmp_path)
    wait_socket(sock, p)

    def vm(*args):
        r = subprocess.run(KVMVM + ["vm", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    c = FcClient(sock)
    vm("pause", sock)
    assert c.ok("GET", "/")["state"] == "Paused"
    vm("resume", sock)
    assert c.ok("GET", "/")["state"] == "Running"
    snap = tmp_path / "snap"
    assert vm("snapshot", sock, "--out", str(snap)).strip() == str(snap)
    assert c.ok("GET", "/")["state"] == "Paused"
    assert (snap / "firecracker.json").is_file()
    c.close()
    vm("stop", sock)
    assert _end(p) == 130
    assert not os.path.exists(sock)
    # the directory snapshot loads through the API too (both paths name it)
    sock2 = str(tmp_path / "fc.sock")
    p = _spawn(FC + ["--api-sock", sock2], tmp_path)
    wait_socket(sock2, p)
    c = FcClient(sock2)
    c.ok("PUT", "/snapshot/load", {"snapshot_path": str(snap), "mem_file_path": str(snap),
                                   "resume_vm": True})
    assert c.ok("GET", "/")["state"] == "Running"
    c.ok("PUT", "/actions", {"action_type": "SendCtrlAltDel"})
    c.close()
    assert _end(p) == CAD_STATUS


def test_stop_action_is_post_boot(fc):
    assert fc.fault("PUT", "/actions", {"action_type": "Stop"}, valid=False) == \
        "The requested operation is not supported before starting the microVM."


def test_getting_started_with_curl(tmp_path, kvm_ok, tiny_images):
    """Firecracker's getting-started guide, with curl as it is written there."""
    sock = str(tmp_path / "firecracker.socket")
    disk = tmp_path / "rootfs.ext4"
    disk.write_bytes(b"\0" * 65536)
    p = _spawn(FC + ["--api-sock", sock], tmp_path)
    wait_socket(sock, p)

    def curl(method, path, data=None):
        cmd = ["curl", "-sS", "-X", method, "--unix-socket", sock, f"http://localhost{path}",
               "-H", "Accept: application/json", "-H", "Content-Type: application/json",
               "-w", "\\n%{http_code}"]
        if data is not None:
            cmd += ["-d", json.dumps(data)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        body, _, code = r.stdout.rpartition("\n")
        return int(code), body

    assert curl("PUT", "/logger", {"log_path": str(tmp_path / "fc.log"), "level": "Debug",
                                   "show_level": True, "show_log_origin": True}) == (204, "")
    assert curl("PUT", "/boot-source", {"kernel_image_path": str(tiny_images / "exitcode.elf"),
                                        "boot_args": "5 console=ttyS0 reboot=k panic=1"}) == (204, "")
    assert curl("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(disk),
                                          "is_root_device": True, "is_read_only": False}) == (204, "")
    code, body = curl("PUT", "/machine-config", {"vcpu_count": 2})
    assert code == 400 and "missing field `mem_size_mib`" in json.loads(body)["fault_message"]
    code, body = curl("GET", "/machine-config")
    assert code == 200 and json.loads(body)["vcpu_count"] == 1
    assert curl("PUT", "/actions", {"action_type": "InstanceStart"}) == (204, "")
    assert _end(p) == 11
    assert "exitcode 5" in p.stdout_path.read_text()
    assert not os.path.exists(sock)
