"""PUT /snapshot/create (post-boot, paused) and PUT /snapshot/load (on a fresh VMM)."""

from __future__ import annotations

from kvmvm.api.errors import ApiError, unsupported
from kvmvm.api.fields import opt, parse_body, req

CREATE = {"mem_file_path": req("str"), "snapshot_path": req("str"),
          "snapshot_type": opt(("Full", "Diff")), "version": opt("str")}
MEMORY_BACKEND = {"backend_type": req(("File", "Uffd")), "backend_path": req("str")}
NETWORK_OVERRIDE = {"iface_id": req("str"), "host_dev_name": req("str")}
LOAD = {"enable_diff_snapshots": opt("bool"), "track_dirty_pages": opt("bool"),
        "mem_file_path": opt("str"), "mem_backend": opt(MEMORY_BACKEND), "snapshot_path": req("str"),
        "resume_vm": opt("bool"), "network_overrides": opt(["list", NETWORK_OVERRIDE]),
        "vsock_override": opt({"uds_path": req("str")}), "clock_realtime": opt("bool")}
NOT_YET = "snapshots yet (they come with kvmvm's snapshot support)"


def put_snapshot(vmm, body, rest):
    if rest == ["create"]:
        parse_body(body, CREATE)
        vmm.postboot()
        raise unsupported(NOT_YET)
    if rest == ["load"]:
        cfg = parse_body(body, LOAD)
        if ("mem_file_path" in cfg) == ("mem_backend" in cfg):
            raise ApiError("An error occurred when deserializing the json body of a request: "
                           "missing field: either `mem_backend` or `mem_file_path` is required.")
        vmm.preboot()
        if vmm.configured_boot_resources():
            raise ApiError("Loading a microVM snapshot not allowed after configuring boot-specific resources.")
        raise unsupported(NOT_YET)
    raise ApiError(f"Invalid request method and/or path: PUT snapshot/{'/'.join(rest)}.")


ROUTES = [("PUT", "snapshot", put_snapshot, "put_api_requests", "snapshot")]
