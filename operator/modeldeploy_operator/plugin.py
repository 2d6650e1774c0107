"""`kubectl modeldeploy`: read a ModelDeployment's status, promote its canary, roll it back.

Installed as the `kubectl-modeldeploy` executable, so kubectl finds it as a plugin:

    kubectl modeldeploy status sentiment -n ml
    kubectl modeldeploy promote sentiment        # canary model becomes the stable model
                                                 # (only once the operator reports CanaryReady)
    kubectl modeldeploy rollback sentiment       # canary traffic to 0
    kubectl modeldeploy rollback sentiment --remove
    kubectl modeldeploy rollout status sentiment # spec.rollout: phase, step, models, latest verdict
    kubectl modeldeploy rollout pause|resume|abort|retry|promote sentiment
                                                 # a request in status the operator acts on and clears
    kubectl modeldeploy upload model.onnx --pvc models --path sentiment/v1/model.onnx
    kubectl modeldeploy ls --pvc models          # models onto a claim, and what it holds (plugin_files.py)

Each write is a single JSON merge patch (the rollout requests through the status subresource, so the
spec stays git's), exactly what `kubectl patch --type merge` would send
(`--dry-run` prints that command instead of sending it), so the plugin never holds more power
than the user's own RBAC and adds no hidden state.

Layout: pure functions (status formatting, patch building) first, then `ModelDeployments`, the
only part that talks to the API server, then the argparse front end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, cast

from modeldeploy_operator.names import CANARY_READY, CONDITION_ORDER, GROUP, KIND, PLURAL, READY, VERSION
from modeldeploy_operator.rollout_commands import COMMANDS, Command, RolloutFacts, refusal

MERGE_PATCH = "application/merge-patch+json"

JSONObject = dict[str, Any]


class PluginError(Exception):
    """A problem the user can act on; printed as `error: <message>` with exit status 1."""


class ConflictError(PluginError):
    """The resource changed between our read and our patch (HTTP 409)."""


# ---------------------------------------------------------------------------------------------
# Pure functions: no I/O, unit-tested with plain dicts.
# ---------------------------------------------------------------------------------------------


def qualified_name(resource: Mapping[str, Any]) -> str:
    """`namespace/name` of a resource, for messages."""
    metadata = resource.get("metadata") or {}
    return f"{metadata.get('namespace', '?')}/{metadata.get('name', '?')}"


def describe_model(model: Mapping[str, Any] | None) -> str:
    """One line for a model reference: claim, path and (shortened) digest."""
    if not model:
        return "<none>"
    text = f"{model.get('path', '<no path>')} on claim {model.get('pvc', '<no claim>')}"
    digest = model.get("sha256")
    if digest:
        text += f" (sha256 {str(digest)[:12]}…)"
    return text


def generation_lag(resource: Mapping[str, Any]) -> str | None:
    """Why the status may be stale, or None when it describes the current spec."""
    generation = (resource.get("metadata") or {}).get("generation")
    observed = (resource.get("status") or {}).get("observedGeneration")
    if generation is None:
        return None
    if observed is None:
        return f"the operator has not observed this resource yet (generation {generation})"
    if observed < generation:
        return (
            f"status describes generation {observed}, the spec is at generation {generation}: "
            "the operator has not caught up yet"
        )
    return None


def humanize_age(timestamp: str | None, now: datetime) -> str:
    """`kubectl`-style age (`42s`, `5m`, `3h`, `2d`) of an RFC 3339 timestamp."""
    if not timestamp:
        return "-"
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "?"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]

    def line(cells: Sequence[str]) -> str:
        padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)]
        return "  ".join([*padded, cells[-1]]).rstrip()

    return [line(header), *(line(row) for row in rows)]


def sorted_conditions(conditions: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Ready first, then the parts in a fixed order, then anything else by type."""

    def key(condition: Mapping[str, Any]) -> tuple[int, str]:
        kind = str(condition.get("type", ""))
        rank = CONDITION_ORDER.index(kind) if kind in CONDITION_ORDER else len(CONDITION_ORDER)
        return rank, kind

    return sorted(conditions, key=key)


def describe_counts(value: Any) -> str:
    """spec.replicas as written ({min, max}), or a plain number."""
    if isinstance(value, Mapping):
        return ", ".join(f"{key} {item}" for key, item in value.items())
    return str(value)


