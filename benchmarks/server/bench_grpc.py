"""REST against gRPC on the same server, and against KServe's ModelServer over gRPC, side by side in one run.

Contenders, for each model (the MLP and the 4-layer encoder of models.py):
  (a) modeldeploy_server over REST (a JSON body, as curl or a plain HTTP client sends it);
  (b) the same process over gRPC (``raw_input_contents``, as tritonclient sends it);
  (c) KServe's ModelServer gRPC front on the same ONNX file and threads (kserve_onnx.py, in a venv of
      its own under /tmp with kserve installed from PyPI; --no-kserve leaves it out);
  (d) the gRPC floor (MLP only): grpcio's asyncio server answering a fixed message (grpc_floor.py), what
      any Python gRPC front pays per call before doing any work.
Load: h2load (Debian ``nghttp2-client``; installed with apt-get when missing) for every contender, so the
load generator is the same: HTTP/1.1 for REST, HTTP/2 with gRPC framing for gRPC; c connections with one
request or call in flight each, at c = 1 and 32, in interleaved rounds (the best of each is kept).
Reported: requests/s, mean latency and the serving process's CPU time (all threads) per request, and
gRPC's CPU per call over REST's per request (goal: within 1.5x). Every answer is checked: our server's
request counters (by protocol) must count each one ok; each KServe answer must carry one response
message (h2load's data bytes per call equal one framed response).

Usage: .venv/bin/python benchmarks/server/bench_grpc.py [--quick] [--models mlp,encoder4] [--no-kserve]
Results are printed and written to benchmarks/results/grpc.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import models
import numpy as np
from bench_server import CACHE, find_tool, process_cpu_seconds, running
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2

from localcluster import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
KSERVE_VENV = Path(os.environ.get("MODELDEPLOY_BENCH_KSERVE_VENV", "/tmp/modeldeploy-bench-kserve"))
METHOD = "/inference.GRPCInferenceService/ModelInfer"
LEVELS = (1, 32)


@dataclass
class Run:
    concurrency: int
    requests_per_s: float
    mean_ms: float
    requests: int
    failures: int
    cpu_ms_per_request: float


@dataclass
class Contender:
    label: str
    protocol: str  # rest | grpc
    url: str
    body: Path
    pid: int
    check: Any  # (requests answered per h2load) -> failures found on the server's side
    runs: dict[int, list[Run]] = field(default_factory=dict)


def ensure_kserve() -> Path:
    """A venv with KServe (and onnxruntime) from PyPI, kept between runs."""
    python = KSERVE_VENV / "bin" / "python"
    probe = [str(python), "-c", "import kserve, onnxruntime"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"installing kserve into {KSERVE_VENV} (a few minutes, once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(KSERVE_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "kserve", "onnxruntime"], check=True)
    return python


def bodies(name: str, workdir: Path) -> tuple[Path, Path]:
    """The REST JSON body and the framed gRPC message (raw contents) of one row."""
    input_name, array = models.sample_input(name, 1, seed=1)
    datatype = "FP32" if array.dtype == np.float32 else "INT64"
    document = {"inputs": [{"name": input_name, "shape": list(array.shape), "datatype": datatype,
                            "data": array.ravel().tolist()}]}
    request = service_pb2.ModelInferRequest(model_name=name)
    request.inputs.add(name=input_name, datatype=datatype, shape=array.shape)
    request.raw_input_contents.append(array.tobytes())
    message = request.SerializeToString()
    rest, framed = workdir / f"{name}.json", workdir / f"{name}.grpc"
    rest.write_text(json.dumps(document))
    framed.write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)
    return rest, framed


def h2load(tool: str, contender: Contender, concurrency: int, requests: int) -> Run:
    """A fixed number of requests (a timed run would cut the last calls off, which gRPC counts as
    cancelled); the warm-up's rate sizes it."""
    count = max(requests, concurrency)
    command = [tool, "-c", str(concurrency), "-m", "1", "-n", str(count), "-d", str(contender.body)]
    if contender.protocol == "rest":
        command += ["--h1", "-H", "content-type: application/json"]
    else:
        command += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    cpu_before = process_cpu_seconds(contender.pid)
    output = subprocess.run([*command, contender.url], capture_output=True, text=True, check=True).stdout
    cpu = process_cpu_seconds(contender.pid) - cpu_before
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", output)
    rate = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", output)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", output)
    data = re.search(r"\((\d+)\) data", output)
    if not (done and rate and mean and data):
        raise RuntimeError(f"cannot read h2load's output:\n{output}")
    succeeded, failed = int(done.group(2)), int(done.group(3))
    failures = failed + contender.check(succeeded, int(data.group(1)))
    return Run(concurrency, float(rate.group(1)), _milliseconds(mean.group(1)), succeeded, failures,
               1000 * cpu / max(1, succeeded))


UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _milliseconds(text: str) -> float:
    """h2load's durations ("812us", "1.25ms", "1.02s") in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise RuntimeError(f"unknown duration {text!r}")
    return float(match.group(1)) * UNITS_MS[match.group(2)]


def counter_check(metrics_url: str, protocol: str) -> Any:
    """Failures as our server counted them: calls not counted ok for the protocol, or counted otherwise."""
    def totals() -> dict[str, float]:
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=10).text):
            for sample in family.samples:
                if sample.name == "modeldeploy_requests_total" and sample.labels.get("protocol") == protocol:
                    found[sample.labels["outcome"]] = found.get(sample.labels["outcome"], 0.0) + sample.value
        return found

    state = {"before": totals()}

    def check(succeeded: int, data_bytes: int) -> int:
        time.sleep(0.2)  # the last answers' counters
        now = totals()
        delta = {k: v - state["before"].get(k, 0.0) for k, v in now.items()}
        state["before"] = now
        failed = sum(v for k, v in delta.items() if k != "ok")
        return int(failed) + max(0, succeeded - int(delta.get("ok", 0.0)))

    return check


def framed_check(target: str, name: str, body: Path) -> Any:
    """Failures as h2load's data bytes tell them: each answered call carries one framed response."""
    request = service_pb2.ModelInferRequest.FromString(body.read_bytes()[5:])
    with grpc.insecure_channel(target) as channel:
        answer = channel.unary_unary(
            METHOD, request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )(request, timeout=60)
    assert answer.raw_output_contents or answer.outputs[0].contents.ListFields(), f"{name}: empty answer"
    frame = 5 + int(answer.ByteSize())

    def check(succeeded: int, data_bytes: int) -> int:
        return max(0, succeeded - data_bytes // frame)

    return check


@contextlib.contextmanager
def listening(command: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process that has no HTTP health endpoint, ready once its port takes connections."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=HERE)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command} did not listen:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def servers(name: str, path: Path, threads: int, workdir: Path, kserve: Path | None,
            stack: contextlib.ExitStack) -> list[Contender]:
    encoder = name.startswith("encoder")
    rest_body, grpc_body = bodies(name, workdir)
    http, grpc_port = free_port(), free_port()
    ours = stack.enter_context(running(
        [sys.executable, "-m", "modeldeploy_server", "--model", str(path), "--host", "127.0.0.1",
         "--port", str(http), "--grpc-port", str(grpc_port), "--intra-op-threads", str(threads),
         "--intra-op-spinning", "true" if encoder else "false", "--max-batch-size", "4" if encoder else "64",
         "--max-batch-delay-ms", "2", "--log-level", "warning"],
        {}, f"http://127.0.0.1:{http}/health/ready", workdir / f"{name}-modeldeploy.log",
    ))
    metrics = f"http://127.0.0.1:{http}/metrics"
    found = [
        Contender("modeldeploy REST", "rest", f"http://127.0.0.1:{http}/v2/models/{name}/infer", rest_body,
                  ours.pid, counter_check(metrics, "rest")),
        Contender("modeldeploy gRPC", "grpc", f"http://127.0.0.1:{grpc_port}{METHOD}", grpc_body, ours.pid,
                  counter_check(metrics, "grpc")),
    ]
    if not encoder:
        floor_port = free_port()
        floor = stack.enter_context(listening([sys.executable, str(HERE / "grpc_floor.py"), str(floor_port)],
                                              floor_port, workdir / "grpc-floor.log"))
        found.append(Contender("gRPC floor", "grpc", f"http://127.0.0.1:{floor_port}{METHOD}", grpc_body, floor.pid,
                               framed_check(f"127.0.0.1:{floor_port}", name, grpc_body)))
    if kserve is not None:
        k_http, k_grpc = free_port(), free_port()
        peer = stack.enter_context(running(
            [str(kserve), str(HERE / "kserve_onnx.py"), "--model_path", str(path), "--model_name", name,
             "--threads", str(threads), "--http_port", str(k_http), "--grpc_port", str(k_grpc)],
            {}, f"http://127.0.0.1:{k_http}/v2/models/{name}/ready", workdir / f"{name}-kserve.log",
        ))
        found.append(Contender("KServe gRPC", "grpc", f"http://127.0.0.1:{k_grpc}{METHOD}", grpc_body, peer.pid,
                               framed_check(f"127.0.0.1:{k_grpc}", name, grpc_body)))
    return found


def measure(tool: str, lineup: list[Contender], rounds: int, seconds: float) -> None:
    rates = {}
    for contender in lineup:  # warm-up; its rate sizes the runs
        for concurrency in LEVELS:
            rates[contender.label, concurrency] = h2load(tool, contender, concurrency, 2 * concurrency).requests_per_s
    for round_index in range(rounds):
        for concurrency in LEVELS:
            for contender in lineup:
                run = h2load(tool, contender, concurrency, int(rates[contender.label, concurrency] * seconds))
                contender.runs.setdefault(concurrency, []).append(run)
                print(f"    r{round_index + 1} {contender.label:<18} c={concurrency:<3} {run.requests_per_s:9.1f} "
                      f"req/s  mean {run.mean_ms:8.2f} ms  cpu {run.cpu_ms_per_request:7.3f} ms/req  "
                      f"failures {run.failures}", flush=True)


def summarize(name: str, lineup: list[Contender]) -> tuple[dict[str, Any], list[str]]:
    best = {c.label: {level: max(c.runs[level], key=lambda r: r.requests_per_s) for level in LEVELS} for c in lineup}
    # CPU per request: the cheapest round (the least disturbed by the machine's other work)
    cpu = {c.label: {level: min(r.cpu_ms_per_request for r in c.runs[level]) for level in LEVELS} for c in lineup}
    lines = []
    for level in LEVELS:
        rest, ours = cpu["modeldeploy REST"][level], cpu["modeldeploy gRPC"][level]
        ratio = ours / rest if rest else float("inf")
        floor = cpu.get("gRPC floor", {}).get(level)
        beside = f"; the bare grpcio floor alone {floor:.3f} = {floor / rest:.2f} x" if floor else ""
        lines.append(f"  [{'met' if ratio <= 1.5 else 'MISSED'}] c={level}: gRPC {ours:.3f} ms CPU per call = "
                     f"{ratio:.2f} x REST's {rest:.3f} per request (goal <= 1.5){beside}")
        if "KServe gRPC" in best:
            peer, mine = best["KServe gRPC"][level], best["modeldeploy gRPC"][level]
            lines.append(f"  [{'met' if mine.requests_per_s >= peer.requests_per_s else 'MISSED'}] c={level}: "
                         f"gRPC {mine.requests_per_s:.0f} req/s vs KServe {peer.requests_per_s:.0f} "
                         f"({mine.requests_per_s / peer.requests_per_s:.2f} x); CPU per call "
                         f"{cpu['modeldeploy gRPC'][level]:.3f} vs {cpu['KServe gRPC'][level]:.3f} ms")
    data = {label: {str(level): {**asdict(run), "cpu_ms_per_request_best": cpu[label][level]}
                    for level, run in runs.items()} for label, runs in best.items()}
    return data, [f"{name}:", *lines]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: one short round")
    parser.add_argument("--models", default="mlp,encoder4", help="comma list of mlp, encoder4, encoder12")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads, every contender")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (best kept)")
    parser.add_argument("--no-kserve", action="store_true", help="leave KServe's ModelServer out")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "grpc.json")
    args = parser.parse_args()
    tool = find_tool("h2load", "nghttp2-client")
    kserve = None if args.no_kserve else ensure_kserve()
    rounds = args.rounds or (1 if args.quick else 3)
    report: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "benchmarks/server/bench_grpc.py", *sys.argv[1:]]),
        "cpus": os.cpu_count(), "threads": args.threads, "rounds": rounds, "models": {},
    }
    summary: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        for name in args.models.split(","):
            path = models.ensure(CACHE, name)
            seconds = 2.0 if args.quick else (5.0 if name == "mlp" else 8.0)
            load = os.getloadavg()[0]
            print(f"\n== {name}: {rounds} interleaved round(s) of {seconds:.0f} s (load average {load:.1f})",
                  flush=True)
            with contextlib.ExitStack() as stack:
                lineup = servers(name, path, args.threads, Path(tmp), kserve, stack)
                measure(tool, lineup, rounds, seconds)
            data, lines = summarize(name, lineup)
            report["models"][name] = {**data, "load_average_before_after": [load, os.getloadavg()[0]]}
            summary += lines
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    report["summary"] = summary
    print("\n== targets (best throughput; CPU per request from the least disturbed round)")
    print("\n".join(summary))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"\ntotal {report['elapsed_s']} s; results in {args.output}")
    failed = [run for model in report["models"].values() for label, runs in model.items()
              if isinstance(runs, dict) for run in runs.values() if run["failures"]]
    if failed:
        print(f"WARNING: {len(failed)} load runs saw failed requests", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
