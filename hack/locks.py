"""The lock files: one resolution of pyproject.toml (uv.lock), exported per environment we ship.

    python hack/locks.py write [--upgrade]   # `make lock`: re-resolve what changed (or everything), export
    python hack/locks.py check               # offline: uv.lock satisfies pyproject.toml, the exports match it

`uv lock` resolves once for every platform and Python the project allows (linux amd64 and arm64
included), so the operator, serving and dev environments share one set of versions. Each environment
is then exported as a requirements file with the sha256 of every wheel (`pip install --require-hashes`
takes it; pip picks the wheel for its own platform). The Dockerfiles and `make venv` install those.

uv itself is pinned in locks/dev.txt (the `dev` extra) and installed from there, with its hashes, into
the shared cache folder, so regenerating needs nothing but Python and PyPI.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CACHE_ROOT = Path(os.environ.get("MODELDEPLOY_CACHE") or Path(os.environ.get("XDG_CACHE_HOME")
                                                              or Path.home() / ".cache") / "modeldeploy")

# Exported environment -> (the extras it installs, who installs it).
ENVIRONMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "operator": (("operator",), "Dockerfile.operator"),
    "server": (("server",), "Dockerfile.server, VARIANT=cpu"),
    "gpu": (("gpu",), "Dockerfile.server, VARIANT=gpu"),
    "dev": (("operator", "server", "dev"), "make venv"),
}


class LockError(RuntimeError):
    """A lock file that does not match pyproject.toml, or a uv that cannot be had."""


PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)(?: ; (.+?))? \\$", re.MULTILINE)


def pins(text: str) -> list[tuple[str, str, str | None]]:
    """(name, version, environment marker or None) of every requirement in an exported lock; a name can
    appear twice, pinned differently for different Pythons."""
    return [(name.lower(), version, marker or None) for name, version, marker in PIN.findall(text)]


def wheels(root: Path = REPO) -> dict[tuple[str, str], list[str]]:
    """(name, version) -> the file names of every wheel uv.lock records for it."""
    lock = tomllib.loads((root / "uv.lock").read_text())
    return {(package["name"], package["version"]): [w["url"].rsplit("/", 1)[-1] for w in package.get("wheels", [])]
            for package in lock["package"] if "version" in package}


def lock_path(name: str, root: Path = REPO) -> Path:
    return root / "locks" / f"{name}.txt"


def uv_requirement(dev_lock: str) -> str:
    """uv's own entry (pin and hashes) in the dev lock, as a one-package requirements file."""
    match = re.search(r"^uv==\S+(?: \\\n\s+--hash=\S+)+", dev_lock, re.MULTILINE)
    if not match:
        raise LockError(f"{lock_path('dev')} pins no uv: add `uv` to the dev extra and lock once with a uv "
                        "from PyPI (pip install uv; uv lock)")
    return match.group(0) + "\n"


def _is_version(uv: Path, version: str) -> bool:
    if not uv.exists():
        return False
    said = subprocess.run([str(uv), "--version"], capture_output=True, text=True, check=False).stdout.split()
    return said[1:2] == [version]


def ensure_uv() -> Path:
    """The uv pinned in the dev lock: the dev venv's own (make venv installed it), else one installed with
    --require-hashes into the shared cache once."""
    requirement = uv_requirement(lock_path("dev").read_text())
    version = requirement.split("==")[1].split()[0]
    home = CACHE_ROOT / f"uv-{version}"
    uv = home / "bin" / "uv"
    for candidate in (Path(sys.executable).parent / "uv", uv):
        if _is_version(candidate, version):
            return candidate
    subprocess.run([sys.executable, "-m", "venv", str(home)], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as handle:
        handle.write(requirement)
        handle.flush()
        subprocess.run([str(home / "bin" / "python"), "-m", "pip", "install", "--quiet", "--require-hashes",
                        "-r", handle.name], check=True)
    return uv


def uv_env() -> dict[str, str]:
    """uv resolves with this interpreter and never downloads one (nothing but PyPI is reachable)."""
    return {**os.environ, "UV_PYTHON": sys.executable, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}


def run_uv(uv: Path, *args: str, root: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(uv), *args], cwd=root, env=uv_env(), capture_output=True, text=True, check=False)


