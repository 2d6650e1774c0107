"""Controlling a rollout on real pods: the operator SIGKILLed mid-rollout, `kubectl modeldeploy rollout
pause|resume|abort|retry|promote` as users type it, and Prometheus as the analysis source.

No router is installed here: the one Service sends to both tracks' ready pods, which is the approximation
status names. Requests are a steady, bounded trickle to the Service's address on the local cluster. Each
test prints a timeline (seconds since it started) with `-s`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from localkube.metrics import MetricsStack
from testsupport.loadgen import Load, Timeline
from testsupport.realpods import REQUEST, Serving, close, expected_output, infer, model_deployment, write_model

V1 = "rollout/v1/model.onnx"
V2 = "rollout/v2/model.onnx"
READY_TIMEOUT_S = 240.0
# Lenient gates: these tests are about control, not about judging models (another suite does that). A busy
# two-core machine makes latency noisy, so the latency gate only catches a canary ten times slower.
GATES = {"minRequests": 20, "maxLatencyP95Ratio": 10, "maxOutputPsi": 100}


def rollout_manifest(name: str, path: str, rollout: dict[str, Any]) -> dict[str, Any]:
    manifest = model_deployment(path, name=name, replicas=1)
    manifest["spec"]["rollout"] = rollout
    return manifest


def rollout_of(s: Serving, name: str) -> dict[str, Any]:
    return dict((s.harness.md(name).get("status") or {}).get("rollout") or {})


def wait_rollout(s: Serving, name: str, wanted: Callable[[dict[str, Any]], bool], timeout: float,
                 what: str) -> dict[str, Any]:
    """status.rollout once `wanted` holds for it."""
    def check() -> dict[str, Any] | None:
        state = rollout_of(s, name)
        return state if wanted(state) else None
    return s.harness.eventually(check, timeout, what)


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def tracks(s: Serving, name: str) -> set[str]:
    """The tracks that have a Deployment (children are labelled with their track)."""
    found = s.harness.get("deployments", "-l", f"modeldeploy.dev/name={name}")["items"]
    return {d["metadata"]["labels"]["modeldeploy.dev/track"] for d in found}


def stable_model_path(s: Serving, name: str) -> str:
    deployment = s.harness.get("deployment", f"{name}-stable")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    return str(env["MODEL_PATH"])


def start_rollout(s: Serving, name: str, rollout: dict[str, Any], timeline: Timeline) -> int:
    """v1 serves; then the spec names v2 (the only edit a user makes). Returns the generation after it."""
    h = s.harness
    h.apply_manifest(rollout_manifest(name, V1, rollout))
    h.wait_condition(name, "Ready", "True", timeout=READY_TIMEOUT_S)
    timeline.note("v1 serves")
    h.apply_manifest(rollout_manifest(name, V2, rollout))
    h.eventually(lambda: rollout_of(s, name).get("phase") == "Progressing", 60, "the rollout to start")
    h.wait_condition(name, "CanaryReady", "True", timeout=READY_TIMEOUT_S)
    timeline.note("v2 is the canary, its pod ready")
    return int(h.md(name)["metadata"]["generation"])


def trickle(s: Serving, name: str, limit: float) -> Load:
    """Two clients, one tiny request each every 50 ms, to the Service (both tracks' ready pods)."""
    url = s.service_url(name)
    return Load(lambda: [url], name, clients=2, body=REQUEST, gap=0.05, limit=limit).start()


def test_operator_sigkilled_mid_rollout_resumes_at_the_same_step_with_the_same_timers(serving: Serving) -> None:
    s, h = serving, serving.harness
    write_model(s.models, V1, seed=1)
    write_model(s.models, V2, seed=1)  # same weights: a good version, nothing for the gates to object to
    interval = 60
    rollout = {"steps": [{"weight": 25, "pause": "60s"}, {"weight": 50, "pause": "2m"}],
               "analysisInterval": f"{interval}s", "gates": GATES}
    timeline = Timeline()
    generation = start_rollout(s, "restarted", rollout, timeline)
    load = trickle(s, "restarted", limit=900)
    try:
        # Step 2 begins with a verdict, and with it a new window: kill the operator right then.
        before = wait_rollout(s, "restarted", lambda r: r.get("step") == 1, 420, "step 2 of 2")
        assert before["lastVerdict"]["result"] == "Pass", before
        window = parse_time(before["analysisStartedAt"])
        h.operators[0].kill()
        timeline.note(f"operator SIGKILLed at step 2 (window began {before['analysisStartedAt']})")
        h.start_operator(MODELDEPLOY_SERVER_IMAGE=s.images["server"])
        timeline.note("a new operator process started (it leads once the dead one's lease expires)")

        after = wait_rollout(s, "restarted", lambda r: r.get("analysisStartedAt") != before["analysisStartedAt"],
                             300, "the new operator's first verdict")
        timeline.note(f"first verdict after the restart: {after.get('lastVerdict')}")
        # Same step, same timers: nothing restarted, nothing forgotten.
        kept = ("phase", "stable", "canary", "step", "startedAt", "stepStartedAt")
        assert {k: after.get(k) for k in kept} == {k: before.get(k) for k in kept}
        # The window the dead process had opened was judged when it ended (from the new process' own count
        # since its start-up), not dropped and not cut short: the schedule in status held.
        assert after["lastVerdict"]["at"] == after["analysisStartedAt"], after
        assert parse_time(after["analysisStartedAt"]) >= window + dt.timedelta(seconds=interval), after
        assert after["lastVerdict"]["source"] == "pods"

        final = wait_rollout(s, "restarted", lambda r: r.get("phase") == "Healthy", 400, "promotion")
        timeline.note("promoted")
    finally:
        load.stop()
    assert final["stable"]["path"] == V2
    assert tracks(s, "restarted") == {"stable"}
    h.eventually(lambda: stable_model_path(s, "restarted").endswith(V2), 60, "stable serves v2")
    assert int(h.md("restarted")["metadata"]["generation"]) == generation  # the spec was never written
    reasons = h.event_reasons("restarted")
    assert reasons.count("RolloutStarted") == 1 and reasons.count("StepAdvanced") == 1, reasons
    assert reasons.count("Promoted") == 1, reasons
    assert set(load.statuses) == {200}, load.statuses
    print(timeline)


def test_rollout_commands_through_the_plugin(serving: Serving) -> None:
    """pause (surviving a SIGKILL of the operator), resume, abort, retry, promote: each as
    `kubectl modeldeploy rollout ...`, each seen in status, in the track children and as an Event."""
    s, h = serving, serving.harness
    write_model(s.models, V1, seed=1)
    write_model(s.models, V2, seed=2)
    # No traffic: every analysis is inconclusive and holds the step, so only the commands move it.
    rollout = {"steps": [{"weight": 50, "pause": "1h"}], "analysisInterval": "20s", "gates": GATES}
    timeline = Timeline()
    generation = start_rollout(s, "commanded", rollout, timeline)
    url = s.service_url("commanded")

    def phase(wanted: str) -> dict[str, Any]:
        return wait_rollout(s, "commanded", lambda r: r.get("phase") == wanted and "command" not in r, 90,
                            f"phase {wanted} with the command cleared")

    def event(reason: str, count: int = 1) -> None:
        h.eventually(lambda: h.event_reasons("commanded").count(reason) >= count, 30, f"{count} {reason} Event(s)")

    assert "Progressing" in h.modeldeploy("rollout", "status", "commanded").stdout
    assert tracks(s, "commanded") == {"stable", "canary"}

    h.modeldeploy("rollout", "pause", "commanded")
    paused = phase("Paused")
    assert paused["pausedByCommand"] is True and "analysisStartedAt" not in paused
    event("RolloutPaused")
    assert tracks(s, "commanded") == {"stable", "canary"}  # held as it was: the canary keeps its share
    timeline.note("paused")

    h.operators[0].kill()
    h.start_operator(MODELDEPLOY_SERVER_IMAGE=s.images["server"])
    timeline.note("operator SIGKILLed while paused; a new one started")
    h.eventually(lambda: "became the leader" in h.operators[-1].log(), 120, "the new operator leading")
    assert {k: rollout_of(s, "commanded").get(k) for k in ("phase", "pausedAt", "stepStartedAt", "startedAt")} == {
        k: paused.get(k) for k in ("phase", "pausedAt", "stepStartedAt", "startedAt")}

    h.modeldeploy("rollout", "resume", "commanded")
    resumed = phase("Progressing")
    event("RolloutResumed")
    # The pause does not count against the step: its start moves forward by the time it was held.
    assert parse_time(resumed["stepStartedAt"]) > parse_time(paused["stepStartedAt"]), (paused, resumed)
    assert "pausedAt" not in resumed
    held = parse_time(resumed["stepStartedAt"]) - parse_time(paused["stepStartedAt"])
    assert parse_time(resumed["startedAt"]) - parse_time(paused["startedAt"]) == held  # the deadline's clock too
    timeline.note("resumed")

    h.modeldeploy("rollout", "abort", "commanded")
    aborted = phase("RolledBack")
    assert (aborted["failed"]["path"], aborted["failedGate"]) == (V2, "aborted")
    rolled_back = h.wait_condition("commanded", "RolledBack", "True", "Aborted")
    assert "aborted on request" in rolled_back["message"]
    h.wait_condition("commanded", "Ready", "True")  # stable still serves
    h.eventually(lambda: tracks(s, "commanded") == {"stable"}, 90, "the canary track removed")
    h.eventually(lambda: "modeldeploy.dev/track" in h.get("service", "commanded")["spec"]["selector"], 30,
                 "the Service selecting stable alone")
    assert close(h.eventually(lambda: infer(url, "commanded"), 60, "an answer"), expected_output(s.models, V1))
    event("RolledBack")
    assert "rolled back" in h.modeldeploy("rollout", "status", "commanded").stdout
    timeline.note("aborted")

    h.modeldeploy("rollout", "retry", "commanded")
    retried = phase("Progressing")
    assert (retried["canary"]["path"], retried.get("failed")) == (V2, None)
    event("RolloutStarted", 2)
    h.wait_condition("commanded", "CanaryReady", "True", timeout=READY_TIMEOUT_S)
    assert tracks(s, "commanded") == {"stable", "canary"}
    timeline.note("retried")

    h.modeldeploy("rollout", "promote", "commanded")
    promoted = phase("Healthy")
    assert promoted["stable"]["path"] == V2 and "canary" not in promoted
    event("Promoted")
    h.eventually(lambda: tracks(s, "commanded") == {"stable"}, 90, "the canary track removed")
    h.eventually(lambda: close(infer(url, "commanded"), expected_output(s.models, V2)), READY_TIMEOUT_S,
                 "the stable track answering with v2")
    assert int(h.md("commanded")["metadata"]["generation"]) == generation  # git's spec was never written
    timeline.note("promoted")
    print(timeline)


def test_prometheus_judges_the_rollout(serving: Serving, prometheus: MetricsStack) -> None:
    """spec.rollout.prometheus: the operator asks the real Prometheus (scraping the real pods) for each
    window's increases instead of reading the pods itself."""
    s, h = serving, serving.harness
    write_model(s.models, V1, seed=1)
    write_model(s.models, V2, seed=1)
    rollout = {"steps": [{"weight": 50, "pause": "60s"}], "analysisInterval": "30s", "gates": GATES,
               "prometheus": {"url": prometheus.prometheus_url}}
    timeline = Timeline()
    start_rollout(s, "judged", rollout, timeline)
    load = trickle(s, "judged", limit=600)
    verdicts: list[dict[str, Any]] = []

    def promoted() -> bool:
        state = rollout_of(s, "judged")
        verdict = state.get("lastVerdict")
        if verdict and verdict not in verdicts:
            verdicts.append(verdict)
            timeline.note(f"verdict: {verdict['result']} from {verdict.get('source')}: {verdict['message']}")
        return state.get("phase") == "Healthy"

    try:
        h.eventually(promoted, 400, "promotion judged from Prometheus")
    finally:
        load.stop()
    assert verdicts and {v.get("source") for v in verdicts} == {"prometheus"}, verdicts
    passed = [v for v in verdicts if v["result"] == "Pass"]
    assert passed, verdicts
    # What Prometheus holds for the canary is what the verdict counted (requests by outcome, by track).
    assert float(passed[-1]["measured"]["canaryRequests"]) >= GATES["minRequests"], passed[-1]
    series = prometheus.query(f'modeldeploy_requests_total{{namespace="{h.namespace}",modeldeployment="judged",'
                              'track="canary"}')
    assert series, "Prometheus has no canary series"
    assert rollout_of(s, "judged")["stable"]["path"] == V2
    assert "Promoted" in h.event_reasons("judged")
    assert set(load.statuses) == {200}, load.statuses
    print(timeline)
