"""`json.dumps` for the API's answers without importing `json` (whose decoder and encoder
import `re`, and with it `enum`: more than the interpreter's own start-up here).

The output is json.dumps's, byte for byte, for what the handlers return: dicts with string
keys, lists, strings, ints, floats, booleans and None. Anything else goes to json.dumps.
"""

from _json import encode_basestring_ascii as _string

_FLOAT_SPECIAL = {float("inf"): "Infinity", float("-inf"): "-Infinity"}


def dumps(obj) -> str:
    parts: list = []
    try:
        _encode(obj, parts.append, 0)
    except _Unusual:
        import json

        return json.dumps(obj)
    return "".join(parts)


class _Unusual(Exception):
    """A value json.dumps itself should encode."""


def _encode(o, out, depth: int) -> None:
    if depth > 100:
        raise _Unusual
    t = type(o)
    if t is str:
        out(_string(o))
    elif o is None:
        out("null")
    elif o is True:
        out("true")
    elif o is False:
        out("false")
    elif t is int:
        out(int.__repr__(o))
    elif t is float:
        out("NaN" if o != o else _FLOAT_SPECIAL.get(o) or float.__repr__(o))
    elif t is dict:
        out("{")
        first = True
        for k, v in o.items():
            if type(k) is not str:
                raise _Unusual
            if not first:
                out(", ")
            first = False
            out(_string(k))
            out(": ")
            _encode(v, out, depth + 1)
        out("}")
    elif t is list or t is tuple:
        out("[")
        for i, v in enumerate(o):
            if i:
                out(", ")
            _encode(v, out, depth + 1)
        out("]")
    else:
        raise _Unusual
