"""virtio-blk over a raw image file: `--drive PATH[,ro][,direct][,id=SERIAL]` (the first is
/dev/vda). `direct` opens the file with O_DIRECT: guest I/O bypasses the host page cache."""

from __future__ import annotations

import errno
import os
from kvmvm.record import record

from kvmvm.bindings import lib
from kvmvm.devices.virtio import parse_options
from kvmvm.errors import ConfigError, KvmError


@record(frozen=True)
class DriveSpec:
    path: str
    readonly: bool = False
    serial: str = ""
    direct: bool = False     # O_DIRECT: no host page cache


def parse(spec: str) -> DriveSpec:
    opts = parse_options(spec, "--drive", first_positional="path")
    path = opts.pop("path", "") or opts.pop("file", "")
    if not path:
        raise ConfigError(f"--drive {spec!r}: no image path (use --drive PATH[,ro])")
    ro, direct = (_switch(opts, spec, name) for name in ("ro", "direct"))
    serial = opts.pop("id", "")
    if len(serial.encode()) > 20:
        raise ConfigError(f"--drive {spec!r}: id is longer than 20 bytes")
    if opts:
        raise ConfigError(f"--drive {spec!r}: unknown option {sorted(opts)[0]!r} (known: ro, direct, id=)")
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"--drive: image not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"--drive: {path}: {e.strerror}") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise ConfigError(f"--drive: not a regular file or block device: {path}")
    return DriveSpec(path, ro, serial, direct)


def _switch(opts: dict, spec: str, name: str) -> bool:
    """An option without a value (`ro`); `ro=on`, `=1`, `=true` are accepted too."""
    if name not in opts:
        return False
    if opts.pop(name) not in ("", "on", "1", "true"):
        raise ConfigError(f"--drive {spec!r}: {name} takes no value")
    return True


def attach(vm, d: DriveSpec, base: int, irq: int, flags: int = 0) -> None:
    mode = (lib.KVMVM_BLK_RO if d.readonly else 0) | (lib.KVMVM_BLK_DIRECT if d.direct else 0)
    rc = lib.kvmvm_vm_add_virtio_blk(vm._vm, base, irq, flags, d.path.encode(), mode,
                                     d.serial.encode())
    if rc == -errno.EOPNOTSUPP:
        raise ConfigError(f"--drive: {d.path}: its file system does not support direct I/O "
                          "(O_DIRECT); drop ,direct")
    if rc in (-errno.EACCES, -errno.EPERM, -errno.EROFS):
        hint = "" if d.readonly else " (add ,ro for a read-only drive)"
        raise ConfigError(f"--drive: cannot open {d.path} {'read-only' if d.readonly else 'read-write'}{hint}")
    if rc < 0:
        raise KvmError(-rc, f"virtio-blk {d.path}: {os.strerror(-rc)}")
