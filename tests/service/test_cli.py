"""`eplb-server` flags and their EPLB_* environment equivalents become the server Config."""

import pytest
import torch
from eplb_server.__main__ import config_from, main, parser


def config(argv, monkeypatch, **env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return config_from(parser().parse_args(argv))


def test_defaults_serve_on_localhost(monkeypatch):
    c = config([], monkeypatch)
    assert c.listen == ["127.0.0.1:50051"]
    assert (c.metrics_host, c.metrics_port) == ("127.0.0.1", 9090)
    assert c.device == "auto" and c.reflection and c.unix_socket_mode == 0o600
    assert c.warmup_shapes == ["2x16:32:8:2:4"]


def test_flags(monkeypatch):
    c = config(["--listen", "0.0.0.0:6000", "--listen", "unix:///run/eplb.sock",
                "--metrics-port", "0", "--max-layers", "100", "--max-request-bytes", "1000",
                "--no-reflection", "--warmup-shapes", "58x256:288:32:4:8", "--warmup-shapes",
                "4x16:32:8:2:4", "--unix-socket-mode", "660", "--max-concurrent", "3"], monkeypatch)
    assert c.listen == ["0.0.0.0:6000", "unix:///run/eplb.sock"]
    assert c.metrics_port is None  # 0 disables the endpoint
    assert c.limits.max_layers == 100 and c.limits.max_request_bytes == 1000
    assert not c.reflection and c.unix_socket_mode == 0o660 and c.max_concurrent == 3
    assert c.warmup_shapes == ["58x256:288:32:4:8", "4x16:32:8:2:4"]


def test_environment_equivalents(monkeypatch):
    c = config([], monkeypatch, EPLB_LISTEN="127.0.0.1:1,unix:///tmp/x.sock",
               EPLB_METRICS_PORT="9999", EPLB_MAX_EXPERTS="300", EPLB_NO_REFLECTION="true",
               EPLB_GRACE_PERIOD="2.5", EPLB_WARMUP_SHAPES="none", EPLB_TLS_CERT="c.pem")
    assert c.listen == ["127.0.0.1:1", "unix:///tmp/x.sock"]
    assert c.metrics_port == 9999 and c.limits.max_experts == 300 and not c.reflection
    assert c.grace_period == 2.5 and c.warmup_shapes == [] and c.tls_cert == "c.pem"


def test_flags_override_the_environment(monkeypatch):
    c = config(["--listen", "127.0.0.1:2", "--max-replicas", "64"], monkeypatch,
               EPLB_LISTEN="127.0.0.1:1", EPLB_MAX_REPLICAS="32")
    assert c.listen == ["127.0.0.1:2"] and c.limits.max_replicas == 64


@pytest.mark.parametrize("argv", [
    ["--tls-cert", "c.pem"],
    ["--tls-client-ca", "ca.pem"],
    ["--warmup-shapes", "58x256"],
    ["--max-layers", "0"],
    ["--max-concurrent", "0"],
    ["--device", "tpu"],
])
def test_bad_configuration_exits_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "eplb-server" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--device", "cuda"])
    assert caught.value.code == 2
    assert "CUDA" in capsys.readouterr().err


def test_container_healthcheck_reports_serving(server, capsys):
    from eplb_server import healthcheck

    assert healthcheck.main([server.addresses[1]]) == 0
    assert "SERVING" in capsys.readouterr().out


def test_container_healthcheck_fails_without_a_server(tmp_path, capsys):
    from eplb_server import healthcheck

    assert healthcheck.main([f"unix://{tmp_path}/nothing.sock"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().out


def test_a_malformed_variable_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setenv("EPLB_METRICS_PORT", "ninety")
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
    assert "--metrics-port" in capsys.readouterr().err


def test_compile_only_fills_the_cache_and_exits_zero(tmp_path):
    """A real subprocess, as an image build runs it: warm-up in-process, no server."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "eplb_server", "--compile-only",
                           "--warmup-shapes", "1x8:16:4:2:2"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "compile 1/" in done.stderr and "scrambled mapping" in done.stderr
