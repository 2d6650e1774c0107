"""docs/operations.md has a troubleshooting row for every reason the operator's code can write.

The reasons are read from the code itself (an AST scan of operator/modeldeploy_operator), so a reason
added later fails this test until the manual says what it means and what to do:
- condition reasons: the third argument of `_Cond(...)`, the first of `Problem(...)`, the first item of a
  tuple appended to `failures`, a `"reason": "..."` entry, and every string in a module-level `*_REASONS`
  set (Kubernetes' own waiting reasons the status passes through);
- RolledBack reasons: every module-level `GATE_*` name and every literal gate given to `_roll_back(...)`,
  capitalised as `rolled_back_condition` does;
- Event reasons: the second argument of `Event(...)`.
A name is followed to its assignments in the same function or module, and a call to a function of the
package to the strings it returns; an f-string becomes a pattern that some documented reason must match.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PACKAGE = REPO / "operator" / "modeldeploy_operator"
MANUAL = REPO / "docs" / "operations.md"
README = REPO / "README.md"

# Call name -> index of the positional argument that is a reason.
REASON_ARGUMENT = {"_Cond": 2, "Problem": 0, "Event": 1, "say": 1}  # say: a rollout decision's Event
GATE_ARGUMENT = {"_roll_back": 1}


@dataclass
class Found:
    reasons: set[str] = field(default_factory=set)
    patterns: set[str] = field(default_factory=set)
    gates: set[str] = field(default_factory=set)
    events: set[str] = field(default_factory=set)


def _name(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


class Scanner:
    """Resolves the expressions in reason positions to the strings (or patterns) they can hold."""

    def __init__(self, modules: dict[str, ast.Module]) -> None:
        self.modules = modules
        self.functions = {node.name: node for tree in modules.values() for node in ast.walk(tree)
                          if isinstance(node, ast.FunctionDef)}
        self.module_values: dict[str, list[ast.expr]] = {}
        for tree in modules.values():
            for node in tree.body:
                if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                    for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                        if isinstance(target, ast.Name):
                            self.module_values.setdefault(target.id, []).append(node.value)

    def strings(self, node: ast.expr | None, scope: ast.AST | None, depth: int = 0) -> tuple[set[str], set[str]]:
        """(literal strings, f-string patterns) the expression can evaluate to; dynamic parts give nothing."""
        if node is None or depth > 6:
            return set(), set()
        if isinstance(node, ast.Constant):
            return ({node.value}, set()) if isinstance(node.value, str) else (set(), set())
        if isinstance(node, ast.JoinedStr):
            parts = [re.escape(str(v.value)) if isinstance(v, ast.Constant) else "[A-Za-z0-9]+" for v in node.values]
            return set(), {"".join(parts)}
        if isinstance(node, ast.BoolOp | ast.IfExp):
            values = node.values if isinstance(node, ast.BoolOp) else [node.body, node.orelse]
            return self._union([self.strings(v, scope, depth + 1) for v in values])
        if isinstance(node, ast.Name):
            return self._union([self.strings(v, scope, depth + 1) for v in self._assigned(node.id, scope)])
        if isinstance(node, ast.Call) and _name(node.func) in self.functions:
            function = self.functions[_name(node.func)]
            returns = [n.value for n in ast.walk(function) if isinstance(n, ast.Return)]
            return self._union([self.strings(v, function, depth + 1) for v in returns])
        return set(), set()

    @staticmethod
    def _union(results: list[tuple[set[str], set[str]]]) -> tuple[set[str], set[str]]:
        return set().union(*(r[0] for r in results)), set().union(*(r[1] for r in results))

    def _assigned(self, name: str, scope: ast.AST | None) -> list[ast.expr]:
        """Every value assigned to `name` in the function (tuple unpacking followed), else at module level."""
        values: list[ast.expr] = []
        for node in ast.walk(scope) if scope is not None else []:
            if not isinstance(node, ast.Assign):
                continue
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == name:
                    values.append(node.value)
                elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    values += [v for t, v in zip(target.elts, node.value.elts, strict=False)
                               if isinstance(t, ast.Name) and t.id == name]
        return values or self.module_values.get(name, [])


def _enclosing_functions(tree: ast.Module) -> dict[ast.AST, ast.FunctionDef]:
    owner: dict[ast.AST, ast.FunctionDef] = {}
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        for node in ast.walk(function):
            owner.setdefault(node, function)  # outermost first: ast.walk is breadth-first
    return owner


def _module_sets(tree: ast.Module, suffix: str) -> set[str]:
    """Every string inside a module-level assignment to a name ending in `suffix`."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.endswith(suffix)
                                                for t in node.targets):
            found |= {c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return found


def _appends_a_failure(call: ast.Call) -> bool:
    """`failures.append((reason, message))`: the autoscaling status collects its reasons this way."""
    return (isinstance(call.func, ast.Attribute) and call.func.attr == "append" and _name(call.func.value) == "failures"
            and bool(call.args) and isinstance(call.args[0], ast.Tuple))


def scan(sources: dict[str, str] | None = None) -> Found:
    """The reasons in the operator package (or in `sources`, name -> code, for the scanner's own test)."""
    if sources is None:
        sources = {path.name: path.read_text() for path in sorted(PACKAGE.glob("*.py"))}
    modules = {name: ast.parse(code, name) for name, code in sources.items()}
    scanner = Scanner(modules)
    found = Found()
    for tree in modules.values():
        owner = _enclosing_functions(tree)
        found.reasons |= _module_sets(tree, "_REASONS")
        found.gates |= {v.value for name, values in scanner.module_values.items() if name.startswith("GATE_")
                        for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)}
        for node in ast.walk(tree):
            scope = owner.get(node)
            if isinstance(node, ast.Call):
                called = _name(node.func)
                if called in REASON_ARGUMENT and len(node.args) > REASON_ARGUMENT[called]:
                    literal, patterns = scanner.strings(node.args[REASON_ARGUMENT[called]], scope)
                    (found.events if called in ("Event", "say") else found.reasons).update(literal)
                    found.patterns |= patterns
                if called in GATE_ARGUMENT and len(node.args) > GATE_ARGUMENT[called]:
                    found.gates |= scanner.strings(node.args[GATE_ARGUMENT[called]], scope)[0]
                first = node.args[0] if node.args else None
                if _appends_a_failure(node) and isinstance(first, ast.Tuple):
                    literal, patterns = scanner.strings(first.elts[0], scope)
                    found.reasons |= literal
                    found.patterns |= patterns
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "reason" and isinstance(value, ast.Constant):
                        found.reasons.add(str(value.value))
    return found


