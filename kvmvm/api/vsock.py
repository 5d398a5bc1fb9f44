"""PUT /vsock (pre-boot)."""

from __future__ import annotations


from kvmvm.api.errors import ApiError
from kvmvm.api.fields import opt, parse_body, req

VSOCK = {"vsock_id": opt("str"), "guest_cid": req("u32"), "uds_path": req("str")}


def put_vsock(vmm, body, rest):
    cfg = parse_body(body, VSOCK)
    vmm.preboot()
    from kvmvm.devices.virtio import vsock
    from kvmvm.errors import ConfigError

    if cfg["guest_cid"] < 3:
        raise ApiError(f"Cannot create vsock device: invalid guest CID {cfg['guest_cid']}")
    if "," in cfg["uds_path"]:
        raise ApiError("Cannot create vsock device: the uds_path contains a comma")
    try:
        vsock.parse(f"cid={cfg['guest_cid']},uds={cfg['uds_path']}")
    except ConfigError as e:
        raise ApiError(f"Cannot create vsock device: {str(e).replace('--vsock', 'vsock')}") from None
    cfg.pop("vsock_id", None)
    vmm.vsock = cfg


ROUTES = [("PUT", "vsock", put_vsock, "put_api_requests", "vsock")]
