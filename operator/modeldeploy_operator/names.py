"""The API's names in one place: the resources' group and kinds, labels, annotations, conditions, ports.

Strings and numbers only, with no imports at all: the `kubectl modeldeploy` plugin imports it without
pulling in the operator. Where each kind lives in the REST API, and what the operator does with it, is
`kinds.py`.
"""

from __future__ import annotations

# The custom resource --------------------------------------------------------------------------------------
GROUP = "modeldeploy.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ("md",)
CATEGORIES = ("all", "modeldeploy")

# Who writes: the server-side apply field manager and the Events' reporting component.
FIELD_MANAGER = "modeldeploy-operator"
REPORTING_COMPONENT = "modeldeploy-operator"

# Labels and annotations on every child -------------------------------------------------------------------
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_MD_NAME = "modeldeploy.dev/name"
LABEL_TRACK = "modeldeploy.dev/track"
SERVER_APP = "modeldeploy-server"
MANAGED_BY = "modeldeploy"
MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
HASH_ANNOTATION = "modeldeploy.dev/applied-hash"

# The serving container's ports (DESIGN §2, as KServe numbers them) and the Services' port in front of HTTP.
SERVER_HTTP_PORT = 8080
SERVICE_HTTP_PORT = 80

# Conditions, in the order people read them (Ready first, then the parts) --------------------------------
READY = "Ready"
MODEL_SOURCE_READY = "ModelSourceReady"
STABLE_READY = "StableReady"
CANARY_READY = "CanaryReady"
ROUTING_READY = "RoutingReady"
AUTOSCALING_READY = "AutoscalingReady"
CONDITION_ORDER = (READY, MODEL_SOURCE_READY, STABLE_READY, CANARY_READY, ROUTING_READY, AUTOSCALING_READY)
