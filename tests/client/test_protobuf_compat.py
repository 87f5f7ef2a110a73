"""The committed gencode pins no protobuf/grpcio newer than the declared floors; no torch needed."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import HERE, REPO

V1 = REPO / "client" / "eplb_client" / "v1"
PB2 = (V1 / "placement_pb2.py").read_text
GRPC = (V1 / "placement_pb2_grpc.py").read_text


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def declared_floor(package: str) -> tuple[int, ...]:
    """The `package>=X` floor in pyproject.toml's base dependencies."""
    text = (REPO / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.S | re.M).group(1)
    found = re.search(rf'"{re.escape(package)}\s*>=\s*([0-9.]+)', deps)
    assert found, f"pyproject.toml declares no {package}>= floor"
    return version_tuple(found.group(1))


def test_protobuf_runtime_check_is_within_the_floor():
    floor = declared_floor("protobuf")
    call = re.search(r"ValidateProtobufRuntimeVersion\(\s*[\w.]+,\s*(\d+),\s*(\d+),\s*(\d+)", PB2())
    if call:
        assert version_tuple(".".join(call.groups())) <= floor, (
            "gencode demands a newer protobuf than pyproject.toml declares")
    if floor < (5, 26):  # google.protobuf.runtime_version exists only from 5.26
        assert "runtime_version" not in PB2()


def test_grpc_generated_version_is_within_the_floor():
    found = re.search(r"GRPC_GENERATED_VERSION\s*=\s*['\"]([0-9.]+)['\"]", GRPC())
    if found:
        assert version_tuple(found.group(1)) <= declared_floor("grpcio"), (
            "gencode demands a newer grpcio than pyproject.toml declares")


def test_gencode_matches_the_recorded_generator():
    header = re.search(r"# Protobuf Python Version: ([0-9.]+)", PB2())
    generate = (REPO / "protos" / "generate.py").read_text()
    recorded = re.search(r'^GENERATOR = "([0-9.]+)"', generate, re.M).group(1)
    assert recorded.startswith("1.62.") and header and header.group(1).startswith("4.25.")
    assert "from . import placement_pb2" in GRPC()  # the relative-import fix survived


BLOCK_TORCH = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import numpy as np
import eplb_client
from eplb_client import (AsyncEplbClient, EplbClient, EplbError, RebalanceResult,
                         rebalance_experts)
import eplb_client.bench, eplb_client.cli, eplb_client.loaders, eplb_client.report
import eplb_client._commands
from eplb_client.tensors import from_tensor, to_tensor
assert (from_tensor(to_tensor(np.eye(3))) == np.eye(3)).all()
eplb_client.cli.build_parser().parse_args(["health"])
assert "matplotlib" not in sys.modules, "report imported matplotlib eagerly"
assert "grpc_status" not in sys.modules
print("no torch needed")
"""


def test_client_imports_without_torch():
    out = subprocess.run([sys.executable, "-c", BLOCK_TORCH], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "no torch needed"


def test_bare_import_does_no_work():
    code = ("import sys, eplb_client; print(sorted(m for m in sys.modules "
            "if m.startswith(('grpc', 'numpy', 'eplb_client'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['eplb_client']"


def test_compat_probe_passes_here():
    out = subprocess.run([sys.executable, str(HERE / "compat_probe.py")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OK protobuf ")


@pytest.mark.parametrize("bad", ["torch", "grpc_status"])
def test_probe_survives_missing_optional_modules(bad):
    code = (f"import sys, runpy; sys.modules[{bad!r}] = None; "
            f"runpy.run_path({str(HERE / 'compat_probe.py')!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
