"""EPLB placement engine and gRPC service: `rebalance_experts`, `plan`, `evaluate`."""

__version__ = "0.1.0"
__all__ = ["rebalance_experts", "plan", "evaluate", "Plan", "Score"]


def __getattr__(name):
    if name in __all__:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'eplb_server' has no attribute {name!r}")
