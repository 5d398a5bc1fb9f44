"""atheris harness: the snapshot loader (kvmvm/snapshot/format.py `load` and
kvmvm/snapshot/persist.py `check`, everything restore reads from a snapshot directory before
it builds a VM; docs/snapshot-format.md) against corrupt or hostile snapshot directories.
A snapshot that cannot be restored must raise ConfigError (SnapshotError is one: the CLI
prints one line, exit status 2); any other exception is a crash.

Input: byte 0: bit 0 = mutate a valid header (else the rest is the header's text),
bit 1 = create the memory files the header names, with the sizes it gives; bit 2 = pass
restore's overrides (--net-override, --vsock-uds, drives). The rest: with bit 0, the
mutations (atheris.FuzzedDataProvider); without, the header text, then after the first
two NUL bytes the state file.

    .venv/bin/python tests/fuzz/fuzz_snapshot.py [libFuzzer flags] [CORPUS...]   (scripts/fuzz.sh)
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["kvmvm"]):
    import kvmvm.devices.virtio  # noqa: F401  (what persist.check imports lazily, instrumented too)
    import kvmvm.machine  # noqa: F401
    from kvmvm.boot import layout
    from kvmvm.errors import ConfigError
    from kvmvm.snapshot import format as fmt
    from kvmvm.snapshot import persist

# the snapshot directory each input is written to (scripts/fuzz.sh: build/fuzz/work/snapshot)
DIR = os.environ.get("KVMVM_FUZZ_WORKDIR") or str(Path(__file__).resolve().parents[2] / "build" / "fuzz" / "work" / "snapshot")
STATE = bytes(range(256)) * 4


def template() -> dict:
    """A header as save() writes it, for a 128 MiB machine with every kind of device."""
    regions = layout.RamLayout(128 << 20).regions
    return {
        "format": fmt.FORMAT, "version": fmt.VERSION, "kvmvm_version": "0.1",
        "created_unix": 1.0e9, "host_cpu": fmt.host_cpu(),
        "guest_cpuid": [[0, 0, 0, 13, 0x756E6547, 0x6C65746E, 0x49656E69], [1, 0, 0, 0x906ea, 0, 0, 0]],
        "state": {"file": fmt.STATE_FILE, "size": len(STATE), "sha256": fmt.sha256(STATE)},
        "memory": [{"file": fmt.memory_file(i), "gpa": g, "size": s, "data_bytes": 0}
                   for i, (g, s) in enumerate(regions)],
        "config": {"kernel": "/k", "cmdline": "console=ttyS0", "initrd": None, "memory_mib": 128,
                   "cpus": 1, "drives": ["/d.img", "/e.img,ro"], "nets": ["tap=tap0,mac=02:00:00:00:00:01"],
                   "vsock": "cid=3,uds=/v.sock", "rng": True, "virtio_cmdline": "auto",
                   "entry": "auto", "acpi": True},
        "linux": False,
        "devices": [{"kind": "virtio-blk", "base": 0xd0000000, "irq": 5}],
    }


VALUES = [None, True, False, 0, 1, -1, 2, 128, 1 << 31, 1 << 64, -(1 << 70), 0.5, float("nan"),
          float("inf"), "", "x", "../../etc/passwd", "state.bin", "memory-0.raw", "a" * 300,
          "tap=", ",", "=", "cid=", "uds", [], {}, [[]], [None], [1, 2], {"file": 1}, ["x"]]


def mutate(fdp: atheris.FuzzedDataProvider, h: dict) -> None:
    """Change, delete or add one value somewhere in the header."""
    node = h
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        if isinstance(node, dict) and node:
            key = list(node)[fdp.ConsumeIntInRange(0, len(node) - 1)]
            if not isinstance(node[key], (dict, list)):
                break
            node = node[key]
        elif isinstance(node, list) and node:
            i = fdp.ConsumeIntInRange(0, len(node) - 1)
            if not isinstance(node[i], (dict, list)):
                break
            node = node[i]
        else:
            break
    op = fdp.ConsumeIntInRange(0, 3)
    if op == 3:
        v = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    elif op == 2:
        v = fdp.ConsumeInt(9)
    else:
        v = copy.deepcopy(VALUES[fdp.ConsumeIntInRange(0, len(VALUES) - 1)])   # no shared lists
    if isinstance(node, dict):
        keys = list(node)
        if keys and fdp.ConsumeBool():
            k = keys[fdp.ConsumeIntInRange(0, len(keys) - 1)]
            if fdp.ConsumeIntInRange(0, 7) == 0:
                del node[k]
                return
        else:
            k = fdp.ConsumeUnicodeNoSurrogates(8)
        node[k] = v
    elif isinstance(node, list):
        if node and fdp.ConsumeBool():
            node[fdp.ConsumeIntInRange(0, len(node) - 1)] = v
        else:
            node.append(v)


def clear() -> None:
    for name in os.listdir(DIR):
        os.unlink(os.path.join(DIR, name))


def write(name: str, data: bytes) -> None:
    with open(os.path.join(DIR, name), "wb") as f:
        f.write(data)


def memory_files(header) -> None:
    """The memory files the header names, sparse, as large as it says (when that is sane)."""
    regions = header.get("memory") if isinstance(header, dict) else None
    for r in regions if isinstance(regions, list) else []:
        if isinstance(r, dict) and isinstance(r.get("file"), str) and isinstance(r.get("size"), int):
            name = r["file"]
            if name and "/" not in name and name not in (".", "..") and "\0" not in name \
                    and 0 <= r["size"] <= 1 << 36:
                try:
                    with open(os.path.join(DIR, name), "wb") as f:
                        f.truncate(r["size"])
                except OSError:
                    pass


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    clear()
    if mode & 1:
        fdp = atheris.FuzzedDataProvider(body)
        h = template()
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            mutate(fdp, h)
        write(fmt.HEADER_FILE, json.dumps(h).encode())
        write(fmt.STATE_FILE, STATE)
        header = h
    else:
        text, _, state = body.partition(b"\0\0")
        write(fmt.HEADER_FILE, text)
        write(fmt.STATE_FILE, state)
        try:
            header = json.loads(text)
        except (ValueError, RecursionError):
            header = None
    if mode & 2:
        memory_files(header)
    kw = {}
    if mode & 4:
        kw = {"net_override": {"eth0": "tap9", "tap0": "tap8"}, "vsock_uds": "/w.sock",
              "drives": ["/x.img", "/y.img"]}
    try:
        persist.check(DIR, **kw)
    except ConfigError:
        pass


def main() -> None:
    shutil.rmtree(DIR, ignore_errors=True)
    os.makedirs(DIR)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
