"""The checked-in gRPC stubs are what protoc makes of the checked-in proto, and speak the protocol's names
and wire format: Triton's proto (what tritonclient is generated from) declares the same package, service,
methods and field numbers. Both register the messages of package ``inference``, so one process cannot
import both: each side is read in a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DESCRIBE = """
import json, sys, importlib
module = importlib.import_module(sys.argv[1])
service = module.DESCRIPTOR.services_by_name["GRPCInferenceService"]
messages = {}
def describe(message):
    messages[message.full_name] = {f.name: [f.number, f.type, f.label] for f in message.fields}
    for nested in message.nested_types:
        describe(nested)
for message in module.DESCRIPTOR.message_types_by_name.values():
    describe(message)
methods = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
print(json.dumps({"service": service.full_name, "methods": methods, "messages": messages}))
"""


def describe(module: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-c", DESCRIBE, module], capture_output=True, text=True, check=True)
    described: dict[str, Any] = json.loads(result.stdout)
    return described


def test_the_stubs_are_up_to_date_with_the_proto() -> None:
    result = subprocess.run([sys.executable, str(REPO / "hack" / "make_grpc_stubs.py"), "--check"], check=False)
    assert result.returncode == 0, "run `python hack/make_grpc_stubs.py` (or `make generate`) and commit the result"


def test_package_service_methods_and_fields_are_the_ones_triton_clients_speak() -> None:
    ours = describe("modeldeploy_server.protos.grpc_predict_v2_pb2")
    triton = describe("tritonclient.grpc.service_pb2")
    assert ours["service"] == triton["service"] == "inference.GRPCInferenceService"
    assert list(ours["methods"]) == [
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
    ]
    for method, types in ours["methods"].items():
        assert triton["methods"][method] == types, method
    for message, fields in ours["messages"].items():
        for field, wire in fields.items():  # Triton's proto adds fields, never changes one of ours
            assert triton["messages"][message][field] == wire, (message, field)
