"""virtio-net over a TAP device: `--net tap=NAME[,mac=52:54:00:12:34:56]`."""

from __future__ import annotations

import errno
import os
import re
from kvmvm.record import record

from kvmvm.bindings import ffi, lib
from kvmvm.devices.virtio import parse_options
from kvmvm.errors import ConfigError, KvmError

_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


@record(frozen=True)
class NetSpec:
    tap: str
    mac: bytes


def default_mac(index: int) -> bytes:
    return bytes([0x52, 0x54, 0x00, 0x12, 0x34, (0x56 + index) & 0xFF])


def parse(spec: str, index: int = 0) -> NetSpec:
    opts = parse_options(spec, "--net")
    tap = opts.pop("tap", "")
    if not tap:
        raise ConfigError(f"--net {spec!r}: no TAP name (use --net tap=NAME[,mac=..])")
    if len(tap.encode()) > 15 or "/" in tap or tap in (".", ".."):
        raise ConfigError(f"--net {spec!r}: {tap!r} is not a valid interface name (at most 15 bytes)")
    mac = default_mac(index)
    if "mac" in opts:
        m = opts.pop("mac")
        if not _MAC.match(m):
            raise ConfigError(f"--net {spec!r}: mac must look like 52:54:00:12:34:56")
        mac = bytes(int(x, 16) for x in m.split(":"))
        if mac[0] & 1:
            raise ConfigError(f"--net {spec!r}: mac {m} is a multicast address")
    if opts:
        raise ConfigError(f"--net {spec!r}: unknown option {sorted(opts)[0]!r} (known: tap=, mac=)")
    return NetSpec(tap, mac)


def attach(vm, n: NetSpec, base: int, irq: int, flags: int = 0) -> None:
    rc = lib.kvmvm_vm_add_virtio_net(vm._vm, base, irq, flags, n.tap.encode(), ffi.new("uint8_t[6]", n.mac))
    if rc in (-errno.EPERM, -errno.EACCES):
        raise ConfigError(f"--net: no permission to open TAP {n.tap} (need CAP_NET_ADMIN or a TAP owned by this user)")
    if rc == -errno.EBUSY:
        raise ConfigError(f"--net: TAP {n.tap} is already in use")
    if rc == -errno.EINVAL:
        raise ConfigError(f"--net: {n.tap} exists but is not a TAP device with vnet headers")
    if rc < 0:
        raise KvmError(-rc, f"virtio-net tap {n.tap}: {os.strerror(-rc)}")
