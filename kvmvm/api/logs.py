"""Firecracker's logger and metrics: human-readable log lines and one JSON object per flush.

Log line: `<RFC 3339 time, ns> [<instance id>:<thread>(:<LEVEL>)(:<file>:<line>)] <message>`.
Metrics: a JSON object per line, counters as deltas since the previous flush (as
Firecracker's SharedIncMetric), written every 60 s and on the FlushMetrics action.
`json` and `threading` are imported when a logger or metrics sink is configured, not before:
the API's first answer does not wait for them.
"""

from __future__ import annotations

import _thread
import os
import time

from kvmvm.api.errors import ApiError

LEVELS = {"off": 0, "error": 1, "warning": 2, "warn": 2, "info": 3, "debug": 4, "trace": 5}
FLUSH_INTERVAL_S = 60.0


def _open_sink(path: str, what: str) -> int:
    """A file or named pipe for appending, never blocking the API on a slow reader."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise ApiError(f"Failed to open the {what} file {path}: {e.strerror}") from None


def _write(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:        # a full pipe or gone reader loses the line, as Firecracker's does
        pass


_THREAD_NAMES: dict = {}     # thread ident -> name, for threads started through _thread


def name_thread(name: str | None) -> None:
    """Name the calling thread in log lines (None: forget it, as the thread ends)."""
    if name is None:
        _THREAD_NAMES.pop(_thread.get_ident(), None)
    else:
        _THREAD_NAMES[_thread.get_ident()] = name


def thread_name() -> str:
    name = _THREAD_NAMES.get(_thread.get_ident())
    if name is None:
        import threading

        name = threading.current_thread().name
    return name


def rfc3339_ns() -> str:
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}"


class Logger:
    def __init__(self, instance_id: str):
        self.id = instance_id
        self.config: dict | None = None
        self.level = LEVELS["info"]
        self.show_level = False
        self.show_origin = False
        self.fd = -1

    def configure(self, cfg: dict) -> None:
        if self.fd >= 0:
            raise ApiError("Logger can only be initialized once.")
        level = cfg.get("level", "Info")
        if level.lower() not in LEVELS:
            raise ApiError(f"Invalid log level: {level}")
        fd = _open_sink(cfg["log_path"], "log") if cfg.get("log_path") else -1
        self.fd = fd
        self.level = LEVELS[level.lower()]
        self.show_level = cfg.get("show_level", False)
        self.show_origin = cfg.get("show_log_origin", False)
        self.config = dict(cfg)

    def log(self, level: str, msg: str) -> None:
        if self.fd < 0 or LEVELS[level] > self.level:
            return
        tag = f"{self.id}:{thread_name()}"
        if self.show_level:
            tag += f":{level.upper()}"
        if self.show_origin:
            tag += ":kvmvm/api:0"
        _write(self.fd, f"{rfc3339_ns()} [{tag}] {msg}\n".encode())

    def info(self, msg: str) -> None:
        self.log("info", msg)

    def error(self, msg: str) -> None:
        self.log("error", msg)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Metrics:
    """Request counters kept by the router, device and vCPU counters read from the VM."""

    def __init__(self, vmm):
        self.vmm = vmm
        self.config: dict | None = None
        self.fd = -1
        self.counts: dict[str, dict[str, int]] = {}
        self._last: dict[str, int] = {}
        self._timer = None             # a threading.Timer while a sink is configured
        self._final_stats: dict | None = None
        self.start_us = 0
        self.start_cpu_us = 0

    def count(self, group: str, name: str, failed: bool) -> None:
        g = self.counts.setdefault(group, {})
        g[f"{name}_count"] = g.get(f"{name}_count", 0) + 1
        if failed:
            g[f"{name}_fails"] = g.get(f"{name}_fails", 0) + 1

    def configure(self, cfg: dict) -> None:
        if self.fd >= 0:
            raise ApiError("Reinitialization of metrics not allowed.")
        self.fd = _open_sink(cfg["metrics_path"], "metrics")
        self.config = dict(cfg)
        self._schedule()

    def _schedule(self) -> None:
        import threading

        self._timer = threading.Timer(FLUSH_INTERVAL_S, self._periodic)
        self._timer.daemon = True
        self._timer.start()

    def _periodic(self) -> None:
        with self.vmm.lock:
            if self.fd < 0:
                return
            self.flush()
        self._schedule()

    def final(self, stats: dict) -> None:
        """The VM's last counters, kept for flushes after it ended."""
        self._final_stats = stats
        self.flush()

    def _delta(self, key: str, value: int) -> int:
        d = value - self._last.get(key, 0)
        self._last[key] = value
        return d

    def snapshot(self) -> dict:
        out: dict = {"utc_timestamp_ms": time.time_ns() // 1_000_000,
                     "api_server": {"process_startup_time_us": self.start_us,
                                    "process_startup_time_cpu_us": self.start_cpu_us}}
        for group, counters in self.counts.items():
            out[group] = dict(counters)
        self.counts = {}
        m = self.vmm.machine
        stats = self._final_stats
        if stats is None and m is not None and getattr(m, "vm", None) is not None:
            stats = m.vm.stats()
        if stats is not None:
            out["vcpu"] = {"exit_io_in_out": self._delta("io", stats["exits_io"]),
                           "exit_mmio": self._delta("mmio", stats["exits_mmio"]),
                           "exits": self._delta("exits", stats["exits"])}
            out["vmm"] = {"io_unhandled": self._delta("io_u", stats["io_unhandled"]),
                          "mmio_unhandled": self._delta("mmio_u", stats["mmio_unhandled"])}
        if m is not None and getattr(m, "vm", None) is not None:
            out.update(self._devices(m))
        return out

    def _devices(self, m) -> dict:
        from kvmvm.bindings import ffi, lib

        out: dict = {}
        info = ffi.new("struct kvmvm_virtio_info *")
        agg: dict = {}
        for slot in m.virtio:
            if lib.kvmvm_vm_virtio_info(m.vm._vm, slot.base, info) < 0:
                continue
            key = {"blk": "block", "net": "net", "vsock": "vsock", "rng": "entropy"}[slot.name]
            a = agg.setdefault(key, {"in": 0, "out": 0, "kicks": 0, "reqs": 0, "broken": 0})
            a["in"] += info.bytes_in
            a["out"] += info.bytes_out
            a["kicks"] += info.kicks
            a["reqs"] += info.requests
            a["broken"] += info.broken
        for key, a in agg.items():
            d = {k: self._delta(f"{key}.{k}", v) for k, v in a.items()}
            if key == "block":
                out[key] = {"read_bytes": d["in"], "write_bytes": d["out"], "queue_event_count": d["kicks"],
                            "activate_fails": d["broken"]}
            elif key == "net":
                out[key] = {"rx_bytes_count": d["in"], "tx_bytes_count": d["out"],
                            "event_fails": d["broken"]}
            elif key == "vsock":
                out[key] = {"rx_bytes_count": d["in"], "tx_bytes_count": d["out"]}
            else:
                out[key] = {"entropy_bytes": d["in"], "entropy_event_count": d["reqs"]}
        return out

    def flush(self) -> bool:
        if self.fd < 0:
            return False
        import json

        _write(self.fd, (json.dumps(self.snapshot()) + "\n").encode())
        return True

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.fd >= 0:
            self.flush()
            os.close(self.fd)
            self.fd = -1
