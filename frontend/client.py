"""The one HTTP client of the dashboard: every backend call goes through `ApiClient.request`.

The backend's URL comes from CLIPMEM_API_URL (default http://127.0.0.1:8000). A client
sends the token it is given (as 'Authorization: Bearer ...'); the dashboard gives each
browser session's client the token that session signed in with, never one from its own
environment. Every failure becomes a `BackendError` whose message a person can act on;
pages show that message and never a traceback.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

DEFAULT_API_URL = "http://127.0.0.1:8000"
START_HINT = "Start it in another terminal with `clipmem serve` (after `clipmem ingest RUN_DIR`)"


class BackendError(Exception):
    """A backend call that did not succeed; `str(err)` is the readable message."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status


class BackendUnreachable(BackendError):
    """Nothing answers at the backend URL (not started, wrong port, wrong host)."""


class Unauthorized(BackendError):
    """The backend answered 401: it needs a token and the request had none, or one it does not know."""


class NotFound(BackendError):
    """The backend answered 404: a run, pair or endpoint it does not have."""


def api_url() -> str:
    return os.environ.get("CLIPMEM_API_URL", DEFAULT_API_URL).rstrip("/")


def _detail(response: httpx.Response) -> str:
    """The backend's own explanation of an error response, as one line."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI validation errors
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("query", "body", "path"))
                parts.append(f"{where}: {item.get('msg', item)}" if where else str(item.get("msg", item)))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if isinstance(detail, dict):
        return str(detail.get("message") or detail)
    return str(detail)


class ApiClient:
    def __init__(self, base_url: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.base_url = (base_url or api_url()).rstrip("/")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout,
                                  limits=httpx.Limits(max_connections=16, max_keepalive_connections=16))

    # the one place where HTTP failures are turned into readable errors
    def request(self, method: str, path: str, *, params: dict | None = None, json: Any = None,
                timeout: float | None = None) -> httpx.Response:
        params = {k: v for k, v in (params or {}).items() if v is not None and v != [] and v != ""}
        try:
            response = self._http.request(method, path, params=params, json=json,
                                          timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise BackendUnreachable(f"The clipmem backend at {self.base_url} cannot be reached ({exc}). "
                                     f"{START_HINT}, or point CLIPMEM_API_URL at the running backend.") from None
        except httpx.TimeoutException:
            raise BackendError(f"The backend at {self.base_url} did not answer {method} {path} in time; "
                               "it may be busy ingesting or computing. Try again in a moment.") from None
        except httpx.HTTPError as exc:
            raise BackendError(f"{method} {path} failed: {exc}") from None
        if response.is_success:
            return response
        detail = _detail(response)
        status = response.status_code
        if status == 401:
            raise Unauthorized(f"The backend needs a token: sign in with its read or write token ({detail}).", status)
        if status == 403:
            raise BackendError(f"The backend refused the request (403: {detail}).", status)
        if status == 404:
            raise NotFound(f"Not found: {detail}", status)
        if status == 422 or status == 400:
            raise BackendError(f"The backend rejected the request: {detail}", status)
        raise BackendError(f"The backend failed on {method} {path} ({status}): {detail}", status)

    def close(self) -> None:
        self._http.close()

    def get_json(self, path: str, **params) -> Any:
        return self._json(self.request("GET", path, params=params))

    def get_bytes(self, path: str, timeout: float | None = None, **params) -> bytes:
        return self.request("GET", path, params=params, timeout=timeout).content

    def post_json(self, path: str, body: Any = None, **params) -> Any:
        return self._json(self.request("POST", path, params=params, json=body))

    def delete(self, path: str, **params) -> Any:
        response = self.request("DELETE", path, params=params)
        return self._json(response) if response.content else None

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise BackendError(f"The backend at {self.base_url} answered {response.request.url.path} with "
                               "something that is not JSON; is CLIPMEM_API_URL pointing at a clipmem backend?") \
                from None
