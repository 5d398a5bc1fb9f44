"""GET /, GET /version, GET /vm/config, PATCH /vm."""

from __future__ import annotations

from kvmvm.api.errors import ApiError
from kvmvm.api.fields import parse_body, req

# the Firecracker API version whose swagger kvmvm follows (docs/firecracker-compat.md)
FIRECRACKER_API_VERSION = "1.12.0"
VM_STATE = {"state": req(("Paused", "Resumed"))}


def kvmvm_version() -> str:
    from kvmvm import __version__

    return __version__


def get_instance(vmm, body, rest):
    if rest:
        raise ApiError(f"Invalid request method and/or path: GET /{'/'.join(rest)}.")
    return {"id": vmm.id, "state": vmm.state, "vmm_version": kvmvm_version(), "app_name": "kvmvm"}


def get_version(vmm, body, rest):
    return {"firecracker_version": FIRECRACKER_API_VERSION}


def get_vm(vmm, body, rest):
    if rest != ["config"]:
        raise ApiError("Invalid request method and/or path: GET vm.")
    return vmm.full_config()


def patch_vm(vmm, body, rest):
    if rest:
        raise ApiError("Invalid request method and/or path: PATCH vm.")
    state = parse_body(body, VM_STATE)["state"]
    if state == "Paused":
        vmm.pause()
    else:
        vmm.resume()


ROUTES = [
    ("GET", "", get_instance, "get_api_requests", "instance_info"),
    ("GET", "version", get_version, "get_api_requests", "vmm_version"),
    ("GET", "vm", get_vm, "get_api_requests", "vm_config"),
    ("PATCH", "vm", patch_vm, "patch_api_requests", "vmm"),
]
