"""DESIGN §4's layering, checked on the imports: one module talks to the API, the server's core knows no wire format."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OPERATOR = REPO / "operator" / "modeldeploy_operator"
SERVER = REPO / "serving-image" / "modeldeploy_server"
WEB = {"fastapi", "starlette", "uvicorn", "httptools", "h11"}
FRONTS = {"modeldeploy_server.rest_codec", "modeldeploy_server.infer_front", "modeldeploy_server.routes",
          "modeldeploy_server.openapi", "modeldeploy_server.app"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def roots(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def test_kube_is_the_operators_only_api_module() -> None:
    # The kubectl plugin is a program of its own (`kubectl modeldeploy`), not part of the operator.
    talking = sorted(p.name for p in OPERATOR.glob("*.py") if "kubernetes" in roots(imports(p)))
    assert talking == ["kube.py", "plugin.py", "plugin_files.py"]


def test_only_the_handlers_and_the_entry_point_know_kopf() -> None:
    knowing = sorted(p.name for p in OPERATOR.glob("*.py") if "kopf" in roots(imports(p)))
    assert knowing == ["__main__.py", "handlers.py"]


def test_the_servers_core_knows_no_web_framework_and_no_front() -> None:
    for module in ("codec", "dataplane", "batching", "model", "drift", "settings", "errors", "metrics"):
        found = imports(SERVER / f"{module}.py")
        assert not roots(found) & WEB, (module, roots(found) & WEB)
        assert not found & FRONTS, (module, found & FRONTS)


def test_the_dataplane_is_free_of_the_rest_binary_extension() -> None:
    """The binary tensor extension is the REST front's business (a gRPC front carries raw contents)."""
    source = (SERVER / "dataplane.py").read_text().lower()
    assert "binary" not in source