def export(uv: Path, name: str, root: Path = REPO) -> str:
    """One environment's requirements file, from uv.lock alone (no network)."""
    extras, installer = ENVIRONMENTS[name]
    args = ["export", "--frozen", "--no-emit-project", "--no-dev", "--no-header", "--format", "requirements-txt"]
    for extra in extras:
        args += ["--extra", extra]
    result = run_uv(uv, *args, root=root)
    if result.returncode != 0:
        raise LockError(f"uv export of {name} failed:\n{result.stderr}")
    header = (f"# {name}: extras {', '.join(extras)}; installed by {installer} with --require-hashes.\n"
              "# Generated from uv.lock by `make lock`; do not edit.\n")
    return header + result.stdout


def write(upgrade: bool = False) -> None:
    uv = ensure_uv()
    result = run_uv(uv, "lock", *(["--upgrade"] if upgrade else []))
    if result.returncode != 0:
        raise LockError(f"uv lock failed:\n{result.stderr}")
    (REPO / "locks").mkdir(exist_ok=True)
    for name in ENVIRONMENTS:
        lock_path(name).write_text(export(uv, name))
    print(f"wrote uv.lock and {', '.join(str(lock_path(n).relative_to(REPO)) for n in ENVIRONMENTS)}")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _why(root: Path) -> str:
    """What pyproject.toml asks for that uv.lock did not record (by extra), or the other way round."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = {("", _normal(re.split(r"[<>=!~\[;\s]", r, maxsplit=1)[0])) for r in project.get("dependencies", [])}
    for extra, requirements in project.get("optional-dependencies", {}).items():
        wanted |= {(extra, _normal(re.split(r"[<>=!~\[;\s]", r, maxsplit=1)[0])) for r in requirements}
    lock = tomllib.loads((root / "uv.lock").read_text())
    own: dict[str, Any] = next((p for p in lock["package"] if p.get("source", {}).get("editable") == "."), {})
    recorded = set()
    for entry in own.get("metadata", {}).get("requires-dist", []):
        extra = re.search(r"extra == '([^']+)'", entry.get("marker", ""))
        recorded.add((extra.group(1) if extra else "", _normal(entry["name"])))
    said = [f"{name} added{f' to [{extra}]' if extra else ''}" for extra, name in sorted(wanted - recorded)]
    said += [f"{name} removed{f' from [{extra}]' if extra else ''}" for extra, name in sorted(recorded - wanted)]
    return ", ".join(said) or "a version, a specifier or the project's metadata changed"


def problems(root: Path = REPO) -> list[str]:
    """Everything stale under `root`, each with the command that fixes it; offline."""
    uv = ensure_uv()
    found = []
    result = run_uv(uv, "lock", "--check", "--offline", root=root)
    if result.returncode != 0:
        found.append("uv.lock does not satisfy pyproject.toml (a dependency changed): run `make lock` "
                     f"({_why(root)})")
        return found
    for name in ENVIRONMENTS:
        path = lock_path(name, root)
        if not path.exists() or path.read_text() != export(uv, name, root):
            found.append(f"{path.relative_to(root)} is not the export of uv.lock: run `make lock`")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["write", "check", "uv"])
    parser.add_argument("--upgrade", action="store_true", help="move every pin to the newest version allowed")
    args = parser.parse_args(argv)
    try:
        if args.command == "write":
            write(upgrade=args.upgrade)
        elif args.command == "uv":
            print(ensure_uv())
        else:
            stale = problems()
            for problem in stale:
                print(problem, file=sys.stderr)
            return 1 if stale else 0
    except LockError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
