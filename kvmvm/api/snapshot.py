"""PUT /snapshot/create (post-boot, paused) and PUT /snapshot/load (on a fresh VMM), over
kvmvm's snapshot directories (kvmvm.snapshot, docs/snapshot-format.md).

Firecracker writes two files; kvmvm's snapshot is a directory. `snapshot_path` names that
directory, and its memory file is moved to `mem_file_path` (the directory keeps a symbolic
link to it), so a client that moves or names the memory file at load time still works:
load assembles a directory of links with the memory file the request names. The API-level
configuration (drive and interface ids) rides along in `firecracker.json`. When both
paths name the same directory (`kvmvm vm snapshot` does that), the memory stays inside it.
"""

from __future__ import annotations

import json
import os

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
FC_CONFIG = "firecracker.json"


def put_snapshot(vmm, body, rest):
    if rest == ["create"]:
        cfg = parse_body(body, CREATE)
        vmm.postboot()
        return create(vmm, cfg)
    if rest == ["load"]:
        cfg = parse_body(body, LOAD)
        if ("mem_file_path" in cfg) == ("mem_backend" in cfg):
            raise ApiError("An error occurred when deserializing the json body of a request: "
                           "missing field: either `mem_backend` or `mem_file_path` is required.")
        vmm.preboot()
        if vmm.configured_boot_resources():
            raise ApiError("Loading a microVM snapshot not allowed after configuring boot-specific resources.")
        return load(vmm, cfg)
    raise ApiError(f"Invalid request method and/or path: PUT snapshot/{'/'.join(rest)}.")


def _header(snap_dir: str) -> dict:
    from kvmvm.snapshot import format as fmt

    try:
        with open(os.path.join(snap_dir, fmt.HEADER_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ApiError(f"Load snapshot error: {snap_dir} is not a kvmvm snapshot: {e}") from None


def _remove(path: str) -> None:
    import shutil

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def create(vmm, cfg: dict) -> None:
    import shutil

    from kvmvm.errors import KvmvmError
    from kvmvm.snapshot import format as fmt

    if cfg.get("snapshot_type", "Full") == "Diff":
        raise unsupported("diff snapshots (dirty page tracking)")
    if vmm.state != "Paused":
        raise ApiError("Create snapshot error: the microVM must be paused first "
                       "(PATCH /vm with {\"state\": \"Paused\"}).")
    vmm._ended_check()
    snap_dir = os.path.abspath(cfg["snapshot_path"])
    mem = os.path.abspath(cfg["mem_file_path"])
    if snap_dir == mem:         # kvmvm's own layout: the memory stays in the directory
        try:
            vmm.machine.snapshot(snap_dir, resume=False)
            with open(os.path.join(snap_dir, FC_CONFIG), "w") as f:
                json.dump(vmm.full_config(), f)
        except KvmvmError as e:
            raise ApiError(f"Create snapshot error: {e}") from None
        except OSError as e:
            raise ApiError(f"Create snapshot error: {e.filename or snap_dir}: {e.strerror}") from None
        vmm.logger.info(f"Snapshot created: {snap_dir}.")
        return
    if os.path.isdir(snap_dir) and not os.path.exists(os.path.join(snap_dir, fmt.HEADER_FILE)):
        raise ApiError(f"Create snapshot error: {snap_dir} is a directory that is not a kvmvm snapshot")
    tmp = f"{snap_dir}.tmp-{os.getpid()}"
    _remove(tmp)
    try:
        vmm.machine.snapshot(tmp, resume=False)
        header = _header(tmp)
        if len(header["memory"]) != 1:
            raise unsupported("snapshots of guests with more than one RAM region through this API "
                              "(memory above the 32-bit hole)")
        name = header["memory"][0]["file"]
        try:
            os.replace(os.path.join(tmp, name), mem)
        except OSError:                       # another file system: copy
            shutil.move(os.path.join(tmp, name), mem)
        os.symlink(mem, os.path.join(tmp, name))
        with open(os.path.join(tmp, FC_CONFIG), "w") as f:
            json.dump(vmm.full_config(), f)
        _remove(snap_dir)
        os.rename(tmp, snap_dir)
    except KvmvmError as e:
        raise ApiError(f"Create snapshot error: {e}") from None
    except OSError as e:
        raise ApiError(f"Create snapshot error: {e.filename or snap_dir}: {e.strerror}") from None
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)
    vmm.logger.info(f"Snapshot created: {snap_dir} (memory {mem}).")


def load(vmm, cfg: dict) -> None:
    import shutil
    import tempfile

    from kvmvm.errors import KvmvmError
    from kvmvm.machine import Machine

    if cfg.get("track_dirty_pages") or cfg.get("enable_diff_snapshots"):
        raise unsupported("dirty page tracking (diff snapshots)")
    if cfg.get("clock_realtime"):
        raise unsupported("clock_realtime on restore")
    if "mem_backend" in cfg:
        if cfg["mem_backend"]["backend_type"] == "Uffd":
            raise unsupported("the Uffd memory backend")
        mem = cfg["mem_backend"]["backend_path"]
    else:
        mem = cfg["mem_file_path"]
    snap_dir = os.path.abspath(cfg["snapshot_path"])
    if not os.path.isdir(snap_dir):
        raise ApiError(f"Load snapshot error: {snap_dir} is not a kvmvm snapshot directory")
    same = os.path.abspath(mem) == snap_dir      # kvmvm's own layout (both name the directory)
    if not same and not os.path.isfile(mem):
        raise ApiError(f"Load snapshot error: cannot open the memory file {mem}")
    header = _header(snap_dir)
    fc = {}
    if os.path.exists(os.path.join(snap_dir, FC_CONFIG)):
        with open(os.path.join(snap_dir, FC_CONFIG)) as f:
            fc = json.load(f)
    ifaces = [n["iface_id"] for n in fc.get("network-interfaces", [])]
    overrides = {}
    for o in cfg.get("network_overrides", []):
        if o["iface_id"] not in ifaces:
            raise ApiError(f"Load snapshot error: invalid network interface ID {o['iface_id']}")
        overrides[f"eth{ifaces.index(o['iface_id'])}"] = o["host_dev_name"]
    vsock_uds = cfg.get("vsock_override", {}).get("uds_path")
    resume = cfg.get("resume_vm", False)
    tmp = tempfile.mkdtemp(prefix="kvmvm-fc-load-")
    try:
        for entry in os.listdir(snap_dir):
            os.symlink(os.path.join(snap_dir, entry), os.path.join(tmp, entry))
        if not same:
            name = header["memory"][0]["file"]
            os.unlink(os.path.join(tmp, name))
            os.symlink(os.path.abspath(mem), os.path.join(tmp, name))
        m = Machine.restore(tmp, net_override=overrides or None, vsock_uds=vsock_uds,
                            serial_out_fd=vmm._serial_out_fd(), serial_in_fd=vmm.serial_in_fd,
                            start=resume)
    except KvmvmError as e:
        raise ApiError(f"Load snapshot error: {e}") from None
    except (OSError, KeyError, IndexError) as e:
        raise ApiError(f"Load snapshot error: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    vmm.machine = m
    vmm.state = "Running" if resume else "Paused"
    vmm.restored_from(fc, overrides_by_iface={o["iface_id"]: o["host_dev_name"]
                                              for o in cfg.get("network_overrides", [])},
                      vsock_uds=vsock_uds)
    if resume:
        vmm.watch()
    vmm.logger.info(f"Snapshot loaded from {snap_dir}.")


ROUTES = [("PUT", "snapshot", put_snapshot, "put_api_requests", "snapshot")]
