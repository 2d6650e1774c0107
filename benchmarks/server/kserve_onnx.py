"""KServe's ModelServer serving one ONNX file with onnxruntime: the peer contender of bench_grpc.py.

Runs in a virtual env of its own (``pip install kserve onnxruntime``; bench_grpc.py makes it), since
KServe pins its own FastAPI, protobuf and gRPC versions. A custom ``kserve.Model`` as KServe's docs show
one: a session made in ``load``, ``predict`` running it on the request's tensors (as numpy) and
answering binary (raw) outputs.

    python kserve_onnx.py --model_path m.onnx --model_name m --threads 2 --http_port 8080 --grpc_port 8081
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import kserve
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse

DATATYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32", "bool": "BOOL"}


class OnnxModel(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str, threads: int) -> None:
        super().__init__(name)
        self.path = path
        self.threads = threads
        self.session: Any = None
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.ready = True
        return True

    async def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> InferResponse:
        feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        values = self.session.run(None, feeds)
        outputs = []
        for described, value in zip(self.session.get_outputs(), values, strict=True):
            output = InferOutput(name=described.name, shape=list(value.shape), datatype=DATATYPES[str(value.dtype)])
            output.set_data_from_numpy(value, binary_data=True)
            outputs.append(output)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=outputs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--http_port", type=int, default=8080)
    parser.add_argument("--grpc_port", type=int, default=8081)
    args, _ = parser.parse_known_args()
    model = OnnxModel(args.model_name, args.model_path, args.threads)
    server = kserve.ModelServer(
        http_port=args.http_port, grpc_port=args.grpc_port, workers=1, enable_latency_logging=False
    )
    # KServe logs every gRPC call at INFO by default; quiet, as the other contenders are.
    logging.getLogger("kserve").setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
