"""GET /health: is the service up and its database reachable (no token needed)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from clipmem.backend.api.errors import ErrorMessage
from clipmem.backend.api.schemas import Health
from clipmem.backend.db import schema_revision

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health,
            responses={503: {"model": ErrorMessage, "description": "The database does not answer."}})
def health(request: Request) -> Health:
    """Liveness and database check; never requires the API token."""
    engine = request.app.state.engine
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        revision = schema_revision(engine)
    except SQLAlchemyError as exc:
        raise HTTPException(503, f"database unavailable: {type(exc).__name__}") from None
    return Health(status="ok", schema_revision=revision)
