"""Error responses: a bad parameter is a 422 in FastAPI's own validation format, naming the parameter."""

from __future__ import annotations

import json

from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.utils import is_body_allowed_for_status_code
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request


class ErrorMessage(BaseModel):
    detail: str = Field(description="What was wrong, naming the offending item.")


# documented on every router, besides the 422 FastAPI documents itself
NOT_FOUND = {404: {"model": ErrorMessage, "description": "The run or sample does not exist."}}
UNAUTHORIZED = {401: {"model": ErrorMessage, "description": "The server has a token (CLIPMEM_API_TOKEN or "
                                                            "CLIPMEM_API_WRITE_TOKEN) and the request lacks "
                                                            "one, or sent another."}}
# on the routes that change the database
READ_ONLY_TOKEN = {403: {"model": ErrorMessage, "description": "The request's token may only read: changing the "
                                                               "database needs CLIPMEM_API_WRITE_TOKEN."}}


def bad_parameter(loc: tuple[str, ...], message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": message, "input": None}])


class EchoJSONResponse(JSONResponse):
    """JSON for errors that echo the request. A JSON body may hold a lone surrogate ("\\ud800"), which
    Python decodes into a str that UTF-8 cannot encode, so FastAPI's own handlers fail with a 500 when
    they echo it; here it is written back as the same escape, and the answer stays the 4xx it is."""

    def render(self, content) -> bytes:
        # a surrogate can only occur inside a JSON string, where backslashreplace's \\udxxx is a valid escape
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
            "utf-8", "backslashreplace")


async def invalid_request(_request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422 (the same body), able to echo any input."""
    return EchoJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)


async def error_response(_request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's HTTP error answer, able to carry any detail (404s name the sample id asked for)."""
    if not is_body_allowed_for_status_code(exc.status_code):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return EchoJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
