"""Serving benchmark, side by side in one run on the same machine, models, threads and load generator.

Contenders, for each model:
  (a) limits: onnxruntime ``run`` in-process at the best batch size (no HTTP), and a bare ASGI app under
      uvicorn that reads the body and returns a fixed response (the HTTP floor; MLP only - for the
      encoder it is three orders of magnitude below a run);
  (b) modeldeploy_server (``python -m modeldeploy_server``);
  (c) the tutorial pattern: FastAPI + pydantic, ``run`` per request (tutorial_app.py).
Load: ``wrk`` (Debian package; installed with apt-get when missing) with a Lua script posting one
request body, one connection per concurrent client. Reported: requests/s and p50/p99 latency at
concurrency 1, 8 and 32 (throughput at saturation = the best of those), compared with the targets.

Usage: .venv/bin/python benchmarks/server/bench_server.py [--quick] [--profile] [--models mlp,encoder4]
Results are printed and written to benchmarks/results/server.json.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import models
import numpy as np
import onnxruntime as ort

from localcluster import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

CACHE = Path(os.environ.get("MODELDEPLOY_BENCH_CACHE", Path.home() / ".cache" / "modeldeploy" / "bench"))
LUA = """
local f = io.open("{body}", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT {{\\"requests\\": %d, \\"duration_us\\": %d, \\"errors\\": %d, \\"non2xx\\": %d, "
    .. "\\"p50_us\\": %d, \\"p99_us\\": %d, \\"mean_us\\": %f}}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


@dataclass
class LoadResult:
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    failures: int
    cpu_ms_per_request: float = 0.0  # the serving process's CPU time (all threads) per request


@dataclass
class ContenderResult:
    name: str
    runs: list[LoadResult] = field(default_factory=list)

    def at(self, concurrency: int) -> LoadResult | None:
        return next((r for r in self.runs if r.concurrency == concurrency), None)

    @property
    def saturation(self) -> float:
        return max((r.requests_per_s for r in self.runs), default=0.0)


@dataclass
class InProcess:
    one_run_ms: float
    best_batch: int
    best_rows_per_s: float
    by_batch: dict[int, float]
    cpu_ms_one_run: float = 0.0  # process CPU (all threads) of one batch-1 run


# --- tools -----------------------------------------------------------------------------------------


def find_tool(binary: str, package: str) -> str:
    """A load generator from its Debian package, installed with apt-get when missing (as root)."""
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"{binary} not found: installing the Debian package {package}", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", package], check=False, capture_output=True)
        if not shutil.which(binary):
            subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", package], check=True, capture_output=True)
        found = shutil.which(binary)
        if found:
            return found
    sys.exit(f"{binary} is needed: install it (Debian/Ubuntu: apt-get install {package})")


def find_wrk() -> str:
    return find_tool("wrk", "wrk")


@contextmanager
def running(command: list[str], env: dict[str, str], health_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=HERE)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command} exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(health_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command} not healthy:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def process_cpu_seconds(pid: int | None) -> float:
    """user + system CPU of a process and its threads (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    wrk: str, url: str, body: Path, concurrency: int, seconds: float, workdir: Path, pid: int | None = None
) -> LoadResult:
    script = workdir / f"post-{body.stem}.lua"
    script.write_text(LUA.format(body=body))
    command = [
        wrk,
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "60s",
        "-s",
        str(script),
        url,
    ]
    cpu_before = process_cpu_seconds(pid)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    cpu = process_cpu_seconds(pid) - cpu_before
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    data = json.loads(line.removeprefix("RESULT "))
    return LoadResult(
        concurrency=concurrency,
        requests_per_s=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        requests=data["requests"],
        failures=data["errors"] + data["non2xx"],
        cpu_ms_per_request=1000 * cpu / max(1, data["requests"]),
    )


# --- measurements ----------------------------------------------------------------------------------


def measure_in_process(path: Path, name: str, threads: int, batches: list[int], budget_s: float) -> InProcess:
    """Best of spinning and non-spinning thread pools; per batch size, the median of repeated runs."""
    best_single = cpu_single = float("inf")
    by_batch: dict[int, float] = {}
    for spinning in ("1", "0"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for batch in batches:
            input_name, array = models.sample_input(name, batch)
            session.run(None, {input_name: array})
            times: list[float] = []
            deadline = time.perf_counter() + budget_s
            cpu_started = time.process_time()
            while time.perf_counter() < deadline or len(times) < 5:
                started = time.perf_counter()
                session.run(None, {input_name: array})
                times.append(time.perf_counter() - started)
            cpu_per_run = (time.process_time() - cpu_started) / len(times)
            median = statistics.median(times)
            by_batch[batch] = max(by_batch.get(batch, 0.0), batch / median)
            if batch == 1:
                best_single = min(best_single, median)
                cpu_single = min(cpu_single, cpu_per_run)
    best = max(by_batch, key=lambda b: by_batch[b])
    return InProcess(best_single * 1000, best, by_batch[best], by_batch, cpu_single * 1000)


def request_bodies(name: str, workdir: Path) -> tuple[Path, Path]:
    input_name, array = models.sample_input(name, 1, seed=1)
    datatype = "FP32" if array.dtype == np.float32 else "INT64"
    oip = {
        "inputs": [
            {"name": input_name, "shape": list(array.shape), "datatype": datatype, "data": array.ravel().tolist()}
        ]
    }
    tutorial = {"inputs": array.tolist()}
    oip_path, tutorial_path = workdir / f"{name}-oip.json", workdir / f"{name}-tutorial.json"
    oip_path.write_text(json.dumps(oip))
    tutorial_path.write_text(json.dumps(tutorial))
    return oip_path, tutorial_path


def profile_server(pid: int, wrk: str, url: str, body: Path, seconds: float, workdir: Path) -> list[str]:
    """Sample the server's Python stacks with py-spy while wrk keeps it saturated; top functions."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    stacks = workdir / "stacks.txt"
    recorder = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "250",
            "--duration",
            str(round(seconds)),
            "--format",
            "raw",
            "--output",
            str(stacks),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    run_wrk(wrk, url, body, 32, seconds, workdir)
    recorder.wait(timeout=60)
    return summarize_stacks(stacks.read_text())


MAIN_BUCKETS = [
    ("decode request (orjson + numpy)", ("decode_request",)),
    ("check tensors against the model", ("prepare_feeds",)),
    ("encode response (orjson)", ("encode_response",)),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("batcher: queue, dispatch, futures", ("Batcher.infer", "Batcher._dispatch", "Batcher._finish")),
    ("send response (uvicorn + socket write)", ("RequestResponseCycle.send",)),
    ("infer handler, other", ("InferFront", "InferEndpoint", "read_body", "DataPlane")),
    ("HTTP parsing and protocol (uvicorn)", ("httptools_impl",)),
]
WORKER_BUCKETS = [
    ("onnxruntime run", ("Session.run",)),
    ("drift statistics", ("InputMonitor", "drift.py")),
    ("hand results to the loop", ("_reply",)),
    ("assemble and split batches (numpy)", ("_execute", "_split")),
]


def summarize_stacks(raw: str) -> list[str]:
    """Share of samples per activity, for the event-loop thread and the inference worker."""
    buckets: dict[str, collections.Counter[str]] = {
        "event loop": collections.Counter(),
        "worker": collections.Counter(),
    }
    for line in raw.splitlines():
        frames_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = frames_text.split(";")
        worker = any("inference-" in f or "Batcher._worker" in f for f in frames)
        if not worker and any("Thread._bootstrap" in f for f in frames):
            continue  # executor threads (large bodies), not part of this load
        table = WORKER_BUCKETS if worker else MAIN_BUCKETS
        label = next((name for name, keys in table if any(k in f for f in frames for k in keys)), None)
        if label is None:
            label = "waiting for a batch" if worker else "event loop internals (uvloop, waiting)"
        buckets["worker" if worker else "event loop"][label] += count
    lines = ["py-spy samples of the server under wrk at c=32 (250 Hz):"]
    for thread, counter in buckets.items():
        total = sum(counter.values()) or 1
        lines.append(f"  {thread} thread ({total} samples):")
        lines += [f"    {100 * n / total:5.1f}%  {label}" for label, n in counter.most_common()]
    return lines


# --- main ------------------------------------------------------------------------------------------


def verdicts(
    name: str, limit: InProcess, server: ContenderResult, tutorial: ContenderResult, floor: ContenderResult | None
) -> list[str]:
    out = []

    def line(ok: bool, text: str) -> None:
        out.append(f"  [{'met' if ok else 'MISSED'}] {text}")

    one = limit.one_run_ms
    if name.startswith("encoder"):
        ratio = server.saturation / limit.best_rows_per_s
        line(
            ratio >= 0.97,
            f"throughput {server.saturation:.1f} req/s = {ratio:.3f} x in-process limit "
            f"{limit.best_rows_per_s:.1f} (target >= 0.97)",
        )
        c8, c1 = server.at(8), server.at(1)
        if c8:
            ratio8 = c8.p99_ms / (8 * one)
            line(
                ratio8 <= 1.15,
                f"p99 at c=8 {c8.p99_ms:.1f} ms = {ratio8:.3f} x (8 x one run = {8 * one:.1f} ms) "
                + (f" (target <= 1.15; tutorial: {t8.p99_ms / (8 * one):.2f} x)" if (t8 := tutorial.at(8)) else ""),
            )
        if c1:
            ratio1 = c1.p50_ms / one
            line(
                ratio1 <= 1.05, f"p50 at c=1 {c1.p50_ms:.2f} ms = {ratio1:.3f} x one run {one:.2f} ms (target <= 1.05)"
            )
        tr = tutorial.saturation / limit.best_rows_per_s
        out.append(f"  tutorial app: {tutorial.saturation:.1f} req/s = {tr:.3f} x in-process limit")
    else:
        s32, t32 = server.at(32), tutorial.at(32)
        if s32 and t32:
            ratio = s32.requests_per_s / t32.requests_per_s
            line(
                ratio >= 2 and s32.p99_ms < t32.p99_ms,
                f"c=32: {s32.requests_per_s:.0f} req/s = {ratio:.2f} x tutorial {t32.requests_per_s:.0f} "
                "(target >= 2), "
                f"p99 {s32.p99_ms:.2f} ms vs tutorial {t32.p99_ms:.2f} ms (target lower)",
            )
        if floor:
            half = server.saturation / floor.saturation
            line(
                half >= 0.5,
                f"stretch: saturation {server.saturation:.0f} req/s = {half:.2f} x ASGI floor "
                f"{floor.saturation:.0f} (stretch >= 0.5)",
            )
        s1, t1 = server.at(1), tutorial.at(1)
        if s1 and t1:
            line(
                s1.p50_ms <= t1.p50_ms,
                f"p50 at c=1 {s1.p50_ms:.3f} ms vs tutorial {t1.p50_ms:.3f} ms (target no worse)",
            )
        out.append(
            f"  in-process limit: {limit.best_rows_per_s:.0f} rows/s at batch {limit.best_batch}; "
            f"one run {limit.one_run_ms * 1000:.0f} us"
        )
    return out


@dataclass
class Contender:
    label: str
    command: list[str]
    env: dict[str, str]
    health: str
    url: str
    body: Path


def contenders(
    name: str,
    path: Path,
    port_base: dict[str, int],
    threads: int,
    limit: InProcess,
    oip_body: Path,
    tutorial_body: Path,
) -> list[Contender]:
    encoder = name.startswith("encoder")
    uvicorn = [sys.executable, "-m", "uvicorn", "--no-access-log", "--log-level", "warning"]
    found = []
    if not encoder:
        port = port_base["floor"]
        found.append(
            Contender(
                "ASGI floor",
                [*uvicorn, "asgi_floor:app", "--port", str(port), "--loop", "uvloop", "--http", "httptools"],
                {},
                f"http://127.0.0.1:{port}/",
                f"http://127.0.0.1:{port}/",
                oip_body,
            )
        )
    port = port_base["server"]
    # Compute-bound models: let idle onnxruntime threads spin (as the other contenders do by default);
    # the tiny MLP is bound by HTTP, where spinning threads would take the event loop's core.
    # Batch caps: on this CPU the encoder gains nothing past 4 rows per run (8 is slower); the MLP
    # gains all the way, but 64 rows are more than the load ever queues.
    server = [
        sys.executable,
        "-m",
        "modeldeploy_server",
        "--model",
        str(path),
        "--port",
        str(port),
        "--grpc-port",
        "0",  # REST only here; bench_grpc.py measures gRPC
        "--host",
        "127.0.0.1",
        "--intra-op-threads",
        str(threads),
        "--intra-op-spinning",
        "true" if encoder else "false",
        "--max-batch-size",
        "4" if encoder else "64",
        "--max-batch-delay-ms",
        "2",
        "--log-level",
        "warning",
    ]
    found.append(
        Contender(
            "modeldeploy_server",
            server,
            {},
            f"http://127.0.0.1:{port}/health/ready",
            f"http://127.0.0.1:{port}/v2/models/{name}/infer",
            oip_body,
        )
    )
    port = port_base["tutorial"]
    found.append(
        Contender(
            "tutorial FastAPI",
            [*uvicorn, "tutorial_app:app", "--port", str(port)],
            {"BENCH_MODEL_PATH": str(path), "BENCH_THREADS": str(threads)},
            f"http://127.0.0.1:{port}/health",
            f"http://127.0.0.1:{port}/predict",
            tutorial_body,
        )
    )
    return found


def best_of(runs: list[LoadResult]) -> LoadResult:
    return max(runs, key=lambda run: run.requests_per_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: short loads, MLP and 4-layer encoder")
    parser.add_argument("--models", help="comma list of mlp, encoder4, encoder12")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads, every contender")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per measurement (best is kept)")
    parser.add_argument("--profile", action="store_true", help="also profile the server on the MLP at c=32")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "server.json")
    args = parser.parse_args()
    names = (
        args.models.split(",")
        if args.models
        else (["mlp", "encoder4"] if args.quick else ["mlp", "encoder4", "encoder12"])
    )
    rounds = args.rounds or (1 if args.quick else 2)
    levels = [1, 8, 32]
    wrk = find_wrk()
    started = time.monotonic()
    report: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "benchmarks/server/bench_server.py", *sys.argv[1:]]),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "rounds": rounds,
        "onnxruntime": ort.__version__,
        "models": {},
    }
    summary: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        workdir = Path(tmp)
        for name in names:
            path = models.ensure(CACHE, name)
            encoder = name.startswith("encoder")
            seconds = 2.0 if args.quick else {"mlp": 5.0, "encoder4": 6.0}.get(name, 10.0)
            load_before = os.getloadavg()[0]
            print(
                f"\n== {name} ({path.stat().st_size / 1e6:.0f} MB), {rounds} interleaved round(s), best kept",
                flush=True,
            )
            batches = ([1, 2, 4, 8] if name == "encoder4" else [1, 2, 4]) if encoder else [1, 8, 32, 64, 128, 256]
            oip_body, tutorial_body = request_bodies(name, workdir)
            limit = measure_in_process(path, name, args.threads, batches, 0.3 if args.quick else 1.0)
            ports = {key: free_port() for key in ("floor", "server", "tutorial")}
            lineup = contenders(name, path, ports, args.threads, limit, oip_body, tutorial_body)
            measured: dict[str, dict[int, list[LoadResult]]] = {c.label: {c_: [] for c_ in levels} for c in lineup}
            limits = [limit]
            with contextlib.ExitStack() as stack:
                processes = {
                    c.label: stack.enter_context(
                        running(c.command, c.env, c.health, workdir / f"{c.label.split()[0]}.log")
                    )
                    for c in lineup
                }
                for contender in lineup:  # warm-up
                    run_wrk(wrk, contender.url, contender.body, 8, 1 if args.quick else 2, workdir)
                for round_index in range(rounds):
                    if round_index:
                        limits.append(measure_in_process(path, name, args.threads, batches, 0.3 if args.quick else 1.0))
                    for concurrency in levels:
                        for contender in lineup:
                            # long enough that requests cut off at the end barely bias the rate
                            duration = min(
                                30.0, max(seconds, (4 if args.quick else 12) * concurrency * limit.one_run_ms / 1000)
                            )
                            run = run_wrk(
                                wrk,
                                contender.url,
                                contender.body,
                                concurrency,
                                duration,
                                workdir,
                                pid=processes[contender.label].pid,
                            )
                            measured[contender.label][concurrency].append(run)
                            print(
                                f"    r{round_index + 1} {contender.label:<20} c={concurrency:<3} "
                                f"{run.requests_per_s:9.1f} req/s  p50 {run.p50_ms:8.2f} ms  "
                                f"p99 {run.p99_ms:8.2f} ms  cpu {run.cpu_ms_per_request:7.3f} ms/req  "
                                f"failures {run.failures}",
                                flush=True,
                            )
                server_url = next(c for c in lineup if c.label == "modeldeploy_server").health
                metrics = httpx.get(server_url.replace("/health/ready", "/metrics")).text
                if args.profile and not encoder:
                    server = next(c for c in lineup if c.label == "modeldeploy_server")
                    profile = profile_server(processes[server.label].pid, wrk, server.url, server.body, 6, workdir)
                    print("\n".join(profile), flush=True)
                    report.setdefault("profile", {})[name] = profile
            limit = InProcess(
                one_run_ms=min(item.one_run_ms for item in limits),
                best_batch=max(limits, key=lambda item: item.best_rows_per_s).best_batch,
                best_rows_per_s=max(item.best_rows_per_s for item in limits),
                by_batch={b: max(item.by_batch[b] for item in limits) for b in batches},
                cpu_ms_one_run=min(item.cpu_ms_one_run for item in limits),
            )
            print(
                f"    in-process: one run {limit.one_run_ms:.3f} ms ({limit.cpu_ms_one_run:.3f} ms CPU); "
                "rows/s by batch " + ", ".join(f"{b}: {v:.0f}" for b, v in limit.by_batch.items()),
                flush=True,
            )
            results = {
                label: ContenderResult(label, [best_of(by_level[c]) for c in levels])
                for label, by_level in measured.items()
            }
            mean_batch = _mean_batch(metrics)
            floor = results.get("ASGI floor")
            report["models"][name] = {
                "in_process": asdict(limit),
                **{label.split()[0].lower(): asdict(result) for label, result in results.items()},
                "server_mean_batch_rows": mean_batch,
                "load_average_before_after": [load_before, os.getloadavg()[0]],
            }
            summary.append(
                f"{name}: (server mean batch {mean_batch:.2f} rows; load average {load_before:.1f} before, "
                f"{os.getloadavg()[0]:.1f} after)"
            )
            summary += verdicts(name, limit, results["modeldeploy_server"], results["tutorial FastAPI"], floor)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print("\n== best of each, side by side (req/s, latency ms, serving-process CPU ms per request)")
    for name, data in report["models"].items():
        print(f"{name}:")
        for key in ("asgi", "modeldeploy_server", "tutorial"):
            if key in data:
                cells = "  ".join(
                    f"c={r['concurrency']}: {r['requests_per_s']:.1f}/s p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} "
                    f"cpu {r['cpu_ms_per_request']:.3f}"
                    for r in data[key]["runs"]
                )
                print(f"  {key:<20} {cells}")
    print("\n== targets")
    print("\n".join(summary))
    print(f"\ntotal {report['elapsed_s']} s; results in {args.output}")
    report["summary"] = summary
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    failures = [
        run
        for data in report["models"].values()
        for key in ("asgi", "modeldeploy_server", "tutorial")
        if key in data
        for run in data[key]["runs"]
        if run["failures"]
    ]
    if failures:
        print(f"WARNING: {len(failures)} load runs saw failed requests", file=sys.stderr)
        return 1
    return 0


def _mean_batch(metrics_text: str) -> float:
    values = {}
    for line in metrics_text.splitlines():
        if line.startswith(("modeldeploy_batch_size_sum", "modeldeploy_batch_size_count")):
            values[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    count = values.get("modeldeploy_batch_size_count", 0.0)
    return values.get("modeldeploy_batch_size_sum", 0.0) / count if count else 0.0


if __name__ == "__main__":
    sys.exit(main())
