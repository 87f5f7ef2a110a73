"""The sdist builds, a wheel builds from it, and that wheel's client works in a clean venv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.nbi", "*.nbc", "build", "dist",
                              "*.egg-info", ".pytest_cache", ".hypothesis")


def sh(*args, cwd=None, env=None):
    out = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                         timeout=300, env={**os.environ, **(env or {})})
    assert out.returncode == 0, f"{args}:\n{out.stdout}\n{out.stderr}"
    return out


def test_sdist_wheel_and_clean_install(tmp_path, fake):
    source, dist = tmp_path / "src", tmp_path / "dist"
    shutil.copytree(REPO, source, ignore=SKIP)  # never writes build files into the checkout
    dist.mkdir()
    sh(sys.executable, "-c",
       f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})", cwd=source)
    (sdist,) = dist.glob("eplb_service-*.tar.gz")
    with tarfile.open(sdist) as t:
        t.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
       "-w", dist, unpacked)  # from the sdist: it holds everything the wheel needs
    (wheel,) = dist.glob("eplb_service-*-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "eplb_client/v1/placement_pb2.py" in names and "eplb_server/server.py" in names
    assert not any(n.startswith("tests/") for n in names)

    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q"]
    sh(*pip, "--no-deps", wheel)
    sh(*pip, "-c", REPO / "constraints.txt", "grpcio", "protobuf", "numpy")  # the client's deps
    sh(python, "-c", "import sys, eplb_client; from eplb_client import EplbClient, load_loads; "
                     "assert 'torch' not in sys.modules")
    loads = tmp_path / "loads.json"
    loads.write_text(json.dumps([[float(i + j) for i in range(16)] for j in range(2)]))
    out = sh(venv / "bin" / "eplb-client", "rebalance", loads, "--num-replicas", "16",
             "--num-groups", "4", "--num-nodes", "2", "--num-gpus", "4", "--target", fake[0],
             "--quiet")
    assert len(json.loads(out.stdout)["phy2log"]) == 2
