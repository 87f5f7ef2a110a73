"""The vLLM adapter against vLLM's own policy classes (from the wheels in $EPLB_ENGINE_WHEELS)
and against the call shapes of vLLM 0.34.0 (`EplbState.rearrange` and
`async_worker.run_rebalance_experts`: six positional arguments, phy2log back) and 0.13.0
(`EplbState.rearrange`: five, a (phy2log, log2phy, logcnt) tuple back)."""

from __future__ import annotations

import inspect
import logging
import sys
import time
import types
from importlib.metadata import entry_points

import numpy as np
import pytest
import torch
from eplb_client import EplbClient
from eplb_client.integrations import _service, vllm
from eplb_client.integrations._service import Fallbacks, Settings

EP32 = (288, 8, 4, 32)  # num_replicas, num_groups, num_nodes, num_ranks (DeepSeek-V3 at EP32)


@pytest.fixture
def fallbacks(monkeypatch):
    """A fresh fallback record for the test (the adapter's is per process)."""
    fresh = Fallbacks()
    monkeypatch.setattr(vllm, "FALLBACKS", fresh)
    return fresh


def moe_loads(snapshots, index=0):
    """[58, 256] int64: one real snapshot without its dense layers (vLLM counts MoE layers)."""
    counts = snapshots[index]
    return torch.from_numpy(counts[counts.sum(axis=1) > 0])


def round_robin(weight, num_replicas):
    layers, experts = weight.shape
    return torch.arange(num_replicas).remainder(experts).repeat(layers, 1)


class PhyToLogPolicy:
    """vLLM 0.34.0's interface (vllm/distributed/eplb/policy/abstract.py): phy2log back."""

    calls = 0

    @classmethod
    def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                          old_global_expert_indices=None) -> torch.Tensor:
        cls.calls += 1
        return round_robin(weight, num_replicas)


class TuplePolicy:
    """vLLM 0.13.0's interface (vllm/distributed/eplb/policy/default.py): five arguments, the
    (phy2log, log2phy [L, E, P - E + 1], logcnt) tuple back."""

    calls = 0

    @classmethod
    def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes,
                          num_ranks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cls.calls += 1
        phy2log = round_robin(weight, num_replicas)
        layers, experts = weight.shape
        logcnt = torch.stack([torch.bincount(r, minlength=experts) for r in phy2log])
        log2phy = torch.full((layers, experts, num_replicas - experts + 1), -1)
        for layer in range(layers):
            for slot, expert in enumerate(phy2log[layer].tolist()):
                log2phy[layer, expert, int((log2phy[layer, expert] >= 0).sum())] = slot
        return phy2log, log2phy, logcnt


def check_plan(result, weight, num_replicas, as_tuple):
    """The answer has the interface's form and is a valid placement."""
    layers, experts = weight.shape
    phy2log = result[0] if as_tuple else result
    assert isinstance(phy2log, torch.Tensor) and phy2log.dtype == torch.int64
    assert phy2log.device.type == "cpu" and phy2log.shape == (layers, num_replicas)
    counts = torch.stack([torch.bincount(r, minlength=experts) for r in phy2log])
    assert (counts >= 1).all()
    if as_tuple:
        _, log2phy, logcnt = result
        assert log2phy.shape == (layers, experts, num_replicas - experts + 1)
        assert torch.equal(logcnt, counts)
        for layer in (0, layers - 1):
            for expert in range(experts):
                slots = log2phy[layer, expert][log2phy[layer, expert] >= 0]
                assert len(slots) == counts[layer, expert]
                assert (phy2log[layer, slots] == expert).all()


def test_detects_the_interface_from_the_annotation():
    assert vllm.returns_tuple(TuplePolicy) and not vllm.returns_tuple(PhyToLogPolicy)


def test_real_policy_interface_is_detected(vllm_policy):
    version, abstract, default = vllm_policy
    expects_tuple = tuple(int(x) for x in version.split(".")) <= (0, 18, 0)
    assert vllm.returns_tuple(default) == expects_tuple
    assert vllm.returns_tuple(abstract) == expects_tuple


def takes_current(policy) -> bool:
    """vLLM >= 0.14 passes the current map as a sixth argument."""
    return "old_global_expert_indices" in inspect.signature(policy.rebalance_experts).parameters


