"""Sync and async clients against a real server equal the in-process engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import eplb_server
from eplb_client import AsyncEplbClient, EplbClient, EplbError

TOPO = dict(num_replicas=48, num_groups=4, num_nodes=2, num_gpus=8)
TOPO_V3 = dict(num_replicas=288, num_groups=8, num_nodes=4, num_gpus=32)


def engine(weight, topo, **kw):
    return eplb_server.plan(torch.from_numpy(np.asarray(weight)), topo["num_replicas"],
                            topo["num_groups"], topo["num_nodes"], topo["num_gpus"], **kw)


def assert_same_plan(result, plan):
    np.testing.assert_array_equal(result.phy2log, plan.phy2log.numpy())
    np.testing.assert_array_equal(result.log2phy, plan.log2phy.numpy())
    np.testing.assert_array_equal(result.logcnt, plan.logcnt.numpy())
    assert result.policy == plan.policy


def assert_same_score(score, ref):
    assert score.balancedness == pytest.approx(float(ref.balancedness), rel=1e-12)
    np.testing.assert_allclose(score.layer_balancedness, ref.layer_balancedness.numpy(), rtol=1e-12)
    np.testing.assert_allclose(score.layer_max_load, ref.layer_max_load.numpy(), rtol=1e-12)
    np.testing.assert_allclose(score.layer_lower_bound, ref.layer_lower_bound.numpy(), rtol=1e-12)


@pytest.mark.parametrize("policy", ["auto", "global", "hierarchical", "deepseek"])
@pytest.mark.parametrize("socket", ["tcp", "unix"])
def test_sync_rebalance_equals_engine(server, skewed, policy, socket):
    target = server[0] if socket == "tcp" else server[1]
    with EplbClient(target) as c:
        r = c.rebalance(skewed, policy=policy, **TOPO)
    assert_same_plan(r, engine(skewed, TOPO, policy=policy))
    assert r.phy2log.shape == (6, 48) and r.logcnt.sum(axis=1).tolist() == [48] * 6
    assert r.phy2log.dtype == r.log2phy.dtype == r.logcnt.dtype == np.int64  # sent as int32
    assert r.current is None and r.migration is None
    assert r.compute_seconds > 0 and r.device == "cpu"


def test_real_snapshot_round_trip(server, snapshot):
    with EplbClient(server[1]) as c:
        r = c.rebalance(snapshot, **TOPO_V3)
        ev = c.evaluate(snapshot, r.phy2log, num_groups=8, num_nodes=4, num_gpus=32,
                        policy="hierarchical")
    assert_same_plan(r, engine(snapshot, TOPO_V3))
    ref = eplb_server.evaluate(torch.from_numpy(snapshot), torch.from_numpy(r.phy2log.copy()),
                               8, 4, 32, policy="hierarchical")
    assert_same_score(ev.score, ref)
    assert_same_score(r.plan, ref)
    assert ev.policy == "hierarchical"
    assert 0.5 < r.plan.balancedness <= 1.0


def test_evaluate_equals_engine(server, skewed):
    phy2log = np.tile(np.arange(48) % 32, (6, 1))
    with EplbClient(server[0]) as c:
        ev = c.evaluate(skewed, phy2log, num_groups=4, num_nodes=2, num_gpus=8, policy="global")
    ref = eplb_server.evaluate(torch.from_numpy(skewed), torch.from_numpy(phy2log), 4, 2, 8,
                               policy="global")
    assert_same_score(ev.score, ref)
    assert ev.score.mean_gap == pytest.approx(float(ref.mean_gap), rel=1e-12)
    np.testing.assert_allclose(ev.score.layer_gap, ref.layer_gap.numpy(), rtol=1e-9, atol=1e-12)


def test_current_mapping_is_scored_and_migration_applies(server, skewed):
    current = np.tile(np.arange(48) % 32, (6, 1))
    with EplbClient(server[0]) as c:
        r = c.rebalance(skewed, current_phy2log=current, policy="global", **TOPO)
    assert r.current is not None and r.current.balancedness < r.plan.balancedness
    m = r.migration
    assert m is not None
    changed = np.argwhere(current != r.phy2log)
    assert m.slots_changed == len(changed) == len(m.transfers)
    assert sorted(map(tuple, m.transfers[:, :2].tolist())) == sorted(map(tuple, changed.tolist()))
    for layer, slot, expert, source in m.transfers.tolist():
        assert r.phy2log[layer, slot] == expert and current[layer, source] == expert
    assert m.layer_slots_changed.tolist() == (current != r.phy2log).sum(axis=1).tolist()


def test_history_and_options_reach_the_engine(server, skewed):
    history = np.stack([skewed, skewed[::-1], skewed])
    with EplbClient(server[0]) as c:
        r = c.rebalance(history, objective="recency", half_life=1.0, policy="global", **TOPO)
    ref = engine(history, TOPO, objective="recency", half_life=1.0, policy="global")
    assert_same_plan(r, ref)
    assert r.objective == "recency"
    assert r.plan.window_balancedness is not None and r.plan.window_balancedness.shape == (3,)


@pytest.mark.parametrize("socket", [0, 1])
async def test_async_round_trip_equals_engine(server, skewed, socket):
    async with AsyncEplbClient(server[socket]) as c:
        r = await c.rebalance(skewed.astype(np.float32), policy="global", **TOPO)
        ev = await c.evaluate(skewed, r.phy2log, num_groups=4, num_nodes=2, num_gpus=8)
        assert await c.health() == "SERVING"
    assert_same_plan(r, engine(skewed.astype(np.float32), TOPO, policy="global"))
    ref = eplb_server.evaluate(torch.from_numpy(skewed), torch.from_numpy(r.phy2log.copy()),
                               4, 2, 8, policy="auto")
    assert_same_score(ev.score, ref)


def test_torch_and_list_inputs(server, skewed):
    with EplbClient(server[0]) as c:
        from_list = c.rebalance(skewed.tolist(), policy="global", **TOPO)
        from_torch = c.rebalance(torch.from_numpy(skewed), policy="global", **TOPO)
    np.testing.assert_array_equal(from_list.phy2log, from_torch.phy2log)
    assert isinstance(from_torch.phy2log, np.ndarray)


def test_invalid_topology_names_the_field(server, skewed):
    with EplbClient(server[0]) as c:
        with pytest.raises(EplbError) as info:
            c.rebalance(skewed, num_replicas=50, num_groups=4, num_nodes=2, num_gpus=8)
    import grpc

    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "topology.num_gpus" in info.value.fields
    assert "num_replicas (50)" in str(info.value)


def test_bad_current_mapping_names_the_field(server, skewed):
    with EplbClient(server[1]) as c:
        with pytest.raises(EplbError) as info:
            c.rebalance(skewed, current_phy2log=np.full((6, 48), 99), **TOPO)
    assert "current_phy2log" in info.value.fields


def test_round_robin_fails_over_a_dead_target(server, skewed, tmp_path):
    dead = f"unix://{tmp_path}/nobody.sock"
    with EplbClient([dead, server[0], server[1]], timeout=20) as c:
        plans = [c.rebalance(skewed, policy="global", **TOPO).phy2log for _ in range(4)]
        assert c.health() == "SERVING"
    for p in plans[1:]:
        np.testing.assert_array_equal(p, plans[0])


def test_health_of_named_services(server):
    with EplbClient(server[1]) as c:
        assert c.health("eplb.v1.PlacementService") == "SERVING"
        assert c.health("no.such.Service") == "SERVICE_UNKNOWN"
