"""Security: mutual TLS end to end through eplb_client, certificates from a foreign CA refused;
Unix sockets private whatever the umask; no request field names a file, and serving requests
writes nothing. (Plain TLS/mTLS refusals, reflection off and the socket mode flag:
tests/service/test_tls.py, test_lifecycle.py, test_subprocess.py.)"""

import os
import stat

import grpc
import numpy as np
import pytest
import torch
from eplb_client import EplbClient, EplbError, RetryPolicy
from eplb_client.v1 import placement_pb2 as pb
from eplb_server.server import Config
from google.protobuf.descriptor import FieldDescriptor

import eplb_server

from ..service.servicekit import (SMALL, ServerThread, issue_certificates, loads,
                                  rebalance_request, stub)


@pytest.fixture(scope="module")
def mtls(tmp_path_factory):
    """A real server requiring client certificates of CA 1; certificates of CA 1 and CA 2."""
    ours = issue_certificates(tmp_path_factory.mktemp("pki"))
    foreign = issue_certificates(tmp_path_factory.mktemp("foreign"))
    running = ServerThread(Config(listen=["127.0.0.1:0"], metrics_port=None, warmup_shapes=[],
                                  tls_cert=str(ours["server-cert"]),
                                  tls_key=str(ours["server-key"]),
                                  tls_client_ca=str(ours["ca-cert"])))
    yield running.addresses[0], ours, foreign
    running.close()


def client_with(target, ca, key=None, chain=None):
    return EplbClient(target, root_certificates=str(ca), private_key=key and str(key),
                      certificate_chain=chain and str(chain), timeout=60,
                      retry=RetryPolicy(max_attempts=1))


def test_mutual_tls_end_to_end_through_the_client_library(mtls):
    target, ours, _ = mtls
    with client_with(target, ours["ca-cert"], ours["client-key"], ours["client-cert"]) as c:
        result = c.rebalance(loads(), **SMALL)
        assert c.health() == "SERVING"
    expected = eplb_server.plan(torch.from_numpy(loads()), **SMALL).phy2log.numpy()
    np.testing.assert_array_equal(result.phy2log, expected)


@pytest.mark.parametrize("who", ["certificate of a foreign CA", "server certificate as client",
                                 "no certificate"])
def test_clients_without_a_valid_certificate_are_refused(mtls, who):
    target, ours, foreign = mtls
    key, chain = {"certificate of a foreign CA": (foreign["client-key"], foreign["client-cert"]),
                  "server certificate as client": (foreign["server-key"], foreign["server-cert"]),
                  "no certificate": (None, None)}[who]
    with client_with(target, ours["ca-cert"], key, chain) as c:
        with pytest.raises(EplbError) as caught:
            c.rebalance(loads(), **SMALL)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_client_refuses_a_server_of_a_foreign_ca(mtls):
    target, ours, foreign = mtls
    with client_with(target, foreign["ca-cert"], ours["client-key"], ours["client-cert"]) as c:
        with pytest.raises(EplbError) as caught:
            c.rebalance(loads(), **SMALL)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_unix_socket_is_owner_only_even_under_a_permissive_umask(tmp_path):
    socket_path = tmp_path / "eplb.sock"
    previous = os.umask(0)
    try:
        running = ServerThread(Config(listen=[f"unix://{socket_path}"], metrics_port=None,
                                      warmup_shapes=[]))
    finally:
        os.umask(previous)
    try:
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
        assert os.stat(socket_path).st_uid == os.getuid()
        channel, client = stub(f"unix://{socket_path}")
        assert client.Rebalance(rebalance_request(), timeout=30).HasField("phy2log")
        channel.close()
    finally:
        running.close()
    assert not socket_path.exists()


def _request_fields(descriptor, seen=None):
    """Every field reachable from a request message, as (full name, field descriptor)."""
    seen = set() if seen is None else seen
    if descriptor.full_name in seen:
        return []
    seen.add(descriptor.full_name)
    out = []
    for field in descriptor.fields:
        out.append((field.full_name, field))
        if field.message_type is not None:
            out += _request_fields(field.message_type, seen)
    return out


def test_no_request_field_can_name_a_file():
    service = pb.DESCRIPTOR.services_by_name["PlacementService"]
    fields = [f for method in service.methods for f in _request_fields(method.input_type)]
    assert fields
    words = ("path", "file", "dir", "url", "uri", "location", "output", "dump", "save", "load_")
    for name, _ in fields:
        leaf = name.rsplit(".", 1)[1].lower()
        assert not any(w in leaf for w in words), name
    # Free text could carry a path: the one string field is the model name, used for logs.
    strings = {name for name, f in fields if f.type == FieldDescriptor.TYPE_STRING}
    assert strings == {"eplb.v1.RebalanceRequest.model"}
    blobs = {name for name, f in fields if f.type == FieldDescriptor.TYPE_BYTES}
    assert blobs == {"eplb.v1.Tensor.data"}


def _files_under(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_requests_make_the_server_write_or_open_no_file(subprocess_server, tmp_path):
    """Path-like model names, valid and invalid requests: the server's (empty) working
    directory stays empty, no file named in a request appears, and no file is opened."""
    import psutil

    process = psutil.Process(subprocess_server.server.proc.pid)
    opened_before = {f.path for f in process.open_files()}
    target_file = tmp_path / "written-by-server"
    names = [str(target_file), "../../written-by-server", "/etc/passwd", "file:///etc/shadow",
             "x" * 256, "%s%n{}"]
    channel, client = stub(subprocess_server.tcp)
    try:
        for name in names:
            request = rebalance_request()
            request.model = name
            assert client.Rebalance(request, timeout=30).HasField("phy2log")
            bad = rebalance_request(loads(), **dict(SMALL, num_gpus=7))
            bad.model = name
            with pytest.raises(grpc.RpcError):
                client.Rebalance(bad, timeout=30)
    finally:
        channel.close()
    assert _files_under(subprocess_server.cwd) == []
    assert not target_file.exists()
    assert not (subprocess_server.cwd.parent.parent / "written-by-server").exists()
    opened = {f.path for f in process.open_files()} - opened_before
    assert not opened, opened
