"""Client for the EPLB placement service (no torch needed)."""

__version__ = "0.1.0"

_EXPORTS = {
    "EplbClient": "client",
    "AsyncEplbClient": "aio",
    "EplbError": "errors",
    "FieldViolation": "errors",
    "RetryPolicy": "_retry",
    "RebalanceResult": "results",
    "EvaluateResult": "results",
    "Score": "results",
    "Migration": "results",
    "rebalance_experts": "dropin",
    "load_loads": "loaders",
    "load_mapping": "loaders",
    "LoadError": "loaders",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'eplb_client' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
