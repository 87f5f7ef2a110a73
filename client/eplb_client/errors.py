"""EplbError: a failed call with its gRPC status code, message and BadRequest field violations."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from . import _wire

DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field, as the server's google.rpc.BadRequest names it."""

    field: str
    description: str


class EplbError(Exception):
    """A call to the placement service failed.

    `code` is the grpc.StatusCode (None for client-side input errors), `message` the server's
    message and `field_violations` the fields it rejected (empty when it named none).
    """

    def __init__(self, code, message: str, field_violations=()):
        self.code = code
        self.message = message or ""
        self.field_violations = tuple(field_violations)
        super().__init__(str(self))

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of the rejected fields."""
        return tuple(v.field for v in self.field_violations)

    def __str__(self) -> str:
        if self.code is None:
            head = self.message
        else:
            head = f"{self.code.name}: {self.message}" if self.message else self.code.name
        extra = [v for v in self.field_violations if v.description not in self.message]
        return head + "".join(f"\n  {v.field}: {v.description}" for v in extra)

    def __reduce__(self):
        return (type(self), (self.code, self.message, self.field_violations))


def _violations_from_grpc_status(call) -> list[FieldViolation] | None:
    """Parses details with grpcio-status when it is installed; None when it is not or fails."""
    try:
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status
    except ImportError:
        return None
    try:
        status = rpc_status.from_call(call)
    except (ValueError, TypeError):
        return None
    out = []
    for any_msg in status.details if status is not None else ():
        if any_msg.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_msg.Unpack(bad)
            out += [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return out


def _violations_from_metadata(metadata) -> list[FieldViolation]:
    """Parses the status details trailer with the built-in decoder (no extra packages)."""
    out = []
    for key, value in metadata or ():
        if key != DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            _, _, details = _wire.decode_status(value)
            for type_url, body in details:
                if type_url.endswith("/google.rpc.BadRequest"):
                    out += [FieldViolation(f, d) for f, d in _wire.decode_bad_request(body)]
        except ValueError:
            return []
    return out


def from_rpc_error(err: grpc.RpcError) -> EplbError:
    """Converts a sync or asyncio gRPC error into an EplbError."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    metadata = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    violations = _violations_from_grpc_status(err) if metadata else []
    if violations is None:
        violations = _violations_from_metadata(metadata)
    return EplbError(code, message, violations)
