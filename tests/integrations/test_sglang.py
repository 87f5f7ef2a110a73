"""The SGLang adapter against SGLang's own eplb_algorithms and plugin loader (from the wheel in
$EPLB_ENGINE_WHEELS), called as SGLang 0.5.23's `ExpertLocationMetadata.init_by_eplb`
calls it: keyword arguments, tokens_per_expert [X, L, E] over all 61 layers (dense ones zero),
num_groups None for models without groups, (phy2log, log2phy, logcnt) back."""

from __future__ import annotations

import sys
import time
import types
from importlib.metadata import entry_points

import numpy as np
import pytest
import torch
from eplb_client import EplbClient
from eplb_client.integrations import sglang
from eplb_client.integrations._service import Fallbacks, Settings

EP32 = dict(num_physical_experts=288, num_local_physical_experts=9, num_groups=8, num_nodes=4)


@pytest.fixture
def fallbacks(monkeypatch):
    fresh = Fallbacks()
    monkeypatch.setattr(sglang, "FALLBACKS", fresh)
    return fresh


class Algorithm:
    """Stands in for SGLang's EplbAlgorithm enum (only its member names matter)."""

    def __init__(self, name):
        self.name = name


def own_algorithm(tokens_per_expert, num_physical_experts, num_local_physical_experts,
                  num_groups, num_nodes, algorithm):
    """SGLang 0.5.23's signature; a round-robin plan in its return format."""
    own_algorithm.calls += 1
    layers, experts = tokens_per_expert.shape[-2:]
    phy2log = torch.arange(num_physical_experts).remainder(experts).repeat(layers, 1)
    logcnt = torch.stack([torch.bincount(r, minlength=experts) for r in phy2log])
    log2phy = torch.full((layers, experts, num_physical_experts), -1)
    for layer in range(layers):
        for slot, expert in enumerate(phy2log[layer].tolist()):
            log2phy[layer, expert, int((log2phy[layer, expert] >= 0).sum())] = slot
    return phy2log, log2phy, logcnt


own_algorithm.calls = 0


def history(snapshots, count=4):
    """[count, 61, 256] int64 real windows, oldest first."""
    return torch.from_numpy(np.stack([snapshots[i % len(snapshots)] for i in range(count)]))


def check_plan(result, layers, experts, slots):
    phy2log, log2phy, logcnt = result
    assert all(t.dtype == torch.int64 and t.device.type == "cpu" for t in result)
    assert phy2log.shape == (layers, slots) and logcnt.shape == (layers, experts)
    assert log2phy.shape == (layers, experts, slots)  # padded to P, as SGLang pads it
    counts = torch.stack([torch.bincount(r, minlength=experts) for r in phy2log])
    assert (counts >= 1).all() and torch.equal(counts, logcnt)
    assert torch.equal((log2phy >= 0).sum(-1), logcnt)
    for layer in (0, layers - 1):
        for expert in range(0, experts, 17):
            slots_of = log2phy[layer, expert][log2phy[layer, expert] >= 0]
            assert (phy2log[layer, slots_of] == expert).all()


@pytest.fixture
def metadata(monkeypatch):
    """SGLang's global expert-location metadata (sglang.srt.eplb.expert_location, 0.5.23 field
    names) holding the map that the test puts in `metadata.physical_to_logical_map_cpu`."""
    state = types.SimpleNamespace(physical_to_logical_map_cpu=None)
    module = types.ModuleType("sglang.srt.eplb.expert_location")
    module.get_global_expert_location_metadata = lambda: state
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return state


def test_real_module_plans_through_the_service(sglang_modules, target, snapshots, metadata,
                                               fallbacks, monkeypatch):
    version, algorithms, plugins = sglang_modules
    own = algorithms.rebalance_experts
    monkeypatch.setenv("EPLB_TARGET", target)
    monkeypatch.setenv("EPLB_DEADLINE", "30")
    monkeypatch.setenv("SGLANG_PLUGINS", "eplb_service")  # other installed plugins stay out
    assert [e.name for e in entry_points(group=plugins.GENERAL_PLUGINS_GROUP)
            if e.name == "eplb_service"] == ["eplb_service"]
    registry = plugins.HookRegistry
    registry.reset()
    monkeypatch.setattr(plugins, "_plugins_loaded", False)
    try:
        plugins.load_plugins()  # what every SGLang process runs at start-up
        assert algorithms.rebalance_experts is not own
        windows = history(snapshots)
        algorithm = algorithms.compute_algorithm(raw_algorithm="auto", num_groups=8,
                                                 num_nodes=4)
        current = own(windows[:1], **EP32, algorithm=algorithm)[0]
        metadata.physical_to_logical_map_cpu = current
        ours = algorithms.rebalance_experts(tokens_per_expert=windows, **EP32,
                                            algorithm=algorithm)
    finally:
        algorithms.rebalance_experts = own
        registry.reset()
    check_plan(ours, 61, 256, 288)
    assert fallbacks.total() == 0
    with EplbClient(target) as c:  # the same request by hand: history and current map
        direct = c.rebalance(windows.numpy(), num_replicas=288, num_groups=8, num_nodes=4,
                             num_gpus=32, policy="hierarchical", current_phy2log=current.numpy())
    assert np.array_equal(ours[0].numpy(), direct.phy2log)
    theirs = own(windows, **EP32, algorithm=algorithm)
    moved, moved_by_sglang = int((ours[0] != current).sum()), int((theirs[0] != current).sum())
    print(f"SGLang {version}: slots changed {moved} (service) vs {moved_by_sglang} (SGLang)")
    assert moved < moved_by_sglang


