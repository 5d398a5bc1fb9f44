"""PUT /network-interfaces/{id} (pre-boot), PATCH /network-interfaces/{id} (post-boot)."""

from __future__ import annotations

import re

from kvmvm.api.errors import ApiError, unsupported
from kvmvm.api.fields import RATE_LIMITER, opt, req
from kvmvm.api.ids import parse_for_id

NETWORK_INTERFACE = {"iface_id": req("str"), "host_dev_name": req("str"), "guest_mac": opt("str"),
                     "mtu": opt("u16"), "rx_rate_limiter": opt(RATE_LIMITER),
                     "tx_rate_limiter": opt(RATE_LIMITER)}
PARTIAL = {"iface_id": req("str"), "rx_rate_limiter": opt(RATE_LIMITER),
           "tx_rate_limiter": opt(RATE_LIMITER)}
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def put_net(vmm, body, rest):
    iid, cfg = parse_for_id(rest, body, NETWORK_INTERFACE, "iface_id")
    vmm.preboot()
    if "mtu" in cfg:
        raise unsupported("advertising an MTU (VIRTIO_NET_F_MTU)")
    tap = cfg["host_dev_name"]
    if not tap or len(tap.encode()) > 15 or "/" in tap or "," in tap or tap in (".", ".."):
        raise ApiError(f"Could not create the network device: {tap!r} is not a valid TAP name")
    mac = cfg.get("guest_mac")
    if mac is not None and (not _MAC.match(mac) or int(mac[:2], 16) & 1):
        raise ApiError(f"Invalid MAC address: {mac}")
    for other in vmm.nets.values():
        if other["iface_id"] == iid:
            continue
        if other["host_dev_name"] == tap:
            raise ApiError(f"The host device name {tap} is already in use.")
        if mac is not None and other.get("guest_mac", "").lower() == mac.lower():
            raise ApiError(f"The MAC address is already in use: {mac}")
    vmm.nets[iid] = cfg


def patch_net(vmm, body, rest):
    iid, cfg = parse_for_id(rest, body, PARTIAL, "iface_id")
    vmm.postboot()
    if iid not in vmm.nets:
        raise ApiError(f"Invalid network interface ID: {iid}")
    vmm.set_net_rate_limiters(iid, cfg)


ROUTES = [
    ("PUT", "network-interfaces", put_net, "put_api_requests", "network"),
    ("PATCH", "network-interfaces", patch_net, "patch_api_requests", "network"),
]
