"""Container images built on this machine: no registry is reachable, so nothing is pulled.

A Debian base made with debootstrap (the machine's apt mirror and CA bundle), the project's own
Dockerfiles built on it with BuildKit, and the pause image from the Kubernetes source. Every image
is tagged by a hash of its build inputs, so a warm run finds it and builds nothing; the saved tarballs
that the node's containerd imports are cached the same way.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from localkube.errors import ClusterError
from localkube.paths import CACHE_ROOT, REPO_ROOT

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_SUITE = "bookworm"
# What the Dockerfiles need from a base: an interpreter with venv, `python`, useradd, TLS roots.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "passwd", "ca-certificates")
# The build context the Dockerfiles see (the same allow-list as .dockerignore).
CONTEXT_PATHS = ("pyproject.toml", "locks", "README.md", "operator", "serving-image")
IGNORED = re.compile(r"(__pycache__|\.pyc$|\.egg-info|\.onnx$)")
IMAGE_REPO = "modeldeploy.local"


def _run(command: Sequence[str], what: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
        list(command), capture_output=True, text=True, check=False, **kwargs
    )
    if result.returncode != 0:
        raise ClusterError(f"{what} failed ({' '.join(command[:3])} ... exited {result.returncode}):\n"
                           f"{(result.stderr or '')[-3000:]}{(result.stdout or '')[-2000:]}")
    return result


def docker_cli() -> str:
    """The CLI shipped with the engine (its BuildKit client is built in; newer CLIs want buildx)."""
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and Path(candidate).exists():
            return candidate
    raise ClusterError("no docker CLI: install Debian's docker.io")


def ensure_docker(timeout: float = 60.0) -> str:
    """A running Docker engine; start dockerd (no bridge, no iptables rules on the host) when none runs."""
    docker = docker_cli()
    if subprocess.run([docker, "info"], capture_output=True, check=False).returncode == 0:
        return docker
    dockerd = shutil.which("dockerd")
    if not dockerd:
        raise ClusterError("no dockerd: install Debian's docker.io")
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with (CACHE_ROOT / "dockerd.log").open("ab") as log:
        subprocess.Popen(
            [dockerd, "--iptables=false", "--ip-masq=false", "--bridge=none"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run([docker, "info"], capture_output=True, check=False).returncode == 0:
            return docker
        time.sleep(0.5)
    raise ClusterError(f"dockerd did not answer within {timeout:.0f}s; see {CACHE_ROOT / 'dockerd.log'}")


def image_exists(docker: str, tag: str) -> bool:
    return subprocess.run([docker, "image", "inspect", tag], capture_output=True, check=False).returncode == 0


def apt_mirror(sources: Iterable[Path] | None = None) -> str:
    """The Debian mirror this machine's apt uses (read at run time, never written into the repo)."""
    files = list(sources) if sources is not None else [
        Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))
    ]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for block in re.split(r"\n\s*\n", text):  # deb822 stanzas
            fields = dict(
                (key.strip().lower(), value.strip())
                for key, _, value in (line.partition(":") for line in block.splitlines() if not line.startswith("#"))
                if value
            )
            suites = fields.get("suites", "").split()
            if BASE_SUITE in suites and "uris" in fields:
                return str(fields["uris"].split()[0])
        for line in text.splitlines():  # one-line style
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == BASE_SUITE:
                uri_index = 2 if parts[1].startswith("[") else 1
                return parts[uri_index]
    raise ClusterError(f"no apt source for Debian {BASE_SUITE} in /etc/apt: cannot debootstrap a base image")


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def base_image(docker: str) -> str:
    """A minimal Debian with Python, made with debootstrap; cached by its package list and CA bundle."""
    mirror = apt_mirror()
    ca_bundle = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.exists() else b""
    inputs = _digest(" ".join(BASE_PACKAGES).encode(), ca_bundle, mirror.encode())
    tag = f"{IMAGE_REPO}/debian-python:{BASE_SUITE}-{inputs}"
    if image_exists(docker, tag):
        return tag
    if not shutil.which("debootstrap"):
        raise ClusterError("no debootstrap: install Debian's debootstrap")
    with tempfile.TemporaryDirectory(prefix="modeldeploy-rootfs-", dir=CACHE_ROOT) as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", BASE_SUITE,
              str(rootfs), mirror], "debootstrap of the base image")
        if ca_bundle:
            # Package downloads here may pass a proxy with its own CA: pip in the build must trust it.
            (rootfs / "etc/ssl/certs/ca-certificates.crt").write_bytes(ca_bundle)
            (rootfs / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                     "usr/share/locale", "usr/share/info"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
            (rootfs / junk).mkdir(parents=True, exist_ok=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        _run([docker, "import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "--change", 'CMD ["/bin/bash"]', "-", tag], "docker import of the base image", stdin=tar.stdout)
        tar.wait()
    return tag


def _context_files() -> list[Path]:
    files: list[Path] = []
    for name in CONTEXT_PATHS:
        path = REPO_ROOT / name
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files += [p for p in candidates if not IGNORED.search(str(p.relative_to(REPO_ROOT)))]
    return files


@dataclass(frozen=True)
class ImageBuild:
    """One image from one of the project's Dockerfiles; its tag is the hash of everything it is built from."""

    name: str
    dockerfile: str
    build_args: tuple[tuple[str, str], ...] = ()

    def tag(self) -> str:
        parts = [(REPO_ROOT / self.dockerfile).read_bytes(), repr(self.build_args).encode()]
        for path in _context_files():
            parts += [str(path.relative_to(REPO_ROOT)).encode(), path.read_bytes()]
        return f"{IMAGE_REPO}/{self.name}:{_digest(*parts)}"

    def build(self, docker: str) -> str:
        tag = self.tag()
        if image_exists(docker, tag):
            return tag
        command = [docker, "build", "--network=host", "-f", str(REPO_ROOT / self.dockerfile), "-t", tag]
        for key, value in self.build_args:
            command += ["--build-arg", f"{key}={value}"]
        _run([*command, str(REPO_ROOT)], f"docker build of {self.name}",
             env={**os.environ, "DOCKER_BUILDKIT": "1"})
        return tag


def project_images(docker: str) -> dict[str, str]:
    """The CPU serving image and the operator image, on the local Debian base: {"server": tag, "operator": tag}."""
    base = base_image(docker)
    builds = {
        "server": ImageBuild("modeldeploy-server", "Dockerfile.server", (("VARIANT", "cpu"), ("PYTHON_IMAGE", base))),
        "operator": ImageBuild("modeldeploy-operator", "Dockerfile.operator", (("PYTHON_IMAGE", base),)),
    }
    return {key: build.build(docker) for key, build in builds.items()}


def pause_image(docker: str, pause_binary: Path) -> str:
    """The sandbox image: Kubernetes' own pause.c, compiled statically, alone in a scratch image."""
    tag = f"{IMAGE_REPO}/pause:{_digest(pause_binary.read_bytes())}"
    if image_exists(docker, tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="modeldeploy-pause-") as tmp:
        shutil.copy2(pause_binary, Path(tmp) / "pause")
        (Path(tmp) / "Dockerfile").write_text(
            'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n'
        )
        _run([docker, "build", "-t", tag, tmp], "docker build of the pause image",
             env={**os.environ, "DOCKER_BUILDKIT": "1"})
    return tag


def small_image(docker: str, name: str, dockerfile: str, files: dict[str, Path]) -> str:
    """An image from a Dockerfile and a few files, tagged by their content (a warm run builds nothing)."""
    parts = [dockerfile.encode()] + [path.read_bytes() for path in files.values()]
    tag = f"{IMAGE_REPO}/{name}:{_digest(*parts)}"
    if image_exists(docker, tag):
        return tag
    with tempfile.TemporaryDirectory(prefix=f"modeldeploy-{name}-", dir=CACHE_ROOT) as tmp:
        for target, path in files.items():
            shutil.copy2(path, Path(tmp) / target)
        (Path(tmp) / "Dockerfile").write_text(dockerfile)
        _run([docker, "build", "-t", tag, tmp], f"docker build of {name}", env={**os.environ, "DOCKER_BUILDKIT": "1"})
    return tag


def saved_image(docker: str, tag: str) -> Path:
    """`docker save` of an image, kept in the cache under its content tag (a warm import skips the save)."""
    folder = CACHE_ROOT / "images"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (re.sub(r"[^A-Za-z0-9_.-]", "_", tag) + ".tar")
    if not path.exists():
        partial = path.with_suffix(".partial")
        _run([docker, "save", "-o", str(partial), tag], f"docker save {tag}")
        partial.rename(path)
    return path


def image_size_bytes(docker: str, tag: str) -> int:
    return int(_run([docker, "image", "inspect", "-f", "{{.Size}}", tag], "docker image inspect").stdout.strip())
