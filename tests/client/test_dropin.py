"""eplb_client.rebalance_experts matches eplb_server.rebalance_experts and EPLB's conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import eplb_client
import eplb_server
from eplb_client import EplbClient


@pytest.mark.parametrize("policy", ["deepseek", "auto"])
def test_torch_in_torch_out_matches_engine(server, skewed, policy):
    weight = torch.from_numpy(skewed)
    got = eplb_client.rebalance_experts(weight, 48, 4, 2, 8, target=server[0], policy=policy)
    want = eplb_server.rebalance_experts(weight, 48, 4, 2, 8, policy=policy)
    for g, w in zip(got, want):
        assert isinstance(g, torch.Tensor) and g.dtype == torch.int64
        assert torch.equal(g, w)


def test_default_policy_matches_engine_default(server, skewed):
    got = eplb_client.rebalance_experts(torch.from_numpy(skewed), 48, 4, 2, 8, target=server[1])
    want = eplb_server.rebalance_experts(torch.from_numpy(skewed), 48, 4, 2, 8)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_numpy_and_lists_give_numpy(server, skewed, monkeypatch):
    monkeypatch.setenv("EPLB_TARGET", server[1])
    phy2log, log2phy, logcnt = eplb_client.rebalance_experts(skewed, 48, 4, 2, 8)
    for a in (phy2log, log2phy, logcnt):
        assert isinstance(a, np.ndarray) and a.dtype == np.int64
    assert phy2log.shape == (6, 48) and logcnt.shape == (6, 32)
    assert log2phy.shape[:2] == (6, 32) and log2phy.shape[2] == logcnt.max()
    phy2log[0, 0] = phy2log[0, 0]  # writable, like the reference's outputs
    again = eplb_client.rebalance_experts(skewed.tolist(), 48, 4, 2, 8)
    np.testing.assert_array_equal(again[0], phy2log)


def test_float32_weight_matches_reference_exactly(server, snapshot):
    weight = torch.from_numpy(snapshot).float()
    with EplbClient(server[0]) as c:
        got = eplb_client.rebalance_experts(weight, 288, 8, 4, 32, policy="deepseek", client=c)
    want = eplb_server.rebalance_experts(weight, 288, 8, 4, 32, policy="deepseek")
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_log2phy_inverts_phy2log(server, skewed):
    phy2log, log2phy, logcnt = eplb_client.rebalance_experts(skewed, 48, 4, 2, 8, target=server[0])
    for layer in range(phy2log.shape[0]):
        for e in range(logcnt.shape[1]):
            slots = log2phy[layer, e][log2phy[layer, e] >= 0]
            assert len(slots) == logcnt[layer, e]
            assert (phy2log[layer, slots] == e).all()
