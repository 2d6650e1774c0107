"""Pure: what was observed in the cluster -> the ModelDeployment's status.

Follows the Kubernetes API conventions for conditions (type, status, reason, message,
observedGeneration, lastTransitionTime kept while the status does not change). The rule users rely
on: Ready is True only when stable pods actually serve. The reasons for not being ready are taken
from where Kubernetes reports them (claim phase, pod scheduling, container termination message,
Deployment progress) and carried verbatim, so `kubectl get md` says why without digging.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modeldeploy_operator import autoscalers, kinds, manifests, routing
from modeldeploy_operator.config import ServingConfig
from modeldeploy_operator.events import conditions_by_type
from modeldeploy_operator.manifests import Owner, Track
from modeldeploy_operator.names import (
    AUTOSCALING_READY,
    CANARY_READY,
    MODEL_SOURCE_READY,
    READY,
    ROUTING_READY,
    STABLE_READY,
)
from modeldeploy_operator.routers import Router, Routers, choose_router
from modeldeploy_operator.spec import ModelDeploymentSpec
from modeldeploy_operator.views import (
    DeploymentView,
    HpaView,
    PodView,
    RouteView,
    ScaledObjectView,
    clip,
    route_parent_name,
)

TRACK_CONDITION: dict[Track, str] = {"stable": STABLE_READY, "canary": CANARY_READY}

@dataclass(frozen=True)
class Observation:
    """Everything status depends on, gathered by the controller from its watch cache."""

    owner: Owner
    generation: int
    spec: ModelDeploymentSpec
    claims: Mapping[str, str | None]  # claim name -> phase, None when the claim does not exist
    deployments: Mapping[str, DeploymentView]  # track -> view
    pods: Sequence[PodView] = ()
    routers: Routers = field(default_factory=Routers)
    apply_errors: Mapping[str, str] = field(default_factory=dict)  # child "Kind/name" -> error
    keda: bool = False  # KEDA's ScaledObject CRD is installed
    hpas: Mapping[str, HpaView] = field(default_factory=dict)  # HPA name -> view
    scaled_objects: Mapping[str, ScaledObjectView] = field(default_factory=dict)  # name -> view
    route: RouteView | None = None  # the HTTPRoute's parents' verdicts, once it has been seen



@dataclass(frozen=True)
class _Cond:
    type: str
    status: str
    reason: str
    message: str


def _model_source(obs: Observation) -> _Cond:
    for claim in obs.spec.claims:
        phase = obs.claims.get(claim)
        where = f"PersistentVolumeClaim {claim!r} in namespace {obs.owner.namespace!r}"
        if phase is None:
            return _Cond(MODEL_SOURCE_READY, "False", "ClaimNotFound", f"{where} does not exist")
        if phase == "Pending":
            return _Cond(MODEL_SOURCE_READY, "False", "ClaimPending", f"{where} is Pending: not bound to a volume yet")
        if phase != "Bound":
            return _Cond(MODEL_SOURCE_READY, "False", f"Claim{phase}", f"{where} is {phase}")
    claim_names = ", ".join(obs.spec.claims)
    return _Cond(MODEL_SOURCE_READY, "True", "ClaimBound", f"PersistentVolumeClaim {claim_names} bound")


def serves(view: DeploymentView | None) -> bool:
    """Whether a track's Deployment has rolled out its latest spec and every replica is ready: what a
    rollout waits for before it sends the canary any traffic."""
    if view is None or view.problem is not None or view.observed_generation < view.generation:
        return False
    return view.replicas > 0 and view.updated_replicas >= view.replicas and view.ready_replicas >= view.replicas


def _track(obs: Observation, track: Track) -> tuple[_Cond, int, int]:
    """The track's condition plus its ready and desired pod counts."""
    kind = TRACK_CONDITION[track]
    wanted = manifests.track_replicas(obs.spec, track).effective_min
    view = obs.deployments.get(track)
    if view is None:
        missing = f"Deployment {manifests.child_name(obs.owner, track)} does not exist yet"
        return _Cond(kind, "False", "DeploymentNotFound", missing), 0, wanted
    # A new autoscaled Deployment starts at 1 until the HPA raises it to min: count min as wanted.
    ready, desired = view.ready_replicas, max(view.replicas, wanted)
    counts = f"{ready}/{desired} replicas ready"
    problems = [p.problem for p in obs.pods if p.track == track and p.problem is not None]
    if problems:
        return _Cond(kind, "False", problems[0].reason, problems[0].message), ready, desired
    if view.problem is not None:
        return _Cond(kind, "False", view.problem.reason, view.problem.message), ready, desired
    if view.observed_generation < view.generation:
        pending = f"Deployment {view.name} has not seen its latest spec yet"
        return _Cond(kind, "False", "RolloutPending", pending), ready, desired
    if view.updated_replicas < desired:
        message = f"rolling out: {view.updated_replicas}/{desired} replicas run the latest spec; {counts}"
        return _Cond(kind, "False", "RollingOut", message), ready, desired
    if desired == 0 or ready < desired:
        return _Cond(kind, "False", "ReplicasNotReady", counts), ready, desired
    return _Cond(kind, "True", "ReplicasReady", counts), ready, desired


