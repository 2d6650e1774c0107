"""The FastAPI routes: server and model metadata, health, readiness and metrics.

Inference is not here: the raw ASGI front (``infer_front``) answers it before routing. Health has one
implementation, answered both at the Open Inference Protocol paths and at the probe paths.
"""

from typing import Annotated

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from modeldeploy_server.dataplane import DataPlane
from modeldeploy_server.metrics import CONTENT_TYPE, ServerMetrics
from modeldeploy_server.openapi import (
    ERRORS,
    MODEL_ERRORS,
    TAG,
    ModelMetadataResponse,
    ServerMetadataResponse,
    VersionParam,
    model_name_path,
)
from modeldeploy_server.rest_codec import EXTENSIONS


def _add_health_routes(router: APIRouter, plane: DataPlane) -> None:
    """Liveness and readiness, at the Open Inference Protocol's paths and at the probes' paths."""

    async def live() -> Response:
        return JSONResponse({"live": True})

    async def ready() -> Response:
        return JSONResponse({"ready": plane.ready}, status_code=200 if plane.ready else 503)

    for prefix, tag in (("/v2", TAG), ("", "health")):
        router.add_api_route(f"{prefix}/health/live", live, methods=["GET"], tags=[tag], summary="Liveness")
        router.add_api_route(
            f"{prefix}/health/ready",
            ready,
            methods=["GET"],
            tags=[tag],
            summary="Readiness (503 while loading or draining)",
            responses={503: ERRORS[503]},
        )


def build_router(plane: DataPlane, metrics: ServerMetrics) -> APIRouter:
    """Every route but inference; the served model's name appears as the only value of ``model_name``."""
    router = APIRouter()
    served_model = Annotated[str, model_name_path(plane)]
    _add_health_routes(router, plane)

    def model_readiness(name: str, version: str | None) -> Response:
        ready = plane.model_ready(name, version)
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)

    @router.get("/v2", tags=[TAG], response_model=ServerMetadataResponse, summary="Server metadata")
    async def server_metadata() -> Response:
        return JSONResponse(plane.server_metadata(EXTENSIONS))

    async def model_metadata(model_name: served_model) -> Response:
        return JSONResponse(plane.model_metadata(model_name))

    async def model_version_metadata(model_name: served_model, version: VersionParam) -> Response:
        return JSONResponse(plane.model_metadata(model_name, version))

    async def model_ready(model_name: served_model) -> Response:
        return model_readiness(model_name, None)

    async def model_version_ready(model_name: served_model, version: VersionParam) -> Response:
        return model_readiness(model_name, version)

    for path, endpoint, summary, model in (
        ("/v2/models/{model_name}", model_metadata, "Model metadata", ModelMetadataResponse),
        (
            "/v2/models/{model_name}/versions/{version}",
            model_version_metadata,
            "Model version metadata",
            ModelMetadataResponse,
        ),
        ("/v2/models/{model_name}/ready", model_ready, "Model readiness", None),
        ("/v2/models/{model_name}/versions/{version}/ready", model_version_ready, "Model version readiness", None),
    ):
        router.add_api_route(
            path, endpoint, methods=["GET"], tags=[TAG], summary=summary, response_model=model, responses=MODEL_ERRORS
        )

    @router.get("/metrics", tags=["metrics"], summary="Prometheus metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return router
