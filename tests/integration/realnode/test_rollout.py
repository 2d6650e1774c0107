"""Progressive delivery on real pods, judged on real traffic through the real gateway.

One ModelDeployment with `spec.rollout` serves on the real node behind Envoy Gateway; a load generator
sends varied inputs through the gateway the whole time and names every answer by the model whose known
outputs it matches (each version answers differently), every failure by its HTTP status. The scenarios
run in order on the same resource, each one changing `spec.model.path` as a user would in git:

1. a good version (outputs 0.001 apart) walks mirror -> weight steps and is promoted, no request failing;
2. a version failing on some inputs, and one many times slower, are rolled back at their first weighted
   step by the gate their fault trips, callers seeing no more errors than the canary's share allows;
3. a version whose outputs are shifted is caught by the output-drift gate while it only gets mirrored
   copies: no caller ever sees one of its answers;
4. with no traffic the rollout holds (inconclusive, no failure) and proceeds once traffic comes.

Every model is made here (tests/testsupport/onnx_models.py); nothing is timed by assertion: the timings
are printed for the record.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest

import envoy_gateway
import localcluster
from testsupport.gateway import Traffic, binomial_bounds, failures
from testsupport.onnx_models import build_mlp, failing_on_large_inputs, shifted, slowed
from testsupport.operator_harness import Harness
from testsupport.realpods import NAME, model_deployment, operator_with_claim

READY_TIMEOUT_S = 240.0
ROLLOUT_TIMEOUT_S = 300.0
INTERVAL = "5s"
MIN_REQUESTS = 20  # the machine is shared: windows of a loaded node hold few requests
MODELS = {
    "v1": "sentiment/v1/model.onnx",  # stable at the start
    "v2": "sentiment/v2/model.onnx",  # good: v1's outputs + 0.001
    "failing": "sentiment/failing/model.onnx",  # v1, but onnxruntime fails on inputs with a value >= 2.5
    "slow": "sentiment/slow/model.onnx",  # v1's answers after many extra matrix products
    "shifted": "sentiment/shifted/model.onnx",  # v1's outputs + 1.0
    "v3": "sentiment/v3/model.onnx",  # good: v1's outputs + 0.002
}
INPUTS = 256


@dataclass
class Bench:
    harness: Harness
    address: str
    inputs: list[list[float]]
    outputs: dict[str, list[list[float]]]

    def traffic(self) -> Traffic:
        # failing and slow answer as v1 does: v1's name stands for them while v2 is stable.
        known = {name: rows for name, rows in self.outputs.items() if name not in ("failing", "slow")}
        return Traffic(self.address, self.inputs, known).start()


def write_models(folder: Path) -> None:
    base = build_mlp(folder / MODELS["v1"], seed=0)
    shifted(base, folder / MODELS["v2"], 0.001)
    shifted(base, folder / MODELS["v3"], 0.002)
    shifted(base, folder / MODELS["shifted"], 1.0)
    failing_on_large_inputs(base, folder / MODELS["failing"])
    slowed(base, folder / MODELS["slow"])
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def answers(folder: Path, inputs: np.ndarray) -> dict[str, list[list[float]]]:
    """What onnxruntime here answers for each input, per model that answers every input."""
    out = {}
    for name in ("v1", "v2", "v3", "shifted"):
        session = onnxruntime.InferenceSession(str(folder / MODELS[name]), providers=["CPUExecutionProvider"])
        out[name] = [session.run(None, {"input": row.reshape(1, 64)})[0].ravel().tolist() for row in inputs]
    return out


def rollout_spec(steps: list[dict[str, Any]], failure_limit: int) -> dict[str, Any]:
    return {"steps": steps, "analysisInterval": INTERVAL, "failureLimit": failure_limit,
            "progressDeadline": "10m", "gates": {"minRequests": MIN_REQUESTS}}


@pytest.fixture(scope="module")
def bench(real_cluster: localcluster.Cluster, real_crds: None, real_images: dict[str, str], gateway: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """v1 served with spec.rollout set, routed through the gateway; one operator for every scenario."""
    namespace = f"rollout-{uuid.uuid4().hex[:6]}"
    real_cluster.kubectl("create", "namespace", namespace)
    with operator_with_claim(real_cluster, namespace, tmp_path_factory.mktemp("rollout"),
                             MODELDEPLOY_SERVER_IMAGE=real_images["server"]) as (harness, folder):
        write_models(folder)
        manifest = model_deployment(MODELS["v1"])
        manifest["spec"]["routing"] = {"backend": "GatewayAPI", "gateways": [gateway]}
        manifest["spec"]["rollout"] = rollout_spec([{"weight": 50}], 2)
        harness.apply_manifest(manifest)
        harness.wait_condition(NAME, "Ready", "True", timeout=READY_TIMEOUT_S)
        gateway_namespace, gateway_name = gateway.split("/")
        address = harness.eventually(
            lambda: envoy_gateway.gateway_address(real_cluster, gateway_namespace, gateway_name), 120,
            "the gateway's Envoy Service")
        inputs = np.random.default_rng(5).standard_normal((INPUTS, 64)).astype(np.float32)
        yield Bench(harness, address, inputs.tolist(), answers(folder, inputs))
    real_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@dataclass
class Record:
    """What polling status saw during one rollout."""

    started: float = field(default_factory=time.monotonic)
    verdicts: list[dict[str, Any]] = field(default_factory=list)  # each distinct status.rollout.lastVerdict
    steps: list[int] = field(default_factory=list)  # the steps seen while Progressing, in order
    marks: dict[str, float] = field(default_factory=dict)  # first time something was seen, seconds in
    verdicts_before_ready: int | None = None  # how many verdicts were seen when the canary became ready
    final: dict[str, Any] = field(default_factory=dict)

    def mark(self, what: str) -> None:
        if what not in self.marks:
            self.marks[what] = round(time.monotonic() - self.started, 1)
            print(f"[rollout] t={self.marks[what]:6.1f}s {what}")


def roll_to(b: Bench, model: str, steps: list[dict[str, Any]], failure_limit: int) -> int:
    """Change spec.model.path (and the steps for this scenario) as a user would; the new generation."""
    patch = {"spec": {"model": {"path": MODELS[model]}, "rollout": rollout_spec(steps, failure_limit)}}
    b.harness.kubectl("patch", "md", NAME, "--type", "merge", "-p", json.dumps(patch))
    generation: int = b.harness.md()["metadata"]["generation"]
    return generation


def follow(b: Bench, record: Record, done: Any, timeout: float = ROLLOUT_TIMEOUT_S,
           shown: bool = False) -> dict[str, Any]:
    """Poll the rollout's status until `done(rollout)`; records verdicts and steps on the way (and with
    `shown`, prints what a user sees at each step)."""
    deadline = time.monotonic() + timeout
    while True:
        md = b.harness.md()
        rollout = (md.get("status") or {}).get("rollout") or {}
        verdict = rollout.get("lastVerdict")
        if verdict and (not record.verdicts or record.verdicts[-1]["at"] != verdict["at"]):
            record.verdicts.append(verdict)
            record.mark(f"verdict {len(record.verdicts)}: {verdict['result']} {verdict.get('gate', '')}")
        if rollout.get("phase") == "Progressing":
            if "waiting for the canary" in rollout.get("message", ""):
                record.mark("canary starting (no traffic to it yet)")
            elif record.verdicts_before_ready is None:
                record.verdicts_before_ready = len(record.verdicts)
                record.mark("canary ready")
            if not record.steps or record.steps[-1] != rollout["step"]:
                record.steps.append(rollout["step"])
                record.mark(f"step {rollout['step'] + 1}")
                if shown:
                    show(b, f"step {rollout['step'] + 1}")
        if done(rollout):
            record.mark(f"phase {rollout['phase']}")
            record.final = md
            return rollout
        if time.monotonic() > deadline:
            raise AssertionError(f"rollout not done after {timeout}s: {json.dumps(rollout, indent=1)}\n"
                                 f"{b.harness.logs()}")
        time.sleep(0.5)


def show(b: Bench, what: str) -> None:
    """Print what a user sees at this point: `kubectl get md` and `kubectl modeldeploy rollout status`."""
    table = b.harness.kubectl("get", "md", NAME).stdout
    plugin = subprocess.run(
        [str(Path(sys.executable).parent / "kubectl-modeldeploy"), "rollout", "status", NAME,
         "--kubeconfig", str(b.harness.cluster.kubeconfig), "-n", b.harness.namespace],
        capture_output=True, text=True, env=b.harness.cluster.env, timeout=60, check=False)
    print(f"--- {what}\n$ kubectl get md\n{table}$ kubectl modeldeploy rollout status {NAME}\n"
          f"{plugin.stdout}{plugin.stderr}---")


def promoted(model: str) -> Any:
    return lambda r: r.get("phase") == "Healthy" and r.get("stable", {}).get("path") == MODELS[model]


def rolled_back(r: dict[str, Any]) -> bool:
    return r.get("phase") == "RolledBack"


def condition(md: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in md["status"].get("conditions", []) if c["type"] == kind), {})


def wait_served_by(b: Bench, traffic: Traffic, model: str) -> None:
    """Every answer from `model`, and the canary's pods gone."""
    b.harness.eventually(lambda: traffic.settled_on(model, 100), 180, f"answers all from {model}")
    b.harness.eventually(lambda: not b.harness.get("deployments", "-l", f"modeldeploy.dev/name={NAME},"
                                                   "modeldeploy.dev/track=canary")["items"], 120,
                         "the canary Deployment removed")


