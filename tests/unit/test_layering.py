"""DESIGN §4's layering, checked on the imports: one module talks to the API, the server's core knows no wire format."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OPERATOR = REPO / "operator" / "modeldeploy_operator"
SERVER = REPO / "serving-image" / "modeldeploy_server"
WEB = {"fastapi", "starlette", "uvicorn", "httptools", "h11", "grpc", "grpc_health", "grpc_reflection", "google"}
FRONTS = {"modeldeploy_server.rest_codec", "modeldeploy_server.infer_front", "modeldeploy_server.routes",
          "modeldeploy_server.openapi", "modeldeploy_server.app", "modeldeploy_server.grpc_codec",
          "modeldeploy_server.grpc_front", "modeldeploy_server.protos"}


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
    """The binary tensor extension is the REST front's business (the gRPC front carries raw contents)."""
    source = (SERVER / "dataplane.py").read_text().lower()
    assert "binary" not in source


def test_the_fronts_know_only_their_own_wire() -> None:
    """REST modules know no gRPC and the gRPC modules no web framework: two fronts over one core."""
    grpc_roots = {"grpc", "grpc_health", "grpc_reflection"}
    for module in ("rest_codec", "infer_front", "routes", "openapi", "app"):
        found = imports(SERVER / f"{module}.py")
        assert not roots(found) & grpc_roots, (module, roots(found) & grpc_roots)
    for module in ("grpc_codec", "grpc_front"):
        found = imports(SERVER / f"{module}.py")
        assert not roots(found) & (WEB - grpc_roots - {"google"}), (module, roots(found) & WEB)


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
               if path.name != "__init__.py" and not path.stem.endswith("_pb2") and f"- `{path.stem}` — " not in page]
    assert not unnamed, f"docs/architecture.md does not describe: {unnamed}"


def test_the_kind_registry_is_the_operators_only_per_kind_list() -> None:
    """The cache and the pruning follow the registry: neither names a particular child kind."""
    for module in ("cache.py", "children.py", "inventory.py", "controller.py", "actions.py"):
        source = (OPERATOR / module).read_text()
        for kind in ("DEPLOYMENT", "HPA", "SCALED_OBJECT", "HTTP_ROUTE", "VIRTUAL_SERVICE", "SERVICE"):
            assert f"kinds.{kind}" not in source, (module, kind)
