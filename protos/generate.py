"""Regenerates the committed Python code for protos/eplb/v1/placement.proto into eplb_client.v1."""

import argparse
import pathlib
import re
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO = "eplb/v1/placement.proto"
TARGET = ROOT / "client" / "eplb_client" / "v1"
# The generator whose output the client ships. grpcio-tools 1.62.x (protoc 25) writes gencode
# with no runtime-version check, so the client runs on protobuf 3.20.3 .. 7.x and grpcio >= 1.59
# (the matrix in docs/client.md); newer generators pin protobuf and grpcio to their own versions.
# Generate in a throwaway venv:
#   python -m venv /tmp/gen && /tmp/gen/bin/pip install grpcio-tools==1.62.3
#   /tmp/gen/bin/python protos/generate.py
GENERATOR = "1.62.3"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--any-version", action="store_true",
                        help=f"allow a grpcio-tools other than {GENERATOR}")
    args = parser.parse_args(argv)
    from importlib.metadata import version

    from grpc_tools import protoc

    found = version("grpcio-tools")
    if found != GENERATOR and not args.any_version:
        print(f"grpcio-tools {found} is installed; the committed code comes from {GENERATOR} "
              "(see GENERATOR in this file), or pass --any-version", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as out:
        cmd = ["protoc", f"-I{ROOT / 'protos'}", f"--python_out={out}", f"--pyi_out={out}",
               f"--grpc_python_out={out}", PROTO]
        if protoc.main(cmd) != 0:
            return 1
        TARGET.mkdir(parents=True, exist_ok=True)
        for name in ("placement_pb2.py", "placement_pb2.pyi", "placement_pb2_grpc.py"):
            text = (pathlib.Path(out) / "eplb" / "v1" / name).read_text()
            text = re.sub(r"^from eplb\.v1 import ", "from . import ", text, flags=re.M)
            (TARGET / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
