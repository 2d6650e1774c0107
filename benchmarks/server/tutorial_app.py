"""The usual tutorial pattern, for comparison: load the model once, call ``run`` per request.

Pydantic request model, a plain ``def`` endpoint (FastAPI runs it in its thread pool), the result
returned as a dict. Configured by BENCH_MODEL_PATH and BENCH_THREADS.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

options = ort.SessionOptions()
options.intra_op_num_threads = int(os.environ.get("BENCH_THREADS", "0"))
session = ort.InferenceSession(os.environ["BENCH_MODEL_PATH"], options, providers=["CPUExecutionProvider"])
input_meta = session.get_inputs()[0]
dtype = np.int64 if input_meta.type == "tensor(int64)" else np.float32

app = FastAPI()


class PredictRequest(BaseModel):
    inputs: list[list[float]] | list[list[int]]


class PredictResponse(BaseModel):
    outputs: list[list[float]]


@app.post("/predict", response_model=PredictResponse)
def predict(request: PredictRequest) -> dict[str, list[list[float]]]:
    batch = np.asarray(request.inputs, dtype=dtype)
    result = session.run(None, {input_meta.name: batch})[0]
    return {"outputs": result.tolist()}


@app.get("/health")
def health() -> dict[str, bool]:
    return {"ok": True}
