"""The FastAPI application of the gateway: /v1/* mapped one-to-one onto gRPC methods, health
probes, the OpenAPI document (schemas generated from the protos) and the playground at /ui."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.concurrency import run_in_threadpool

from aisle.v1 import events_pb2, index_admin_pb2, retrieval_pb2
from engine.http.bridge import Bridge, CallFailed, Method, invalid_argument
from engine.http.schema import add_message, ref_name

# (HTTP verb, path, gRPC method name, request class, servicer attribute, summary)
ROUTES = (
    ("POST", "/v1/search", "/aisle.v1.Retrieval/Search", retrieval_pb2.SearchRequest, "Search",
     "Search the catalog (Retrieval.Search)"),
    ("POST", "/v1/recommend", "/aisle.v1.Retrieval/Recommend", retrieval_pb2.RecommendRequest,
     "Recommend", "Recommend items for a user or a history (Retrieval.Recommend)"),
    ("POST", "/v1/similar", "/aisle.v1.Retrieval/SimilarItems", retrieval_pb2.SimilarItemsRequest,
     "SimilarItems", "Items similar to one item (Retrieval.SimilarItems)"),
    ("POST", "/v1/events", "/aisle.v1.Events/Record", events_pb2.RecordRequest, "Record",
     "Record shopper events (Events.Record)"),
    ("GET", "/v1/status", "/aisle.v1.IndexAdmin/Status", index_admin_pb2.StatusRequest, "Status",
     "The served index version, shards and server (IndexAdmin.Status)"),
)  # fmt: skip


def to_json(message: Message) -> dict[str, Any]:
    """The response body: protobuf's JSON mapping with the proto field names (snake_case)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _error(failed: CallFailed) -> JSONResponse:
    return JSONResponse(failed.body(), status_code=failed.http_status)


def _peer(request: Request) -> str:
    client = request.client
    return f"ipv4:{client.host}:{client.port}" if client is not None else "http"


def create_app(
    bridge: Bridge,
    servicers: dict[str, Any],
    *,
    ready: Callable[[], bool],
) -> FastAPI:
    """The gateway app. `servicers` maps a gRPC service short name ("Retrieval", "IndexAdmin",
    "Events") to the servicer instance the gRPC server registered; `ready()` says whether the
    model and index are loaded and the server is not draining."""
    app = FastAPI(
        title="Aisle HTTP/JSON gateway",
        version="v1",
        description=(
            "The Aisle gRPC API over HTTP/JSON. Each POST body is the gRPC request message in "
            "protobuf's JSON mapping (snake_case or lowerCamelCase field names, enums by name); "
            "each answer is the response message. Errors: {code, message, field_violations} with "
            "the HTTP status of the gRPC code. Auth: `Authorization: Bearer <token>` where the "
            "gRPC server needs it; deadline: header `x-aisle-timeout-ms`."
        ),
    )
    schemas: dict[str, dict[str, Any]] = {}

    def add_route(verb: str, path: str, method: Method, summary: str, response: type) -> None:
        add_message(method.request.DESCRIPTOR, schemas)
        add_message(response.DESCRIPTOR, schemas)

        async def endpoint(request: Request) -> Any:
            body: Any = None
            if verb == "POST":
                raw = await request.body()
                try:
                    body = json.loads(raw) if raw.strip() else {}
                except ValueError as error:
                    return _error(invalid_argument(f"request body is not JSON: {error}"))
                if not isinstance(body, dict):
                    return _error(invalid_argument("request body must be a JSON object"))
            try:
                answer = await run_in_threadpool(
                    bridge.call, method, body, headers=request.headers, peer=_peer(request)
                )
            except CallFailed as failed:
                return _error(failed)
            return JSONResponse(to_json(answer))

        ok = {
            "application/json": {
                "schema": {"$ref": f"#/components/schemas/{ref_name(response.DESCRIPTOR)}"}
            }
        }  # noqa: E501
        extra: dict[str, Any] = {}
        if verb == "POST":
            extra["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "$ref": f"#/components/schemas/{ref_name(method.request.DESCRIPTOR)}"
                        }
                    }
                },
            }
        app.add_api_route(
            path,
            endpoint,
            methods=[verb],
            summary=summary,
            name=method.name.rsplit("/", 1)[-1],
            openapi_extra=extra,
            responses={200: {"description": "the response message", "content": ok}},
            tags=["api"],
        )

    for verb, path, name, request_class, attr, summary in ROUTES:
        service = name.split(".")[-1].split("/")[0]
        handler = getattr(servicers[service], attr, None)
        if handler is None:
            continue  # a servicer without this method (a stand-in): no route
        response_class = _response_class(name)
        add_route(verb, path, Method(name, request_class, handler), summary, response_class)

    @app.get("/healthz", tags=["health"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Model and index loaded, not draining")
    def readyz() -> JSONResponse:
        if ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready"}, status_code=503)

    playground = files("engine.http").joinpath("static/playground.html").read_text("utf-8")

    @app.get("/ui", include_in_schema=False)
    def ui() -> HTMLResponse:
        return HTMLResponse(playground)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            document.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _response_class(method_name: str) -> type:
    """The response message class of a full gRPC method name, from the proto descriptors."""
    service_name, rpc = method_name.strip("/").rsplit("/", 1)
    for module in (retrieval_pb2, events_pb2, index_admin_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.full_name == service_name:
                output = service.methods_by_name[rpc].output_type
                return getattr(module, output.name)
    raise KeyError(method_name)
