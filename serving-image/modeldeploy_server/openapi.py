"""The OpenAPI document: response models, error responses and the infer operations.

Nothing here parses requests. The infer operations are served by the raw ASGI front (``infer_front``),
so they are declared on a router that is only ever read for the document, never mounted.
"""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from modeldeploy_server.codec import DATATYPE_DTYPES
from modeldeploy_server.dataplane import DataPlane
from modeldeploy_server.errors import JSON_TYPE
from modeldeploy_server.rest_codec import BINARY_TYPE

TAG = "Open Inference Protocol v2"


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str] = Field(default_factory=list)
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict)


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponseModel(BaseModel):
    model_config = {"protected_namespaces": ()}
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class ErrorResponse(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The request does not fit the model; names the tensor."},
    404: {"model": ErrorResponse, "description": "No such model (or version)."},
    413: {"model": ErrorResponse, "description": "Body larger than MAX_REQUEST_BYTES."},
    503: {"model": ErrorResponse, "description": "Not ready, shutting down, or queue full (see Retry-After)."},
}
MODEL_ERRORS: dict[int | str, dict[str, Any]] = {code: ERRORS[code] for code in (404, 503)}


def model_name_path(plane: DataPlane) -> Any:
    """The ``model_name`` path parameter, documented with the served model as its only value."""
    return Path(description="The served model.", json_schema_extra={"enum": [plane.name]})


VersionParam = Annotated[str, Path(description='Model version; this server has "1".')]


def _infer_request_schema() -> dict[str, Any]:
    parameters = {"type": "object", "additionalProperties": True}
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": sorted(DATATYPE_DTYPES)},
            "parameters": parameters,
            "data": {"type": "array", "items": {}},
        },
    }
    output = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "parameters": parameters},
    }
    return {
        "required": True,
        "content": {
            JSON_TYPE: {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": parameters,
                        "inputs": {"type": "array", "items": tensor},
                        "outputs": {"type": "array", "items": output},
                    },
                }
            },
            BINARY_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }


def _infer_operations(plane: DataPlane) -> APIRouter:
    """The two infer operations, for the document only (their signatures are what it reads)."""
    router = APIRouter(prefix="/v2", tags=[TAG])
    served_model = Annotated[str, model_name_path(plane)]
    infer_doc: dict[str, Any] = {
        "openapi_extra": {"requestBody": _infer_request_schema()},
        "response_model": InferenceResponseModel,
        "responses": ERRORS,
    }

    @router.post("/models/{model_name}/infer", summary="Inference", **infer_doc)
    def infer(model_name: served_model) -> None:
        """Served by the raw ASGI front."""

    @router.post("/models/{model_name}/versions/{version}/infer", summary="Inference on a version", **infer_doc)
    def infer_version(model_name: served_model, version: VersionParam) -> None:
        """Served by the raw ASGI front."""

    return router


def openapi_builder(app: FastAPI, plane: DataPlane) -> Callable[[], dict[str, Any]]:
    """``app.openapi``: the schema, with the model's input names filled in once it is loaded."""
    infer_routes = _infer_operations(plane).routes

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        routes = [*app.routes, *infer_routes]
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=routes)
        if plane.model is not None:
            names = [spec.name for spec in plane.model.inputs]
            for path, item in schema.get("paths", {}).items():
                if path.endswith("/infer"):
                    body = item["post"]["requestBody"]["content"][JSON_TYPE]["schema"]
                    body["properties"]["inputs"]["items"]["properties"]["name"]["enum"] = names
            app.openapi_schema = schema
        return schema

    return openapi
