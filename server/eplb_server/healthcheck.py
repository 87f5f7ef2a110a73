"""`python -m eplb_server.healthcheck [TARGET]`: exit 0 when the gRPC health service says SERVING.

For container HEALTHCHECKs. TARGET defaults to $EPLB_HEALTH_TARGET or 127.0.0.1:50051; the
service checked is $EPLB_HEALTH_SERVICE or "" (the whole server).
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(target: str, service: str = "", timeout: float = 3.0) -> str:
    """The serving status name, or the gRPC error code's name when the call fails."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            return e.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    target = argv[0] if argv else os.environ.get("EPLB_HEALTH_TARGET", "127.0.0.1:50051")
    status = check(target, os.environ.get("EPLB_HEALTH_SERVICE", ""))
    print(f"{target}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