def format_autoscaling(autoscaling: Mapping[str, Any]) -> list[str]:
    """Per track: the autoscaler, its replicas (current -> desired of min..max) and each metric vs target."""
    if not autoscaling:
        return []
    rows = []
    for track in ("stable", "canary"):
        entry = autoscaling.get(track)
        if not entry:
            continue
        current, desired = entry.get("currentReplicas", "?"), entry.get("desiredReplicas", "?")
        metrics = ", ".join(f"{m.get('name')} {m.get('current', '<unknown>')}/{m.get('target', '?')}"
                            for m in entry.get("metrics") or []) or "<not reported yet>"
        rows.append([track, str(entry.get("autoscaler", "")), f"{current} -> {desired}",
                     f"{entry.get('minReplicas', '?')}..{entry.get('maxReplicas', '?')}", metrics])
    header = ["TRACK", "AUTOSCALER", "REPLICAS", "BOUNDS", "METRICS (current/target)"]
    return ["", "Autoscaling:", *("  " + row for row in format_table(header, rows))]


def _summary_fields(resource: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The label/value lines at the top of `kubectl modeldeploy status`."""
    spec = resource.get("spec") or {}
    status = resource.get("status") or {}
    metadata = resource.get("metadata") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == READY), None)
    canary = spec.get("canary")
    traffic = status.get("traffic")
    fields: list[tuple[str, str]] = [
        ("Name", qualified_name(resource)),
        ("Ready", "Unknown (no Ready condition yet)" if ready is None
         else f"{ready.get('status', 'Unknown')} ({ready.get('reason') or 'NoReason'})"),
        ("Model", describe_model(spec.get("model"))),
        ("Canary", f"{describe_model(canary.get('model'))}, trafficPercent {canary.get('trafficPercent', 0)}"
         if canary else "<none>"),
        ("Traffic", f"stable {traffic.get('stable', 0)}%, canary {traffic.get('canary', 0)}%" if traffic
         else "<not reported yet>"),
    ]
    if spec.get("replicas"):
        fields.append(("Replicas (spec)", describe_counts(spec["replicas"])))
    if "readyReplicas" in status or "desiredReplicas" in status:
        fields.append(("Replicas", f"{status.get('readyReplicas', 0)}/{status.get('desiredReplicas', '?')} ready"))
    fields.append(("URL", status.get("url") or "<not reported yet>"))
    observed = status.get("observedGeneration", "-")
    fields.append(("Generation", f"{metadata.get('generation', '?')} (observed {observed})"))
    return fields


def format_conditions(conditions: Sequence[Mapping[str, Any]], now: datetime) -> list[str]:
    """The conditions as a table, Ready first."""
    if not conditions:
        return ["Conditions: <none reported yet>"]
    rows = [[str(c.get("type", "")), str(c.get("status", "")), str(c.get("reason") or "-"),
             humanize_age(c.get("lastTransitionTime"), now), str(c.get("message") or "")]
            for c in sorted_conditions(conditions)]
    return ["Conditions:", *("  " + row for row in format_table(["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], rows))]


def format_status(resource: Mapping[str, Any], now: datetime) -> str:
    """The readable summary `kubectl modeldeploy status` prints."""
    status = resource.get("status") or {}
    fields = _summary_fields(resource)
    width = max(len(label) for label, _ in fields) + 1
    lines = [f"{(label + ':').ljust(width)} {value}" for label, value in fields]
    lag = generation_lag(resource)
    if lag:
        lines.append(f"Warning: {lag}")
    lines.extend(format_autoscaling(status.get("autoscaling") or {}))
    lines.append("")
    lines.extend(format_conditions(status.get("conditions") or [], now))
    return "\n".join(lines) + "\n"


def replace_object(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> JSONObject:
    """A merge-patch value that turns `old` into exactly `new` (keys only in `old` set to null).

    A JSON merge patch merges objects key by key, so patching `{path: b}` over `{path: a, sha256: x}`
    would keep the old digest; the explicit null removes it.
    """
    patch: JSONObject = {key: None for key in (old or {}) if key not in new}
    patch.update(new)
    return patch


def promotion_blocker(resource: Mapping[str, Any]) -> str | None:
    """Why promoting now could replace a serving model with a broken one, or None if it looks safe.

    Safe means: the operator has observed the current spec and reports CanaryReady True, i.e.
    the canary's pods run the canary model and pass their readiness probe.
    """
    lag = generation_lag(resource)
    if lag:
        return lag
    conditions = (resource.get("status") or {}).get("conditions") or []
    canary_ready = next((c for c in conditions if c.get("type") == CANARY_READY), None)
    if canary_ready is None:
        return "the operator reports no CanaryReady condition"
    if canary_ready.get("status") != "True":
        reason = canary_ready.get("reason") or "NoReason"
        detail = f"{reason}: {canary_ready['message']}" if canary_ready.get("message") else reason
        return f"the canary is not ready (CanaryReady {canary_ready.get('status')}, {detail})"
    return None


def promote_patch(resource: Mapping[str, Any], pin_version: bool = True) -> JSONObject:
    """The one merge patch that makes the canary model the stable model and drops the canary.

    With `pin_version` it carries the resourceVersion that was read, so the API server refuses
    it (409) if anyone changed the resource in between: what is promoted is what was read.
    """
    spec = resource.get("spec") or {}
    canary = spec.get("canary")
    if not canary:
        raise PluginError(f"{KIND} {qualified_name(resource)} has no canary to promote")
    canary_model = canary.get("model")
    if not canary_model:
        raise PluginError(f"{KIND} {qualified_name(resource)} has a canary without a model; nothing to promote")
    patch: JSONObject = {"spec": {"model": replace_object(spec.get("model"), canary_model), "canary": None}}
    resource_version = (resource.get("metadata") or {}).get("resourceVersion")
    if pin_version and resource_version:
        patch["metadata"] = {"resourceVersion": resource_version}
    return patch


def rollback_patch(resource: Mapping[str, Any], remove: bool) -> JSONObject:
    """Send no traffic to the canary (keep its pods for a look), or remove the canary entirely."""
    canary = (resource.get("spec") or {}).get("canary")
    if not canary:
        raise PluginError(f"{KIND} {qualified_name(resource)} has no canary to roll back")
    if remove:
        return {"spec": {"canary": None}}
    return {"spec": {"canary": {"trafficPercent": 0}}}


def kubectl_patch_command(name: str, namespace: str, patch: Mapping[str, Any]) -> str:
    """The `kubectl patch` command equivalent to sending `patch` (printed by --dry-run)."""
    body = json.dumps(patch, separators=(",", ":"), sort_keys=True)
    return shlex.join(["kubectl", "patch", "md", name, "-n", namespace, "--type", "merge", "-p", body])


# ---------------------------------------------------------------------------------------------
# The API server: the only part that does I/O against Kubernetes.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """Where to talk: the kubeconfig file(s), the context and the namespace to use."""

    kubeconfig: str | None
    context: str | None
    namespace: str


def resolve_connection(kubeconfig: str | None, context: str | None, namespace: str | None) -> Connection:
    """Apply kubectl's precedence: flags, then KUBECONFIG, then ~/.kube/config; the context's namespace."""
    from kubernetes import config

    config_file = kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if namespace:
        return Connection(config_file, context, namespace)
    try:
        contexts, current = config.list_kube_config_contexts(config_file=config_file)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError) as error:
        raise PluginError(f"cannot read kubeconfig {config_file}: {error}") from error
    chosen = current
    if context:
        chosen = next((c for c in contexts or [] if c.get("name") == context), None)
        if chosen is None:
            raise PluginError(f"context {context!r} not found in kubeconfig {config_file}")
    context_namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return Connection(config_file, context, context_namespace or "default")


def api_client(connection: Connection) -> Any:
    """A Kubernetes ApiClient for the connection's kubeconfig and context."""
    from kubernetes import config

    try:
        return config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=connection.kubeconfig, context=connection.context, persist_config=False
        )
    except (config.ConfigException, OSError) as error:
        raise PluginError(f"cannot load kubeconfig {connection.kubeconfig}: {error}") from error