def traffic(obs: Observation, ready: Mapping[str, int]) -> dict[str, int]:
    """The split in effect: the router's weights, or without one what the Service's pod mix gives."""
    if choose_router(obs.spec, obs.routers) is not None:
        return routing.weights(obs.spec)
    tracks = routing.service_tracks(obs.spec, None)
    if len(tracks) == 1:
        return {"stable": 100 if tracks[0] == "stable" else 0, "canary": 100 if tracks[0] == "canary" else 0}
    total = ready.get("stable", 0) + ready.get("canary", 0)
    if total == 0:
        return routing.weights(obs.spec)
    canary = round(100 * ready.get("canary", 0) / total)
    return {"stable": 100 - canary, "canary": canary}


ROUTER_APIS = {"Istio": "Istio (networking.istio.io)", "GatewayAPI": "the Gateway API (gateway.networking.k8s.io)"}


def _told(obs: Observation, router: Router, split: Mapping[str, int]) -> str:
    """What the routing objects say, in one sentence."""
    if router.name == "Istio":
        where = f"VirtualService {obs.owner.name}"
        if obs.spec.gateways:
            where += f" (gateways {', '.join(obs.spec.gateways)} and the mesh)"
    else:
        parents = ", ".join(obs.spec.gateways) or f"Service {obs.owner.name}, for the mesh"
        where = f"HTTPRoute {obs.owner.name} (parents: {parents})"
    message = f"{where} routes {split['stable']}% to stable"
    if obs.spec.canary is not None:
        message += f" and {split['canary']}% to canary"
    if obs.spec.canary_headers:
        message += "; requests with " + " or ".join(h.describe() for h in obs.spec.canary_headers) + " go to canary"
    if obs.spec.mirror_percent:
        message += f"; {obs.spec.mirror_percent}% of stable's requests are mirrored to canary (answers dropped)"
    return message


def _service_only(obs: Observation, split: Mapping[str, int]) -> _Cond:
    """No router: say why, what the Service does instead, and what cannot be honoured."""
    wanted = obs.spec.routing_backend
    if wanted == "None":
        reason, message = "ServiceOnly", "spec.routing.backend is None: requests are routed by the Service alone"
    elif wanted == "Auto":
        reason = "NoRouterInstalled"
        message = ("neither Istio (networking.istio.io) nor the Gateway API (gateway.networking.k8s.io/v1 "
                   "HTTPRoute) is installed: requests are routed by the Service alone")
    else:
        reason = "RouterNotInstalled"
        message = (f"spec.routing.backend is {wanted} but {ROUTER_APIS[wanted]} is not installed: nothing is "
                   "written until its CRDs are; meanwhile requests are routed by the Service alone")
    if obs.spec.canary is not None and 0 < obs.spec.canary_weight < 100:
        message += (f"; the canary gets {split['canary']}% (the ratio of ready replicas) instead of the requested "
                    f"{obs.spec.canary_weight}% (Istio or the Gateway API give exact weights)")
    unmet = [what for what, wanted_it in (("header matches", obs.spec.canary_headers),
                                          ("mirroring", obs.spec.mirror_percent)) if wanted_it]
    if unmet:
        message += f"; {' and '.join(unmet)} need Istio or the Gateway API and are not applied"
    healthy = wanted == "None" and not unmet
    return _Cond(ROUTING_READY, "True" if healthy else "False", reason, message)


