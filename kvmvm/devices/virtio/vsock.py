"""virtio-vsock with Firecracker's host side: `--vsock cid=N,uds=PATH`.

The host connects to PATH and sends `CONNECT <port>\\n` to reach a guest listener (answer:
`OK <host port>\\n`); a guest connecting to host port P reaches a listener at `PATH_P`.
"""

from __future__ import annotations

import os
from kvmvm.record import record

from kvmvm.bindings import lib
from kvmvm.devices.virtio import parse_options
from kvmvm.errors import ConfigError, KvmError

MIN_CID = 3
MAX_CID = 0xFFFFFFFE
UDS_MAX = 107


@record(frozen=True)
class VsockSpec:
    cid: int
    uds: str


def parse(spec: str) -> VsockSpec:
    opts = parse_options(spec, "--vsock")
    if "cid" not in opts or "uds" not in opts:
        raise ConfigError(f"--vsock {spec!r}: need cid=N,uds=PATH")
    try:
        cid = int(opts.pop("cid"), 0)
    except ValueError:
        raise ConfigError(f"--vsock {spec!r}: cid must be a number") from None
    if not MIN_CID <= cid <= MAX_CID:
        raise ConfigError(f"--vsock {spec!r}: cid must be between {MIN_CID} and {MAX_CID}")
    uds = opts.pop("uds")
    if not uds:
        raise ConfigError(f"--vsock {spec!r}: empty uds path")
    if len(uds.encode()) + 12 > UDS_MAX:  # room for the _<port> suffix
        raise ConfigError(f"--vsock {spec!r}: uds path is too long for a Unix socket")
    if opts:
        raise ConfigError(f"--vsock {spec!r}: unknown option {sorted(opts)[0]!r} (known: cid=, uds=)")
    parent = os.path.dirname(os.path.abspath(uds))
    if not os.path.isdir(parent):
        raise ConfigError(f"--vsock: directory of {uds} does not exist")
    import stat

    try:
        st = os.lstat(uds)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"--vsock: {uds} already exists and is not a socket")
    # a socket left by a kvmvm that was killed is reclaimed when nobody listens on it
    return VsockSpec(cid, uds)


def attach(vm, v: VsockSpec, base: int, irq: int, flags: int = 0) -> None:
    import errno

    rc = lib.kvmvm_vm_add_virtio_vsock(vm._vm, base, irq, flags, v.cid, v.uds.encode())
    if rc == -errno.EADDRINUSE:
        raise ConfigError(f"--vsock: {v.uds} is in use by a running process")
    if rc < 0:
        raise KvmError(-rc, f"virtio-vsock {v.uds}: {os.strerror(-rc)}")
