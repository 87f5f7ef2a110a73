"""Property-based fuzzing of the RPC against a real server: malformed tensors get
INVALID_ARGUMENT (or RESOURCE_EXHAUSTED when over the byte limit); valid but extreme requests
(history objectives with extreme parameters, degenerate loads, hot experts at the size limits)
get a valid plan, INVALID_ARGUMENT naming a field, or RESOURCE_EXHAUSTED for size; garbage bytes
never break it. Never INTERNAL, and the server answers the next valid request.

CI runs the defaults (about a minute). Release checks run more examples of every property:
EPLB_FUZZ_EXAMPLES=3000 pytest tests/reliability/test_fuzz_rpc.py (see docs/reliability.md).
Outcome counts are printed at the end of the run."""

import os

import grpc
import numpy as np
import pytest
from eplb_client.results import log2phy_from_ranks
from eplb_client.tensors import from_tensor, to_tensor
from eplb_client.v1 import placement_pb2 as pb
from eplb_server.engine.api import MAX_LAYER_LOAD
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..service.conftest import LIMITS
from ..service.servicekit import (SMALL, loads, poke, rebalance_request, stub,
                                 two_per_expert_mapping, violations)
from .outcomes import OUTCOMES

GOOD = loads()  # [4, 16] float64
MAPPING = two_per_expert_mapping()  # [4, 32]


def examples(default: int, share: float = 1.0) -> int:
    """`default` examples in CI; EPLB_FUZZ_EXAMPLES (times `share`, for the slow properties)
    in longer release runs."""
    release = os.environ.get("EPLB_FUZZ_EXAMPLES")
    return default if release is None else max(default, int(int(release) * share))


