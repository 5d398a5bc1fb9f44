"""Resource ids in paths (/drives/{id}, /network-interfaces/{id}), checked as Firecracker does."""

from __future__ import annotations

from kvmvm.api.errors import ApiError

ID_MISMATCH = "The id from the path does not match the id from the body!"


def path_id(rest: list[str]) -> str:
    if not rest or not rest[0]:
        raise ApiError("The ID cannot be empty.")
    i = rest[0]
    if not all(c == "_" or c.isalnum() for c in i):
        raise ApiError("API Resource IDs can only contain alphanumeric characters and underscores.")
    return i


def parse_for_id(rest: list[str], body: bytes, schema: dict, field: str) -> tuple[str, dict]:
    """(id, parsed body) for /{group}/{id}: the path's id checked, the body parsed, and the
    body's `field` equal to the path's id."""
    from kvmvm.api.fields import parse_body

    i = path_id(rest)
    cfg = parse_body(body, schema)
    if cfg[field] != i:
        raise ApiError(ID_MISMATCH)
    return i, cfg
