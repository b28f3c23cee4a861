"""The HTTP API: ``create_app(settings, resources)`` builds a FastAPI app of middleware and
routers, nothing else (the routes live in ``slipway.api.routes``, the work in ``slipway.rag``).

BentoML mounts it (``bento/service.py``) and adds ``/livez``, ``/readyz`` and ``/metrics``;
tests can run it in-process on local model clients. Every ``/v1`` route needs credentials
with a scope; errors are OpenAI-shaped JSON with the right status."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from slipway import __version__
from slipway.api.deps import gate
from slipway.api.errors import ApiError, from_exception, from_validation
from slipway.api.keys import AuthError, ScopeError
from slipway.api.middleware import API_VERSION, ApiMiddleware, Deadlines, Deprecated, Load
from slipway.api.routes import native, openai
from slipway.api.schemas import Limits
from slipway.api.watchdog import Watchdog
from slipway.config import ServeSettings
from slipway.resources import Resources


def create_app(
    settings: ServeSettings | None = None,
    resources: Resources | None = None,
    deprecated: dict[str, Deprecated] | None = None,
) -> FastAPI:
    """The API app over ``resources`` (or the ones set later as ``app.state.resources``, once
    the service has loaded its models); ``deprecated`` (default: the settings'
    ``deprecated_routes``) marks routes."""
    settings = settings or ServeSettings()
    if deprecated is None:
        deprecated = {
            route: Deprecated.model_validate(value)
            for route, value in settings.deprecated_routes.items()
        }
    app = FastAPI(
        title="Slipway API",
        version=API_VERSION,
        description=f"Slipway {__version__}: embeddings, generation, summaries, hybrid "
        "search, RAG answers, the knowledge graph and OpenAI-compatible "
        "routes. Send an API key as `Authorization: Bearer <key>`.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.resources = resources
    app.state.load = Load(settings.max_concurrency)
    app.state.watchdog = Watchdog(settings.watchdog_stall_s)
    app.add_middleware(
        ApiMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_concurrency=settings.max_concurrency,
        deprecated=deprecated,
        gate=gate(app),
        load=app.state.load,
        deadlines=Deadlines(
            settings.body_timeout_s, settings.request_timeout_s, settings.stream_timeout_s
        ),
        limits=Limits.of(settings),
    )
    _exception_handlers(app)
    app.include_router(native.router)
    app.include_router(openai.router)
    _not_found(app)

    def spec() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema["info"]["x-slipway-version"] = __version__
            for path in deprecated:  # the routes on their way out, in the spec too
                for operation in schema["paths"].get(path, {}).values():
                    operation["deprecated"] = True
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = spec  # type: ignore[method-assign]
    return app


def api_routes() -> list[APIRoute]:
    """The API's routes (of both routers), for 405s and metric labels by route template."""
    return [r for r in (*native.router.routes, *openai.router.routes) if isinstance(r, APIRoute)]


def _exception_handlers(app: FastAPI) -> None:
    def error(exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error(exc)

    @app.exception_handler(AuthError)
    async def auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return error(from_exception(exc))

    @app.exception_handler(ScopeError)
    async def scope_error(_: Request, exc: ScopeError) -> JSONResponse:
        return error(from_exception(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(from_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        response = error(
            ApiError(
                exc.status_code, str(exc.detail), code=codes.get(exc.status_code, "invalid_request")
            )
        )
        if exc.headers:
            response.headers.update(exc.headers)
        return response


def _not_found(app: FastAPI) -> None:
    @app.api_route(
        "/v1/{rest:path}",
        include_in_schema=False,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
    )
    async def not_found(request: Request) -> None:
        """JSON 404 (or 405 naming the allowed methods) for the rest of ``/v1``."""
        path = request.url.path
        allowed = sorted(
            {m for r in api_routes() if r.path_regex.match(path) for m in r.methods or ()}
        )
        if allowed:
            raise StarletteHTTPException(
                405,
                f"{request.method} is not allowed on {path}; use {', '.join(allowed)}.",
                headers={"Allow": ", ".join(allowed)},
            )
        raise StarletteHTTPException(404, f"No route {path}; see /docs for the API.")
