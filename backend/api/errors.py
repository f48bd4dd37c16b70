"""Error responses: a bad parameter is a 422 in FastAPI's own validation format, naming the parameter."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field


class ErrorMessage(BaseModel):
    detail: str = Field(description="What was wrong, naming the offending item.")


# documented on every router, besides the 422 FastAPI documents itself
NOT_FOUND = {404: {"model": ErrorMessage, "description": "The run or sample does not exist."}}
UNAUTHORIZED = {401: {"model": ErrorMessage, "description": "CLIPMEM_API_TOKEN is set and the request lacks it."}}


def bad_parameter(loc: tuple[str, ...], message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": message, "input": None}])