def documented(section: str) -> set[str]:
    """Backticked names in the first cell of each row of the manual's table between the section's markers."""
    text = MANUAL.read_text()
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    assert start in text and end in text, f"docs/operations.md lost its {start} ... {end} markers"
    table = text.split(start, 1)[1].split(end, 1)[0]
    names = set()
    for line in table.splitlines():
        if line.startswith("|") and not line.startswith("| ---"):
            names |= set(re.findall(r"`([A-Za-z][A-Za-z0-9]*)`", line.split("|")[1]))
    return names


def test_the_scan_sees_the_reasons_it_must() -> None:
    """A scan that found nothing would pass everything: it must at least find these."""
    found = scan()
    assert {"ClaimNotFound", "ClaimPending", "DeploymentNotFound", "RolloutPending", "RollingOut", "ReplicaFailure",
            "ProgressDeadlineExceeded", "ServerTerminated", "Unschedulable", "PodFailed", "ApplyFailed",
            "InvalidSpec", "CrashLoopBackOff", "NoRouterInstalled", "RouteNotAccepted", "KEDANotInstalled",
            "PrometheusNotConfigured", "ScaledObjectNotReady", "AutoscalerPending", "Serving"} <= found.reasons
    assert {"errorRate", "errorRateIncrease", "latencyP95Ratio", "outputDrift", "progressDeadline", "aborted",
            "analysis"} <= found.gates
    assert {"RolloutStarted", "RolledBack", "Promoted", "AnalysisFailed"} <= found.events
    assert any(re.fullmatch(pattern, "ClaimLost") for pattern in found.patterns)


def test_the_scan_follows_names_calls_and_fstrings() -> None:
    code = """
GATE_NEW = "newGate"
OTHER_REASONS = frozenset({"Passed"})
def why():
    return "FromACall"
def status(kind, failures):
    reason = "Assigned" if kind else "Other"
    a, b = "Unpacked", "message"
    failures.append((why(), "text"))
    failures.append((f"{kind}Stuck", "text"))
    _roll_back(state, x.gate or "fallback", "m", [])
    Event("Normal", "Happened", "m")
    return [_Cond(READY, "False", reason, ""), _Cond(READY, "False", a, b), Problem(kind.reason, "dynamic"),
            {"reason": "InADict"}]
"""
    found = scan({"synthetic.py": code})
    assert found.reasons == {"Passed", "FromACall", "Assigned", "Other", "Unpacked", "InADict"}
    assert found.patterns == {"[A-Za-z0-9]+Stuck"}
    assert found.gates == {"newGate", "fallback"}
    assert found.events == {"Happened"}


def test_every_condition_reason_has_a_troubleshooting_row() -> None:
    found, rows = scan(), documented("condition-reasons")
    missing = sorted(found.reasons - rows)
    assert missing == [], f"add a row to docs/operations.md (Troubleshooting: conditions) for {missing}"
    unmatched = sorted(p for p in found.patterns if not any(re.fullmatch(p, row) for row in rows))
    assert unmatched == [], f"no documented reason matches the pattern(s) {unmatched}"


def test_every_rolled_back_reason_has_a_row() -> None:
    reasons = {gate[0].upper() + gate[1:] for gate in scan().gates}
    missing = sorted(reasons - documented("rolledback-reasons"))
    assert missing == [], f"add a row to docs/operations.md (Troubleshooting: RolledBack) for {missing}"


def test_every_event_reason_has_a_row() -> None:
    missing = sorted(scan().events - documented("event-reasons"))
    assert missing == [], f"add a row to docs/operations.md (Troubleshooting: Events) for {missing}"


def test_the_rollout_messages_people_search_for_are_explained() -> None:
    manual = MANUAL.read_text()
    for message in ("waiting for the canary's pods", "too few requests"):
        assert message in manual, message
    # ...and they are still what the code says.
    rollout_code = (PACKAGE / "rollout.py").read_text() + (PACKAGE / "analysis.py").read_text()
    assert "canary's pods to be ready before sending it traffic" in rollout_code
    assert "too few requests to judge" in rollout_code


def test_the_readme_links_the_manual() -> None:
    assert "(docs/operations.md)" in README.read_text()


def test_every_repository_path_the_manual_names_exists() -> None:
    folders = r"\.github|charts|crds|docs|examples|hack|locks|operator|serving-image|tests"
    named = set(re.findall(rf"`((?:{folders})/[\w./-]*)`", MANUAL.read_text()))
    assert {"locks/operator.txt", "charts/modeldeploy/files/clusterrole-rules.yaml"} <= named
    missing = sorted(path for path in named if not (REPO / path).exists())
    assert missing == [], f"docs/operations.md names files that do not exist: {missing}"
