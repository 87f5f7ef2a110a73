"""TLS and mutual TLS options against the fake server with self-signed certificates."""

from __future__ import annotations

import datetime
import ipaddress
from concurrent import futures

import grpc
import pytest

from eplb_client import EplbClient, EplbError, RetryPolicy
from eplb_client.v1 import placement_pb2_grpc as pb_grpc

from . import fake_server

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def _cert(name: str, issuer=None, ca: bool = False):
    """(key PEM, cert PEM, key, cert); self-signed unless issuer=(key, cert)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    sign_key, issuer_name = (key, subject) if issuer is None else (issuer[0], issuer[1].subject)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(sign_key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM), key, cert


@pytest.fixture(scope="module")
def pki():
    ca_key_pem, ca_pem, ca_key, ca_cert = _cert("eplb test CA", ca=True)
    server = _cert("localhost", issuer=(ca_key, ca_cert))
    client = _cert("engine", issuer=(ca_key, ca_cert))
    return {"ca": ca_pem, "server": server[:2], "client": client[:2]}


def _start(pki, require_client_cert: bool):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_PlacementServiceServicer_to_server(fake_server.FakePlacement(), server)
    creds = grpc.ssl_server_credentials([pki["server"]], root_certificates=pki["ca"],
                                         require_client_auth=require_client_cert)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, f"127.0.0.1:{port}"


LOADS = [[1.0, 2.0, 3.0, 4.0]]
TOPO = dict(num_replicas=8, num_groups=1, num_nodes=1, num_gpus=2)


def test_tls_with_root_certificates(pki, tmp_path):
    server, target = _start(pki, require_client_cert=False)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki["ca"])
    try:
        with EplbClient(target, root_certificates=str(ca_file)) as c:
            assert c.rebalance(LOADS, **TOPO).phy2log.shape == (1, 8)
        with EplbClient(target, timeout=3, retry=RetryPolicy(max_attempts=1)) as plain:
            with pytest.raises(EplbError) as info:
                plain.rebalance(LOADS, **TOPO)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_mutual_tls(pki):
    server, target = _start(pki, require_client_cert=True)
    key, chain = pki["client"]
    try:
        with EplbClient(target, root_certificates=pki["ca"], private_key=key,
                        certificate_chain=chain, tls_server_name="localhost") as c:
            assert c.rebalance(LOADS, **TOPO).logcnt.sum() == 8
        with EplbClient(target, root_certificates=pki["ca"], timeout=3,
                        retry=RetryPolicy(max_attempts=1)) as no_cert:
            with pytest.raises(EplbError) as info:
                no_cert.rebalance(LOADS, **TOPO)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_half_a_client_certificate_is_refused():
    with pytest.raises(ValueError, match="go together"):
        EplbClient("127.0.0.1:1", root_certificates=b"x", private_key=b"k")


def test_cli_plaintext_against_tls_is_one_line(pki, tmp_path):
    from .conftest import run_cli

    server, target = _start(pki, require_client_cert=False)
    try:
        out = run_cli("health", "--target", target, "--timeout", "5")
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 3 and len(lines) == 1, out.stderr
        assert "add --tls" in lines[0]
        ca, loads = tmp_path / "ca.pem", tmp_path / "loads.json"
        ca.write_bytes(pki["ca"])
        loads.write_text("[[1, 2, 3, 4, 5, 6, 7, 8]]")
        out = run_cli("rebalance", loads, "--num-replicas", "8", "--num-groups", "1",
                      "--num-nodes", "1", "--num-gpus", "2", "--target", target, "--tls-ca", ca,
                      "--tls-server-name", "localhost", "--quiet", "--timeout", "5")
        assert out.returncode == 0, out.stderr  # with TLS asked for, the same server answers
    finally:
        server.stop(None)
