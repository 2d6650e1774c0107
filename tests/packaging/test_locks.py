"""The lock files: current with pyproject.toml (checked offline), and installable with --require-hashes.

`make venv` is itself the dev lock installed with --require-hashes into a fresh venv (on every CI run,
from a fresh clone); the test below holds the venv to the lock, version for version. The operator's
lock is installed into a new venv here, as Dockerfile.operator does; the serving locks are installed by
the image builds of the real-node tests, and resolved for both CPUs by tests/packaging/test_images.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker

import locks

REPO = Path(__file__).resolve().parents[2]
def test_the_locks_are_current_with_pyproject() -> None:
    assert locks.problems() == []


def test_a_changed_dependency_or_a_hand_edited_export_is_caught(tmp_path: Path) -> None:
    """On a copy of the project files: each kind of drift is reported, with `make lock` as the fix."""
    for name in ("pyproject.toml", "README.md", "uv.lock"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "locks", tmp_path / "locks")
    assert locks.problems(tmp_path) == []

    operator = tmp_path / "locks" / "operator.txt"
    operator.write_text(operator.read_text().replace("kopf==", "kopf===", 1))
    assert locks.problems(tmp_path) == ["locks/operator.txt is not the export of uv.lock: run `make lock`"]

    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"pyyaml>=6",', '"pyyaml>=6",\n  "rich>=13",', 1))
    assert locks.problems(tmp_path) == [
        "uv.lock does not satisfy pyproject.toml (a dependency changed): run `make lock` (rich added to [operator])"]
    pyproject.write_text(pyproject.read_text().replace('"kopf>=1.37,<2"', '"kopf>=1.38,<2"', 1))
    (problem,) = locks.problems(tmp_path)
    assert problem.endswith("(rich added to [operator])")


def test_every_environment_is_exported_with_a_hash_for_every_pin() -> None:
    for name in locks.ENVIRONMENTS:
        text = locks.lock_path(name).read_text()
        requirements = [block for block in re.split(r"\n(?=\S)", text) if block and not block.startswith("#")]
        assert requirements, name
        for block in requirements:
            assert re.match(r"^[A-Za-z0-9._-]+==\S+", block), f"{name}: not pinned: {block.splitlines()[0]}"
            assert "--hash=sha256:" in block, f"{name}: no hash for {block.splitlines()[0]}"
    gpu = {name for name, _, _ in locks.pins(locks.lock_path("gpu").read_text())}
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu


def test_the_dev_venv_is_the_dev_lock() -> None:
    """Every pin of locks/dev.txt that applies here is installed at exactly that version."""
    locked = locks.pins(locks.lock_path("dev").read_text())
    assert {"pytest", "uv", "onnxruntime", "kopf"} <= {name for name, _, _ in locked}
    wrong = {}
    for name, version, marker in locked:
        if marker and not Marker(marker).evaluate():
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            wrong[name] = f"locked {version}, installed {installed}"
    assert wrong == {}, "the venv is not the lock: `rm -rf .venv && make venv`"


@pytest.mark.timeout(600)
def test_the_operator_lock_installs_in_a_fresh_venv_with_hashes(tmp_path: Path) -> None:
    """As Dockerfile.operator does: the lock with --require-hashes, the project with --no-deps, pip check."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")

    def pip(*args: str) -> None:
        result = subprocess.run([python, "-m", "pip", "install", "--quiet", *args], capture_output=True, text=True,
                                check=False, timeout=540)
        assert result.returncode == 0, result.stderr[-3000:]

    pip("--require-hashes", "-r", str(locks.lock_path("operator")))
    pip("--no-deps", str(REPO))
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout
    run = subprocess.run([python, "-c", "import kopf, modeldeploy_operator.handlers; "
                                        "from modeldeploy_operator import config; print(config.DEFAULT_SERVER_IMAGE)"],
                         capture_output=True, text=True, check=False, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ghcr.io/modeldeploy/modeldeploy-server:")
