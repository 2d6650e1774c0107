"""The README is the front door: its commands and its reference must be true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
README = (REPO / "README.md").read_text()


def test_reference_matches_the_generated_crd() -> None:
    result = subprocess.run([sys.executable, str(REPO / "hack" / "make_reference.py"), "--check"], check=False)
    assert result.returncode == 0, "run `python hack/make_reference.py` and commit README.md"


def test_every_make_target_the_readme_names_exists() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, flags=re.MULTILINE))
    inline = re.findall(r"`make ([a-z0-9-]+)", README)
    named = set(inline) | set(re.findall(r"^make ([a-z0-9-]+)", README, re.MULTILINE))
    assert {"test", "demo"} <= named
    assert named <= targets, f"README names make targets that do not exist: {named - targets}"


def test_every_repository_path_the_readme_names_exists() -> None:
    paths = set(re.findall(r"`((?:examples|charts|crds|hack|operator|serving-image|docs)/[\w./-]+)`", README))
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"README names files that do not exist: {missing}"


def _development_map() -> dict[str, str]:
    """The README's development map: folder -> what the map says of it (continuation lines joined)."""
    block = README.split("## Development", 1)[1].split("```", 2)[1]
    entries: dict[str, str] = {}
    folder = ""
    for line in block.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            folder, _, line = line.partition(" ")
            entries[folder] = ""
        entries[folder] += " " + line.strip()
    return entries


def test_the_development_map_names_every_module() -> None:
    entries = _development_map()
    missing = []
    for package in ("operator/modeldeploy_operator", "serving-image/modeldeploy_server", "hack/localkube"):
        text = entries.get(f"{package}/", "")
        for module in sorted((REPO / package).glob("*.py")):
            if module.stem != "__init__" and not re.search(rf"(?<![\w.]){re.escape(module.stem)}\b", text):
                missing.append(f"{package}/{module.name}")
    assert not missing, f"README's development map does not name: {missing}"