def test_real_module_falls_back_to_its_own_algorithm(sglang_modules, closed_port, snapshots,
                                                     metadata, fallbacks):
    _, algorithms, _ = sglang_modules
    own = algorithms.rebalance_experts
    wrapped = sglang.install(algorithms, Settings(target=closed_port, deadline=5))
    try:
        assert sglang.install(algorithms) is wrapped  # idempotent
        windows = history(snapshots, 2)
        algorithm = algorithms.EplbAlgorithm.deepseek_hierarchical
        ours = algorithms.rebalance_experts(tokens_per_expert=windows, **EP32,
                                            algorithm=algorithm)
    finally:
        algorithms.rebalance_experts = own
    theirs = own(tokens_per_expert=windows, **EP32, algorithm=algorithm)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert fallbacks.counts() == {("sglang", "unavailable"): 1}


def test_model_without_groups(target, metadata, fallbacks):
    """Qwen3-style: num_groups None and SGLang's non-hierarchical algorithm."""
    around = sglang.make_around(Settings(target=target, deadline=30))
    loads = torch.from_numpy(np.random.default_rng(4).lognormal(size=(3, 4, 128)) * 100)
    result = around(own_algorithm, loads, 160, 10, None, 2, Algorithm("deepseek"))
    check_plan(result, 4, 128, 160)
    assert fallbacks.total() == 0


def test_elasticity_aware_stays_with_sglang(closed_port, fallbacks):
    around = sglang.make_around(Settings(target=closed_port))
    calls = own_algorithm.calls
    around(own_algorithm, torch.ones(1, 2, 16), 32, 4, 4, 2, Algorithm("elasticity_aware"))
    assert own_algorithm.calls == calls + 1 and fallbacks.total() == 0


def test_history_is_summed_into_the_window_limit():
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 100, size=(1000, 3, 8))
    binned = sglang.windows(raw, 32)
    assert binned.shape == (32, 3, 8)
    assert np.array_equal(binned.sum(axis=0), raw.sum(axis=0))
    # consecutive windows, newest last: 1000 / 32 = 31.25 windows per bin
    assert any(np.array_equal(binned[-1], raw[-k:].sum(axis=0)) for k in (31, 32))
    assert any(np.array_equal(binned[0], raw[:k].sum(axis=0)) for k in (31, 32))
    assert sglang.windows(raw[:5], 32).shape[0] == 5


def test_current_placement_is_read_from_sglang(metadata):
    assert sglang.current_placement(61) is None  # none yet (start-up)
    metadata.physical_to_logical_map_cpu = torch.arange(32).remainder(16).repeat(4, 1)
    assert sglang.current_placement(4).shape == (4, 32)
    assert sglang.current_placement(5) is None  # another model's layers: not passed on


def fall_back(settings, fallbacks, reason):
    around = sglang.make_around(settings, placement=lambda layers: None)
    loads = torch.from_numpy(np.random.default_rng(6).lognormal(size=(2, 4, 16)) * 100)
    calls = own_algorithm.calls
    start = time.perf_counter()
    result = around(own_algorithm, loads, 32, 4, 4, 2, Algorithm("deepseek_hierarchical"))
    elapsed = time.perf_counter() - start
    assert own_algorithm.calls == calls + 1
    assert all(torch.equal(a, b) for a, b in zip(
        result, own_algorithm(loads, 32, 4, 4, 2, None)))
    assert fallbacks.counts() == {("sglang", reason): 1}
    return elapsed


def test_falls_back_when_the_server_is_down(closed_port, fallbacks):
    assert fall_back(Settings(target=closed_port, deadline=5), fallbacks, "unavailable") < 2.0


def test_falls_back_when_the_deadline_passes(target, engine, fallbacks):
    engine.gate.clear()
    elapsed = fall_back(Settings(target=target, deadline=0.5), fallbacks, "deadline")
    assert 0.5 <= elapsed < 2.0


def test_falls_back_on_an_error_status(target, engine, fallbacks):
    engine.fail = RuntimeError("engine fault")
    fall_back(Settings(target=target, deadline=30), fallbacks, "error")


def test_engine_tensors_on_the_device_are_taken(device, target, fallbacks):
    """SGLang moves the window history to its device before calling (init_by_eplb); the plan
    comes back on the CPU, where SGLang's caller moves it itself."""
    around = sglang.make_around(Settings(target=target, deadline=30),
                                placement=lambda layers: None)
    loads = torch.from_numpy(np.random.default_rng(8).lognormal(size=(3, 4, 16)) * 100)
    result = around(own_algorithm, loads.to(device), 32, 4, 4, 2,
                    Algorithm("deepseek_hierarchical"))
    check_plan(result, 4, 16, 32)
    assert fallbacks.total() == 0
