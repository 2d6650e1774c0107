"""The serving image runs for real: built from Dockerfile.server, started by kubelet on the real node,
loading the model the resource names from the claim, answering through the Service and cluster DNS.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import urllib.error
from typing import Any

from testsupport.realpods import (
    NAME,
    REAL_NODE_SELECTOR,
    REQUEST,
    Serving,
    close,
    expected_output,
    infer,
    model_deployment,
    write_model,
)

V1 = "sentiment/v1/model.onnx"
V2 = "sentiment/v2/model.onnx"
READY_TIMEOUT_S = 180.0


def apply(s: Serving, manifest: dict[str, Any]) -> None:
    s.harness.apply_manifest(manifest)


def server_pods(s: Serving, track: str = "stable") -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = s.harness.get("pods", "-l", f"modeldeploy.dev/track={track}")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def run_client_pod(s: Serving, url: str) -> list[float]:
    """Ask from inside the cluster: a pod resolves the URL through cluster DNS and posts a request."""
    script = (
        "import json, sys, urllib.request; "
        "r = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), "
        "headers={'Content-Type': 'application/json'}); "
        "print(urllib.request.urlopen(r, timeout=20).read().decode())"
    )
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
        "spec": {
            "restartPolicy": "Never", "nodeSelector": REAL_NODE_SELECTOR,
            "containers": [{
                "name": "client", "image": s.images["server"], "imagePullPolicy": "Never",
                "command": ["python", "-c", script, f"{url}/v2/models/{NAME}/infer", json.dumps(REQUEST)],
            }],
        },
    }
    s.harness.kubectl("apply", "-f", "-", input=json.dumps(pod))
    phase = s.harness.eventually(
        lambda: s.harness.get("pod", "client")["status"].get("phase") in ("Succeeded", "Failed")
        and s.harness.get("pod", "client")["status"]["phase"], 120, "the client pod to finish")
    logs = s.harness.kubectl("logs", "client").stdout
    assert phase == "Succeeded", logs
    return [float(x) for x in json.loads(logs)["outputs"][0]["data"]]


def test_ready_after_the_pod_loaded_the_model_and_answers_like_onnxruntime(serving: Serving) -> None:
    s, h = serving, serving.harness
    digest = write_model(s.models, V1, seed=0)
    want = expected_output(s.models, V1)
    apply(s, model_deployment(V1, sha256=digest))
    h.wait_condition(NAME, "Ready", "True", timeout=READY_TIMEOUT_S)

    pod = server_pods(s)[0]
    assert pod["spec"]["nodeName"].startswith("real-node-")
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] is True and status["state"].get("running"), status
    mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/models")
    assert mount["readOnly"] is True
    # Inside the running container: the non-root user, and a claim it cannot write to.
    probe = ("import os\ntry:\n open('/models/x', 'w')\nexcept OSError as e:\n print(os.getuid(), e.strerror)\n")
    inside = h.kubectl("exec", pod["metadata"]["name"], "--", "python", "-c", probe).stdout.strip().split(maxsplit=1)
    assert inside == ["65532", "Read-only file system"]

    assert close(infer(f"http://{pod['status']['podIP']}:8080"), want), "straight to the pod"
    assert close(h.eventually(lambda: infer(s.service_url()), 30, "the Service to answer"), want), \
        "through the Service's ClusterIP"
    url = h.md()["status"]["url"]
    assert url == f"http://{NAME}.{h.namespace}.svc.cluster.local"
    assert close(run_client_pod(s, url), want), "from a pod, through cluster DNS and the Service"


def test_a_bad_model_is_reported_in_the_servers_words_while_the_old_one_serves(serving: Serving) -> None:
    s, h = serving, serving.harness
    write_model(s.models, V1, seed=0)
    want = expected_output(s.models, V1)
    apply(s, model_deployment(V1))
    h.wait_condition(NAME, "Ready", "True", timeout=READY_TIMEOUT_S)
    write_model(s.models, V2, seed=1)
    (s.models / "sentiment/broken.onnx").write_bytes(b"this is not an ONNX file")
    (s.models / "sentiment/broken.onnx").chmod(0o644)

    cases = [
        (model_deployment(V2, sha256="0" * 64), "sha256 mismatch"),
        (model_deployment("sentiment/v9/missing.onnx"), "does not exist"),
        (model_deployment("sentiment/broken.onnx"), "onnxruntime cannot load"),
    ]
    def reported(words: str) -> bool:
        return words in h.condition(NAME).get("message", "")

    for manifest, words in cases:
        apply(s, manifest)
        h.eventually(functools.partial(reported, words), READY_TIMEOUT_S, f"Ready's message to carry {words!r}")
        assert words in h.kubectl("describe", "md", NAME).stdout
        assert close(infer(s.service_url()), want), f"the previous model stopped serving after: {words}"


def test_a_model_update_under_load_fails_no_request(serving: Serving) -> None:
    s, h = serving, serving.harness
    write_model(s.models, V1, seed=0)
    write_model(s.models, V2, seed=1)
    want_v2 = expected_output(s.models, V2)
    apply(s, model_deployment(V1))
    h.wait_condition(NAME, "Ready", "True", timeout=READY_TIMEOUT_S)
    url = s.service_url()
    h.eventually(lambda: infer(url), 30, "the Service to answer")

    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    def load() -> None:  # steady, bounded: one request at a time, 20 ms apart
        nonlocal answered
        while not stop.is_set():
            try:
                infer(url, timeout=10)
                answered += 1
            except (urllib.error.URLError, OSError) as error:
                failures.append(repr(error))
            time.sleep(0.02)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        apply(s, model_deployment(V2))
        h.eventually(lambda: close(infer(url), want_v2) and len(server_pods(s)) == 1, READY_TIMEOUT_S,
                     "the new model to answer alone")
        h.wait_condition(NAME, "Ready", "True", timeout=READY_TIMEOUT_S)
        time.sleep(2)  # keep the load on past the old pod's drain
    finally:
        stop.set()
        worker.join(timeout=30)
    assert answered > 50
    assert failures == [], f"{len(failures)} of {answered + len(failures)} requests failed: {failures[:5]}"
    assert close(infer(url), want_v2)


def test_a_canary_without_istio_serves_both_tracks_through_the_service(serving: Serving) -> None:
    s, h = serving, serving.harness
    write_model(s.models, V1, seed=0)
    write_model(s.models, V2, seed=1)
    want = {"stable": expected_output(s.models, V1), "canary": expected_output(s.models, V2)}
    apply(s, model_deployment(V1, replicas=2, canary={"model": {"pvc": "models", "path": V2},
                                                       "trafficPercent": 30}))
    h.wait_condition(NAME, "Ready", "True", timeout=READY_TIMEOUT_S)
    h.eventually(lambda: len(server_pods(s, "canary")) >= 1 and all(
        c["ready"] for p in server_pods(s, "stable") + server_pods(s, "canary")
        for c in p["status"].get("containerStatuses", [])), READY_TIMEOUT_S, "every pod ready")
    ready = {track: len(server_pods(s, track)) for track in ("stable", "canary")}
    traffic = h.md()["status"]["traffic"]
    expected_canary = round(100 * ready["canary"] / (ready["stable"] + ready["canary"]))
    assert traffic["canary"] == expected_canary and traffic["stable"] == 100 - expected_canary, (traffic, ready)

    url = s.service_url()
    seen = {"stable": 0, "canary": 0}
    for _ in range(60):
        got = infer(url)
        track = next(t for t, numbers in want.items() if close(got, numbers))
        seen[track] += 1
    assert seen["stable"] > 0 and seen["canary"] > 0, seen
