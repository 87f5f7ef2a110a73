"""Checks eplb_client in this environment (any protobuf/grpcio); run as a script, prints OK."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    import grpc
    import numpy as np
    from google.protobuf import __version__ as protobuf_version
    from google.protobuf import json_format

    import eplb_client
    from eplb_client import AsyncEplbClient, EplbClient, EplbError
    from eplb_client.tensors import from_tensor, to_tensor
    from eplb_client.v1 import placement_pb2 as pb

    import fake_server

    loads = np.arange(24, dtype=np.float64).reshape(2, 12) + 1
    req = pb.RebalanceRequest(model="probe", topology=pb.Topology(num_replicas=16),
                              expert_loads=to_tensor(loads))
    back = pb.RebalanceRequest.FromString(req.SerializeToString())
    assert np.array_equal(from_tensor(back.expert_loads), loads)
    again = json_format.Parse(json_format.MessageToJson(back), pb.RebalanceRequest())
    assert again == back, "JSON round trip changed the message"

    tmp = tempfile.mkdtemp()
    topo = dict(num_replicas=16, num_groups=4, num_nodes=2, num_gpus=4)
    for address in ("127.0.0.1:0", f"unix://{tmp}/probe.sock"):
        server, target, servicer = fake_server.start(address)
        try:
            with EplbClient(target, timeout=10) as c:
                assert c.health() == "SERVING"
                r = c.rebalance(loads, current_phy2log=np.zeros((2, 16), np.int64), **topo)
                assert r.phy2log.shape == (2, 16) and r.migration.transfers.shape == (1, 4)
                servicer.unavailable = 2
                assert c.evaluate(loads, r.phy2log, num_groups=4, num_nodes=2,
                                  num_gpus=4).policy == "global"
                try:
                    c.rebalance(loads, **{**topo, "num_replicas": fake_server.BAD_REPLICAS})
                    raise AssertionError("no error")
                except EplbError as e:
                    assert e.code == grpc.StatusCode.INVALID_ARGUMENT, e
                    assert e.fields == ("topology.num_gpus",), e.fields

            async def use_async():
                async with AsyncEplbClient(target, timeout=10) as c:
                    r = await c.rebalance(loads, **topo)
                    return r.logcnt.sum(axis=1).tolist(), await c.health()

            assert asyncio.run(use_async()) == ([16, 16], "SERVING")
        finally:
            server.stop(None)
    assert sys.modules.get("torch") is None, "eplb_client imported torch"
    print(f"OK protobuf {protobuf_version} grpcio {grpc.__version__} numpy {np.__version__} "
          f"python {sys.version.split()[0]} eplb_client {eplb_client.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
