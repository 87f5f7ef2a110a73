"""Property-based fuzzing of the RPC with malformed tensors: each gets INVALID_ARGUMENT (or
RESOURCE_EXHAUSTED when over the byte limit), never another status, and the server answers the
next valid request."""

import grpc
import numpy as np
import pytest
from eplb_client.tensors import to_tensor
from eplb_client.v1 import placement_pb2 as pb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..service.servicekit import (SMALL, loads, poke, rebalance_request, stub,
                                 two_per_expert_mapping, violations)

GOOD = loads()  # [4, 16] float64
MAPPING = two_per_expert_mapping()  # [4, 32]
FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
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


def call(client, request):
    """The status code of a Rebalance call (OK when it succeeds)."""
    try:
        client.Rebalance(request, timeout=30)
    except grpc.RpcError as e:
        return e.code(), e
    return grpc.StatusCode.OK, None


def expect_invalid(client, request):
    code, error = call(client, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, error and error.details())
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
    code, error = call(client, request)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (
        code, error and error.details())


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.integers(1, 1 << 16))
def test_oversize_request_is_resource_exhausted(client, extra):
    """Over the 1 MiB message limit of the test server: refused before it is parsed."""
    request = valid_request()
    request.expert_loads.data += b"\0" * ((1 << 20) + extra)
    code, _ = call(client, request)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.Rebalance(rebalance_request(GOOD), timeout=30).HasField("phy2log")