class ModelDeployments:
    """Reads and merge-patches ModelDeployments in one namespace."""

    def __init__(self, connection: Connection) -> None:
        from kubernetes import client

        self.namespace = connection.namespace
        self._api = client.CustomObjectsApi(api_client(connection))

    def get(self, name: str) -> JSONObject:
        try:
            result = cast(
                JSONObject,
                self._api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name),
            )
        except Exception as error:
            raise self._explain(error, name, "read") from error
        return result

    def merge_patch(self, name: str, patch: Mapping[str, Any]) -> JSONObject:
        return self._merge_patch(self._api.patch_namespaced_custom_object, name, patch, "patch")

    def patch_status(self, name: str, patch: Mapping[str, Any]) -> JSONObject:
        """A merge patch through the status subresource: the spec (git's) is never written."""
        return self._merge_patch(self._api.patch_namespaced_custom_object_status, name, patch, "patch the status of")

    def _merge_patch(self, call: Any, name: str, patch: Mapping[str, Any], action: str) -> JSONObject:
        try:
            result = cast(JSONObject, call(GROUP, VERSION, self.namespace, PLURAL, name, dict(patch),
                                           _content_type=MERGE_PATCH))
        except Exception as error:
            raise self._explain(error, name, action) from error
        return result

    def _explain(self, error: Exception, name: str, action: str) -> Exception:
        """Turn client exceptions into one-line messages; leave programming errors alone."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        where = f'{PLURAL}.{GROUP} "{name}" in namespace "{self.namespace}"'
        if isinstance(error, ApiException):
            if error.status == 404:
                detail = _api_message(error)
                if "the server could not find the requested resource" in detail:
                    return PluginError(f"the {PLURAL}.{GROUP} API is not installed on this cluster (apply the CRD)")
                return PluginError(f'{PLURAL}.{GROUP} "{name}" not found in namespace "{self.namespace}"')
            if error.status == 409:
                return ConflictError(f"{where} changed while this command ran; run it again ({_api_message(error)})")
            return PluginError(f"cannot {action} {where}: {error.status} {_api_message(error)}")
        if isinstance(error, HTTPError):
            return PluginError(f"cannot reach the API server: {error}")
        return error


def _api_message(error: Any) -> str:
    """The `message` of a Kubernetes Status body, else the HTTP reason."""
    try:
        message = json.loads(error.body or "{}").get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return str(message or error.reason or "")


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def _connection_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The kubectl-like flags; accepted before and after the subcommand (kubectl passes both)."""
    default = None if defaults else argparse.SUPPRESS
    parser.add_argument("--kubeconfig", default=default, help="path to the kubeconfig (default: $KUBECONFIG)")
    parser.add_argument("--context", default=default, help="kubeconfig context to use")
    parser.add_argument(
        "-n",
        "--namespace",
        default=default,
        help="namespace (default: the context's namespace, else default)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl modeldeploy",
        description="Inspect ModelDeployments and move their canary, with plain merge patches.",
    )
    _connection_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = commands.add_parser("status", help="readable summary: models, conditions, traffic, URL")
    status.add_argument("name", help="ModelDeployment name")
    _connection_options(status, defaults=False)

    promote = commands.add_parser("promote", help="make the canary model the stable model (one patch)")
    promote.add_argument("name", help="ModelDeployment name")
    promote.add_argument("--dry-run", action="store_true", help="print the equivalent kubectl patch, send nothing")
    promote.add_argument(
        "--force", action="store_true", help="promote even if the operator does not report the canary ready"
    )
    _connection_options(promote, defaults=False)

    rollback = commands.add_parser("rollback", help="send no traffic to the canary, or remove it with --remove")
    rollback.add_argument("name", help="ModelDeployment name")
    rollback.add_argument("--remove", action="store_true", help="remove the canary instead of setting 0%%")
    rollback.add_argument("--dry-run", action="store_true", help="print the equivalent kubectl patch, send nothing")
    _connection_options(rollback, defaults=False)

    rollout = commands.add_parser("rollout", help="progressive delivery (spec.rollout): status, pause, resume, "
                                  "abort, retry, promote")
    rollout.add_argument("action", choices=["status", *COMMANDS], help="what to do")
    rollout.add_argument("name", help="ModelDeployment name")
    _connection_options(rollout, defaults=False)

    from modeldeploy_operator import plugin_files  # it builds on this module

    plugin_files.add_commands(commands, _connection_options)
    return parser