def call_like_vllm(version_policy, policy, window, num_replicas, num_groups, num_nodes,
                   num_gpus, current):
    """EplbState.rearrange's call in the vLLM that `version_policy` comes from: six positional
    arguments where that vLLM passes the current map, five before."""
    args = [window.cpu(), num_replicas, num_groups, num_nodes, num_gpus]
    if takes_current(version_policy):
        args.append(None if current is None else current.cpu())
    return policy.rebalance_experts(*args)


def test_real_policy_plans_through_the_service(vllm_policy, target, snapshots, fallbacks):
    version, _, default = vllm_policy
    policies = {"default": default}  # vllm.distributed.eplb.policy.EPLB_POLICIES
    assert vllm.install(policies, Settings(target=target, deadline=30)) == ["default"]
    weight = moe_loads(snapshots, 1)
    current = call_like_vllm(default, default, moe_loads(snapshots, 0), *EP32, None)
    current = current[0] if isinstance(current, tuple) else current
    ours = call_like_vllm(default, policies["default"], weight, *EP32, current)
    theirs = call_like_vllm(default, default, weight, *EP32, current)
    as_tuple = isinstance(theirs, tuple)
    assert isinstance(ours, tuple) == as_tuple
    check_plan(ours, weight, EP32[0], as_tuple)
    if as_tuple:  # the shapes vLLM's own policy answers, log2phy's padding included
        assert [t.shape for t in ours] == [t.shape for t in theirs]
    assert fallbacks.total() == 0
    with EplbClient(target) as c:
        direct = c.rebalance(weight.numpy(), num_replicas=288, num_groups=8, num_nodes=4,
                             num_gpus=32, current_phy2log=current.numpy()
                             if takes_current(default) else None)
    phy2log = ours[0] if as_tuple else ours
    assert np.array_equal(phy2log.numpy(), direct.phy2log)  # the service's plan, unchanged
    if takes_current(default):  # the current map went along: fewer moves than vLLM's own policy
        moved = int((phy2log != current).sum())
        moved_by_vllm = int(((theirs[0] if as_tuple else theirs) != current).sum())
        print(f"vLLM {version}: slots changed {moved} (service) vs {moved_by_vllm} (vLLM)")
        assert moved < moved_by_vllm


