"""The host <-> guest agent wire format (docs/agent-protocol.md): frames and their limits.

A frame is a 12-byte big-endian header (stream u32, type u8, channel u8, reserved u16 = 0,
length u32) and a payload of at most MAX_PAYLOAD bytes. HELLO and CONTROL carry a JSON
object; DATA carries raw bytes of one channel; EOF ends a channel; CREDIT (4 bytes) lets
the peer send that many more DATA bytes on a channel. Everything read from the guest is
checked here: a malformed frame raises ProtocolError and the session ends.
"""

from __future__ import annotations

import json
import struct

from kvmvm.errors import KvmvmError

VERSION = 1
VSOCK_PORT = 1024            # the agent connects to the host's vsock port 1024
HDR = struct.Struct(">IBBHI")
HDR_LEN = HDR.size           # 12
MAX_PAYLOAD = 256 * 1024
DATA_CHUNK = 64 * 1024
WINDOW = 256 * 1024          # initial credit per stream and channel, both ways
MAX_CONTROL_KEYS = 64

HELLO, CONTROL, DATA, EOF, CREDIT = 1, 2, 3, 4, 5
TYPE_NAMES = {HELLO: "HELLO", CONTROL: "CONTROL", DATA: "DATA", EOF: "EOF", CREDIT: "CREDIT"}
STDIN, STDOUT, STDERR = 0, 1, 2


class ProtocolError(KvmvmError):
    """The peer broke the protocol; the session is over."""


def encode(stream: int, ftype: int, chan: int = 0, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HDR.pack(stream, ftype, chan, 0, len(payload)) + payload


def encode_json(stream: int, ftype: int, obj: dict) -> bytes:
    return encode(stream, ftype, 0, json.dumps(obj, separators=(",", ":")).encode())


def encode_credit(stream: int, chan: int, n: int) -> bytes:
    return encode(stream, CREDIT, chan, n.to_bytes(4, "big"))


class Frame:
    __slots__ = ("stream", "type", "chan", "payload")

    def __init__(self, stream: int, ftype: int, chan: int, payload: bytes):
        self.stream, self.type, self.chan, self.payload = stream, ftype, chan, payload

    def json(self) -> dict:
        """The payload of a HELLO/CONTROL frame as a dict (ProtocolError if it is not one)."""
        try:
            obj = json.loads(self.payload)
        except (ValueError, UnicodeDecodeError, RecursionError):   # RecursionError: nested too deep
            raise ProtocolError(f"{TYPE_NAMES[self.type]} frame is not JSON") from None
        if not isinstance(obj, dict) or len(obj) > MAX_CONTROL_KEYS:
            raise ProtocolError(f"{TYPE_NAMES[self.type]} frame is not a JSON object")
        return obj

    def credit(self) -> int:
        return int.from_bytes(self.payload, "big")

    def __repr__(self) -> str:
        return f"Frame({self.stream}, {TYPE_NAMES.get(self.type, self.type)}, ch{self.chan}, {len(self.payload)} B)"


def check_header(stream: int, ftype: int, chan: int, reserved: int, length: int) -> None:
    if reserved:
        raise ProtocolError("reserved header bytes are not zero")
    if ftype not in TYPE_NAMES:
        raise ProtocolError(f"unknown frame type {ftype}")
    if chan > STDERR:
        raise ProtocolError(f"unknown channel {chan}")
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"frame of {length} bytes is longer than the limit ({MAX_PAYLOAD})")
    if ftype == EOF and length:
        raise ProtocolError("EOF frame with a payload")
    if ftype == CREDIT and length != 4:
        raise ProtocolError("CREDIT frame payload is not 4 bytes")
    if ftype in (HELLO, CONTROL) and (length < 2 or chan):
        raise ProtocolError("malformed control frame")


class Decoder:
    """Bytes in, frames out. Holds at most one partial frame (bounded by MAX_PAYLOAD)."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        out = []
        off = 0
        buf = self.buf
        while len(buf) - off >= HDR_LEN:
            stream, ftype, chan, reserved, length = HDR.unpack_from(buf, off)
            check_header(stream, ftype, chan, reserved, length)
            if len(buf) - off < HDR_LEN + length:
                break
            out.append(Frame(stream, ftype, chan, bytes(buf[off + HDR_LEN: off + HDR_LEN + length])))
            off += HDR_LEN + length
        if off:
            del buf[:off]
        return out

    def pending(self) -> int:
        return len(self.buf)
