"""The README's calls in both protocols, run as written against the real server serving the tiny model of
examples/make_tiny_model.py (only the ports differ: the test's own free ones)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import localcluster

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def calls() -> tuple[list[str], str]:
    """The shell commands (continuation lines joined) and the Python program between the markers."""
    block = README.split("<!-- calls:start -->", 1)[1].split("<!-- calls:end -->", 1)[0]
    shell = re.search(r"```sh\n(.*?)```", block, re.S)
    program = re.search(r"```python\n(.*?)```", block, re.S)
    assert shell and program, "the calls block holds a sh and a python example"
    commands: list[str] = []
    pending = ""
    for line in shell.group(1).replace("\\\n", " ").splitlines():
        pending += line if not pending else "\n" + line
        if pending.count("'") % 2 == 0:  # not inside a quoted argument
            commands.append(pending.split("  #")[0].strip())
            pending = ""
    return [command for command in commands if command], program.group(1)


def on(server: Any, text: str) -> str:
    return text.replace("localhost:8080", f"127.0.0.1:{server.port}").replace(
        "localhost:8081", f"127.0.0.1:{server.grpc_port}"
    )


def run(server: Any, command: str) -> Any:
    return json.loads(subprocess.run(["bash", "-c", on(server, command)], capture_output=True, text=True,
                                     check=True).stdout)


def rest_answer(server: Any) -> np.ndarray:
    commands, _ = calls()
    assert [command.split()[0] for command in commands] == ["curl", "grpcurl", "grpcurl", "grpcurl"]
    [output] = run(server, commands[0])["outputs"]
    assert output["name"] == "probabilities" and output["shape"] == [1, 2]
    return np.array(output["data"], dtype=np.float32)


def test_the_readme_curl_and_tritonclient_calls_answer_as_written(sentiment_server: Any) -> None:
    rest = rest_answer(sentiment_server)
    _, program = calls()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(on(sentiment_server, program), "README.md", "exec"), {})  # the README's own example
    arrays = [np.array(re.findall(r"[-\d.e]+", line), dtype=np.float32) for line in printed.getvalue().splitlines()]
    assert len(arrays) == 2, printed.getvalue()
    for array in arrays:  # tritonclient.http, then tritonclient.grpc
        np.testing.assert_allclose(array, rest, rtol=1e-5)


@pytest.fixture(scope="module")
def grpcurl_on_path(monkeypatch_module: pytest.MonkeyPatch) -> None:
    """grpcurl as the README calls it: the one `make binaries` builds, first on PATH."""
    bin_dir = localcluster.ensure_binaries()
    monkeypatch_module.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    assert shutil.which("grpcurl") is not None


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.usefixtures("grpcurl_on_path")
def test_the_readme_grpcurl_calls_answer_as_written(sentiment_server: Any) -> None:
    rest = rest_answer(sentiment_server)
    commands, _ = calls()
    infer, health, listing = commands[1:]
    values = run(sentiment_server, infer)["outputs"][0]["contents"]["fp32_contents"]
    np.testing.assert_allclose(np.array(values, dtype=np.float32), rest, rtol=1e-5)
    assert run(sentiment_server, health) == {"status": "SERVING"}
    services = subprocess.run(["bash", "-c", on(sentiment_server, listing)], capture_output=True, text=True, check=True)
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= set(services.stdout.split())