def format_rollout(resource: Mapping[str, Any]) -> str:
    """The rollout's phase, step, models and latest verdict, for people."""
    if not (resource.get("spec") or {}).get("rollout"):
        raise PluginError(f"{qualified_name(resource)} has no spec.rollout: its canary is driven by hand")
    state = (resource.get("status") or {}).get("rollout") or {}
    lines = [f"Rollout of {qualified_name(resource)}: {state.get('phase', 'not started')}"]
    if state.get("stable"):
        lines.append(f"  stable:  {describe_model(state['stable'])}")
    if state.get("canary"):
        lines.append(f"  canary:  {describe_model(state['canary'])} (step {state.get('stepSummary', '?')})")
    if state.get("failed"):
        lines.append(f"  failed:  {describe_model(state['failed'])} (not retried until spec.model changes or retry)")
    if state.get("message"):
        lines.append(f"  message: {state['message']}")
    verdict = state.get("lastVerdict")
    if verdict:
        gate = f" ({verdict['gate']})" if verdict.get("gate") else ""
        lines.append(f"  last analysis at {verdict.get('at')}: {verdict.get('result')}{gate}: {verdict.get('message')}")
    if state.get("command"):
        lines.append(f"  pending request: {state['command'].get('action')}")
    return "\n".join(lines) + "\n"


