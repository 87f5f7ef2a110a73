"""Regenerates the committed Python code for protos/eplb/v1/placement.proto into eplb_client.v1."""

import pathlib
import re
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO = "eplb/v1/placement.proto"
TARGET = ROOT / "client" / "eplb_client" / "v1"


def main() -> int:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as out:
        args = ["protoc", f"-I{ROOT / 'protos'}", f"--python_out={out}", f"--pyi_out={out}",
                f"--grpc_python_out={out}", PROTO]
        if protoc.main(args) != 0:
            return 1
        TARGET.mkdir(parents=True, exist_ok=True)
        for name in ("placement_pb2.py", "placement_pb2.pyi", "placement_pb2_grpc.py"):
            text = (pathlib.Path(out) / "eplb" / "v1" / name).read_text()
            text = re.sub(r"^from eplb\.v1 import ", "from . import ", text, flags=re.M)
            (TARGET / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