def new_counts(after: Counter[str], before: Counter[str]) -> Counter[str]:
    return Counter({what: after[what] - before[what] for what in after if after[what] > before[what]})


def test_a_good_version_is_promoted_through_every_step_with_no_failed_request(bench: Bench) -> None:
    b = bench
    traffic = b.traffic()
    try:
        b.harness.eventually(lambda: traffic.settled_on("v1", 50), 120, "answers from v1 through the gateway")
        steps = [{"mirror": 50, "pause": "10s"}, {"weight": 20, "pause": "10s"}, {"weight": 50, "pause": "10s"}]
        generation = roll_to(b, "v2", steps, failure_limit=3)
        record = Record()
        rollout = follow(b, record, promoted("v2"), shown=True)
        show(b, "promoted")
        wait_served_by(b, traffic, "v2")
        record.mark("every answer from v2, canary removed")
    finally:
        counts = traffic.stop()
    print(f"good version: answers {dict(counts)}; steps seen {record.steps}; verdicts "
          f"{[(v['result'], v.get('gate'), v['message']) for v in record.verdicts if v['result'] != 'Pass']}")
    assert record.steps == [0, 1, 2], record.steps  # every step, in order
    assert rollout.get("canary") is None and rollout["stable"]["path"] == MODELS["v2"]
    assert record.final["metadata"]["generation"] == generation  # the spec was never written
    assert b.harness.md()["spec"]["model"]["path"] == MODELS["v2"]
    assert failures(counts) == 0 and counts["unknown-answer"] == 0, counts
    assert counts["v2"] > 0 and counts["v1"] > 0