def test_vllms_own_plugin_loader_installs_the_policy(vllm_policy, target, monkeypatch,
                                                     tmp_path, fallbacks):
    """vLLM's load_general_plugins (run by every vLLM process) finds the entry point and the
    policy registry then holds the service policy; the registry module stands in for
    vllm.distributed.eplb.policy, whose __init__ builds EPLB_POLICIES from the policy classes."""
    import importlib

    from . import engines

    version, _, default = vllm_policy
    (wheel,) = [w for w in engines.wheels("vllm") if engines.version_of(w) == version]
    root = engines.extract_vllm_plugin_loader(wheel, tmp_path)
    package = types.ModuleType("vllm")
    package.__path__ = [str(root)]
    registry = types.ModuleType("vllm.distributed.eplb.policy")
    registry.EPLB_POLICIES = {"default": default}
    for name, module in (("vllm", package), ("vllm.distributed", types.ModuleType("d")),
                         ("vllm.distributed.eplb", types.ModuleType("e")),
                         (registry.__name__, registry)):
        monkeypatch.setitem(sys.modules, name, module)
    for name in ("vllm.plugins", "vllm.envs"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setenv("VLLM_PLUGINS", "eplb_service")
    monkeypatch.setenv("EPLB_TARGET", target)
    monkeypatch.setenv("EPLB_DEADLINE", "30")
    try:
        importlib.import_module("vllm.plugins").load_general_plugins()
    finally:
        for name in ("vllm.plugins", "vllm.envs"):
            sys.modules.pop(name, None)
    policy = registry.EPLB_POLICIES["default"]
    assert policy.eplb_service_fallback is default
    weight = moe_loads_random()
    result = policy.rebalance_experts(weight, 32, 4, 2, 8)
    check_plan(result, weight, 32, vllm.returns_tuple(default))
    assert fallbacks.total() == 0


def moe_loads_random():
    return torch.from_numpy(np.random.default_rng(9).lognormal(size=(4, 16)) * 100)


@pytest.mark.parametrize("policy", [PhyToLogPolicy, TuplePolicy])
def test_stand_in_policy_keeps_its_interface(policy, target, fallbacks):
    weight = torch.from_numpy(np.random.default_rng(1).lognormal(size=(4, 16)) * 100)
    service = vllm.make_policy(policy, Settings(target=target, deadline=30))
    args = (weight, 32, 4, 2, 8) + ((round_robin(weight, 32),) if policy is PhyToLogPolicy else ())
    check_plan(service.rebalance_experts(*args), weight, 32, policy is TuplePolicy)
    assert issubclass(service, policy) and fallbacks.total() == 0


def fall_back(policy, settings, fallbacks, reason):
    """Calls the service policy once; it must answer the engine's own plan and count `reason`."""
    weight = torch.from_numpy(np.random.default_rng(2).lognormal(size=(4, 16)) * 100)
    service = vllm.make_policy(policy, settings)
    calls = policy.calls
    start = time.perf_counter()
    result = service.rebalance_experts(weight, 32, 4, 2, 8, round_robin(weight, 32))
    elapsed = time.perf_counter() - start
    assert policy.calls == calls + 1
    assert torch.equal(result, policy.rebalance_experts(weight, 32, 4, 2, 8))
    assert fallbacks.counts() == {("vllm", reason): 1}
    return elapsed


def test_falls_back_when_the_server_is_down(closed_port, fallbacks):
    elapsed = fall_back(PhyToLogPolicy, Settings(target=closed_port, deadline=5), fallbacks,
                        "unavailable")
    assert elapsed < 2.0, f"{elapsed:.2f} s to fall back from a closed port"


def test_falls_back_when_the_deadline_passes(target, engine, fallbacks):
    engine.gate.clear()  # the server takes the call and never answers in time
    elapsed = fall_back(PhyToLogPolicy, Settings(target=target, deadline=0.5), fallbacks,
                        "deadline")
    assert 0.5 <= elapsed < 2.0


def test_falls_back_on_an_error_status(target, engine, fallbacks):
    engine.fail = RuntimeError("engine fault")  # the server answers INTERNAL
    fall_back(PhyToLogPolicy, Settings(target=target, deadline=30), fallbacks, "error")


def test_fallback_raise_propagates(closed_port, fallbacks):
    service = vllm.make_policy(PhyToLogPolicy, Settings(target=closed_port, fallback="raise"))
    weight = torch.ones(2, 16)
    with pytest.raises(Exception, match="UNAVAILABLE"):
        service.rebalance_experts(weight, 32, 4, 2, 8)
    assert fallbacks.total() == 0


def test_logs_once_per_episode(target, closed_port, fallbacks, caplog):
    down = vllm.make_policy(PhyToLogPolicy, Settings(target=closed_port, deadline=2))
    up = vllm.make_policy(PhyToLogPolicy, Settings(target=target, deadline=30))
    weight = torch.from_numpy(np.random.default_rng(3).lognormal(size=(2, 16)) * 100)
    with caplog.at_level(logging.INFO, logger="eplb_client.integrations"):
        for policy in (down, down, down, up, up, down):
            policy.rebalance_experts(weight, 32, 4, 2, 8)
    messages = [r.getMessage() for r in caplog.records
                if r.name == "eplb_client.integrations"]
    assert len(messages) == 3, messages  # failed, answers again, failed
    assert "falls back" in messages[0] and "answers again" in messages[1]
    assert fallbacks.counts() == {("vllm", "unavailable"): 4}


def test_register_replaces_vllms_policies(monkeypatch, target):
    registry = {"default": PhyToLogPolicy}
    names = ("vllm", "vllm.distributed", "vllm.distributed.eplb")
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    policy_module = types.ModuleType("vllm.distributed.eplb.policy")
    policy_module.EPLB_POLICIES = registry
    monkeypatch.setitem(sys.modules, policy_module.__name__, policy_module)
    monkeypatch.setenv("EPLB_TARGET", target)
    monkeypatch.setenv("EPLB_POLICY", "global")
    monkeypatch.setenv("EPLB_DEADLINE", "7.5")
    (plugin,) = [e for e in entry_points(group="vllm.general_plugins")
                 if e.name == "eplb_service"]
    plugin.load()()
    plugin.load()()  # every vLLM process runs it; twice in one process changes nothing more
    replaced = registry["default"]
    assert replaced.eplb_service_fallback is PhyToLogPolicy
    assert replaced.eplb_service_settings == Settings(target=target, policy="global",
                                                      deadline=7.5)


def test_bad_settings_leave_vllm_alone(monkeypatch, caplog):
    monkeypatch.setenv("EPLB_DEADLINE", "soon")
    monkeypatch.setitem(sys.modules, "vllm", None)  # an import would fail: register must not
    with caplog.at_level(logging.ERROR):
        vllm.register()  # vLLM runs plugins unguarded: raising would stop it starting
    assert "EPLB_DEADLINE" in caplog.text


def test_disable_leaves_vllm_alone(monkeypatch):
    monkeypatch.setenv("EPLB_DISABLE", "1")
    monkeypatch.setitem(sys.modules, "vllm", None)  # an import would fail: register must not
    vllm.register()


def test_settings_from_environment():
    s = Settings.from_env({"EPLB_TARGET": "a:1,b:2", "EPLB_POLICY": "Hierarchical",
                           "EPLB_DEADLINE": "0.25", "EPLB_FALLBACK": "raise",
                           "EPLB_OBJECTIVE": "robust", "EPLB_MAX_WINDOWS": "8"})
    assert s == Settings(target="a:1,b:2", policy="hierarchical", deadline=0.25,
                         fallback="raise", objective="robust", max_windows=8)
    assert Settings.from_env({}) == Settings()
    for name, value in (("EPLB_POLICY", "best"), ("EPLB_DEADLINE", "soon"),
                        ("EPLB_DEADLINE", "0"), ("EPLB_FALLBACK", "hang")):
        with pytest.raises(ValueError, match=name):
            Settings.from_env({name: value})


def test_client_package_does_not_import_torch():
    import subprocess

    code = ("import sys, eplb_client.integrations.vllm, eplb_client.integrations.sglang; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_prometheus_counter_follows_the_counts(closed_port, fallbacks):
    prometheus = pytest.importorskip("prometheus_client")
    before = prometheus.REGISTRY.get_sample_value(
        "eplb_client_fallbacks_total", {"engine": "vllm", "reason": "unavailable"}) or 0.0
    fall_back(PhyToLogPolicy, Settings(target=closed_port, deadline=5), fallbacks,
              "unavailable")
    after = prometheus.REGISTRY.get_sample_value(
        "eplb_client_fallbacks_total", {"engine": "vllm", "reason": "unavailable"})
    assert after == before + 1
    assert _service.FALLBACKS is not fallbacks  # the test's record is a fresh one


def test_a_full_server_queue_is_waited_for_not_fallen_back_from(fallbacks):
    """Every EP rank asks at once: a rank that fell back on RESOURCE_EXHAUSTED while the others
    got the service's plan would disagree with them, so the adapter retries until the deadline."""
    import threading

    from eplb_server.server import Config

    from ..service.servicekit import ControlledEngine, ServerThread, rebalance_request, stub

    engine = ControlledEngine()
    running = ServerThread(Config(listen=["127.0.0.1:0"], metrics_port=None, max_concurrent=1,
                                  warmup_shapes=[]), engine)
    try:
        engine.gate.clear()
        channel, placement = stub(running.addresses[0])
        holder = threading.Thread(target=lambda: placement.Rebalance(rebalance_request(),
                                                                     timeout=60))
        holder.start()  # occupies the only admission slot until the gate opens
        assert engine.entered.wait(30)
        threading.Timer(0.3, engine.gate.set).start()
        service = vllm.make_policy(PhyToLogPolicy, Settings(target=running.addresses[0],
                                                            deadline=10))
        weight = torch.from_numpy(np.random.default_rng(7).lognormal(size=(4, 16)) * 100)
        calls = PhyToLogPolicy.calls
        check_plan(service.rebalance_experts(weight, 32, 4, 2, 8), weight, 32, False)
        assert PhyToLogPolicy.calls == calls and fallbacks.total() == 0
        holder.join(30)
        channel.close()
    finally:
        engine.gate.set()
        running.close()
