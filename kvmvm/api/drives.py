"""PUT /drives/{id} (pre-boot), PATCH /drives/{id} (post-boot)."""

from __future__ import annotations

import os

from kvmvm.api.errors import ApiError, unsupported
from kvmvm.api.fields import RATE_LIMITER, opt, req
from kvmvm.api.ids import parse_for_id

DRIVE = {"drive_id": req("str"), "partuuid": opt("str"), "is_root_device": req("bool"),
         "cache_type": opt(("Unsafe", "Writeback")), "is_read_only": opt("bool"),
         "path_on_host": opt("str"), "rate_limiter": opt(RATE_LIMITER),
         "io_engine": opt(("Sync", "Async")), "socket": opt("str")}
PARTIAL_DRIVE = {"drive_id": req("str"), "path_on_host": opt("str"), "rate_limiter": opt(RATE_LIMITER)}


def check_path(path: str, read_only: bool) -> None:
    if "," in path:
        raise unsupported(f"drive paths that contain a comma ({path})")
    try:
        fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
        os.close(fd)
    except OSError as e:
        raise ApiError(f"Unable to create the block device: cannot open {path}: {e.strerror}") from None


def put_drive(vmm, body, rest):
    did, cfg = parse_for_id(rest, body, DRIVE, "drive_id")
    vmm.preboot()
    if "socket" in cfg:
        raise unsupported("vhost-user block devices (socket)")
    if cfg.get("io_engine", "Sync") != "Sync":
        raise unsupported("the Async (io_uring) block IO engine")
    if cfg.get("cache_type", "Unsafe") != "Unsafe":
        raise unsupported("the Writeback cache type")
    if "path_on_host" not in cfg or "is_read_only" not in cfg:
        raise ApiError("Unable to create the block device: path_on_host and is_read_only are "
                       "required for a virtio-block drive.")
    if cfg["is_root_device"] and any(d["is_root_device"] for i, d in vmm.drives.items() if i != did):
        raise ApiError("A root block device already exists!")
    check_path(cfg["path_on_host"], cfg["is_read_only"])
    cfg.setdefault("cache_type", "Unsafe")
    cfg.setdefault("io_engine", "Sync")
    vmm.drives[did] = cfg


def patch_drive(vmm, body, rest):
    did, cfg = parse_for_id(rest, body, PARTIAL_DRIVE, "drive_id")
    vmm.postboot()
    if did not in vmm.drives:
        raise ApiError(f"Invalid block device ID: {did}")
    if "rate_limiter" in cfg:
        vmm.set_drive_rate_limiter(did, cfg["rate_limiter"])
    if "path_on_host" in cfg:
        path = cfg["path_on_host"]
        check_path(path, vmm.drives[did].get("is_read_only", False))
        vmm.swap_drive(did, path)


ROUTES = [
    ("PUT", "drives", put_drive, "put_api_requests", "drive"),
    ("PATCH", "drives", patch_drive, "patch_api_requests", "drive"),
]
