"""GET|PUT|PATCH /machine-config (PUT and PATCH pre-boot)."""

from __future__ import annotations

from kvmvm.api.errors import ApiError, unsupported
from kvmvm.api.fields import opt, parse_body, req
from kvmvm.api.vmm import default_machine_config

CPU_TEMPLATES = ("C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None")
FIELDS = {"vcpu_count": "u8", "mem_size_mib": "usize", "smt": "bool", "track_dirty_pages": "bool",
          "huge_pages": ("None", "Transparent", "2M"), "cpu_template": CPU_TEMPLATES}
PUT = {k: (req(v) if k in ("vcpu_count", "mem_size_mib") else opt(v)) for k, v in FIELDS.items()}
PATCH = {k: opt(v) for k, v in FIELDS.items()}
MAX_VCPUS = 32
MIN_MEM_MIB = 16


def get_machine_config(vmm, body, rest):
    return dict(vmm.machine_config)


def _apply(vmm, cfg: dict) -> None:
    if cfg.get("smt"):
        raise unsupported("SMT (simultaneous multithreading) in guests")
    if cfg.get("track_dirty_pages"):
        raise unsupported("dirty page tracking (diff snapshots)")
    if cfg.get("huge_pages", "None") != "None":
        raise unsupported(f"huge pages ({cfg['huge_pages']})")
    if cfg.get("cpu_template", "None") != "None":
        raise unsupported(f"CPU templates ({cfg['cpu_template']})")
    n = cfg["vcpu_count"]
    if not 1 <= n <= MAX_VCPUS:
        raise ApiError("The vCPU number is invalid! The vCPU number can only be 1 or an even "
                       "number when SMT is enabled.")
    if cfg["mem_size_mib"] < MIN_MEM_MIB:
        raise ApiError(f"The memory size (MiB) is invalid: kvmvm needs at least {MIN_MEM_MIB} MiB.")
    cfg.pop("cpu_template", None)
    vmm.machine_config = cfg


def put_machine_config(vmm, body, rest):
    cfg = parse_body(body, PUT)
    vmm.preboot()
    _apply(vmm, dict(default_machine_config(), **cfg))


def patch_machine_config(vmm, body, rest):
    cfg = parse_body(body, PATCH)
    vmm.preboot()
    if not cfg:
        raise ApiError("Empty PATCH request.")
    _apply(vmm, dict(vmm.machine_config, **cfg))


ROUTES = [
    ("GET", "machine-config", get_machine_config, "get_api_requests", "machine_cfg"),
    ("PUT", "machine-config", put_machine_config, "put_api_requests", "machine_cfg"),
    ("PATCH", "machine-config", patch_machine_config, "patch_api_requests", "machine_cfg"),
]
