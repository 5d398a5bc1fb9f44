"""virtio-blk over a raw image file: `--drive PATH[,ro][,id=SERIAL]` (the first is /dev/vda)."""

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


def parse(spec: str) -> DriveSpec:
    opts = parse_options(spec, "--drive", first_positional="path")
    path = opts.pop("path", "") or opts.pop("file", "")
    if not path:
        raise ConfigError(f"--drive {spec!r}: no image path (use --drive PATH[,ro])")
    ro = False
    if "ro" in opts:
        if opts.pop("ro") not in ("", "on", "1", "true"):
            raise ConfigError(f"--drive {spec!r}: ro takes no value")
        ro = True
    serial = opts.pop("id", "")
    if len(serial.encode()) > 20:
        raise ConfigError(f"--drive {spec!r}: id is longer than 20 bytes")
    if opts:
        raise ConfigError(f"--drive {spec!r}: unknown option {sorted(opts)[0]!r} (known: ro, id=)")
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"--drive: image not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"--drive: {path}: {e.strerror}") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise ConfigError(f"--drive: not a regular file or block device: {path}")
    return DriveSpec(path, ro, serial)


def attach(vm, d: DriveSpec, base: int, irq: int, flags: int = 0) -> None:
    rc = lib.kvmvm_vm_add_virtio_blk(vm._vm, base, irq, flags, d.path.encode(), int(d.readonly),
                                     d.serial.encode())
    if rc in (-errno.EACCES, -errno.EPERM, -errno.EROFS):
        hint = "" if d.readonly else " (add ,ro for a read-only drive)"
        raise ConfigError(f"--drive: cannot open {d.path} {'read-only' if d.readonly else 'read-write'}{hint}")
    if rc < 0:
        raise KvmError(-rc, f"virtio-blk {d.path}: {os.strerror(-rc)}")
