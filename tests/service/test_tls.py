"""Mutual TLS from certificate files: clients with a CA-signed certificate get in, others not."""

import grpc
import pytest
from eplb_server.server import Config

from .servicekit import ServerThread, issue_certificates, rebalance_request, stub


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    pem = issue_certificates(tmp_path_factory.mktemp("pki"))
    config = Config(listen=["127.0.0.1:0"], metrics_port=None, warmup_shapes=[],
                    tls_cert=str(pem["server-cert"]), tls_key=str(pem["server-key"]),
                    tls_client_ca=str(pem["ca-cert"]))
    running = ServerThread(config)
    yield running, pem
    running.close()


def credentials(pem, with_client_certificate=True):
    read = lambda name: pem[name].read_bytes()  # noqa: E731
    if not with_client_certificate:
        return grpc.ssl_channel_credentials(root_certificates=read("ca-cert"))
    return grpc.ssl_channel_credentials(root_certificates=read("ca-cert"),
                                        private_key=read("client-key"),
                                        certificate_chain=read("client-cert"))


def test_client_with_certificate_is_served(tls_server):
    running, pem = tls_server
    channel, client = stub(running.addresses[0], credentials(pem))
    assert client.Rebalance(rebalance_request(), timeout=30).HasField("phy2log")
    channel.close()


@pytest.mark.parametrize("how", ["no client certificate", "plaintext"])
def test_other_clients_are_refused(tls_server, how):
    running, pem = tls_server
    creds = credentials(pem, with_client_certificate=False) if how != "plaintext" else None
    channel, client = stub(running.addresses[0], creds)
    with pytest.raises(grpc.RpcError) as caught:
        client.Rebalance(rebalance_request(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()
