"""PUT /entropy (pre-boot): the virtio-rng device."""

from __future__ import annotations

from kvmvm.api.errors import unsupported
from kvmvm.api.fields import RATE_LIMITER, opt, parse_body

ENTROPY = {"rate_limiter": opt(RATE_LIMITER)}


def put_entropy(vmm, body, rest):
    cfg = parse_body(body, ENTROPY)
    vmm.preboot()
    if "rate_limiter" in cfg:
        raise unsupported("rate limiters on the entropy device")
    vmm.entropy = cfg


ROUTES = [("PUT", "entropy", put_entropy, "put_api_requests", "entropy")]
