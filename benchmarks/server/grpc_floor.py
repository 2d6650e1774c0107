"""The gRPC floor: grpcio's asyncio server (on uvloop, as the server runs it) parsing each ModelInferRequest
and answering a fixed ModelInferResponse - what any Python gRPC front pays before doing any work.

    python grpc_floor.py PORT
"""

from __future__ import annotations

import sys
from typing import Any

import grpc
import uvloop

from modeldeploy_server.protos import grpc_predict_v2_pb2 as pb

RESPONSE = pb.ModelInferResponse(
    model_name="floor",
    model_version="1",
    outputs=[pb.ModelInferResponse.InferOutputTensor(name="output", datatype="FP32", shape=[1, 8])],
    raw_output_contents=[bytes(32)],
)


async def infer(request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
    return RESPONSE


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.enable_channelz", 0)])
    handler = grpc.unary_unary_rpc_method_handler(
        infer,
        request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
