"""The bulk SlotTransfer encoder gives the same message as adding transfers one by one."""

import numpy as np
import pytest
from eplb_client.v1 import placement_pb2 as pb
from eplb_server.wire import MAX_VALUE, embedded, encode_transfers


def one_by_one(rows, cross):
    message = pb.Migration()
    for (layer, slot, expert, source), c in zip(rows.tolist(), cross.tolist()):
        message.transfers.add(layer=layer, slot=slot, expert=expert, source_slot=source,
                              cross_node=c)
    return message


@pytest.mark.parametrize("count", [0, 1, 7, 2000])
def test_equal_to_per_message_encoding(count):
    rng = np.random.default_rng(count)
    # Values around every varint length boundary (1, 2 and 3 bytes), zeros included.
    choices = np.array([0, 1, 127, 128, 300, 16383, 16384, MAX_VALUE])
    rows = rng.choice(choices, size=(count, 4))
    cross = rng.random(count) < 0.5
    bulk = pb.Migration()
    bulk.MergeFromString(encode_transfers(rows, cross))
    assert bulk == one_by_one(rows, cross)


def test_values_beyond_three_varint_bytes_are_refused():
    with pytest.raises(RuntimeError):
        encode_transfers(np.array([[0, 0, MAX_VALUE + 1, 0]]), np.array([False]))
    with pytest.raises(RuntimeError):
        encode_transfers(np.array([[0, -1, 0, 0]]), np.array([True]))


@pytest.mark.parametrize("count", [1, 2000])
def test_transfers_appended_to_an_encoded_response_join_its_migration(count):
    """The server appends the transfers' bytes after the encoded response instead of parsing them
    into it: a parser merges the two migration fields into the whole message."""
    rng = np.random.default_rng(count)
    rows = rng.integers(0, 20000, size=(count, 4))
    cross = rng.random(count) < 0.5
    response = pb.RebalanceResponse(migration=pb.Migration(slots_changed=count,
                                                           layer_changed=[True, False]),
                                    compute_seconds=0.5)
    expected = pb.RebalanceResponse()
    expected.CopyFrom(response)
    expected.migration.transfers.extend(one_by_one(rows, cross).transfers)
    number = pb.RebalanceResponse.DESCRIPTOR.fields_by_name["migration"].number
    data = response.SerializeToString() + embedded(number, encode_transfers(rows, cross))
    assert pb.RebalanceResponse.FromString(data) == expected
