"""Where things live: the repository, the binary/image cache, the default state folder."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-binaries.sh"
_XDG_CACHE = Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")))
CACHE_ROOT = Path(os.environ.get("MODELDEPLOY_CACHE", str(_XDG_CACHE / "modeldeploy")))
# Where `up` keeps a detached cluster's files (and `down` finds them); the demo uses the same folder.
DEFAULT_STATE_DIR = Path(os.environ.get("MODELDEPLOY_CLUSTER_DIR", str(REPO_ROOT / ".cluster")))
