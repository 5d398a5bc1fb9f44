"""A small validator for the Firecracker API contract in tests/data/firecracker_api.json.

Swagger 2.0 schemas use a subset of JSON Schema: type, required, properties, enum, minimum,
maximum, items, $ref. `strict` also refuses properties a schema does not name: kvmvm's
responses must carry only what Firecracker's clients know.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

SPEC = json.loads((Path(__file__).parent / "data" / "firecracker_api.json").read_text())
DEFS = SPEC["definitions"]
_TYPES = {"object": dict, "string": str, "boolean": bool, "array": list}


def errors(value, schema, path: str = "$", strict: bool = True, partial: bool = False) -> list[str]:
    if "$ref" in schema:
        schema = DEFS[schema["$ref"].rsplit("/", 1)[1]]
    t = schema.get("type")
    out: list[str] = []
    if t == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"{path}: {value!r} is not an integer"]
    elif t is not None and not isinstance(value, _TYPES[t]):
        return [f"{path}: {value!r} is not of type {t}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        out.append(f"{path}: {value} < minimum {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        out.append(f"{path}: {value} > maximum {schema['maximum']}")
    if t == "object":
        props = schema.get("properties")
        for r in ([] if partial else schema.get("required", [])):
            if r not in value:
                out.append(f"{path}: required property {r!r} missing")
        for k, v in value.items():
            if props is not None and k in props:
                out += errors(v, props[k], f"{path}.{k}", strict)
            elif strict and props is not None:
                out.append(f"{path}: property {k!r} is not in the schema")
    if t == "array" and "items" in schema:
        for i, v in enumerate(value):
            out += errors(v, schema["items"], f"{path}[{i}]", strict)
    return out


def template_for(path: str) -> str:
    """The swagger path template a concrete path matches (/drives/x -> /drives/{drive_id})."""
    for tpl in SPEC["paths"]:
        if re.fullmatch(re.sub(r"\{[^}]+\}", r"[^/]+", tpl), path):
            return tpl
    raise KeyError(f"{path} is not a path of the Firecracker API")


def check_request(method: str, path: str, body) -> None:
    try:
        op = SPEC["paths"][template_for(path)][method.lower()]
    except KeyError:
        raise AssertionError(f"{method} {path} is not an operation of the Firecracker API") from None
    name = op.get("body")
    assert name is not None or body is None, f"{method} {path} takes no body"
    if name is not None and body is not None:
        # PATCH /machine-config takes any subset of MachineConfiguration (its description)
        partial = method == "PATCH" and name == "MachineConfiguration"
        errs = errors(body, {"$ref": f"#/definitions/{name}"}, strict=True, partial=partial)
        assert not errs, f"test body for {method} {path} is not a valid Firecracker request: {errs}"


def check_response(method: str, path: str, status: int, body) -> None:
    """Assert that (status, body) is a response the swagger allows for this operation (for a
    path or method outside the swagger: a 400 with Firecracker's error shape)."""
    try:
        op = SPEC["paths"][template_for(path)][method.lower()]
    except KeyError:
        op = {"responses": {"400": "Error"}}
    responses = op["responses"]
    key = str(status) if str(status) in responses else "default"
    assert key in responses, f"{method} {path}: status {status} not in the swagger"
    if status == 204:
        assert body is None, f"{method} {path}: 204 with a body {body!r}"
        return
    name = responses[key]
    if name is None:
        return
    assert body is not None, f"{method} {path}: {status} without a body"
    errs = errors(body, {"$ref": f"#/definitions/{name}"})
    assert not errs, f"{method} {path} -> {status}: {errs}"
    if name == "Error":
        assert isinstance(body.get("fault_message"), str) and body["fault_message"], body