def fuzz(default: int, share: float = 1.0):
    return settings(max_examples=examples(default, share), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


FUZZ = fuzz(120)
HUGE = st.integers(1 << 20, (1 << 63) - 1)
BAD_DIM = st.one_of(st.integers(-(1 << 63), 0), HUGE)
UNKNOWN_DTYPE = st.one_of(st.integers(5, 1 << 30), st.integers(-(1 << 31), -1))


@pytest.fixture(scope="module")
def client(fuzz_server):
    channel, placement = stub(fuzz_server.addresses[0])
    yield placement
    channel.close()


def valid_request():
    request = rebalance_request(GOOD)
    request.current_phy2log.CopyFrom(to_tensor(MAPPING))
    return request


def call(client, request, family="malformed"):
    """The status code of a Rebalance call (OK when it succeeds) and the error or response."""
    try:
        response = client.Rebalance(request, timeout=120)
    except grpc.RpcError as e:
        OUTCOMES[family, e.code().name] += 1
        return e.code(), e
    OUTCOMES[family, "OK"] += 1
    return grpc.StatusCode.OK, response


def expect_invalid(client, request):
    code, error = call(client, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, code != grpc.StatusCode.OK
                                                      and error.details())
    assert violations(error), "no BadRequest detail"
    assert client.Rebalance(rebalance_request(GOOD), timeout=30).HasField("phy2log")


# Mutations of a valid request, each certain to make it invalid.

@st.composite
def wrong_byte_count(draw):
    request = valid_request()
    field = draw(st.sampled_from(["expert_loads", "current_phy2log"]))
    tensor = getattr(request, field)
    delta = draw(st.integers(-len(tensor.data), 4096).filter(lambda d: d != 0))
    tensor.data = tensor.data[:len(tensor.data) + delta] if delta < 0 else (
        tensor.data + draw(st.binary(min_size=delta, max_size=delta)))
    return request


@st.composite
def unknown_dtype(draw):
    request = valid_request()
    field = draw(st.sampled_from(["expert_loads", "current_phy2log"]))
    getattr(request, field).dtype = draw(st.one_of(UNKNOWN_DTYPE, st.just(0)))
    return request


@st.composite
def bad_shape(draw):
    """A negative, zero or enormous dimension, or a wrong rank; the data is left as it was."""
    request = valid_request()
    field = draw(st.sampled_from(["expert_loads", "current_phy2log"]))
    tensor = getattr(request, field)
    shape = list(tensor.shape)
    how = draw(st.sampled_from(["dim", "rank"]))
    if how == "dim":
        shape[draw(st.integers(0, len(shape) - 1))] = draw(BAD_DIM)
    else:
        shape = draw(st.lists(st.one_of(st.integers(-3, 40), BAD_DIM), max_size=6)
                     .filter(lambda s: len(s) not in (2, 3) or any(d <= 0 or d > 1 << 20
                                                                   for d in s)))
    del tensor.shape[:]
    tensor.shape.extend(shape)
    return request


@st.composite
def non_finite_negative_or_huge_load(draw):
    """One bad value; the huge ones overflow a layer's float32 total (they crashed the server)."""
    request = valid_request()
    index = (draw(st.integers(0, 3)), draw(st.integers(0, 15)))
    weight = poke(GOOD, index, draw(st.sampled_from(
        [np.nan, np.inf, -np.inf, -1.0, -1e-30, 3.5e38, 1e300, 1.7e308])))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    packed = draw(st.booleans())
    with np.errstate(over="ignore"):  # the huge values become inf in float32: refused as such
        tensor = to_tensor(weight.astype(dtype))
    if packed:
        tensor = pb.Tensor(dtype=tensor.dtype, shape=tensor.shape,
                           float_values=weight.ravel().tolist())
    request.expert_loads.CopyFrom(tensor)
    return request


@st.composite
def mapping_out_of_range(draw):
    request = valid_request()
    index = (draw(st.integers(0, 3)), draw(st.integers(0, 31)))
    # -1 is an empty slot (accepted); every other negative entry is out of range.
    out_of_range = draw(st.one_of(st.integers(-(1 << 63), -2), st.integers(16, (1 << 63) - 1)))
    request.current_phy2log.CopyFrom(to_tensor(poke(MAPPING, index, out_of_range)))
    return request


@st.composite
def mapping_missing_an_expert(draw):
    request = valid_request()
    mapping = MAPPING.copy()
    layer, gone, into = draw(st.integers(0, 3)), draw(st.integers(0, 15)), draw(st.integers(0, 15))
    row = mapping[layer]
    row[row == gone] = into if into != gone else (gone + 1) % 16
    request.current_phy2log.CopyFrom(to_tensor(mapping))
    return request


@st.composite
def packed_values_unfit_for_the_dtype(draw):
    """Integer mappings sent as fractional floats, or as ints that wrap around in int32."""
    request = valid_request()
    values = MAPPING.ravel().astype(np.float64)
    index = draw(st.integers(0, values.size - 1))
    if draw(st.booleans()):
        values[index] += draw(st.floats(0.01, 0.99))
        tensor = pb.Tensor(dtype=pb.DTYPE_INT64, shape=MAPPING.shape,
                           float_values=values.tolist())
    else:
        ints = MAPPING.ravel().tolist()
        ints[index] += draw(st.integers(1, 1 << 20)) << 32  # same low 32 bits
        tensor = pb.Tensor(dtype=pb.DTYPE_INT32, shape=MAPPING.shape, int_values=ints)
    request.current_phy2log.CopyFrom(tensor)
    return request


@st.composite
def bad_topology(draw):
    request = valid_request()
    name = draw(st.sampled_from(["num_replicas", "num_groups", "num_nodes", "num_gpus"]))
    value = draw(st.one_of(st.integers(-(1 << 31), 0), st.integers(1, (1 << 31) - 1)))
    topology = dict(SMALL, **{name: value})
    p, k, n, g = (topology[x] for x in ("num_replicas", "num_groups", "num_nodes", "num_gpus"))
    # Keep only topologies that break a rule (positive values dividing as they must are valid).
    # num_groups 0 means 1; groups that do not divide the experts are ignored on the global
    # path (auto with groups not over nodes).
    groups_ok = k >= 0 and (16 % (k or 1) == 0 or (n > 0 and (k or 1) % n != 0))
    # A mapping of another slot count is ignored (elastic EP), so any P from E to the limit
    # is valid.
    valid = min(p, n, g) > 0 and groups_ok and p % g == 0 and g % n == 0 and 16 <= p <= 1024
    if valid:
        value = -value or -1
    setattr(request.topology, name, value)
    return request


MUTATIONS = {f.__name__: f for f in (
    wrong_byte_count, unknown_dtype, bad_shape, non_finite_negative_or_huge_load,
    mapping_out_of_range, mapping_missing_an_expert, packed_values_unfit_for_the_dtype,
    bad_topology)}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_malformed_request_is_invalid_argument(client, mutation):
    @FUZZ
    @given(MUTATIONS[mutation]())
    def check(request):
        expect_invalid(client, request)
    check()


@st.composite
def arbitrary_tensor(draw):
    """Anything a Tensor message can hold, biased toward the edges."""
    shape = draw(st.lists(st.one_of(st.integers(-2, 20), BAD_DIM), max_size=4))
    source = draw(st.sampled_from(["data", "float_values", "int_values", "none", "two"]))
    tensor = pb.Tensor(dtype=draw(st.one_of(st.integers(0, 4), UNKNOWN_DTYPE)), shape=shape)
    finite = st.floats(allow_nan=True, allow_infinity=True)
    if source in ("data", "two"):
        tensor.data = draw(st.binary(max_size=2048))
    if source in ("float_values", "two"):
        tensor.float_values.extend(draw(st.lists(finite, max_size=300)))
    if source == "int_values":
        tensor.int_values.extend(draw(st.lists(st.integers(-(1 << 63), (1 << 63) - 1),
                                               max_size=300)))
    return tensor


@FUZZ
@given(loads_tensor=arbitrary_tensor(), mapping_tensor=st.one_of(st.none(), arbitrary_tensor()),
       topology=st.tuples(*[st.integers(-4, 64)] * 4), policy=st.integers(-2, 8),
       slot_loads=st.booleans())
def test_arbitrary_tensors_never_fail_otherwise(client, loads_tensor, mapping_tensor, topology,
                                                policy, slot_loads):
    """Random tensors, topologies and policies: an answer or INVALID_ARGUMENT, nothing else."""
    p, k, n, g = topology
    request = pb.RebalanceRequest(policy=policy, topology=pb.Topology(
        num_replicas=p, num_groups=k, num_nodes=n, num_gpus=g))
    (request.slot_loads if slot_loads else request.expert_loads).CopyFrom(loads_tensor)
    if mapping_tensor is not None:
        request.current_phy2log.CopyFrom(mapping_tensor)
    code, error = call(client, request, "arbitrary")
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (
        code, code != grpc.StatusCode.OK and error.details())


@fuzz(10, share=0.1)
@given(extra=st.integers(1, 1 << 16))
def test_oversize_request_is_resource_exhausted(client, extra):
    """Over the 1 MiB message limit of the test server: refused before it is parsed."""
    request = valid_request()
    request.expert_loads.data += b"\0" * ((1 << 20) + extra)
    code, _ = call(client, request, "oversize")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.Rebalance(rebalance_request(GOOD), timeout=30).HasField("phy2log")


# Valid but extreme requests (issue 22): a plan, INVALID_ARGUMENT naming a field, or
# RESOURCE_EXHAUSTED for size; never INTERNAL.

TINY = 5e-324
# (E, P, K, N, G), every one at or near two slots per GPU; the first is the case 5.
TOPOLOGIES = [(8, 32, 1, 1, 16), (16, 32, 4, 2, 16), (16, 32, 4, 2, 8), (12, 24, 3, 1, 12),
              (16, 16, 4, 2, 8), (8, 48, 2, 2, 4)]
FORMATS = [pb.LOG2PHY_FORMAT_UNSPECIFIED, pb.LOG2PHY_FORMAT_PADDED, pb.LOG2PHY_FORMAT_COMPACT]


@st.composite
def degenerate_loads(draw, shape):
    """Loads a kernel could trip on: subnormal, zero, equal, one hot, mixed magnitudes, or
    layers totalling just under (or over) float32's maximum."""
    kind = draw(st.sampled_from(["subnormal", "zero", "equal", "hot", "magnitudes", "limit",
                                 "over_limit", "lognormal"]))
    rng = np.random.default_rng(draw(st.integers(0, 1 << 16)))
    layers_axis = tuple(i for i in range(len(shape)) if i != len(shape) - 2)
    if kind == "subnormal":
        return rng.integers(0, 4, shape) * TINY
    if kind == "zero":
        return np.zeros(shape)
    if kind == "equal":
        return np.full(shape, draw(st.sampled_from([TINY, 1.0, 3e30])))
    if kind == "hot":
        w = rng.integers(0, 2, shape).astype(np.float64)
        w[..., draw(st.integers(0, shape[-1] - 1))] = draw(st.sampled_from([1e3, 1e20, 1e36]))
        return w
    if kind == "magnitudes":
        return np.ldexp(1.0, rng.integers(-1074, 120, shape)) * rng.integers(0, 2, shape)
    if kind == "lognormal":
        return np.round(rng.lognormal(0, 2, shape) * 100)
    w = rng.uniform(0, 1, shape)
    target = MAX_LAYER_LOAD * (0.999 if kind == "limit" else 1.01)
    return w / w.sum(axis=layers_axis, keepdims=True) * target


def check_plan(response, request):
    """A valid plan for the request's shapes; log2phy padded or compact as announced."""
    topology = request.topology
    phy2log, logcnt = from_tensor(response.phy2log), from_tensor(response.logcnt)
    layers, experts = from_tensor(request.expert_loads).shape[-2:]
    assert phy2log.shape == (layers, topology.num_replicas)
    assert phy2log.min() >= 0 and phy2log.max() < experts
    assert (logcnt >= 1).all() and (logcnt.sum(1) == topology.num_replicas).all()
    for layer in range(layers):
        assert (np.bincount(phy2log[layer], minlength=experts) == logcnt[layer]).all()
    if response.log2phy_format == pb.LOG2PHY_FORMAT_COMPACT:
        log2phy = log2phy_from_ranks(phy2log, from_tensor(response.replica_rank), logcnt)
    else:
        assert response.log2phy_format == pb.LOG2PHY_FORMAT_PADDED
        log2phy = from_tensor(response.log2phy)
    for layer in range(layers):
        for expert in range(experts):
            slots = log2phy[layer, expert, :logcnt[layer, expert]]
            assert (phy2log[layer, slots] == expert).all()
    assert np.isfinite(response.plan.balancedness)


def expect_planned_or_named(client, request, family, fields):
    """OK with a valid plan, or INVALID_ARGUMENT naming only `fields`; then a valid call."""
    code, result = call(client, request, family)
    if code == grpc.StatusCode.OK:
        check_plan(result, request)
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, result.details())
        named = {field for field, _ in violations(result)}
        assert named and named <= fields, (named, result.details())
    assert client.Rebalance(rebalance_request(GOOD), timeout=30).HasField("phy2log")
    return code, result


