"""FastAPI dependencies: settings, database session, bearer-token auth, and the run named in the path."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.api.frames import EmbeddingSet, RunCache, ScoreFrame
from backend.api.query import SAMPLE_ID_PATTERN
from backend.ingest import RUN_NAME
from backend.models import Run, Sample
from backend.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="The value of CLIPMEM_API_TOKEN, when the server has one.")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_write_session(request: Request) -> Iterator[Session]:
    """A session for a request that writes: on SQLite its transaction holds the write lock from the
    start (backend.db.session_factory), so concurrent writers wait their turn instead of failing."""
    with request.app.state.write_sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
WriteSessionDep = Annotated[Session, Depends(get_write_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def require_token(settings: SettingsDep,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    if settings.api_token is None:
        return
    expected = settings.api_token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    if credentials is None or not hmac.compare_digest(given, expected):
        raise HTTPException(401, "a valid bearer token is required (Authorization: Bearer <CLIPMEM_API_TOKEN>)",
                            headers={"WWW-Authenticate": "Bearer"})


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