@pytest.mark.parametrize(("model", "gate", "measured"), [
    ("failing", "errorRateIncrease", "canaryFailedShare="),
    ("slow", "latencyP95Ratio", "latencyP95Ratio="),
])
def test_a_bad_version_is_rolled_back_at_its_first_weighted_step(bench: Bench, model: str, gate: str,
                                                                 measured: str) -> None:
    b = bench
    failure_limit = 2
    traffic = b.traffic()
    try:
        b.harness.eventually(lambda: traffic.settled_on("v2", 50), 120, "answers from the stable v2")
        before = traffic.counts()
        generation = roll_to(b, model, [{"weight": 20, "pause": "1m"}, {"weight": 50, "pause": "1m"}],
                             failure_limit)
        record = Record()
        rollout = follow(b, record, rolled_back)
        during = new_counts(traffic.counts(), before)
        show(b, f"{model} rolled back")
        b.harness.eventually(lambda: traffic.settled_on("v2", 100), 120, "answers all from stable again")
        record.mark("every answer from stable again")
    finally:
        traffic.stop()
    md = record.final
    rolled = condition(md, "RolledBack")
    print(f"{model}: RolledBack {rolled.get('reason')}: {rolled.get('message')}")
    print(f"{model}: callers during the rollout {dict(during)}; verdicts "
          f"{[(v['result'], v.get('gate')) for v in record.verdicts]}")
    assert rollout["failedGate"] == gate and rollout["failed"]["path"] == MODELS[model]
    assert rolled["status"] == "True" and rolled["reason"] == gate[0].upper() + gate[1:]
    assert measured in rolled["message"] and "canaryRequests=" in rolled["message"], rolled
    assert condition(md, "Ready")["status"] == "True"  # stable kept serving
    assert md["metadata"]["generation"] == generation
    # Rolled back at the first step, by failureLimit failed analyses in a row, none passing before:
    assert rollout["step"] == 0 and rollout["consecutiveFailures"] == failure_limit
    conclusive = [v for v in record.verdicts if v["result"] != "Inconclusive"]  # windows that could tell
    assert [v["result"] for v in conclusive] == ["Fail"] * len(conclusive) and len(conclusive) <= failure_limit
    # Callers only met the canary on its 20% share: its answers and its errors together fit in it.
    sent = sum(during.values())
    _, most = binomial_bounds(sent, 0.2)
    met_canary = failures(during) + during["v1"]
    assert met_canary <= most, f"{met_canary} of {sent} requests met the canary, more than 20% allows ({most})"
    assert during["unknown-answer"] == 0


