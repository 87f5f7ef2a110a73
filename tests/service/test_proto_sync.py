"""protos/eplb/v1/placement.proto and the committed generated code in eplb_client.v1 agree."""

import pathlib

from eplb_client.v1 import placement_pb2, placement_pb2_grpc
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from .servicekit import REPO

PROTO = "eplb/v1/placement.proto"


def compiled_descriptor(out: pathlib.Path) -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto protoc makes from the .proto file as it is now."""
    target = out / "placement.pb"
    status = protoc.main(["protoc", f"-I{REPO / 'protos'}", f"--descriptor_set_out={target}",
                          PROTO])
    assert status == 0, "protoc failed on the .proto file"
    files = descriptor_pb2.FileDescriptorSet.FromString(target.read_bytes()).file
    (file,) = [f for f in files if f.name == PROTO]
    for message in file.message_type:
        _drop_default_json_names(message)
    return file


def _json_name(name: str) -> str:
    """protoc's default JSON name: lowerCamelCase of the field name."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _drop_default_json_names(message):
    """protoc writes json_name into descriptor sets; the Python generator leaves defaults out."""
    for field in message.field:
        if field.json_name == _json_name(field.name):
            field.ClearField("json_name")
    for nested in message.nested_type:
        _drop_default_json_names(nested)


def test_generated_descriptor_equals_the_proto_file(tmp_path):
    compiled = compiled_descriptor(tmp_path)
    generated = descriptor_pb2.FileDescriptorProto.FromString(
        placement_pb2.DESCRIPTOR.serialized_pb)
    assert generated == compiled, (
        "client/eplb_client/v1 is stale: run protos/generate.py after editing the .proto")


def test_generated_stub_serves_every_method(tmp_path):
    compiled = compiled_descriptor(tmp_path)
    source = pathlib.Path(placement_pb2_grpc.__file__).read_text()
    for service in compiled.service:
        for method in service.method:
            assert f"'/{compiled.package}.{service.name}/{method.name}'" in source, method.name