EXTREME = st.one_of(st.sampled_from([0.0, TINY, 1e-300, 1.0, 40.0, 100.0, 100.0001, 1e35, 1e300,
                                     1.7976931348623157e308]),
                    st.floats(0, 1e308, allow_nan=False, allow_infinity=False))


@fuzz(60)
@given(data=st.data(), topology=st.sampled_from(TOPOLOGIES), windows=st.integers(1, 4),
       layers=st.integers(1, 3), objective=st.sampled_from(sorted(pb.Objective.values())),
       robust_k=EXTREME, half_life=EXTREME, policy=st.sampled_from([1, 2, 3, 4]))
def test_history_objectives_with_extreme_parameters(client, data, topology, windows, layers,
                                                    objective, robust_k, half_life, policy):
    """The issue's case 1: robust_k of 1e35 (or 40 on loads totalling 3e38) crashed the server."""
    experts, p, k, n, g = topology
    if policy == pb.POLICY_HIERARCHICAL and k % n:
        policy = pb.POLICY_GLOBAL
    weight = data.draw(degenerate_loads((windows, layers, experts)))
    request = pb.RebalanceRequest(
        topology=pb.Topology(num_replicas=p, num_groups=k, num_nodes=n, num_gpus=g),
        policy=policy, expert_loads=to_tensor(weight),
        history=pb.HistoryOptions(objective=objective, robust_k=robust_k, half_life=half_life),
        log2phy_format=data.draw(st.sampled_from(FORMATS)))
    code, _ = expect_planned_or_named(client, request, "history",
                                      {"history.robust_k", "history.half_life", "expert_loads"})
    if code != grpc.StatusCode.OK and robust_k <= 100 and weight.sum(axis=(0, 2)).max() \
            <= MAX_LAYER_LOAD:
        assert objective == pb.OBJECTIVE_ROBUST or windows == 1  # only robust_k can be too big


