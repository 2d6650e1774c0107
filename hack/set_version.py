"""Set the release version everywhere it is written, from its one home: pyproject.toml's `version`.

    python hack/set_version.py 0.2.0     # `make version VERSION=0.2.0` (it relocks too), then commit
    python hack/set_version.py --check   # every copy says pyproject.toml's version (the release workflow)

The other places carry a copy because each is read where the others are absent: the chart's `version`
and `appVersion` (Helm reads only Chart.yaml; the image defaults follow appVersion), the server's
`__version__` (the v2 metadata endpoint; the operator image has no server), and the operator's default
serving images (the tag the same release publishes). tests/unit/test_version.py fails when any of them
disagrees with pyproject.toml, and the release workflow refuses a tag that is not `v` + that version.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$")

# File -> (pattern with one group around the version, what it is).
COPIES: dict[str, tuple[str, str]] = {
    "charts/modeldeploy/Chart.yaml": (r'^version: ([^\s]+)$', "the chart's version"),
    "charts/modeldeploy/Chart.yaml#appVersion": (r'^appVersion: "([^"]+)"$', "the chart's appVersion"),
    "serving-image/modeldeploy_server/__init__.py": (r'^__version__ = "([^"]+)"$', "the server's __version__"),
    "operator/modeldeploy_operator/config.py": (
        r'^DEFAULT_SERVER_IMAGE = "ghcr\.io/modeldeploy/modeldeploy-server:([^"]+)-cpu"$',
        "the operator's default CPU serving image"),
    "operator/modeldeploy_operator/config.py#gpu": (
        r'^DEFAULT_GPU_SERVER_IMAGE = "ghcr\.io/modeldeploy/modeldeploy-server:([^"]+)"$',
        "the operator's default GPU serving image"),
}


def home_version() -> str:
    version: str = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return version


def copies() -> dict[str, str]:
    """What each copy says now: its description -> the version written there."""
    found = {}
    for key, (pattern, what) in COPIES.items():
        text = (REPO / key.split("#")[0]).read_text()
        match = re.search(pattern, text, re.MULTILINE)
        if match is None:
            raise SystemExit(f"{key.split('#')[0]}: no line matches {pattern!r} ({what})")
        found[what] = match.group(1)
    return found


def _replace(path: Path, pattern: str, version: str) -> None:
    text = path.read_text()
    new, count = re.subn(pattern, lambda m: m.group(0).replace(m.group(1), version), text, count=1,
                         flags=re.MULTILINE)
    if count != 1:
        raise SystemExit(f"{path}: no line matches {pattern!r}")
    path.write_text(new)


def set_version(version: str) -> None:
    if not SEMVER.match(version):
        raise SystemExit(f"version {version!r}: expected MAJOR.MINOR.PATCH (semver, as Helm wants it)")
    _replace(REPO / "pyproject.toml", r'^version = "([^"]+)"$', version)
    for key, (pattern, _what) in COPIES.items():
        _replace(REPO / key.split("#")[0], pattern, version)
    # The README's settings table shows the default images: regenerate it from the settings' docs.
    # The tree's own operator package first on the path: the table comes from the file just rewritten.
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "operator"),
                                                                os.environ.get("PYTHONPATH", "")])}
    table = subprocess.run([sys.executable, "-m", "modeldeploy_operator.config"], cwd=REPO, check=True,
                           capture_output=True, text=True, env=environment).stdout
    readme = REPO / "README.md"
    start, end = "<!-- operator-settings:start -->\n", "<!-- operator-settings:end -->"
    text = readme.read_text()
    head, rest = text.split(start, 1)
    readme.write_text(head + start + table + end + rest.split(end, 1)[1])


def check() -> list[str]:
    """Each copy that disagrees with pyproject.toml, said as a sentence."""
    home = home_version()
    return [f"{what} is {found}, pyproject.toml's version is {home}" for what, found in copies().items()
            if found != home]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    if sys.argv[1] == "--check":
        wrong = check()
        raise SystemExit("\n".join([*wrong, "run `make version VERSION=...`"]) if wrong else 0)
    set_version(sys.argv[1])
    print(f"version {sys.argv[1]} written; run `make lock` (uv.lock records it) and commit")
