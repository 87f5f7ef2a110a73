"""The service takes the engines' arguments as they come: num_groups None/0, groups that do not
divide the experts on the global path, current maps with empty (-1) slots or another width."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from eplb_client import EplbClient, EplbError

from ..service.servicekit import loads, two_per_expert_mapping

SMALL = dict(num_replicas=32, num_nodes=2, num_gpus=8)  # E = 16 experts, L = 4 layers
WEIGHT = loads()
MAPPING = two_per_expert_mapping()


@pytest.fixture
def client(target):
    with EplbClient(target, timeout=60) as c:
        yield c


def valid(phy2log, experts=16):
    return all((np.bincount(row, minlength=experts) >= 1).all() for row in phy2log)


@pytest.mark.parametrize("groups", [None, 0])
def test_no_groups_means_one(client, groups):
    r = client.rebalance(WEIGHT, num_groups=groups, **SMALL, policy="global")
    same = client.rebalance(WEIGHT, num_groups=1, **SMALL, policy="global")
    assert np.array_equal(r.phy2log, same.phy2log)


@pytest.mark.parametrize("policy", ["auto", "global", "deepseek"])
def test_groups_that_do_not_divide_are_ignored_on_the_global_path(client, policy):
    # 3 groups over 2 nodes: auto and the reference plan globally, where groups play no part.
    r = client.rebalance(WEIGHT, num_groups=3, **SMALL, policy=policy)
    same = client.rebalance(WEIGHT, num_groups=1, **SMALL,
                            policy="global" if policy == "auto" else policy)
    assert r.policy == same.policy and np.array_equal(r.phy2log, same.phy2log)


def test_groups_that_do_not_divide_are_refused_where_they_matter(client):
    with pytest.raises(EplbError) as caught:
        client.rebalance(WEIGHT, num_groups=6, **SMALL)  # 6 % 2 == 0: hierarchical
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "topology.num_groups" in caught.value.fields


def test_full_map_is_used(client):
    r = client.rebalance(WEIGHT, num_groups=4, **SMALL, current_phy2log=MAPPING)
    assert r.current_mapping == "used" and r.current_empty_slots == 0
    assert r.migration is not None and r.current is not None
    assert client.rebalance(WEIGHT, num_groups=4, **SMALL).current_mapping == ""


def test_empty_slots_hold_nothing_to_keep(client):
    current = MAPPING.copy()
    current[:, [3, 20]] = -1  # layer rows keep every expert (each had two slots)
    current[1, 7] = -1
    r = client.rebalance(WEIGHT, num_groups=4, **SMALL, current_phy2log=current)
    assert r.current_mapping == "empty_slots_filled" and r.current_empty_slots == 9
    assert valid(r.phy2log) and r.migration is not None
    # Planned against the map: it keeps far more than a plan from scratch would.
    scratch = client.rebalance(WEIGHT, num_groups=4, **SMALL, current_phy2log=MAPPING,
                               from_scratch=True)
    kept = (r.phy2log == current).sum()
    assert kept > (scratch.phy2log == current).sum()


def test_empty_slots_that_leave_experts_out_plan_from_scratch(client):
    current = MAPPING.copy()
    current[0, current[0] == 5] = -1  # two empty slots, and experts 5, 6, 8 and 9 lack a slot
    current[0, np.isin(current[0], [6, 8, 9])] = 7
    r = client.rebalance(WEIGHT, num_groups=4, **SMALL, current_phy2log=current)
    assert r.current_mapping == "ignored" and r.current_empty_slots == 2
    assert r.migration is None and r.current is None and valid(r.phy2log)


def test_another_slot_count_plans_from_scratch(client):
    """Elastic EP: the map of 24 slots (6 GPUs) while the plan is for 32 (8 GPUs)."""
    current = np.tile(np.concatenate([np.arange(16), np.arange(8)]), (4, 1))
    r = client.rebalance(WEIGHT, num_groups=4, **SMALL, current_phy2log=current)
    assert r.current_mapping == "ignored" and r.migration is None and r.current is None
    plain = client.rebalance(WEIGHT, num_groups=4, **SMALL)
    assert np.array_equal(r.phy2log, plain.phy2log)
