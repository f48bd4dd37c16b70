"""FastAPI dependencies: settings, database session, bearer-token auth, and the run named in the path."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from clipmem.backend.api.frames import EmbeddingSet, RunCache, ScoreFrame
from clipmem.backend.api.query import SAMPLE_ID_PATTERN
from clipmem.backend.ingest import RUN_NAME
from clipmem.backend.models import Run, Sample
from clipmem.backend.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="CLIPMEM_API_TOKEN (reads) or CLIPMEM_API_WRITE_TOKEN "
                                                "(reads and writes), when the server has them.")
Scope = Literal["read", "write"]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _unauthorized(why: str) -> HTTPException:
    return HTTPException(401, f"{why} (Authorization: Bearer <CLIPMEM_API_TOKEN or CLIPMEM_API_WRITE_TOKEN>)",
                         headers={"WWW-Authenticate": "Bearer"})


def scope_of(settings: Settings, token: str | None) -> Scope | None:
    """What a bearer token allows: "write" (everything), "read", or None (no token given). A server without
    tokens is open, so every request may write. A token that is neither of the server's is refused (401)."""
    if not settings.token_required:
        return "write"
    if token is None:
        return None
    given = token.encode()
    # both comparisons always run, so the time taken does not tell which token was close
    matches = {scope: secret is not None and hmac.compare_digest(given, secret.get_secret_value().encode())
               for scope, secret in (("write", settings.api_write_token), ("read", settings.api_token))}
    for scope in ("write", "read"):
        if matches[scope]:
            return scope
    raise _unauthorized("the bearer token is not one of this server's tokens")


def request_scope(settings: SettingsDep,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Scope | None:
    return scope_of(settings, credentials.credentials if credentials is not None else None)


ScopeDep = Annotated[Scope | None, Depends(request_scope)]


def require_token(scope: ScopeDep) -> None:
    """Reading: either token (or none when the server has no tokens)."""
    if scope is None:
        raise _unauthorized("a valid bearer token is required")


def require_write(scope: ScopeDep, settings: SettingsDep, request: Request) -> None:
    """Changing the database: the write token only (or none when the server has no tokens)."""
    if scope is None:
        raise _unauthorized("a valid bearer token is required")
    if scope != "write":
        if settings.api_write_token is None:
            raise HTTPException(403, "this server has no write token (CLIPMEM_API_WRITE_TOKEN), so nothing can be "
                                     "changed over the API")
        raise HTTPException(403, f"this token may only read; {request.method} {request.url.path} needs the write "
                                 "token (CLIPMEM_API_WRITE_TOKEN)")


def get_write_session(request: Request, _scope: Annotated[None, Depends(require_write)]) -> Iterator[Session]:
    """A session for a request that writes: on SQLite its transaction holds the write lock from the
    start (backend.db.session_factory), so concurrent writers wait their turn instead of failing. Only the
    write token opens one: every route that writes does so through this session."""
    with request.app.state.write_sessions() as session:
        yield session


WriteSessionDep = Annotated[Session, Depends(get_write_session)]


RunName = Annotated[str, Path(description="Run name, as given to `clipmem ingest` (default: the run directory's "
                                          "name).", pattern=RUN_NAME.pattern)]
SampleIdPath = Annotated[str, Path(description="Sample id as written in the run's samples.parquet; it may contain "
                                               "'/'.", pattern=SAMPLE_ID_PATTERN)]


def load_run(session: Session, name: str) -> Run:
    run = session.scalar(select(Run).where(Run.name == name))
    if run is None:
        raise HTTPException(404, f"no run named '{name}'")
    return run


def get_run(run: RunName, session: SessionDep) -> Run:
    return load_run(session, run)


def load_sample(session: Session, run: Run, sample_id: str) -> Sample:
    sample = session.scalar(select(Sample).where(Sample.run_id == run.id, Sample.sample_id == sample_id))
    if sample is None:
        raise HTTPException(404, f"run '{run.name}' has no sample '{sample_id}'")
    return sample


def get_run_for_write(run: RunName, session: WriteSessionDep) -> Run:
    return load_run(session, run)


RunDep = Annotated[Run, Depends(get_run)]
WriteRunDep = Annotated[Run, Depends(get_run_for_write)]  # the run, read in the request's write session


def score_frame(request: Request, session: Session, run: Run) -> ScoreFrame:
    cache: RunCache = request.app.state.score_frames
    return cache.get(run.id, lambda: ScoreFrame.load(session.connection(), run))


def embedding_set(request: Request, session: Session, run: Run) -> EmbeddingSet:
    cache: RunCache = request.app.state.embedding_sets
    return cache.get(run.id, lambda: EmbeddingSet.load(session.connection(), run))
