"""Endpoints of Firecracker's API that kvmvm does not implement: each is parsed (so a
malformed body gets the same error as Firecracker's) and then refused with a fault
message naming it. Nothing here is ever silently accepted."""

from __future__ import annotations

from kvmvm.api.errors import ApiError, unsupported
from kvmvm.api.fields import RATE_LIMITER, load_json, opt, parse_body, req

BALLOON = {"amount_mib": req("u32"), "deflate_on_oom": req("bool"),
           "stats_polling_interval_s": opt("u16"), "free_page_hinting": opt("bool"),
           "free_page_reporting": opt("bool")}
BALLOON_UPDATE = {"amount_mib": req("u32")}
BALLOON_STATS_UPDATE = {"stats_polling_interval_s": req("u16")}
MMDS_CONFIG = {"version": opt(("V1", "V2")), "network_interfaces": req(["list", "str"]),
               "ipv4_address": opt("str"), "imds_compat": opt("bool")}
HOTPLUG_MEMORY = {"total_size_mib": opt("usize"), "slot_size_mib": opt("usize"),
                  "block_size_mib": opt("usize")}
HOTPLUG_SIZE = {"requested_size_mib": opt("usize")}
PMEM = {"id": req("str"), "path_on_host": req("str"), "root_device": opt("bool"),
        "read_only": opt("bool"), "rate_limiter": opt(RATE_LIMITER)}
CPU_CONFIG = {"kvm_capabilities": opt(["list", "str"]), "cpuid_modifiers": opt(["list", {
    "leaf": req("str"), "subleaf": req("str"), "flags": req("u32"),
    "modifiers": req(["list", {"register": req(("eax", "ebx", "ecx", "edx")), "bitmap": req("str")}])}]),
    "msr_modifiers": opt(["list", {"addr": req("str"), "bitmap": req("str")}]),
    "reg_modifiers": opt(["list", {"addr": req("str"), "bitmap": req("str")}]),
    "vcpu_features": opt(["list", {"index": req("u32"), "bitmap": req("str")}])}

BALLOON_WHAT = "the balloon device"
MMDS_WHAT = "MMDS (the microVM metadata service)"
HOTPLUG_WHAT = "memory hotplug (virtio-mem)"


def balloon(vmm, body, rest, method):
    if method == "GET":
        if rest not in ([], ["statistics"], ["hinting", "status"]):
            raise ApiError(f"Invalid request method and/or path: GET balloon/{'/'.join(rest)}.")
    elif method == "PUT":
        if rest:
            raise ApiError(f"Invalid request method and/or path: PUT balloon/{'/'.join(rest)}.")
        parse_body(body, BALLOON)
    else:
        schema = {(): BALLOON_UPDATE, ("statistics",): BALLOON_STATS_UPDATE,
                  ("hinting", "start"): {"acknowledge_on_stop": opt("bool")},
                  ("hinting", "stop"): None}.get(tuple(rest), False)
        if schema is False:
            raise ApiError(f"Invalid request method and/or path: PATCH balloon/{'/'.join(rest)}.")
        if schema is not None and body is not None:
            parse_body(body, schema)
        elif schema is not None and tuple(rest) != ("hinting", "start"):
            raise ApiError("Empty PATCH request.")
    raise unsupported(BALLOON_WHAT)


def mmds(vmm, body, rest, method):
    if rest == ["config"] and method == "PUT":
        parse_body(body, MMDS_CONFIG)
        vmm.preboot()
    elif rest:
        raise ApiError(f"Invalid request method and/or path: {method} mmds/{'/'.join(rest)}.")
    elif method != "GET":
        if not isinstance(load_json(body), dict):
            raise ApiError("An error occurred when deserializing the json body of a request: "
                           "invalid type: expected a map.")
    raise unsupported(MMDS_WHAT)


def hotplug(vmm, body, rest, method):
    if rest != ["memory"]:
        raise ApiError(f"Invalid request method and/or path: {method} hotplug.")
    if method == "PUT":
        parse_body(body, HOTPLUG_MEMORY)
    elif method == "PATCH":
        parse_body(body, HOTPLUG_SIZE)
    raise unsupported(HOTPLUG_WHAT)


def put_pmem(vmm, body, rest):
    cfg = parse_body(body, PMEM)
    if not rest or cfg["id"] != rest[0]:
        raise ApiError("The id from the path does not match the id from the body!")
    vmm.preboot()
    raise unsupported("virtio-pmem devices")


def put_cpu_config(vmm, body, rest):
    parse_body(body, CPU_CONFIG)
    vmm.preboot()
    raise unsupported("custom CPU templates (cpu-config)")


def _m(fn, method):
    return lambda vmm, body, rest: fn(vmm, body, rest, method)


ROUTES = [
    ("GET", "balloon", _m(balloon, "GET"), "get_api_requests", "balloon"),
    ("PUT", "balloon", _m(balloon, "PUT"), "put_api_requests", "balloon"),
    ("PATCH", "balloon", _m(balloon, "PATCH"), "patch_api_requests", "balloon"),
    ("GET", "mmds", _m(mmds, "GET"), "get_api_requests", "mmds"),
    ("PUT", "mmds", _m(mmds, "PUT"), "put_api_requests", "mmds"),
    ("PATCH", "mmds", _m(mmds, "PATCH"), "patch_api_requests", "mmds"),
    ("GET", "hotplug", _m(hotplug, "GET"), "get_api_requests", "hotplug_memory"),
    ("PUT", "hotplug", _m(hotplug, "PUT"), "put_api_requests", "hotplug_memory"),
    ("PATCH", "hotplug", _m(hotplug, "PATCH"), "patch_api_requests", "hotplug_memory"),
    ("PUT", "pmem", put_pmem, "put_api_requests", "pmem"),
    ("PUT", "cpu-config", put_cpu_config, "put_api_requests", "cpu_cfg"),
]