def _routing(obs: Observation, split: Mapping[str, int]) -> _Cond:
    router = choose_router(obs.spec, obs.routers)
    written = set(routing.routing_object_names(obs.owner, obs.spec, router)) if router is not None else set()
    routing_errors = [f"{child}: {error}" for child, error in obs.apply_errors.items() if child in written]
    if routing_errors:
        return _Cond(ROUTING_READY, "False", "ApplyFailed", "; ".join(routing_errors))
    if router is None:
        return _service_only(obs, split)
    told = _told(obs, router, split)
    if router.name != "GatewayAPI" or not obs.spec.gateways:
        return _Cond(ROUTING_READY, "True", "WeightsApplied", told)
    return _gateways_verdict(obs, told)


def _gateways_verdict(obs: Observation, told: str) -> _Cond:
    """Weights written are not weights served: each Gateway must accept the HTTPRoute (its status.parents)."""
    route = obs.route or RouteView()
    verdicts = {gateway: route.verdict_of(route_parent_name("Gateway", name, namespace or obs.owner.namespace))
                for gateway in obs.spec.gateways for namespace, _, name in [gateway.rpartition("/")]}
    refused = [f"Gateway {gateway} refused it ({verdict.problem})" for gateway, verdict in verdicts.items()
               if verdict is not None and not verdict.accepted]
    if refused:
        return _Cond(ROUTING_READY, "False", "RouteNotAccepted", f"{told}; but {'; '.join(refused)}")
    waiting = [gateway for gateway, verdict in verdicts.items() if verdict is None]
    if waiting:
        return _Cond(ROUTING_READY, "Unknown", "RoutePending",
                     f"{told}; waiting for Gateway {', '.join(waiting)} to accept it (HTTPRoute status.parents)")
    return _Cond(ROUTING_READY, "True", "WeightsApplied", f"{told}; accepted by Gateway {', '.join(verdicts)}")


def routing_status(obs: Observation) -> dict[str, Any]:
    """status.routing: the backend and its objects, the header matches and the mirrored share."""
    router = choose_router(obs.spec, obs.routers)
    result: dict[str, Any] = {"backend": router.name if router else "None"}
    if router is not None:
        result["resources"] = routing.routing_object_names(obs.owner, obs.spec, router)
    if router is not None and obs.spec.canary_headers:
        result["canaryHeaders"] = [h.describe() for h in obs.spec.canary_headers]
    if router is not None and obs.spec.mirror_percent:
        result["mirrorPercent"] = obs.spec.mirror_percent
    return result


def _signal_names(obs: Observation) -> dict[str, str]:
    """KEDA names its external metrics s<trigger index>-<scaler>: back to the spec's signal names."""
    signals = obs.spec.effective_autoscaling.custom_signals
    return {f"s{index}-prometheus": signal.name for index, signal in enumerate(signals)}


def _autoscaler_entry(obs: Observation, track: Track, keda_used: bool, hpa: HpaView | None) -> dict[str, Any]:
    child = manifests.child_name(obs.owner, track)
    replicas = manifests.track_replicas(obs.spec, track)
    entry: dict[str, Any] = {
        "autoscaler": f"{'ScaledObject' if keda_used else 'HorizontalPodAutoscaler'}/{child}",
        "minReplicas": replicas.effective_min,
        "maxReplicas": replicas.effective_max,
    }
    if hpa is not None and hpa.conditions:  # reported at least once (a fresh apply has no status yet)
        signal_names = _signal_names(obs)
        entry["currentReplicas"] = hpa.current_replicas
        entry["desiredReplicas"] = hpa.desired_replicas
        entry["metrics"] = [
            {key: value for key, value in (("name", signal_names.get(m.name, m.name)), ("current", m.current),
                                           ("target", m.target)) if value is not None}
            for m in hpa.metrics
        ]
    return entry


