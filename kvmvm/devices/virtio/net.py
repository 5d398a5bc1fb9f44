"""virtio-net: `--net tap=NAME[,mac=52:54:00:12:34:56]` over a TAP device, or
`--net user[,mac=..][,tcp=HOST:GUEST]...[,udp=HOST:GUEST]...` over a passt process that
kvmvm starts for the VM and that ends with it (kvmvm/net/passt.py); `passt` is a synonym
of `user`. tcp=/udp= may repeat: each forwards a host port to the guest.
`--net fd=N[,mac=..][,peer=passt]`: an inherited, connected stream socket that speaks the
same protocol as passt (a 4-byte big-endian length before each frame); whoever holds its
peer plays the network. peer=passt says that peer is a passt the user started (`passt
--fd`): the device then works around Debian 12 passt's bugs as for `--net user` (the
handshake ACK it leaves out, and nothing more after a SYN until passt has read it)."""

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
    backend: str = "tap"        # "tap", "user" (passt) or "fd" (a connected stream socket)
    tcp: tuple = ()             # user: forwarded host ports, passt's -t syntax
    udp: tuple = ()
    fd: int = -1                # fd: the socket
    passt_peer: bool = False    # fd: its peer is a passt (peer=passt)


def default_mac(index: int) -> bytes:
    return bytes([0x52, 0x54, 0x00, 0x12, 0x34, (0x56 + index) & 0xFF])


def _parse_mac(spec: str, m: str) -> bytes:
    if not _MAC.match(m):
        raise ConfigError(f"--net {spec!r}: mac must look like 52:54:00:12:34:56")
    mac = bytes(int(x, 16) for x in m.split(":"))
    if mac[0] & 1:
        raise ConfigError(f"--net {spec!r}: mac {m} is a multicast address")
    return mac


def _parse_user(spec: str, index: int) -> NetSpec:
    from kvmvm.net.passt import check_port_spec

    mac, tcp, udp = default_mac(index), [], []
    seen_mac = False
    for item in spec.split(",")[1:]:
        key, eq, val = item.partition("=")
        if key == "mac" and eq and not seen_mac:
            mac, seen_mac = _parse_mac(spec, val), True
        elif key in ("tcp", "udp") and eq:
            (tcp if key == "tcp" else udp).append(check_port_spec(val, f"--net {spec!r}: {key}"))
        else:
            raise ConfigError(f"--net {spec!r}: unknown or repeated option {item!r} (known: mac=, tcp=, udp=)")
    return NetSpec("", mac, "user", tuple(tcp), tuple(udp))


def _parse_fd(spec: str, opts: dict, index: int) -> NetSpec:
    import stat

    v = opts.pop("fd")
    if not v.isdigit():
        raise ConfigError(f"--net {spec!r}: fd must be a number")
    fd = int(v)
    try:
        st = os.fstat(fd)
    except OSError:
        raise ConfigError(f"--net {spec!r}: fd {fd} is not open") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"--net {spec!r}: fd {fd} is not a socket")
    mac = _parse_mac(spec, opts.pop("mac")) if "mac" in opts else default_mac(index)
    peer = opts.pop("peer", None)
    if peer not in (None, "passt"):
        raise ConfigError(f"--net {spec!r}: peer={peer} is not known (known: peer=passt)")
    if opts:
        raise ConfigError(f"--net {spec!r}: unknown option {sorted(opts)[0]!r} (known: fd=, mac=, peer=)")
    return NetSpec("", mac, "fd", fd=fd, passt_peer=peer == "passt")


def parse(spec: str, index: int = 0) -> NetSpec:
    if spec.split(",", 1)[0] in ("user", "passt"):
        return _parse_user(spec, index)
    opts = parse_options(spec, "--net")
    if "fd" in opts:
        return _parse_fd(spec, opts, index)
    tap = opts.pop("tap", "")
    if not tap:
        raise ConfigError(f"--net {spec!r}: no TAP name (use --net tap=NAME[,mac=..] or --net user)")
    if len(tap.encode()) > 15 or "/" in tap or tap in (".", ".."):
        raise ConfigError(f"--net {spec!r}: {tap!r} is not a valid interface name (at most 15 bytes)")
    mac = default_mac(index)
    if "mac" in opts:
        mac = _parse_mac(spec, opts.pop("mac"))
    if opts:
        raise ConfigError(f"--net {spec!r}: unknown option {sorted(opts)[0]!r} (known: tap=, mac=)")
    return NetSpec(tap, mac)


def attach(vm, n: NetSpec, base: int, irq: int, flags: int = 0) -> None:
    if n.backend == "user":
        return _attach_user(vm, n, base, irq, flags)
    if n.backend == "fd":
        rc = lib.kvmvm_vm_add_virtio_net_stream(vm._vm, base, irq, flags, n.fd, ffi.new("uint8_t[6]", n.mac))
        if rc in (-errno.ENOTSOCK, -errno.EPROTOTYPE):
            raise ConfigError(f"--net fd={n.fd}: not a stream socket")
        if rc < 0:
            raise KvmError(-rc, f"virtio-net fd={n.fd}: {os.strerror(-rc)}")
        if n.passt_peer:
            _ack_handshakes(vm, base, f"virtio-net fd={n.fd}")
        return None
    rc = lib.kvmvm_vm_add_virtio_net(vm._vm, base, irq, flags, n.tap.encode(), ffi.new("uint8_t[6]", n.mac))
    if rc in (-errno.EPERM, -errno.EACCES):
        raise ConfigError(f"--net: no permission to open TAP {n.tap} (need CAP_NET_ADMIN or a TAP owned by this user)")
    if rc == -errno.EBUSY:
        raise ConfigError(f"--net: TAP {n.tap} is already in use")
    if rc == -errno.EINVAL:
        raise ConfigError(f"--net: {n.tap} exists but is not a TAP device with vnet headers")
    if rc < 0:
        raise KvmError(-rc, f"virtio-net tap {n.tap}: {os.strerror(-rc)}")


def _ack_handshakes(vm, base: int, what: str) -> None:
    """The peer is Debian 12's passt: it never ACKs the guest's SYN,ACK of a published port
    (the device does: kvmvm/native/net_handshake.c), and loops on some batches (the device
    holds frames after a SYN: virtio_net.c)."""
    rc = lib.kvmvm_vm_virtio_net_ack_handshakes(vm._vm, base)
    if rc < 0:
        raise KvmError(-rc, f"{what}: {os.strerror(-rc)}")


def _attach_user(vm, n: NetSpec, base: int, irq: int, flags: int) -> None:
    """Start passt and give the device the other end of its socket. The VM owns passt:
    Vm.close() frees the device (closing the socket, which ends passt), then reaps it."""
    from kvmvm.net.passt import Passt, PasstOptions

    p = Passt(PasstOptions(tcp=list(n.tcp), udp=list(n.udp)))
    sock = p.start()
    try:
        rc = lib.kvmvm_vm_add_virtio_net_stream(vm._vm, base, irq, flags, sock.fileno(),
                                                ffi.new("uint8_t[6]", n.mac))
        if rc < 0:
            raise KvmError(-rc, f"virtio-net over passt: {os.strerror(-rc)}")
        _ack_handshakes(vm, base, "virtio-net over passt")
    except BaseException:
        p.stop()
        raise
    sock.close()            # the device holds its own duplicate
    vm.own(p)
