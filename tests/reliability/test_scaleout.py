"""Scale-out: the server is stateless, so two server processes behind one client (its
round robin over a target list) give the engine's answers, and both take their share."""

import numpy as np
import pytest
import torch
from eplb_client import EplbClient

import eplb_server

from ..service.servicekit import SMALL, loads, scrape
from .conftest import start_subprocess

CALLS = 20


def ok_count(port):
    labels = (("grpc_code", "OK"), ("grpc_method", "Rebalance"),
              ("grpc_service", "eplb.v1.PlacementService"), ("grpc_type", "unary"))
    return scrape(port).get(("grpc_server_handled_total", labels), 0)


@pytest.fixture(scope="module")
def second_server(tmp_path_factory):
    running = start_subprocess(tmp_path_factory.mktemp("second"))
    yield running
    assert running.server.stop() == 0, running.server.log()


def test_two_servers_behind_one_client_answer_alike_and_share_the_load(subprocess_server,
                                                                       second_server):
    servers = (subprocess_server, second_server)
    before = [ok_count(s.metrics_port) for s in servers]
    weights = [loads(seed=k % 5) for k in range(CALLS)]
    with EplbClient([s.tcp for s in servers], timeout=60) as client:
        results = [client.rebalance(w, **SMALL) for w in weights]
    after = [ok_count(s.metrics_port) for s in servers]

    for w, result in zip(weights, results):
        expected = eplb_server.plan(torch.from_numpy(w), **SMALL)
        np.testing.assert_array_equal(result.phy2log, expected.phy2log.numpy())
        np.testing.assert_array_equal(result.logcnt, expected.logcnt.numpy())
    # Round robin: the calls alternate, so each server answered half of them.
    assert [a - b for a, b in zip(after, before)] == [CALLS // 2, CALLS // 2]
    # The same request gets the same answer from each server on its own.
    answers = []
    for s in servers:
        with EplbClient(s.tcp, timeout=60) as one:
            answers.append(one.rebalance(weights[0], **SMALL).phy2log)
    np.testing.assert_array_equal(answers[0], answers[1])