def _autoscaling(obs: Observation, config: ServingConfig) -> tuple[_Cond, dict[str, Any]]:
    """AutoscalingReady and the per-track view: what the autoscalers see and say. True while they read
    their metrics; its reason is ScalingLimited while a track wants more than replicas.max."""
    tracks = [t for t in manifests.active_tracks(obs.spec) if manifests.track_replicas(obs.spec, t).autoscaled]
    if not tracks:
        fixed = "replicas.min equals replicas.max: a fixed count, no autoscaler"
        return _Cond(AUTOSCALING_READY, "True", "FixedReplicas", fixed), {}
    autoscaling = obs.spec.effective_autoscaling
    keda_used = autoscalers.uses_keda(obs.spec, config, obs.keda)
    failures: list[tuple[str, str]] = []
    waiting: list[str] = []
    limited: list[str] = []
    fallback = autoscalers.autoscaler_fallback(obs.spec, config, obs.keda)
    if fallback is not None:
        asked = ", ".join(signal.name for signal in autoscaling.custom_signals)
        why = (f"KEDA is not installed (no {kinds.SCALED_OBJECT.crd_name} CRD)" if fallback == "KEDANotInstalled"
               else "the operator has no Prometheus to read them from (MODELDEPLOY_PROMETHEUS_URL)")
        failures.append((fallback, f"spec.autoscaling asks for {asked} but {why}: scaling on CPU at "
                                   f"{autoscaling.fallback_cpu_utilization}% instead"))
    per_track: dict[str, Any] = {}
    for track in tracks:
        hpa_name = autoscalers.hpa_name(obs.owner, track, keda_used)
        hpa = obs.hpas.get(hpa_name)
        per_track[track] = _autoscaler_entry(obs, track, keda_used, hpa)
        if keda_used:
            scaled = obs.scaled_objects.get(manifests.child_name(obs.owner, track))
            if scaled is not None and scaled.ready is not None and scaled.ready[0] == "False":
                failures.append((scaled.ready[1] or "ScaledObjectNotReady",
                                 f"{track}: ScaledObject {scaled.name}: {scaled.ready[2]}"))
        if hpa is None or not hpa.conditions:
            waiting.append(f"{track}: HorizontalPodAutoscaler {hpa_name} has not reported yet")
            continue
        for kind in ("AbleToScale", "ScalingActive"):
            state, reason, message = hpa.conditions.get(kind, ("True", "", ""))
            if state == "False" and reason != "ScalingDisabled":
                failures.append((reason or f"{kind}False", f"{track}: {message}"))
        state, reason, message = hpa.conditions.get("ScalingLimited", ("False", "", ""))
        if state == "True" and reason == "TooManyReplicas":
            limited.append(f"{track}: at its maximum of {per_track[track]['maxReplicas']} replicas ({message})")
    if failures:
        ready = _Cond(AUTOSCALING_READY, "False", failures[0][0], "; ".join(m for _, m in failures + [
            ("", w) for w in waiting]))
    elif waiting:
        ready = _Cond(AUTOSCALING_READY, "Unknown", "AutoscalerPending", "; ".join(waiting))
    elif limited:
        ready = _Cond(AUTOSCALING_READY, "True", "ScalingLimited", "; ".join(limited))
    else:
        on = [s.name for s in autoscaling.custom_signals] if keda_used else []
        if autoscaling.effective_cpu_utilization is not None or not keda_used:
            on.append("cpu")
        ready = _Cond(AUTOSCALING_READY, "True", "ScalingActive",
                      f"{', '.join(tracks)} scaled by {'KEDA' if keda_used else 'HorizontalPodAutoscaler'} on "
                      f"{', '.join(on)}")
    return ready, per_track


