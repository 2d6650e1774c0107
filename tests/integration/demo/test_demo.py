"""`make demo` runs to the end and prints the inference answer; `make cluster-down` then leaves nothing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.cluster


def make(target: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MODELDEPLOY_CLUSTER_DIR=str(state_dir))
    return subprocess.run(
        ["make", "--no-print-directory", target], cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip


def test_make_demo_runs_to_the_inference_answer(tmp_path: Path) -> None:
    state_dir = tmp_path / "demo-cluster"
    try:
        demo = make("demo", state_dir)
        assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
        out = demo.stdout
        assert "Ready after" in out
        assert "70/30" in out, "the TRAFFIC column did not follow the patch"
        answer = next(line for line in out.splitlines() if line.startswith("inference answer: probabilities = "))
        probabilities = json.loads(answer.split(" = ", 1)[1])
        assert len(probabilities) == 4 and abs(sum(probabilities) - 2.0) < 1e-4  # two rows of softmax
        state = json.loads((state_dir / "state.json").read_text())
        assert "modeldeploy-operator" in state["pids"], "the demo's operator must be stopped by cluster-down"
    finally:
        down = make("cluster-down", state_dir)
    assert down.returncode == 0, down.stderr
    assert not state_dir.exists()
