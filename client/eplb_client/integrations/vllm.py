"""vLLM >= 0.13: EPLB policies that plan through the service, installed by vLLM's plugin hook.

vLLM picks `EPLB_POLICIES[eplb_config.policy]` and calls, on every EP rank,
`policy.rebalance_experts(weight [L, E], num_replicas, num_groups, num_nodes, num_ranks,
old_global_expert_indices [L, P])` (the last argument from v0.14; v0.13 passes five). v0.13-v0.18
expect (phy2log, log2phy, logcnt) back, later versions phy2log alone. `register` (the
`vllm.general_plugins` entry point, run in every vLLM process) swaps each registered policy for
a subclass that asks the service and falls back to the original on any failure.
"""

from __future__ import annotations

import inspect
import logging

from ._service import FALLBACKS, ServiceCaller, Settings, pad_log2phy, plugin_settings, \
    reason_of, to_numpy, to_torch_int64

ENGINE = "vllm"
log = logging.getLogger(__name__)


def returns_tuple(policy) -> bool:
    """Whether `policy.rebalance_experts` answers (phy2log, log2phy, logcnt) (vLLM <= 0.18) rather
    than phy2log alone, read from its return annotation; without one, from vLLM's version."""
    annotation = inspect.signature(policy.rebalance_experts).return_annotation
    if annotation is not inspect.Signature.empty:
        return "tuple" in str(annotation).lower()
    try:
        from importlib.metadata import version

        major, minor = (int(x) for x in version("vllm").split(".")[:2])
    except Exception:  # noqa: BLE001 - no vllm metadata: assume the current interface
        return False
    return (major, minor) <= (0, 18)


def make_policy(fallback, settings: Settings | None = None, caller: ServiceCaller | None = None,
                tuple_result: bool | None = None):
    """A subclass of the policy class `fallback` whose rebalance_experts asks the service and
    returns what `fallback` would (tuple or phy2log, int64 CPU tensors); on any failure it
    runs `fallback.rebalance_experts` with the same arguments."""
    settings = settings or Settings.from_env()
    caller = caller or ServiceCaller(settings)
    as_tuple = returns_tuple(fallback) if tuple_result is None else tuple_result
    original = fallback.rebalance_experts

    def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                          *rest, **kwargs):
        current = rest[0] if rest else kwargs.get("old_global_expert_indices")
        try:
            result = _plan(caller, settings, weight, num_replicas, num_groups, num_nodes,
                           num_ranks, current, as_tuple)
        except Exception as error:  # noqa: BLE001 - never stall serving: fall back on anything
            if settings.fallback == "raise":
                raise
            FALLBACKS.failed(ENGINE, reason_of(error), error)
            return original(weight, num_replicas, num_groups, num_nodes, num_ranks, *rest,
                            **kwargs)
        FALLBACKS.succeeded(ENGINE)
        return result

    return type(f"EplbService{fallback.__name__}", (fallback,), {
        "rebalance_experts": classmethod(rebalance_experts),
        "eplb_service_fallback": fallback,
        "eplb_service_settings": settings,
        "eplb_service_caller": caller,
        "__doc__": f"{fallback.__name__} planned by the EPLB service at {settings.target}.",
    })


def _plan(caller, settings, weight, num_replicas, num_groups, num_nodes, num_ranks, current,
          as_tuple):
    loads = to_numpy(weight)
    r = caller.rebalance(loads, num_replicas=int(num_replicas), num_groups=int(num_groups or 0),
                         num_nodes=int(num_nodes), num_gpus=int(num_ranks),
                         policy=settings.policy or "auto",
                         current=None if current is None else to_numpy(current))
    phy2log = to_torch_int64(r.phy2log)
    if not as_tuple:
        return phy2log
    # vLLM <= 0.18 pads log2phy to num_redundant_experts + 1 replicas per expert.
    width = int(num_replicas) - loads.shape[-1] + 1
    return phy2log, to_torch_int64(pad_log2phy(r.log2phy, width)), to_torch_int64(r.logcnt)


def install(policies: dict, settings: Settings | None = None) -> list[str]:
    """Replaces each policy class in `policies` (vLLM's EPLB_POLICIES) by its service-backed
    subclass; returns the names replaced. Idempotent."""
    settings = settings or Settings.from_env()
    caller = ServiceCaller(settings)
    replaced = []
    for name, policy in list(policies.items()):
        if getattr(policy, "eplb_service_fallback", None) is not None:
            continue
        policies[name] = make_policy(policy, settings, caller)
        replaced.append(name)
    return replaced


def register() -> None:
    """vLLM's general-plugin entry point: runs in every vLLM process before the model loads."""
    settings = plugin_settings("vLLM", log)
    if settings is None:
        return
    try:
        from vllm.distributed.eplb.policy import EPLB_POLICIES
    except ImportError:
        log.warning("this vLLM has no EPLB_POLICIES (vLLM >= 0.13 needed): the EPLB service "
                    "adapter is not installed")
        return
    names = install(EPLB_POLICIES, settings)
    if names:
        log.info("EPLB policies %s plan through the EPLB service at %s (deadline %.1f s, "
                 "fallback: %s)", names, settings.target, settings.deadline, settings.fallback)