def _overall(parts: list[_Cond], obs: Observation, summary: str) -> _Cond:
    other_errors = [f"{child}: {error}" for child, error in obs.apply_errors.items()]
    if other_errors:
        return _Cond(READY, "False", "ApplyFailed", "; ".join(other_errors))
    for part in parts:
        if part.status != "True":
            return _Cond(READY, part.status, part.reason, f"{part.type}: {part.message}")
    return _Cond(READY, "True", "Serving", summary)


def _stamp(cond: _Cond, generation: int, previous: Mapping[str, Mapping[str, Any]], now: str) -> dict[str, Any]:
    before = previous.get(cond.type)
    unchanged = before is not None and before.get("status") == cond.status and before.get("lastTransitionTime")
    return {
        "type": cond.type,
        "status": cond.status,
        "reason": cond.reason,
        "message": clip(cond.message),
        "observedGeneration": generation,
        "lastTransitionTime": before["lastTransitionTime"] if unchanged and before else now,
    }


def compute_status(
    obs: Observation, previous: Mapping[str, Any] | None, now: str, config: ServingConfig
) -> dict[str, Any]:
    """The full status stanza for one reconcile; `now` is an RFC 3339 timestamp supplied by the caller."""
    source = _model_source(obs)
    stable, stable_ready, stable_desired = _track(obs, "stable")
    ready_counts = {"stable": stable_ready}
    desired_total, ready_total = stable_desired, stable_ready
    if obs.spec.canary is not None:
        canary, canary_ready, canary_desired = _track(obs, "canary")
        ready_counts["canary"] = canary_ready
        desired_total += canary_desired
        ready_total += canary_ready
    else:
        canary = _Cond(CANARY_READY, "True", "NoCanary", "no canary is configured")
    split = traffic(obs, ready_counts)
    routing = _routing(obs, split)
    # A canary only holds Ready back while it receives requests: at 0% its failures hurt nobody.
    parts = [source, stable]
    if obs.spec.canary is not None and split["canary"] > 0:
        parts.append(canary)
    if routing.reason == "ApplyFailed":
        parts.append(routing)
    summary = f"stable serving on {stable_ready}/{stable_desired} replicas"
    if obs.spec.canary is not None:
        state = "serving" if canary.status == "True" else f"not ready ({canary.reason})"
        summary += f"; canary {state} with {split['canary']}% of requests"
    overall = _overall(parts, obs, summary)
    autoscaling, autoscalers = _autoscaling(obs, config)
    prior = conditions_by_type((previous or {}).get("conditions"))
    conditions = [_stamp(c, obs.generation, prior, now)
                  for c in (overall, source, stable, canary, routing, autoscaling)]
    extra: dict[str, Any] = {"autoscaling": autoscalers} if autoscalers else {}
    return {
        "observedGeneration": obs.generation,
        "conditions": conditions,
        "traffic": split,
        "routing": routing_status(obs),
        "url": manifests.url(obs.owner, config),
        "readyReplicas": ready_total,
        "desiredReplicas": desired_total,
        "replicaSummary": f"{ready_total}/{desired_total}",
        "trafficSummary": f"{split['stable']}/{split['canary']}",
        **extra,
    }


def invalid_spec_status(
    generation: int, message: str, previous: Mapping[str, Any] | None, now: str
) -> dict[str, Any]:
    """A stored spec the operator cannot use (e.g. written before a CRD upgrade): say so, touch nothing."""
    prior = conditions_by_type((previous or {}).get("conditions"))
    cond = _Cond(READY, "False", "InvalidSpec", message)
    kept = [dict(c) for t, c in prior.items() if t != READY]
    return {**(previous or {}), "observedGeneration": generation,
            "conditions": [_stamp(cond, generation, prior, now), *kept]}



def same_status(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Equal apart from ordering: the controller skips the status write when nothing changed."""
    return dict(a or {}) == dict(b or {})
