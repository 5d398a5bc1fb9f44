"""Request bodies checked the way Firecracker's serde structs check them: unknown fields,
missing fields and wrong types are refused with serde's wording, before anything is applied.

A schema is a dict of field -> Field. Kinds: "str", "bool", "u8".."u64" (non-negative
integers that fit), an enum (a tuple of allowed strings), a nested schema (a dict) or
("list", kind).
"""

from __future__ import annotations

from kvmvm.api.errors import ApiError

_UINT_MAX = {"u8": 0xFF, "u16": 0xFFFF, "u32": 0xFFFF_FFFF, "u64": 0xFFFF_FFFF_FFFF_FFFF,
             "usize": 0xFFFF_FFFF_FFFF_FFFF, "i64": 0x7FFF_FFFF_FFFF_FFFF}


class Field:
    __slots__ = ("kind", "required")

    def __init__(self, kind, required: bool = False):
        self.kind = kind
        self.required = required


def req(kind) -> Field:
    return Field(kind, True)


def opt(kind) -> Field:
    return Field(kind, False)


def deser_error(msg: str) -> ApiError:
    return ApiError(f"An error occurred when deserializing the json body of a request: {msg}.")


def load_json(body: bytes):
    """The body as JSON (any value); syntax errors worded like serde_json's."""
    import json     # here: a first GET need not wait for json (and re, and enum)

    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise deser_error("invalid unicode code point") from None
    except json.JSONDecodeError as e:
        raise deser_error(f"{e.msg.lower()} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise deser_error("recursion limit exceeded") from None


def _unexpected(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean `{str(v).lower()}`"
    if isinstance(v, int):
        return f"integer `{v}`"
    if isinstance(v, float):
        return f"floating point `{v}`"
    if isinstance(v, str):
        from kvmvm.api.jsonout import dumps

        return f"string {dumps(v)}"
    if isinstance(v, list):
        return "sequence"
    return "map"


def _expected(kind) -> str:
    if kind == "str":
        return "a string"
    if kind == "bool":
        return "a boolean"
    if isinstance(kind, tuple):
        return "one of " + ", ".join(f"`{k}`" for k in kind)
    if isinstance(kind, dict):
        return "a struct"
    if isinstance(kind, list):
        return "a sequence"
    return kind


def check_value(v, kind, where: str = ""):
    """One value of `kind`: returned as is (nested structs parsed), or a serde-worded error."""
    bad = deser_error(f"invalid type: {_unexpected(v)}, expected {_expected(kind)}")
    if kind == "str":
        if not isinstance(v, str):
            raise bad
        return v
    if kind == "bool":
        if not isinstance(v, bool):
            raise bad
        return v
    if isinstance(kind, str) and kind in _UINT_MAX:
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad
        if v < 0:
            raise deser_error(f"invalid value: integer `{v}`, expected {kind}")
        if v > _UINT_MAX[kind]:
            raise deser_error(f"invalid value: integer `{v}`, expected {kind}")
        return v
    if isinstance(kind, tuple):
        if not isinstance(v, str):
            raise deser_error(f"invalid type: {_unexpected(v)}, expected variant identifier")
        if v not in kind:
            raise deser_error(f"unknown variant `{v}`, expected {_expected(kind)}")
        return v
    if isinstance(kind, dict):
        return parse_struct(v, kind)
    if isinstance(kind, list) and kind[0] == "list":
        if not isinstance(v, list):
            raise bad
        return [check_value(x, kind[1]) for x in v]
    raise TypeError(f"bad schema kind {kind!r}")


def parse_struct(obj, schema: dict) -> dict:
    """A JSON object against `schema`: unknown fields refused (deny_unknown_fields), required
    ones present; null counts as absent for optional fields (serde's Option)."""
    if not isinstance(obj, dict):
        raise deser_error(f"invalid type: {_unexpected(obj)}, expected a struct")
    for k in obj:
        if k not in schema:
            names = ", ".join(f"`{n}`" for n in schema)
            raise deser_error(f"unknown field `{k}`, expected one of {names}" if len(schema) > 1
                              else f"unknown field `{k}`, expected {names}")
    out = {}
    for name, f in schema.items():
        if name not in obj or (obj[name] is None and not f.required):
            if f.required:
                raise deser_error(f"missing field `{name}`")
            continue
        out[name] = check_value(obj[name], f.kind)
    return out


def parse_body(body: bytes, schema: dict) -> dict:
    return parse_struct(load_json(body), schema)


# Shared pieces of Firecracker's schemas
TOKEN_BUCKET = {"size": req("u64"), "one_time_burst": opt("u64"), "refill_time": req("u64")}
RATE_LIMITER = {"bandwidth": opt(TOKEN_BUCKET), "ops": opt(TOKEN_BUCKET)}
