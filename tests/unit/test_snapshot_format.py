"""The snapshot loader (kvmvm/snapshot/format.py load, persist.check) against corrupt and
hostile snapshot directories, without a VM: every refusal is a SnapshotError of one line.
The cases marked "atheris" were found by tests/fuzz/fuzz_snapshot.py (a traceback before)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kvmvm.boot import layout
from kvmvm.snapshot import format as fmt
from kvmvm.snapshot import persist

STATE = b"kvmvm-state" * 10


def header() -> dict:
    return {
        "format": fmt.FORMAT, "version": fmt.VERSION, "host_cpu": fmt.host_cpu(),
        "guest_cpuid": [[0, 0, 0, 13, 1, 2, 3]],
        "state": {"file": fmt.STATE_FILE, "size": len(STATE), "sha256": fmt.sha256(STATE)},
        "memory": [{"file": fmt.memory_file(i), "gpa": g, "size": s, "data_bytes": 0}
                   for i, (g, s) in enumerate(layout.RamLayout(64 << 20).regions)],
        "config": {"kernel": "/k", "cmdline": "", "initrd": None, "memory_mib": 64, "cpus": 1,
                   "drives": [], "nets": [], "vsock": None, "rng": True,
                   "virtio_cmdline": "auto", "entry": "auto", "acpi": True},
        "linux": False,
    }


def make(d: Path, h: dict | str) -> Path:
    d.mkdir(exist_ok=True)
    (d / fmt.HEADER_FILE).write_text(h if isinstance(h, str) else json.dumps(h))
    (d / fmt.STATE_FILE).write_bytes(STATE)
    with open(d / fmt.memory_file(0), "wb") as f:
        f.truncate(64 << 20)
    return d


def refused(d: Path, what: str) -> None:
    with pytest.raises(fmt.SnapshotError) as ei:
        persist.check(str(d))
    msg = str(ei.value)
    assert what in msg and "\n" not in msg, msg


def test_a_good_snapshot_passes(tmp_path):
    snap, state, cfg = persist.check(str(make(tmp_path / "s", header())))
    assert state == STATE and cfg.memory_mib == 64


def _set(path: str, value):
    def f(h):
        *parents, last = path.split(".")
        node = h
        for k in parents:
            node = node[int(k)] if isinstance(node, list) else node[k]
        if value is KeyError:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return f


@pytest.mark.parametrize("change,what", [
    (_set("state.file", KeyError), "'state' is not"),                        # atheris
    (_set("state", [1, 2]), "'state' is not"),
    (_set("state.size", "120"), "'state' is not"),
    (_set("state.size", 1 << 80), "truncated or padded"),                    # atheris
    (_set("host_cpu", "x86"), "'host_cpu' is not an object"),
    (_set("memory", []), "'memory' is not a list"),
    (_set("memory.0", 7), "region is not"),
    (_set("memory.0.gpa", None), "region is not"),
    (_set("guest_cpuid", [[1, 2]]), "'guest_cpuid'"),
    (_set("guest_cpuid", 5), "'guest_cpuid'"),
    (_set("config.cmdline", ["console=ttyS0"]), "'cmdline' is a list"),    # atheris
    (_set("config.memory_mib", True), "'memory_mib' is a bool"),
    (_set("config.memory_mib", 64.0), "'memory_mib' is a float"),
    (_set("config.drives", [1]), "'drives' is a list"),
    (_set("config.nets", "tap=x"), "'nets' is a str"),
    (_set("config.cpus", KeyError), "no 'cpus'"),
    (_set("config.memory_mib", 128), "memory regions do not match"),
])
def test_corrupt_headers_are_refused_in_one_line(tmp_path, change, what):
    h = header()
    change(h)
    refused(make(tmp_path / "s", h), what)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..", ".", ""])
def test_file_names_may_not_leave_the_snapshot_directory(tmp_path, name):
    """A header alone must not make kvmvm read or map a host file as guest RAM or state."""
    for field in ("memory", "state"):
        h = header()
        if field == "memory":
            h["memory"][0]["file"] = name
        else:
            h["state"]["file"] = name
        refused(make(tmp_path / f"s-{field}", h), "is corrupt")


@pytest.mark.parametrize("text", ["[" * 100000, '{"a":' * 100000])
def test_a_header_nested_too_deep_is_refused(tmp_path, text):
    """atheris: json's RecursionError escaped the loader."""
    refused(make(tmp_path / "s", text), "nested too deep")


@pytest.mark.parametrize("which", ["state", "memory"])
def test_a_fifo_or_directory_is_refused_without_blocking(tmp_path, which):
    d = make(tmp_path / "s", header())
    p = d / (fmt.STATE_FILE if which == "state" else fmt.memory_file(0))
    p.unlink()
    os.mkfifo(p)
    refused(d, f"{which} file {p.name} is not a regular file")
    p.unlink()
    p.mkdir()
    refused(d, f"{which} file {p.name} is not a regular file")
