"""The output docs/service.md shows is what the server answers: its grpcurl request, sent
through protobuf's JSON mapping (as grpcurl sends it), gets the reply the page prints."""

from __future__ import annotations

import json
import re
from decimal import Decimal

from eplb_client.v1 import placement_pb2 as pb
from google.protobuf import json_format

from .servicekit import REPO, stub

ANY, MORE = "<any>", "<more>"


def documented_exchange():
    """(request JSON, reply) of the page's grpcurl Rebalance example; in the reply, `[...]`
    stands for any list, a trailing `...` for more items and `...` for any value."""
    text = (REPO / "docs" / "service.md").read_text()
    command = re.search(r"-d '(\{.*?\})' \S+ eplb\.v1\.PlacementService/Rebalance", text, re.S)
    assert command, "docs/service.md: no grpcurl Rebalance example"
    reply = re.search(r"```json\n(.*?)```", text[command.end():], re.S)
    assert reply, "docs/service.md: no reply after the grpcurl Rebalance example"
    shown = reply.group(1).replace("[...]", f'"{ANY}"').replace(", ...]", f', "{MORE}"]')
    shown = re.sub(r":\s*\.\.\.", f': "{ANY}"', shown)
    return command.group(1), json.loads(shown, parse_float=Decimal)


def matches(shown, actual, path="reply"):
    """Asserts that the server's value has what the page shows (numbers to the digits shown)."""
    if shown == ANY:
        return
    if isinstance(shown, dict):
        assert isinstance(actual, dict), path
        for key, value in shown.items():
            assert key in actual, f"{path}.{key}: not in the reply"
            matches(value, actual[key], f"{path}.{key}")
    elif isinstance(shown, list):
        assert isinstance(actual, list), path
        more = bool(shown) and shown[-1] == MORE
        items = shown[:-1] if more else shown
        assert len(actual) >= len(items) if more else len(actual) == len(items), path
        for i, value in enumerate(items):
            matches(value, actual[i], f"{path}[{i}]")
    elif isinstance(shown, Decimal):
        digits = max(0, -shown.as_tuple().exponent)
        assert abs(Decimal(repr(float(actual))) - shown) <= Decimal(5) / 10 ** (digits + 1), \
            f"{path}: the page shows {shown}, the server answers {actual}"
    else:
        assert shown == actual, f"{path}: the page shows {shown!r}, the server answers {actual!r}"


def test_service_md_grpcurl_reply_is_the_servers(server):
    request_json, shown = documented_exchange()
    request = json_format.Parse(request_json, pb.RebalanceRequest())
    channel, client = stub(server.addresses[0])
    reply = json_format.MessageToDict(client.Rebalance(request, timeout=30))
    channel.close()
    if reply.get("device") != "cpu":  # the page shows a CPU server's answer
        shown.pop("device", None)
    matches(shown, reply)
