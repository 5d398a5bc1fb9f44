"""The Firecracker API before the boot: every endpoint and method, valid and invalid bodies,
the HTTP layer; every response checked against the swagger (tests/apischema.py).
In-process server on a real Unix socket; no VM is started here (tests/integration does)."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from kvmvm.api import serve
from kvmvm.api.errors import NOT_AFTER_BOOT, NOT_BEFORE_BOOT
from kvmvm.api.vmm import Vmm
from tests.apischema import SPEC, errors
from tests.fcclient import FcClient

ROOT = Path(__file__).resolve().parents[2]
KERNEL = str(ROOT / "guest-images" / "tiny" / "out" / "exitcode.elf")
DESER = "An error occurred when deserializing the json body of a request: "


@pytest.fixture
def api(tmp_path):
    vmm = Vmm("unit-test")
    srv = serve(str(tmp_path / "fc.sock"), vmm)
    c = FcClient(str(tmp_path / "fc.sock"))
    c.vmm = vmm
    yield c
    c.close()
    srv.close()
    vmm.close()
    assert not (tmp_path / "fc.sock").exists()


@pytest.fixture
def disk(tmp_path):
    p = tmp_path / "disk.img"
    p.write_bytes(b"\0" * 65536)
    return str(p)


def test_swagger_transcription_is_self_consistent():
    for tpl, ops in SPEC["paths"].items():
        for method, op in ops.items():
            for name in [op.get("body")] + list(op["responses"].values()):
                assert name is None or name in SPEC["definitions"], (tpl, method, name)
    assert errors({"state": "Paused"}, {"$ref": "#/definitions/Vm"}) == []
    assert errors({"state": "Stopped"}, {"$ref": "#/definitions/Vm"})


def test_instance_info_version_and_config(api):
    info = api.ok("GET", "/")
    assert info["id"] == "unit-test" and info["state"] == "Not started"
    assert api.ok("GET", "/version")["firecracker_version"].startswith("1.")
    cfg = api.ok("GET", "/vm/config")
    assert cfg["machine-config"] == {"vcpu_count": 1, "mem_size_mib": 128, "smt": False,
                                     "track_dirty_pages": False, "huge_pages": "None"}
    assert cfg["drives"] == [] and cfg["network-interfaces"] == []
    assert api.fault("GET", "/vm") == "Invalid request method and/or path: GET vm."


def test_generic_errors(api):
    assert api.fault("GET", "/nope") == "Invalid request method and/or path: GET nope."
    assert api.fault("PUT", "/version", {"a": 1}, valid=False) == \
        "Invalid request method and/or path: PUT version."
    assert api.fault("GET", "/", raw=b"{}") == "GET request cannot have a body."
    assert api.fault("PUT", "/boot-source") == "Empty PUT request."
    assert api.fault("PATCH", "/machine-config") == "Empty PATCH request."
    assert api.fault("PUT", "/boot-source", raw=b"{not json").startswith(DESER)
    assert api.fault("PUT", "/boot-source", raw=b"[1]").startswith(DESER + "invalid type: sequence")


def test_boot_source(api, tmp_path):
    assert api.ok("PUT", "/boot-source", {"kernel_image_path": KERNEL, "boot_args": "3"}) is None
    assert api.ok("GET", "/vm/config")["boot-source"] == {"kernel_image_path": KERNEL, "boot_args": "3"}
    assert api.fault("PUT", "/boot-source", {"boot_args": "x"}, valid=False) == \
        DESER + "missing field `kernel_image_path`."
    msg = api.fault("PUT", "/boot-source", {"kernel_image_path": KERNEL, "kernel": 1}, valid=False)
    assert msg.startswith(DESER + "unknown field `kernel`, expected one of `kernel_image_path`")
    assert api.fault("PUT", "/boot-source", {"kernel_image_path": 5}, valid=False) == \
        DESER + "invalid type: integer `5`, expected a string."
    assert "cannot be opened" in api.fault("PUT", "/boot-source",
                                           {"kernel_image_path": str(tmp_path / "none")})


def test_machine_config(api):
    api.ok("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256})
    assert api.ok("GET", "/machine-config")["vcpu_count"] == 2
    api.ok("PATCH", "/machine-config", {"mem_size_mib": 64})
    assert api.ok("GET", "/machine-config") == {"vcpu_count": 2, "mem_size_mib": 64, "smt": False,
                                                "track_dirty_pages": False, "huge_pages": "None"}
    assert api.fault("PUT", "/machine-config", {"vcpu_count": 0, "mem_size_mib": 128}, valid=False) \
        .startswith("The vCPU number is invalid!")
    assert api.fault("PUT", "/machine-config", {"vcpu_count": 33, "mem_size_mib": 128}, valid=False) \
        .startswith("The vCPU number is invalid!")
    assert api.fault("PUT", "/machine-config", {"vcpu_count": 1}, valid=False) == \
        DESER + "missing field `mem_size_mib`."
    assert api.fault("PUT", "/machine-config", {"vcpu_count": -1, "mem_size_mib": 128}, valid=False) == \
        DESER + "invalid value: integer `-1`, expected u8."
    assert "memory size" in api.fault("PATCH", "/machine-config", {"mem_size_mib": 1})
    assert api.fault("PATCH", "/machine-config", {}) == "Empty PATCH request."
    for body, what in (({"smt": True}, "SMT"), ({"huge_pages": "2M"}, "huge pages"),
                       ({"track_dirty_pages": True}, "dirty page tracking"),
                       ({"cpu_template": "T2"}, "CPU templates")):
        msg = api.fault("PATCH", "/machine-config", dict(body, vcpu_count=1, mem_size_mib=128))
        assert msg.startswith("kvmvm does not support") and what in msg
    assert api.ok("GET", "/machine-config")["mem_size_mib"] == 64    # refused: nothing applied


def test_drives(api, disk, tmp_path):
    root = {"drive_id": "rootfs", "path_on_host": disk, "is_root_device": True, "is_read_only": True}
    api.ok("PUT", "/drives/rootfs", root)
    api.ok("PUT", "/drives/scratch", {"drive_id": "scratch", "path_on_host": disk,
                                      "is_root_device": False, "is_read_only": False})
    drives = api.ok("GET", "/vm/config")["drives"]
    assert [d["drive_id"] for d in drives] == ["rootfs", "scratch"]
    assert drives[0] == dict(root, cache_type="Unsafe", io_engine="Sync")
    assert api.fault("PUT", "/drives/other", root) == \
        "The id from the path does not match the id from the body!"
    assert api.fault("PUT", "/drives/second", dict(root, drive_id="second")) == \
        "A root block device already exists!"
    api.ok("PUT", "/drives/rootfs", dict(root, is_read_only=False))     # an update of the same id
    assert api.fault("PUT", "/drives/a-b", dict(root, drive_id="a-b")) == \
        "API Resource IDs can only contain alphanumeric characters and underscores."
    assert api.fault("PUT", "/drives/", root, valid=False) == "The ID cannot be empty."
    assert "cannot open" in api.fault("PUT", "/drives/x", dict(root, drive_id="x", is_root_device=False,
                                                                path_on_host=str(tmp_path / "none")))
    rl = {"bandwidth": {"size": 1000, "refill_time": 100}, "ops": {"size": 10, "refill_time": 100,
                                                                  "one_time_burst": 5}}
    api.ok("PUT", "/drives/limited", dict(root, drive_id="limited", is_root_device=False, rate_limiter=rl))
    assert api.ok("GET", "/vm/config")["drives"][2]["rate_limiter"] == rl
    assert api.fault("PUT", "/drives/x", dict(root, drive_id="x", is_root_device=False,
                                              rate_limiter={"ops": {"size": 10}}), valid=False) == \
        DESER + "missing field `refill_time`."
    for extra, what in (({"io_engine": "Async"}, "Async"),
                        ({"cache_type": "Writeback"}, "Writeback")):
        msg = api.fault("PUT", "/drives/x", dict(root, drive_id="x", is_root_device=False, **extra))
        assert msg.startswith("kvmvm does not support") and what in msg
    assert api.fault("PUT", "/drives/x", {"drive_id": "x", "is_root_device": False,
                                          "is_read_only": "yes"}, valid=False) == \
        DESER + 'invalid type: string "yes", expected a boolean.'
    assert api.fault("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": disk}) == NOT_BEFORE_BOOT
    assert api.fault("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "is_read_only": True},
                     valid=False).startswith(DESER + "unknown field `is_read_only`")


def test_network_interfaces(api):
    eth0 = {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02"}
    api.ok("PUT", "/network-interfaces/eth0", eth0)
    assert api.ok("GET", "/vm/config")["network-interfaces"] == [eth0]
    assert api.fault("PUT", "/network-interfaces/eth1", dict(eth0, iface_id="eth1")) == \
        "The host device name tap0 is already in use."
    assert api.fault("PUT", "/network-interfaces/eth1", dict(eth0, iface_id="eth1", host_dev_name="tap1")) == \
        "The MAC address is already in use: 06:00:AC:10:00:02"
    assert "Invalid MAC" in api.fault("PUT", "/network-interfaces/eth1",
                                      {"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": "zz"})
    assert "not a valid TAP name" in api.fault("PUT", "/network-interfaces/eth1",
                                               {"iface_id": "eth1", "host_dev_name": "x" * 16})
    rl = {"ops": {"size": 10, "refill_time": 1000, "one_time_burst": 5}}
    api.ok("PUT", "/network-interfaces/eth1", {"iface_id": "eth1", "host_dev_name": "tap1",
                                               "rx_rate_limiter": rl, "tx_rate_limiter": rl})
    assert api.ok("GET", "/vm/config")["network-interfaces"][1]["tx_rate_limiter"] == rl
    assert "MTU" in api.fault("PUT", "/network-interfaces/eth2",
                              {"iface_id": "eth2", "host_dev_name": "tap2", "mtu": 1400})
    assert api.fault("PATCH", "/network-interfaces/eth0", {"iface_id": "eth0", "rx_rate_limiter": rl}) == \
        NOT_BEFORE_BOOT


def test_vsock_entropy_serial(api, tmp_path):
    uds = str(tmp_path / "v.sock")
    api.ok("PUT", "/vsock", {"guest_cid": 3, "uds_path": uds})
    assert api.ok("GET", "/vm/config")["vsock"] == {"guest_cid": 3, "uds_path": uds}
    assert "invalid guest CID" in api.fault("PUT", "/vsock", {"guest_cid": 2, "uds_path": uds}, valid=False)
    assert api.fault("PUT", "/vsock", {"guest_cid": 3}, valid=False) == DESER + "missing field `uds_path`."
    api.ok("PUT", "/entropy", {})
    assert api.ok("GET", "/vm/config")["entropy"] == {}
    assert "rate limiters" in api.fault("PUT", "/entropy", {"rate_limiter": {"ops": {"size": 1, "refill_time": 1}}})
    api.ok("PUT", "/serial", {"serial_out_path": str(tmp_path / "console.log")})
    assert "rate limiter" in api.fault("PUT", "/serial", {"rate_limiter": {"size": 1, "refill_time": 1}})


def test_logger_and_metrics(api, tmp_path):
    log, met = tmp_path / "fc.log", tmp_path / "metrics.json"
    api.ok("PUT", "/logger", {"log_path": str(log), "level": "Debug", "show_level": True})
    api.ok("PUT", "/metrics", {"metrics_path": str(met)})
    assert api.fault("PUT", "/metrics", {"metrics_path": str(met)}) == "Reinitialization of metrics not allowed."
    assert api.fault("PUT", "/logger", {"level": "Loud"}, valid=False).startswith(DESER + "unknown variant `Loud`")
    api.fault("PUT", "/drives/x", {"drive_id": "y", "is_root_device": False})
    api.ok("PUT", "/actions", {"action_type": "FlushMetrics"})
    lines = [json.loads(x) for x in met.read_text().splitlines()]
    assert len(lines) == 1
    m = lines[0]
    assert m["put_api_requests"]["drive_count"] == 1 and m["put_api_requests"]["drive_fails"] == 1
    assert m["put_api_requests"]["metrics_count"] == 2 and m["put_api_requests"]["metrics_fails"] == 1
    assert isinstance(m["utc_timestamp_ms"], int)
    api.ok("PUT", "/actions", {"action_type": "FlushMetrics"})
    m2 = json.loads(met.read_text().splitlines()[1])
    assert m2["put_api_requests"] == {"actions_count": 1}       # deltas since the last flush
    text = log.read_text()
    assert "[unit-test:fc_api" in text and ":ERROR] Received Error. Status code: 400" in text
    assert 'Put request on "/drives/x" with body' in text


@pytest.mark.parametrize("method,path,body,what", [
    ("GET", "/balloon", None, "balloon"),
    ("PUT", "/balloon", {"amount_mib": 16, "deflate_on_oom": True}, "balloon"),
    ("PATCH", "/balloon", {"amount_mib": 8}, "balloon"),
    ("GET", "/balloon/statistics", None, "balloon"),
    ("PATCH", "/balloon/statistics", {"stats_polling_interval_s": 1}, "balloon"),
    ("GET", "/mmds", None, "MMDS"),
    ("PUT", "/mmds", {"latest": {"meta-data": {}}}, "MMDS"),
    ("PATCH", "/mmds", {"a": 1}, "MMDS"),
    ("PUT", "/mmds/config", {"network_interfaces": ["eth0"], "version": "V2"}, "MMDS"),
    ("PUT", "/hotplug/memory", {"total_size_mib": 1024}, "memory hotplug"),
    ("PATCH", "/hotplug/memory", {"requested_size_mib": 512}, "memory hotplug"),
    ("GET", "/hotplug/memory", None, "memory hotplug"),
    ("PUT", "/cpu-config", {"kvm_capabilities": ["!56"]}, "CPU templates"),
    ("PUT", "/pmem/p0", {"id": "p0", "path_on_host": "/tmp/x"}, "pmem"),
])
def test_unimplemented_endpoints_are_refused_by_name(api, method, path, body, what):
    msg = api.fault(method, path, body)
    assert msg.startswith("kvmvm does not support") and what in msg


def test_unimplemented_endpoints_still_check_their_bodies(api):
    assert api.fault("PUT", "/balloon", {"amount_mib": 16}, valid=False) == DESER + "missing field `deflate_on_oom`."
    assert api.fault("PUT", "/mmds/config", {"version": "V3", "network_interfaces": []}, valid=False) \
        .startswith(DESER + "unknown variant `V3`")


def test_actions_and_state_machine_before_boot(api, tmp_path):
    assert api.fault("PUT", "/actions", {"action_type": "Reboot"}, valid=False).startswith(
        DESER + "unknown variant `Reboot`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel`")
    assert api.fault("PUT", "/actions", {"action_type": "InstanceStart"}) == \
        "Cannot start microvm without kernel configuration."
    assert api.fault("PUT", "/actions", {"action_type": "SendCtrlAltDel"}) == NOT_BEFORE_BOOT
    assert api.ok("PUT", "/actions", {"action_type": "FlushMetrics"}) is None   # no metrics: a no-op
    assert api.fault("PATCH", "/vm", {"state": "Paused"}) == NOT_BEFORE_BOOT
    assert api.fault("PATCH", "/vm", {"state": "Stopped"}, valid=False).startswith(DESER + "unknown variant")
    assert api.fault("PUT", "/snapshot/create", {"mem_file_path": "m", "snapshot_path": "s"}) == NOT_BEFORE_BOOT
    assert api.fault("PUT", "/snapshot/load", {"snapshot_path": "s"}).startswith(DESER)
    assert api.fault("PUT", "/snapshot/load", {"snapshot_path": "nonexistent", "mem_file_path": "m"}) \
        .startswith("Load snapshot error:")
    for extra, what in (({"track_dirty_pages": True}, "dirty page"), ({"clock_realtime": True}, "clock_realtime")):
        msg = api.fault("PUT", "/snapshot/load", dict({"snapshot_path": "s", "mem_file_path": "m"}, **extra))
        assert msg.startswith("kvmvm does not support") and what in msg
    msg = api.fault("PUT", "/snapshot/load", {"snapshot_path": "s", "mem_backend": {"backend_type": "Uffd",
                                                                                    "backend_path": "u"}})
    assert "Uffd" in msg
    api.ok("PUT", "/boot-source", {"kernel_image_path": KERNEL})
    assert api.fault("PUT", "/snapshot/load", {"snapshot_path": "s", "mem_file_path": "m"}) == \
        "Loading a microVM snapshot not allowed after configuring boot-specific resources."


def test_post_boot_refusals_without_a_guest(api):
    """The state machine alone: a Vmm marked started refuses every pre-boot request."""
    api.vmm.state = "Running"
    api.vmm.machine = object()
    for method, path, body in (("PUT", "/boot-source", {"kernel_image_path": KERNEL}),
                               ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}),
                               ("PATCH", "/machine-config", {"vcpu_count": 1}),
                               ("PUT", "/drives/d", {"drive_id": "d", "is_root_device": False}),
                               ("PUT", "/network-interfaces/n", {"iface_id": "n", "host_dev_name": "t"}),
                               ("PUT", "/vsock", {"guest_cid": 3, "uds_path": "/tmp/v"}),
                               ("PUT", "/entropy", {}), ("PUT", "/logger", {"level": "Info"}),
                               ("PUT", "/metrics", {"metrics_path": "/tmp/m"}), ("PUT", "/serial", {}),
                               ("PUT", "/actions", {"action_type": "InstanceStart"}),
                               ("PUT", "/snapshot/load", {"snapshot_path": "s", "mem_file_path": "m"})):
        assert api.fault(method, path, body) == NOT_AFTER_BOOT, (method, path)
    api.vmm.machine = None
    api.vmm.state = "Not started"


def _raw(path, data: bytes, reads: int = 1) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.sendall(data)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
        if out.count(b"HTTP/1.1 ") >= reads and (b"Content-Length" not in out or out.endswith(b"}")):
            break
    s.close()
    return out


def test_http_keep_alive_chunked_and_limits(api):
    p = api.path
    two = _raw(p, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /version HTTP/1.1\r\nHost: x\r\n\r\n", reads=2)
    assert two.count(b"HTTP/1.1 200") == 2 and b"Connection: keep-alive" in two
    r = _raw(p, b"PUT /boot-source HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert r.startswith(b"HTTP/1.1 400") and b"Chunked transfer encoding is not supported" in r
    assert b"Connection: close" in r
    big = 51201
    r = _raw(p, b"PUT /mmds HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % big)
    assert r.startswith(b"HTTP/1.1 413") and b"is larger than the limit of 51200" in r
    r = _raw(p, b"PUT /logger HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}", reads=2)
    assert r.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204")
    assert _raw(p, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert api.ok("GET", "/")["state"] == "Not started"          # the server survived all that


def test_concurrent_clients(api):
    results = []

    def worker():
        c = FcClient(api.path)
        for _ in range(20):
            results.append(c.get("/")[0])
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 160


def test_connection_flood_is_bounded(api):
    from kvmvm.api.server import MAX_CONNECTIONS

    idle = []
    for _ in range(MAX_CONNECTIONS):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(api.path)
        idle.append(s)
    extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    extra.settimeout(5)
    extra.connect(api.path)
    assert extra.recv(10) == b""            # closed by the server: no thread for it
    extra.close()
    for s in idle:
        s.close()
    deadline = time.monotonic() + 5
    while True:                             # the idle ones' threads end; service resumes
        try:
            c = FcClient(api.path)
            assert c.get("/")[0] == 200
            c.close()
            break
        except (ConnectionError, OSError):
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_stale_socket_is_reclaimed_and_live_one_refused(tmp_path):
    from kvmvm.errors import ConfigError

    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()                                   # a socket file nobody listens on
    vmm = Vmm()
    srv = serve(path, vmm)
    with pytest.raises(ConfigError, match="in use"):
        serve(path, Vmm())
    srv.close()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a socket"):
        serve(str(tmp_path / "file"), Vmm())


def test_segments_map_every_route_to_its_group():
    """The router imports a group's module when a request first names one of its path
    segments: SEGMENTS must say, for every route of every group, which module serves it."""
    import importlib

    from kvmvm.api.router import SEGMENTS, Router, route_table

    for group in set(SEGMENTS.values()):
        for method, segment, *_ in importlib.import_module(f"kvmvm.api.{group}").ROUTES:
            assert SEGMENTS[segment] == group, (method, segment)
    served = {seg for _, seg in route_table()}
    assert served == set(SEGMENTS)
    lazy = Router(Vmm("lazy"))
    assert lazy("GET", "/machine-config", None)[0] == 200 and lazy.table.keys() <= route_table().keys()
    assert lazy("GET", "/nope", None) == (400, {"fault_message": "Invalid request method and/or path: GET nope."})


@pytest.mark.parametrize("value", [
    {"id": "x", "state": "Not started", "n": [1, -2, 2 ** 70, 0.1, -0.0, 1e300, True, False, None]},
    {"s": "é \n \" \\ \u2028 \ud800 \x00", "nested": {"a": [[], {}], "t": (1, "2")}},
    {"inf": float("inf"), "ninf": float("-inf"), "nan": float("nan")},
    [], "", 0, {1: "int key"}, {"set": {1}}, {"deep": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]},
])
def test_jsonout_writes_what_json_dumps_writes(value):
    from kvmvm.api.jsonout import dumps

    try:
        expected = json.dumps(value)
    except TypeError as e:
        with pytest.raises(TypeError, match=str(e)):
            dumps(value)
        return
    assert dumps(value) == expected


def test_first_answers_import_nothing_heavy(tmp_path):
    """What a client waits for after the socket appears (kvmvm firecracker serves its first
    requests while it still starts) must not import json, re, enum, socket or threading:
    together they cost about twice the interpreter's start-up."""
    import subprocess
    import sys

    code = f"""
import _socket, sys
from kvmvm.api import serve
from kvmvm.api.vmm import Vmm
srv = serve({str(tmp_path / 'lean.sock')!r}, Vmm('lean'))
s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
s.connect({str(tmp_path / 'lean.sock')!r})
got = b''
for path in ('/', '/machine-config', '/version'):     # flat JSON answers: each ends at its }}
    s.sendall(('GET ' + path + ' HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n').encode())
    got += s.recv(4096)
    while not got.endswith(b'}}'):
        got += s.recv(4096)
print(got.count(b'HTTP/1.1 200 OK'), sorted(m for m in ('json', 're', 'enum', 'socket', 'socketserver', 'threading') if m in sys.modules))
srv.close()
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split(None, 1) == ["3", "[]\n"]
