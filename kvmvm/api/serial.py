"""PUT /serial (pre-boot): where the guest's serial console output goes."""

from __future__ import annotations

from kvmvm.api.errors import unsupported
from kvmvm.api.fields import TOKEN_BUCKET, opt, parse_body

SERIAL = {"serial_out_path": opt("str"), "rate_limiter": opt(TOKEN_BUCKET)}


def put_serial(vmm, body, rest):
    cfg = parse_body(body, SERIAL)
    vmm.preboot()
    if "rate_limiter" in cfg:
        raise unsupported("a rate limiter on the serial console")
    vmm.serial = cfg


ROUTES = [("PUT", "serial", put_serial, "put_api_requests", "serial")]
