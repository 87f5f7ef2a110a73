"""Engine adapters (vLLM, SGLang) that plan through the service and fall back to the engine."""


def fallback_counts() -> dict:
    """{(engine, reason): count} of rebalances this process planned with the engine's own
    algorithm because the service was unreachable ("unavailable"), too slow ("deadline") or
    answered an error ("error")."""
    from ._service import FALLBACKS

    return FALLBACKS.counts()