def rollout_command_refusal(resource: Mapping[str, Any], action: Command) -> str | None:
    """Why ACTION would do nothing to this rollout now (the operator would clear it unseen), or None."""
    state = (resource.get("status") or {}).get("rollout") or {}
    facts = RolloutFacts(
        phase=str(state.get("phase", "not started")),
        has_canary=bool(state.get("canary")),
        has_failed=bool(state.get("failed")),
        paused_in_spec=bool(((resource.get("spec") or {}).get("rollout") or {}).get("paused")),
    )
    return refusal(action, facts)


def rollout_command_patch(action: str, now: datetime) -> JSONObject:
    """What `kubectl modeldeploy rollout ACTION` writes: a request in status the operator acts on and clears."""
    return {"status": {"rollout": {"command": {"action": action,
                                               "requestedAt": now.strftime("%Y-%m-%dT%H:%M:%SZ")}}}}


CONFLICT_ATTEMPTS = 3


def build_patch(args: argparse.Namespace, resource: Mapping[str, Any]) -> tuple[JSONObject, str]:
    """The patch for a write command and the line that reports it."""
    if args.command == "promote":
        patch = promote_patch(resource, pin_version=not args.dry_run)
        blocker = promotion_blocker(resource)
        if blocker and not args.force:
            raise PluginError(f"not promoting {qualified_name(resource)}: {blocker}; use --force to promote anyway")
        return patch, f"promoted: model is now {describe_model(patch['spec']['model'])}; canary removed"
    patch = rollback_patch(resource, remove=args.remove)
    return (
        patch,
        "rolled back: canary removed"
        if args.remove
        else "rolled back: canary trafficPercent set to 0 (its pods keep running; --remove deletes them)",
    )


MISSING_CLIENT = (
    "kubectl-modeldeploy needs the Kubernetes Python client, which `pip install modeldeploy` leaves out "
    "(the serving image does not need it): pip install 'modeldeploy[kubectl]'"
)


def require_client() -> None:
    """Say what to install instead of crashing on an import deep inside a command."""
    try:
        import kubernetes  # noqa: F401
    except ModuleNotFoundError as error:
        raise PluginError(MISSING_CLIENT) from error


def run(args: argparse.Namespace) -> str:
    """Execute one parsed command; return what to print."""
    require_client()
    connection = resolve_connection(args.kubeconfig, args.context, args.namespace)
    from modeldeploy_operator import plugin_files

    if args.command in plugin_files.COMMANDS:
        return plugin_files.run(args, connection)
    api = ModelDeployments(connection)
    if args.command == "status":
        return format_status(api.get(args.name), datetime.now(UTC))
    if args.command == "rollout":
        resource = api.get(args.name)
        if args.action == "status":
            return format_rollout(resource)
        format_rollout(resource)  # refuses a resource without spec.rollout
        refused = rollout_command_refusal(resource, args.action)
        if refused:
            raise PluginError(f"not sending {args.action} to {qualified_name(resource)}: {refused}")
        api.patch_status(args.name, rollout_command_patch(args.action, datetime.now(UTC)))
        return f"{PLURAL}.{GROUP}/{args.name} rollout {args.action} requested\n"

    # A status update by the operator between the read and the patch bumps the resourceVersion
    # a promote patch is pinned to; read again and rebuild the patch from what is there now.
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        patch, done = build_patch(args, api.get(args.name))
        if args.dry_run:
            return kubectl_patch_command(args.name, connection.namespace, patch) + "\n"
        try:
            api.merge_patch(args.name, patch)
        except ConflictError:
            if attempt == CONFLICT_ATTEMPTS:
                raise
            continue
        return f"{PLURAL}.{GROUP}/{args.name} {done}\n"
    raise AssertionError("unreachable")


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        sys.stdout.write(run(args))
    except PluginError as error:
        fail(str(error))


if __name__ == "__main__":
    main()
