"""Loads the modules of real vLLM / SGLang wheels that call the EPLB algorithm, without their
GPU stack: only those files are extracted and imported under bare parent packages.

Set EPLB_ENGINE_WHEELS to a directory holding the wheels, fetched without dependencies:
    pip download --no-deps sglang==0.5.23 -d /tmp/engine-wheels
    pip download --no-deps vllm==0.34.0 -d /tmp/engine-wheels
    pip download --no-deps vllm==0.13.0 -d /tmp/engine-wheels   # 0.18.0, 0.23.0 too
Tests that need a wheel skip when it is absent; each vLLM wheel found runs them once.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import re
import sys
import types
import zipfile

VLLM_POLICY = "vllm/distributed/eplb/policy/"
SGLANG_FILES = ("sglang/srt/eplb/eplb_algorithms/", "sglang/srt/plugins/",
                "sglang/srt/environ.py")


def wheels(name: str) -> list[pathlib.Path]:
    """The `name` wheels in $EPLB_ENGINE_WHEELS, newest version last."""
    folder = os.environ.get("EPLB_ENGINE_WHEELS")
    if not folder:
        return []
    found = pathlib.Path(folder).glob(f"{name}-*.whl")
    return sorted(found, key=lambda p: tuple(int(x) for x in version_of(p).split(".")))


def version_of(wheel: pathlib.Path) -> str:
    return re.match(r"[^-]+-(\d+\.\d+\.\d+)", wheel.name).group(1)


def extract(wheel: pathlib.Path, prefixes, out: pathlib.Path) -> pathlib.Path:
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            if member.startswith(tuple(prefixes)) and member.endswith(".py"):
                z.extract(member, out)
    return out


def bare_package(name: str, path: pathlib.Path) -> types.ModuleType:
    """A package whose submodules load from `path` without running its __init__.py."""
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module
    return module


def load_vllm_policy(wheel: pathlib.Path, out: pathlib.Path):
    """(AbstractEplbPolicy, DefaultEplbPolicy) of a vLLM wheel, from its own policy files."""
    root = extract(wheel, [VLLM_POLICY], out) / VLLM_POLICY
    name = f"_vllm_{version_of(wheel).replace('.', '_')}_policy"
    bare_package(name, root)
    abstract = importlib.import_module(f"{name}.abstract")
    default = importlib.import_module(f"{name}.default")
    return abstract.AbstractEplbPolicy, default.DefaultEplbPolicy


def extract_vllm_plugin_loader(wheel: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """vLLM's plugin loader (vllm/plugins/__init__.py and the vllm/envs.py it reads, both
    standard library only) from the wheel; returns the directory to serve as package `vllm`."""
    return extract(wheel, ["vllm/plugins/__init__.py", "vllm/envs.py"], out) / "vllm"


SGLANG_PACKAGES = ("sglang", "sglang.srt", "sglang.srt.eplb")


def load_sglang(wheel: pathlib.Path, out: pathlib.Path):
    """SGLang's eplb_algorithms module and its plugin loader (sglang.srt.plugins, whose
    load_plugins runs the entry points of the `sglang.srt.plugins` group and applies their
    hooks) from the wheel's own files; both import nothing beyond torch and the standard
    library."""
    root = extract(wheel, SGLANG_FILES, out)
    for name in SGLANG_PACKAGES:
        bare_package(name, root.joinpath(*name.split(".")))
    algorithms = importlib.import_module("sglang.srt.eplb.eplb_algorithms")
    plugins = importlib.import_module("sglang.srt.plugins")
    return algorithms, plugins


def unload(prefix: str) -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]
