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
    assert talking == ["kube.py", "plugin.py"]


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


MAX_FUNCTION_LINES = 60


def test_no_function_of_the_operator_or_the_server_is_longer_than_sixty_lines() -> None:
    long = []
    for package in (OPERATOR, SERVER):
        for path in sorted(package.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_architecture_page_names_every_module_in_one_line() -> None:
    page = (REPO / "docs" / "architecture.md").read_text()
    unnamed = [f"{package.name}/{path.name}" for package in (OPERATOR, SERVER)
               for path in sorted(package.rglob("*.py"))
               if path.name != "__init__.py" and f"- `{path.stem}` — " not in page]
    assert not unnamed, f"docs/architecture.md does not describe: {unnamed}"


def test_the_kind_registry_is_the_operators_only_per_kind_list() -> None:
    """The cache and the pruning follow the registry: neither names a particular child kind."""
    for module in ("cache.py", "children.py", "inventory.py", "controller.py", "actions.py"):
        source = (OPERATOR / module).read_text()
        for kind in ("DEPLOYMENT", "HPA", "SCALED_OBJECT", "HTTP_ROUTE", "VIRTUAL_SERVICE", "SERVICE"):
            assert f"kinds.{kind}" not in source, (module, kind)
