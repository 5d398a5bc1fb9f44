"""PUT /boot-source (pre-boot)."""

from __future__ import annotations

import os

from kvmvm.api.errors import ApiError
from kvmvm.api.fields import opt, parse_body, req

BOOT_SOURCE = {"kernel_image_path": req("str"), "initrd_path": opt("str"), "boot_args": opt("str")}


def put_boot_source(vmm, body, rest):
    cfg = parse_body(body, BOOT_SOURCE)
    vmm.preboot()
    for key, what in (("kernel_image_path", "kernel"), ("initrd_path", "initrd")):
        path = cfg.get(key)
        if path is not None and not os.path.isfile(path):
            raise ApiError(f"The {what} file cannot be opened: {path}: No such file")
    vmm.boot_source = cfg


ROUTES = [("PUT", "boot-source", put_boot_source, "put_api_requests", "boot_source")]
