"""The built-in wire decoder agrees with the real protobuf messages."""

from __future__ import annotations

import pytest

from eplb_client import _wire

health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
error_details_pb2 = pytest.importorskip("google.rpc.error_details_pb2")
status_pb2 = pytest.importorskip("google.rpc.status_pb2")


@pytest.mark.parametrize("service", ["", "eplb.v1.PlacementService", "x" * 200, "é" * 70])
def test_health_request_matches_protobuf(service):
    expected = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    assert _wire.encode_health_request(service) == expected


@pytest.mark.parametrize("status", [0, 1, 2, 3])
def test_health_response_matches_protobuf(status):
    raw = health_pb2.HealthCheckResponse(status=status).SerializeToString()
    assert _wire.decode_health_response(raw) == _wire.HEALTH_STATUS[status]


def test_status_with_bad_request_decodes():
    bad = error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field="topology.num_gpus", description="d1"),
        error_details_pb2.BadRequest.FieldViolation(field="policy", description="é" * 100)])
    info = error_details_pb2.ErrorInfo(reason="R", domain="D", metadata={"k": "v"})
    status = status_pb2.Status(code=3, message="msg")
    status.details.add().Pack(info)
    status.details.add().Pack(bad)
    code, message, details = _wire.decode_status(status.SerializeToString())
    assert (code, message) == (3, "msg")
    assert [t for t, _ in details] == ["type.googleapis.com/google.rpc.ErrorInfo",
                                       "type.googleapis.com/google.rpc.BadRequest"]
    assert _wire.decode_bad_request(details[1][1]) == [("topology.num_gpus", "d1"),
                                                       ("policy", "é" * 100)]


def test_truncated_input_raises():
    raw = status_pb2.Status(code=3, message="hello").SerializeToString()
    with pytest.raises(ValueError):
        _wire.decode_status(raw[:-2])