def random_mapping(rng, layers, experts, slots):
    """A valid current mapping: every expert once, the other slots anywhere, shuffled."""
    rows = [rng.permutation(np.concatenate([np.arange(experts),
                                            rng.integers(0, experts, slots - experts)]))
            for _ in range(layers)]
    return np.stack(rows).astype(np.int64)


@fuzz(80)
@given(data=st.data(), topology=st.sampled_from(TOPOLOGIES), layers=st.integers(1, 4),
       policy=st.sampled_from([0, 1, 2, 3, 4]), with_current=st.booleans(),
       mapping_dtype=st.sampled_from([0, pb.DTYPE_INT32, pb.DTYPE_INT64]),
       fmt=st.sampled_from(FORMATS), packed=st.booleans())
def test_degenerate_loads_plan(client, data, topology, layers, policy, with_current,
                               mapping_dtype, fmt, packed):
    """The issue's case 5: all loads 5e-324 at two slots per GPU answered INTERNAL."""
    experts, p, k, n, g = topology
    if policy == pb.POLICY_HIERARCHICAL and k % n:
        policy = pb.POLICY_GLOBAL
    weight = data.draw(degenerate_loads((layers, experts)))
    tensor = to_tensor(weight)
    if packed:
        tensor = pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=weight.shape,
                           float_values=weight.ravel().tolist())
    request = pb.RebalanceRequest(
        topology=pb.Topology(num_replicas=p, num_groups=k, num_nodes=n, num_gpus=g),
        policy=policy, expert_loads=tensor, mapping_dtype=mapping_dtype, log2phy_format=fmt)
    if with_current:
        rng = np.random.default_rng(data.draw(st.integers(0, 1 << 16)))
        request.current_phy2log.CopyFrom(to_tensor(random_mapping(rng, layers, experts, p)))
    over = weight.sum(axis=1).max() > MAX_LAYER_LOAD
    code, result = expect_planned_or_named(client, request, "degenerate",
                                           {"expert_loads"} if over else set())
    if code == grpc.StatusCode.OK:  # the plan scored on the same degenerate loads
        scored = client.Evaluate(pb.EvaluateRequest(
            topology=request.topology, expert_loads=tensor, phy2log=result.phy2log,
            policy=policy), timeout=60)
        OUTCOMES["degenerate_evaluate", "OK"] += 1
        assert 0.0 <= scored.score.balancedness <= 1.0 + 1e-9


