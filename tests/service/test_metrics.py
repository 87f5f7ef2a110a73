"""The metrics endpoint, scraped over HTTP, shows the gRPC and planner series after calls."""

import grpc
import pytest
from eplb_client.tensors import to_tensor
from eplb_client.v1 import placement_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from .servicekit import SMALL, loads, rebalance_request, scrape, stub

RPC = dict(grpc_method="Rebalance", grpc_service="eplb.v1.PlacementService", grpc_type="unary")


def delta(before, after, name, **labels):
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_series_after_calls(server):
    channel, client = stub(server.addresses[0])
    port = server.server.metrics_port
    before = scrape(port)

    with pytest.raises(grpc.RpcError):  # first: a failure is counted just after its status
        client.Rebalance(rebalance_request(loads(seed=13), **dict(SMALL, num_gpus=6)), timeout=30)
    first = client.Rebalance(rebalance_request(loads(seed=11)), timeout=30)
    again = rebalance_request(loads(seed=12))
    again.current_phy2log.CopyFrom(first.phy2log)
    second = client.Rebalance(again, timeout=30)
    channel.close()
    after = scrape(port)

    assert delta(before, after, "grpc_server_started_total", **RPC) == 3
    assert delta(before, after, "grpc_server_handling_seconds_count", **RPC) == 3
    assert delta(before, after, "grpc_server_handled_total", grpc_code="OK", **RPC) == 2
    assert delta(before, after, "grpc_server_handled_total", grpc_code="InvalidArgument",
                 **RPC) == 1

    policy = {2: "hierarchical", 3: "global", 4: "deepseek"}[first.policy]
    assert delta(before, after, "eplb_plan_compute_seconds_count", policy=policy,
                 device="cpu") == 2
    assert delta(before, after, "eplb_plan_compute_seconds_sum", policy=policy, device="cpu") \
        == pytest.approx(first.compute_seconds + second.compute_seconds)
    assert delta(before, after, "eplb_plan_balancedness_count", policy=policy) == 2
    assert delta(before, after, "eplb_plan_balancedness_sum", policy=policy) == \
        pytest.approx(first.plan.balancedness + second.plan.balancedness)
    assert delta(before, after, "eplb_current_balancedness_sum", policy=policy) == \
        pytest.approx(second.current.balancedness)
    assert delta(before, after, "eplb_plan_gap_ratio_count", policy=policy) == 2
    moved = second.migration.slots_changed if second.HasField("migration") else 0
    assert delta(before, after, "eplb_migration_slots_changed_count") == \
        int(second.HasField("migration"))
    assert delta(before, after, "eplb_migration_slots_changed_sum") == moved
    migration = second.migration
    for name in ("eplb_migration_cross_node_copies_total",
                 "eplb_migration_layers_kept_for_lack_of_gain_total"):
        assert (name, ()) in after
    assert delta(before, after, "eplb_migration_cross_node_copies_total") == \
        migration.cross_node_copies
    assert delta(before, after, "eplb_migration_layers_kept_for_lack_of_gain_total") == \
        migration.layers_kept_for_lack_of_gain
    stages = dict(grpc_method="Rebalance")
    assert delta(before, after, "eplb_stage_seconds_count", stage="plan", **stages) == 2
    assert delta(before, after, "eplb_stage_seconds_sum", stage="plan", **stages) \
        + delta(before, after, "eplb_stage_seconds_sum", stage="score", **stages) \
        == pytest.approx(first.compute_seconds + second.compute_seconds)
    for stage in ("queue", "handoff", "decode"):  # the invalid request reached the worker too
        assert delta(before, after, "eplb_stage_seconds_count", stage=stage, **stages) == 3
    assert delta(before, after, "eplb_request_size_bytes_count", grpc_method="Rebalance") == 3
    assert delta(before, after, "eplb_request_size_bytes_sum", grpc_method="Rebalance") > 0
    assert after[("eplb_engine_pending_requests", ())] == 0

    info = [labels for (name, labels) in after if name == "eplb_server_info"]
    assert len(info) == 1
    assert {k for k, _ in info[0]} == {"version", "device", "torch_version", "isolation"}
    assert dict(info[0])["device"] == "cpu"


def test_no_series_has_per_request_labels(server):
    allowed = {"grpc_type", "grpc_service", "grpc_method", "grpc_code", "policy", "device",
               "le", "version", "torch_version", "isolation", "source", "reason", "stage"}
    used = {k for (_, labels) in scrape(server.server.metrics_port) for k, _ in labels}
    assert used <= allowed


def test_health_checks_are_counted_as_go_grpc_prometheus_does(server):
    channel, _ = stub(server.addresses[1])
    before = scrape(server.server.metrics_port)
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    channel.close()
    after = scrape(server.server.metrics_port)
    labels = dict(grpc_code="OK", grpc_method="Check", grpc_service="grpc.health.v1.Health",
                  grpc_type="unary")
    assert delta(before, after, "grpc_server_handled_total", **labels) == 1


def test_evaluate_counts_under_its_own_method(server):
    channel, client = stub(server.addresses[0])
    before = scrape(server.server.metrics_port)
    first = client.Rebalance(rebalance_request(), timeout=30)
    client.Evaluate(pb.EvaluateRequest(topology=pb.Topology(num_groups=4, num_nodes=2, num_gpus=8),
                                       expert_loads=to_tensor(loads()), phy2log=first.phy2log),
                    timeout=30)
    channel.close()
    after = scrape(server.server.metrics_port)
    labels = dict(RPC, grpc_method="Evaluate", grpc_code="OK")
    assert delta(before, after, "grpc_server_handled_total", **labels) == 1
    assert delta(before, after, "eplb_request_size_bytes_count", grpc_method="Evaluate") == 1


def test_layers_kept_for_lack_of_gain_are_counted(server):
    """A gain of 1.0 in balancedness is out of reach: every layer of an uneven mapping (each
    expert twice, in order) keeps it, and all four are counted."""
    from eplb_client.tensors import from_tensor

    from .servicekit import two_per_expert_mapping

    current = two_per_expert_mapping()
    request = rebalance_request(loads(seed=14))
    request.current_phy2log.CopyFrom(to_tensor(current))
    request.migration.min_balancedness_gain = 1.0
    channel, client = stub(server.addresses[0])
    before = scrape(server.server.metrics_port)
    response = client.Rebalance(request, timeout=30)
    after = scrape(server.server.metrics_port)
    channel.close()
    assert (from_tensor(response.phy2log) == current).all()
    assert min(response.current.layer_balancedness) < 0.9  # a better plan exists
    assert response.migration.layers_kept_for_lack_of_gain == 4
    assert delta(before, after, "eplb_migration_layers_kept_for_lack_of_gain_total") == 4
