"""Runs the Argo CD health check the way Argo CD does: gopher-lua (Lua 5.1), the resource as the
global `obj` with JSON numbers as floats, and a returned table with `status` and `message`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa.lua51

SCRIPT = Path(__file__).resolve().parents[2] / "charts" / "modeldeploy" / "files" / "argocd-health.lua"


def as_argo_values(value: Any) -> Any:
    """Numbers as gopher-lua sees them (float64), everything else unchanged."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        return {key: as_argo_values(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_argo_values(item) for item in value]
    return value


def run_health_check(resource: dict[str, Any]) -> dict[str, Any]:
    """Run the script on `resource` in a fresh Lua 5.1 state; return the result as a dict."""
    lua = lupa.lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(as_argo_values(resource), recursive=True)
    result = lua.execute(SCRIPT.read_text())
    assert lupa.lua51.lua_type(result) == "table", "the script must return a table"
    return {str(key): value for key, value in result.items()}
