"""SGLang: `sglang.srt.eplb.eplb_algorithms.rebalance_experts` planned by the service.

SGLang calls, on every rank, `rebalance_experts(tokens_per_expert [X, L, E],
num_physical_experts, num_local_physical_experts, num_groups (None without groups), num_nodes,
algorithm)` and expects (phy2log [L, P], log2phy [L, E, P] padded with -1, logcnt [L, E]).
`register` (the `sglang.srt.plugins` entry point, run in every SGLang process) wraps that
function: the window history goes to the service's history planning, the current placement
comes from SGLang's expert-location metadata, and any failure runs SGLang's own algorithm.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from ._service import FALLBACKS, ServiceCaller, Settings, pad_log2phy, plugin_settings, \
    reason_of, to_numpy, to_torch_int64

ENGINE = "sglang"
TARGET = "sglang.srt.eplb.eplb_algorithms.rebalance_experts"
PARAMETERS = ("tokens_per_expert", "num_physical_experts", "num_local_physical_experts",
              "num_groups", "num_nodes", "algorithm")
log = logging.getLogger(__name__)


def current_placement(num_layers: int):
    """SGLang's current physical_to_logical_map [L, P] (CPU copy) from its global expert-location
    metadata; None before it exists (the first plan at start-up) or where layers disagree."""
    try:
        from sglang.srt.eplb.expert_location import get_global_expert_location_metadata

        metadata = get_global_expert_location_metadata()
    except Exception:  # noqa: BLE001 - no runtime context yet, or another SGLang layout
        return None
    mapping = getattr(metadata, "physical_to_logical_map_cpu", None)
    if mapping is None:
        mapping = getattr(metadata, "physical_to_logical_map", None)
    if mapping is None or tuple(mapping.shape)[:1] != (num_layers,):
        return None
    return to_numpy(mapping)


def windows(history: np.ndarray, limit: int) -> np.ndarray:
    """[X, L, E] -> [T, L, E] with T = min(X, limit): consecutive windows summed, oldest first, so
    that every window's tokens count once (SGLang's recorder keeps up to 1000 windows; the
    service takes a few dozen)."""
    count = history.shape[0]
    if count <= limit:
        return history
    edges = np.linspace(0, count, limit + 1).round().astype(np.int64)
    return np.add.reduceat(history, edges[:-1], axis=0)


def policy_for(algorithm, settings: Settings) -> str | None:
    """The service policy for SGLang's algorithm; None where only SGLang's own can serve it."""
    name = getattr(algorithm, "name", str(algorithm))
    if name.startswith("elasticity_aware"):
        return None  # needs SGLang's live set of healthy ranks
    if settings.policy:
        return settings.policy
    return "hierarchical" if name.endswith("hierarchical") else "global"


def make_around(settings: Settings | None = None, caller: ServiceCaller | None = None,
                placement=current_placement):
    """An AROUND hook, `hook(original, *args, **kwargs)`, for SGLang's rebalance_experts."""
    settings = settings or Settings.from_env()
    caller = caller or ServiceCaller(settings)

    def around(original, *args, **kwargs):
        bound = dict(zip(PARAMETERS, args), **kwargs)
        policy = policy_for(bound.get("algorithm"), settings)
        if policy is None:
            return original(*args, **kwargs)
        try:
            result = _plan(caller, settings, policy, placement, **bound)
        except Exception as error:  # noqa: BLE001 - never stall serving: fall back on anything
            if settings.fallback == "raise":
                raise
            FALLBACKS.failed(ENGINE, reason_of(error), error)
            return original(*args, **kwargs)
        FALLBACKS.succeeded(ENGINE)
        return result

    around.eplb_service_settings = settings
    return around


def _plan(caller, settings, policy, placement, *, tokens_per_expert, num_physical_experts,
          num_local_physical_experts, num_groups, num_nodes, algorithm):
    history = to_numpy(tokens_per_expert)
    if history.ndim == 3:
        history = windows(history, settings.max_windows)
        if history.shape[0] == 1:
            history = history[0]
    layers, experts = history.shape[-2:]
    slots = int(num_physical_experts)
    r = caller.rebalance(history, num_replicas=slots, num_groups=int(num_groups or 0),
                         num_nodes=int(num_nodes),
                         num_gpus=slots // int(num_local_physical_experts), policy=policy,
                         current=placement(layers),
                         objective=settings.objective if history.ndim == 3 else None)
    # SGLang pads log2phy to the number of physical experts with -1.
    return (to_torch_int64(r.phy2log), to_torch_int64(pad_log2phy(r.log2phy, slots)),
            to_torch_int64(r.logcnt))


def install(module, settings: Settings | None = None, placement=current_placement):
    """Wraps `module.rebalance_experts` (SGLang's eplb_algorithms) in place; idempotent. For
    SGLang versions without the plugin hook registry."""
    original = module.rebalance_experts
    if getattr(original, "eplb_service_original", None) is not None:
        return original
    around = make_around(settings, placement=placement)

    @functools.wraps(original)
    def rebalance_experts(*args, **kwargs):
        return around(original, *args, **kwargs)

    rebalance_experts.eplb_service_original = original
    module.rebalance_experts = rebalance_experts
    return rebalance_experts


def register() -> None:
    """SGLang's general-plugin entry point (group `sglang.srt.plugins`), run in every process."""
    settings = plugin_settings("SGLang", log)
    if settings is None:
        return
    try:
        from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    except ImportError:  # an SGLang without hooks: patch the module itself
        from sglang.srt.eplb import eplb_algorithms

        install(eplb_algorithms, settings)
    else:
        HookRegistry.register(TARGET, make_around(settings), HookType.AROUND)
    log.info("SGLang's EPLB plans through the EPLB service at %s (deadline %.1f s, fallback: "
             "%s)", settings.target, settings.deadline, settings.fallback)