@fuzz(4, share=0.02)  # plans at the limits take seconds each
@given(layers=st.sampled_from([1, LIMITS.max_layers]), slots=st.sampled_from(
    [LIMITS.max_experts, LIMITS.max_replicas]), gpus=st.sampled_from([8, 64]),
    hot=st.integers(0, LIMITS.max_experts - 1), fmt=st.sampled_from(FORMATS),
    policy=st.sampled_from([pb.POLICY_GLOBAL, pb.POLICY_DEEPSEEK]), with_current=st.booleans())
def test_hot_expert_at_the_size_limits(client, layers, slots, gpus, hot, fmt, policy,
                                       with_current):
    """The issue's case 3: one hot expert made log2phy [L, E, P - E + 1] (a 135 MB answer to a
    131 KB request). Now the answer is compact or refused up front, never oversized."""
    experts = LIMITS.max_experts
    weight = np.ones((layers, experts))
    weight[:, hot] = 1e9
    request = pb.RebalanceRequest(
        topology=pb.Topology(num_replicas=slots, num_groups=1, num_nodes=1, num_gpus=gpus),
        policy=policy, expert_loads=to_tensor(weight), log2phy_format=fmt)
    if with_current:
        rng = np.random.default_rng(hot)
        request.current_phy2log.CopyFrom(to_tensor(random_mapping(rng, layers, experts, slots)))
    code, result = call(client, request, "hot_expert_limits")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert fmt == pb.LOG2PHY_FORMAT_PADDED and slots > experts, result.details()
    else:
        assert code == grpc.StatusCode.OK, (code, result.details())
        check_plan(result, request)
        assert result.ByteSize() < (4 << 20 if fmt != pb.LOG2PHY_FORMAT_PADDED else 64 << 20)
    assert client.Rebalance(rebalance_request(GOOD), timeout=30).HasField("phy2log")


@pytest.fixture(scope="module")
def raw_call(fuzz_server):
    """Rebalance and Evaluate taking raw bytes, as a hostile client sends them."""
    channel = grpc.insecure_channel(fuzz_server.addresses[0])
    methods = {name: channel.unary_unary(f"/eplb.v1.PlacementService/{name}")
               for name in ("Rebalance", "Evaluate")}
    yield methods
    channel.close()


GARBAGE = st.one_of(st.binary(max_size=512),
                    # well-formed tags with bad lengths or wire types, and truncated messages
                    st.builds(lambda good, cut: good[:cut], st.just(
                        valid_request().SerializeToString()), st.integers(1, 2000)),
                    st.lists(st.sampled_from([b"\x0a", b"\x12", b"\xff", b"\x80", b"\x22\xff\xff",
                                              b"\x08\x01", b"\x00"]), max_size=64).map(b"".join))


def raw_outcome(raw_call, method, data):
    try:
        raw_call[method](data, timeout=30)
        code = grpc.StatusCode.OK
    except grpc.RpcError as e:
        code = e.code()
    OUTCOMES["garbage", code.name] += 1
    return code


@fuzz(150)
@given(data=GARBAGE, method=st.sampled_from(["Rebalance", "Evaluate"]))
def test_garbage_bytes_never_break_the_server(client, raw_call, data, method):
    code = raw_outcome(raw_call, method, data)
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE)
    assert client.Rebalance(rebalance_request(GOOD), timeout=30).HasField("phy2log")


@fuzz(20)
@given(data=GARBAGE, method=st.sampled_from(["Rebalance", "Evaluate"]))
def test_garbage_bytes_are_invalid_argument(raw_call, data, method):
    code = raw_outcome(raw_call, method, data)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT)
