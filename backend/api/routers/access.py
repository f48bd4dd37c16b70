"""GET /access: what the request's token allows, so a client can ask its user for a token before anything fails."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.security.utils import get_authorization_scheme_param

from clipmem.backend.api.deps import SettingsDep, scope_of
from clipmem.backend.api.errors import UNAUTHORIZED
from clipmem.backend.api.schemas import Access

router = APIRouter(tags=["health"])


@router.get("/access", response_model=Access, responses=UNAUTHORIZED)
def access(request: Request, settings: SettingsDep) -> Access:
    """Whether the server needs a token, and whether this request's `Authorization: Bearer <token>` (if any) may
    read and may write. Answers without a token; a token the server does not know answers 401."""
    # read from the header here: declaring the bearer scheme would document this route as needing a token
    scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
    scope = scope_of(settings, token if scheme.lower() == "bearer" and token else None)
    return Access(token_required=settings.token_required, read=scope is not None, write=scope == "write")
