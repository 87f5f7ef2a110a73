"""Minimal protobuf wire-format codec for google.rpc.Status details and grpc.health.v1 messages."""

from __future__ import annotations

from typing import Iterator

BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Yields (field number, value): ints for varints/fixed, bytes for length-delimited."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, pos = _varint(buf, pos)
        elif kind == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated field")
            value, pos = bytes(buf[pos:pos + size]), pos + size
        elif kind in (1, 5):
            width = 8 if kind == 1 else 4
            value, pos = int.from_bytes(buf[pos:pos + width], "little"), pos + width
        else:
            raise ValueError(f"unsupported wire type {kind}")
        yield number, value


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


def decode_status(buf: bytes) -> tuple[int, str, list[tuple[str, bytes]]]:
    """Decodes google.rpc.Status into (code, message, [(type_url, value bytes)])."""
    code, message, details = 0, "", []
    for number, value in fields(buf):
        if number == 1 and isinstance(value, int):
            code = value
        elif number == 2:
            message = _text(value)
        elif number == 3 and isinstance(value, bytes):
            parts = dict(fields(value))
            details.append((_text(parts.get(1, b"")), bytes(parts.get(2, b""))))
    return code, message, details


def decode_bad_request(buf: bytes) -> list[tuple[str, str]]:
    """Decodes google.rpc.BadRequest into [(field, description)]."""
    out = []
    for number, value in fields(buf):
        if number == 1 and isinstance(value, bytes):
            parts = dict(fields(value))
            out.append((_text(parts.get(1, b"")), _text(parts.get(2, b""))))
    return out


def encode_health_request(service: str) -> bytes:
    """Encodes grpc.health.v1.HealthCheckRequest{service}."""
    raw = service.encode()
    if not raw:
        return b""
    size, length = bytearray(), len(raw)
    while True:
        size.append((length & 0x7F) | (0x80 if length > 0x7F else 0))
        length >>= 7
        if not length:
            break
    return b"\x0a" + bytes(size) + raw


def decode_health_response(buf: bytes) -> str:
    """Decodes grpc.health.v1.HealthCheckResponse into its status name."""
    status = 0
    for number, value in fields(buf):
        if number == 1 and isinstance(value, int):
            status = value
    return HEALTH_STATUS.get(status, f"STATUS_{status}")
