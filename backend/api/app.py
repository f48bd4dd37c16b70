"""The FastAPI application: `create_app()` builds it from Settings (the environment by default).

`clipmem serve` runs it with uvicorn; tests build it in-process against SQLite or PostgreSQL.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from clipmem.backend.api.deps import require_token
from clipmem.backend.api.errors import NOT_FOUND, UNAUTHORIZED, error_response, invalid_request
from clipmem.backend.api.frames import RunCache
from clipmem.backend.api.routers import (access, comparisons, detection, encoders, experiments, exports, health,
                                         histograms, images, maps, neighbours, null, reasons, runs, samples, tags,
                                         trajectory)
from clipmem.backend.db import make_engine, migrate, session_factory
from clipmem.backend.images import PixelBudget
from clipmem.backend.settings import Settings
from clipmem import __version__

# trajectory before samples: its /samples/{id}/trajectory would otherwise reach the sample route
RESOURCE_ROUTERS = (runs, trajectory, samples, images, neighbours, histograms, maps, detection, encoders, null,
                    reasons, comparisons, exports, tags, experiments)
DESCRIPTION = """\
Browse which image-caption pairs a CLIP model memorized (CLIPMem), as measured by `clipmem run` and loaded
with `clipmem ingest`. Every resource hangs off a run: its samples (filter, sort, page), images, nearest
neighbours under f and g, score histograms, 2-D embedding maps, detection quality, exports and user tags.
Runs scored with significance also carry, per pair, a p-value and a Benjamini-Hochberg q-value against the run's
measured null (the same score on S_E pairs, which neither model trained on; GET /runs/{run}/null), a `memorized`
flag (q <= the run's FDR) and a 95% interval over the scoring views; their means carry bootstrap intervals.
Runs scored with the evidence of issue 18 say why each pair is memorized: a `reason` (mis-captioned, atypical
image or caption, duplicate, typical) and a `miscaption` score, with the neighbours behind them
(GET /runs/{run}/samples/{sample_id}/evidence) and the reason-by-truth table (GET /runs/{run}/reasons).
Experiments (`clipmem experiment`) group runs: their parameters, mean CLIPMem and utility over seeds.

Convention: `_f` is the model trained WITH the pair, `_g` the one trained without it; `f` and `g` in
neighbours and maps are the literal models (f trains on shared + candidate pairs, g on shared + independent).
When the server has a token (CLIPMEM_API_TOKEN to read, CLIPMEM_API_WRITE_TOKEN to read and write), every
endpoint but /health and /access needs `Authorization: Bearer <token>`, and the routes that change the
database (DELETE /runs/{run}, adding and removing tags) need the write token (403 with the read token).
"""


def _add_docs(app: FastAPI) -> None:
    """/openapi.json, /docs (Swagger UI) and /redoc, requiring the token when one is set (FastAPI's own are
    always open). A browser sends no bearer header, neither when opening /docs nor when Swagger UI fetches
    /openapi.json, so with a token set the pages answer 401 in a browser: fetch the schema with the header
    instead, or browse the docs of a server without a token (docs/backend.md)."""
    protected = [Depends(require_token)]

    @app.get("/openapi.json", include_in_schema=False, dependencies=protected)
    def openapi_schema() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=protected)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - Swagger UI")

    @app.get("/redoc", include_in_schema=False, dependencies=protected)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")


def create_app(settings: Settings | None = None, migrate_schema: bool = True) -> FastAPI:
    settings = settings or Settings()
    engine = make_engine(settings.database_url)
    if migrate_schema:
        migrate(engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        engine.dispose()

    # the schema and its browsable pages are served by routes of our own, behind the same token as the data
    app = FastAPI(title="clipmem API", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  openapi_url=None, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = session_factory(engine)
    app.state.write_sessions = session_factory(engine, write=True)
    app.state.score_frames = RunCache(settings.score_cache_mb * 2**20)
    app.state.embedding_sets = RunCache(settings.embedding_cache_mb * 2**20)
    app.state.pixel_budget = PixelBudget(settings.max_image_pixels)
    for module in RESOURCE_ROUTERS:
        app.include_router(module.router, dependencies=[Depends(require_token)],
                           responses={**UNAUTHORIZED, **NOT_FOUND})
    app.include_router(health.router)
    app.include_router(access.router)
    _add_docs(app)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 405:
            # Starlette names only the first route matching the path; a path served by several routes
            # (GET and DELETE /runs/{run}) must list all their methods in Allow
            allowed = sorted({method for route in app.router.routes if isinstance(route, APIRoute)
                              and route.matches(request.scope)[0] != Match.NONE for method in route.methods})
            exc = StarletteHTTPException(405, exc.detail, headers={**(exc.headers or {}), "Allow": ", ".join(allowed)})
        return await error_response(request, exc)

    app.add_exception_handler(RequestValidationError, invalid_request)

    @app.exception_handler(OperationalError)
    async def database_busy(_request: Request, exc: OperationalError):
        # SQLite answers "database is locked" while another process holds the write lock for too long
        if "locked" in str(exc.orig).lower():
            return JSONResponse({"detail": "the database is busy (an ingest may be running); try again"},
                                status_code=503, headers={"Retry-After": "5"})
        raise exc

    return app
