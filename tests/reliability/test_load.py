"""Bounded loopback load: 32 concurrent clients, mixed request sizes, answers equal the engine.

The harness is bench/soak.py's, run here with the small shapes only (the soak adds the
production shapes up to 61x512 -> 640 G320 and 10,000 requests).
"""

import pytest

from bench.soak import SMALL_MIX, build_cases, run_load

from ..service.servicekit import scrape

REQUESTS = 640  # 20 per client; bounded, whatever the timing


@pytest.fixture(scope="module")
def cases():
    return build_cases(SMALL_MIX, variants=2)


def test_32_clients_mixed_sizes_get_the_engine_answer_or_resource_exhausted(
        subprocess_server, cases):
    targets = [subprocess_server.tcp, subprocess_server.unix]  # channels alternate between them
    result = run_load(targets, cases, REQUESTS, clients=32, timeout=120)

    assert sum(result.codes.values()) == REQUESTS
    assert set(result.codes) <= {"OK", "RESOURCE_EXHAUSTED"}, result.codes
    assert result.mismatches == [], "answers differ from the in-process engine"
    assert set(result.ok_by_shape) == {s.name for s in SMALL_MIX}, result.ok_by_shape

    # The server agrees on what happened and holds no job afterwards.
    samples = scrape(subprocess_server.metrics_port)
    assert samples[("eplb_engine_pending_requests", ())] == 0
    labels = (("grpc_method", "Rebalance"), ("grpc_service", "eplb.v1.PlacementService"),
              ("grpc_type", "unary"))
    handled = {code: samples.get(("grpc_server_handled_total",
                                  tuple(sorted(labels + (("grpc_code", code),)))), 0)
               for code in ("OK", "ResourceExhausted", "Internal", "Unknown", "Cancelled")}
    assert handled["OK"] >= result.codes["OK"]
    assert handled["ResourceExhausted"] >= result.codes.get("RESOURCE_EXHAUSTED", 0)
    assert handled["Internal"] == handled["Unknown"] == 0
