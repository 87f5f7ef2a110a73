"""The README's CLI and Python examples run as written against a real server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np

from .conftest import REPO

README = REPO / "README.md"


def example(kind: str) -> str:
    """The fenced block that follows `<!-- tested: KIND ... -->` in the README."""
    found = re.search(r"<!-- tested: " + kind + r"\b[^>]*-->\s*```\w+\n(.*?)```",
                      README.read_text(), re.S)
    assert found, f"README has no tested {kind} example"
    return found.group(1)


def run(args, tmp_path, target):
    """In a scratch directory holding the README's example data, with .venv/bin on PATH."""
    shutil.copytree(REPO / "docs" / "examples", tmp_path / "docs" / "examples")
    env = {**os.environ, "EPLB_TARGET": target,
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def test_readme_size():
    assert len(README.read_bytes()) <= 8 * 1024


def test_cli_example(server, tmp_path):
    out = run(["bash", "-euo", "pipefail", "-c", example("cli")], tmp_path, server[0])
    assert out.returncode == 0, out.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert np.asarray(plan["phy2log"]).shape == (4, 80)  # the dump's dense layer dropped
    moved = json.loads((tmp_path / "next.json").read_text())["migration"]
    assert max(moved["layer_slots_changed"]) <= 8
    assert "against the hierarchical bound" in out.stderr
    assert out.stdout.strip().endswith("SERVING")


def test_python_example(server, tmp_path):
    out = run([sys.executable, "-c", example("python")], tmp_path, server[0])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("hierarchical ") and lines[0].endswith("(4, 80)")
    assert float(lines[-1]) >= 0
