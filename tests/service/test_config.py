"""config.resolve_device: the device the engine plans on, and torch imported only for a GPU."""

import os
import subprocess
import sys

import pytest

from eplb_server.config import GPU_DRIVER_FILES, resolve_device, torch_version

CHILD = """
import sys
from eplb_server.config import resolve_device, torch_version
print(resolve_device("auto"), resolve_device("cpu"), bool(torch_version()), "torch" in sys.modules)
"""


@pytest.mark.skipif(any(os.path.exists(p) for p in GPU_DRIVER_FILES),
                    reason="a GPU driver is present: auto asks torch")
def test_auto_without_a_gpu_driver_is_the_cpu_and_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert out == ["cpu", "cpu", "True", "False"]


def test_unknown_devices_are_refused():
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    assert torch_version()  # read from the installed package's metadata
