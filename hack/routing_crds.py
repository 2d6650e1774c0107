"""Istio's and the Gateway API's CRDs, with their real schemas, from the Go modules pinned in versions.env.

`go mod download -json MODULE@VERSION` fetches the module's zip through the Go module proxy (kept in the
Go module cache); the CRDs are cut out of it into the cache folder, so the big files are never committed:
- Istio (no control plane can be built here, but its CRDs ship in its module):
  `manifests/charts/base/files/crd-all.gen.yaml`, of which the routing kinds modeldeploy writes
  (VirtualService, DestinationRule) are kept;
- the Gateway API: `config/crd/standard/*.yaml`, the standard channel that `standard-install.yaml` holds.

`python hack/routing_crds.py istio|gateway-api` prints the path of the file to `kubectl apply`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
VERSIONS = HERE / "versions.env"
ISTIO_MODULE = "istio.io/istio"
ISTIO_FILE = "manifests/charts/base/files/crd-all.gen.yaml"
ISTIO_KEPT = ("virtualservices.networking.istio.io", "destinationrules.networking.istio.io")
GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api"
GATEWAY_API_FOLDER = "config/crd/standard"


def pins() -> dict[str, str]:
    """KEY=VALUE lines of hack/versions.env."""
    found = {}
    for line in VERSIONS.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def cache_root() -> Path:
    base = os.environ.get("MODELDEPLOY_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modeldeploy")
    return Path(base)


def module_dir(module: str, version: str) -> Path:
    """The unpacked module in the Go module cache (downloaded once through the proxy)."""
    done = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"], capture_output=True,
                          text=True, check=False, cwd=HERE)
    info: dict[str, Any] = json.loads(done.stdout) if done.stdout.strip() else {}
    if done.returncode != 0 or "Dir" not in info:
        raise RuntimeError(f"go mod download {module}@{version} failed: {info.get('Error') or done.stderr.strip()}")
    return Path(info["Dir"])


def _write(target: Path, documents: list[dict[str, Any]], source: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_text(f"# Extracted from {source}\n" + yaml.safe_dump_all(documents, sort_keys=False))
    partial.replace(target)
    return target


def istio_crds() -> Path:
    """VirtualService and DestinationRule exactly as Istio ships them (every version, full schemas)."""
    version = pins()["ISTIO_VERSION"]
    target = cache_root() / "routing-crds" / f"istio-{version}.yaml"
    if target.exists():
        return target
    source = module_dir(ISTIO_MODULE, version) / ISTIO_FILE
    kept = [doc for doc in yaml.safe_load_all(source.read_text())
            if doc and doc.get("metadata", {}).get("name") in ISTIO_KEPT]
    if len(kept) != len(ISTIO_KEPT):
        raise RuntimeError(f"{source} does not define {', '.join(ISTIO_KEPT)}")
    return _write(target, kept, f"{ISTIO_MODULE}@{version} {ISTIO_FILE}")


def gateway_api_crds() -> Path:
    """The Gateway API's standard channel: its CRDs and the admission policy that guards their upgrades."""
    version = pins()["GATEWAY_API_VERSION"]
    target = cache_root() / "routing-crds" / f"gateway-api-{version}-standard.yaml"
    if target.exists():
        return target
    folder = module_dir(GATEWAY_API_MODULE, version) / GATEWAY_API_FOLDER
    documents = [doc for path in sorted(folder.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
                 if doc and doc.get("kind")]
    if not any(doc.get("metadata", {}).get("name") == "httproutes.gateway.networking.k8s.io" for doc in documents):
        raise RuntimeError(f"{folder} has no HTTPRoute CRD")
    return _write(target, documents, f"{GATEWAY_API_MODULE}@{version} {GATEWAY_API_FOLDER}")


def main(argv: list[str]) -> int:
    choices = {"istio": istio_crds, "gateway-api": gateway_api_crds}
    if len(argv) != 1 or argv[0] not in choices:
        print(f"usage: {Path(__file__).name} {'|'.join(choices)}", file=sys.stderr)
        return 2
    print(choices[argv[0]]())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