def test_output_drift_is_caught_while_the_canary_only_gets_mirrored_copies(bench: Bench) -> None:
    b = bench
    traffic = b.traffic()
    try:
        b.harness.eventually(lambda: traffic.settled_on("v2", 50), 120, "answers from the stable v2")
        before = traffic.counts()
        roll_to(b, "shifted", [{"mirror": 50, "pause": "1m"}, {"weight": 50, "pause": "1m"}], failure_limit=2)
        record = Record()
        rollout = follow(b, record, rolled_back)
        show(b, "shifted rolled back")
        b.harness.eventually(lambda: not b.harness.get("deployments", "-l", f"modeldeploy.dev/name={NAME},"
                                                       "modeldeploy.dev/track=canary")["items"], 120,
                             "the canary Deployment removed")
        during = new_counts(traffic.counts(), before)
    finally:
        traffic.stop()
    rolled = condition(record.final, "RolledBack")
    print(f"shifted: RolledBack {rolled.get('reason')}: {rolled.get('message')}")
    print(f"shifted: callers {dict(during)}")
    assert rollout["failedGate"] == "outputDrift" and rollout["step"] == 0  # the mirror step
    assert rolled["reason"] == "OutputDrift" and "outputPsi[output]=" in rolled["message"], rolled
    # The canary was judged on mirrored copies, yet no caller ever got one of its answers or an error.
    assert float(rollout["lastVerdict"]["measured"]["canaryRequests"]) >= MIN_REQUESTS
    assert during["shifted"] == 0 and failures(during) == 0 and during["unknown-answer"] == 0, during
    assert during["v2"] > 0


def test_no_traffic_holds_the_rollout_until_traffic_comes(bench: Bench) -> None:
    b = bench
    generation = roll_to(b, "v3", [{"weight": 50, "pause": "5s"}], failure_limit=1)
    record = Record()

    def held(rollout: dict[str, Any]) -> bool:
        ready_at = record.verdicts_before_ready
        return ready_at is not None and len(record.verdicts) - ready_at >= 3

    follow(b, record, held)
    rollout = b.harness.md()["status"]["rollout"]
    print(f"no traffic: {len(record.verdicts)} verdicts: {[v['message'] for v in record.verdicts[-3:]]}")
    # Inconclusive, never failed (a failureLimit of 1 would have rolled back at once), step held.
    assert (rollout["phase"], rollout["step"], rollout["consecutiveFailures"]) == ("Progressing", 0, 0)
    assert {v["result"] for v in record.verdicts} == {"Inconclusive"}
    assert rollout["message"].startswith("holding at step 1"), rollout["message"]
    traffic = b.traffic()
    try:
        record.mark("traffic starts")
        rollout = follow(b, record, promoted("v3"))
        wait_served_by(b, traffic, "v3")
    finally:
        counts = traffic.stop()
    print(f"no traffic, then traffic: answers {dict(counts)}")
    assert b.harness.md()["metadata"]["generation"] == generation
    assert failures(counts) == 0, counts
