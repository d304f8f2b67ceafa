"""HTTP plumbing shared by the routes: OpenAI-shaped errors, the API key check, the body size limit, one log
line per request, and typed access to JSON fields."""
from __future__ import annotations

import hmac
import json
import sys
import time

from ..errors import AromniError
from .metrics import Metrics

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 408: "timeout_error", 413: "invalid_request_error",
               415: "invalid_request_error", 422: "invalid_request_error", 503: "server_overloaded",
               504: "timeout_error"}


class ApiError(Exception):
    """An answer other than 2xx, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.status, self.message, self.code, self.param)


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
    err = {"message": message, "type": ERROR_TYPES.get(status, "server_error" if status >= 500 else
                                                      "invalid_request_error"), "param": param, "code": code}
    return json.dumps({"error": err}).encode()


def as_api_error(e: BaseException) -> ApiError:
    """Any exception of a request -> the answer it gets (input errors 4xx; anything else a 500 without a
    traceback)."""
    from .batcher import Cancelled
    from .registry import UnknownModel
    from .runner import QueueFull

    if isinstance(e, ApiError):
        return e
    if isinstance(e, UnknownModel):
        return ApiError(404, str(e), "model_not_found", "model")
    if isinstance(e, QueueFull):
        return ApiError(503, "the server is busy: the request queue is full; retry later", "queue_full",
                        headers={"Retry-After": "1"})
    if isinstance(e, Cancelled):
        return ApiError(503, "the request was cancelled (the server is stopping or the client went away)",
                        "cancelled", headers={"Retry-After": "1"})
    if isinstance(e, AromniError):
        return ApiError(400, str(e))
    return ApiError(500, f"internal error ({type(e).__name__})", "internal_error")


# ----------------------------------------------------------------------------------------------
# JSON fields
# ----------------------------------------------------------------------------------------------
def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON ({getattr(e, 'msg', e)})", "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", "invalid_json")
    return body


_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
          dict: "an object"}


def field(body: dict, name: str, kind: type, default=None, required: bool = False):
    """``body[name]`` checked to be of ``kind`` (int accepted for float; bool never counts as a number)."""
    if name not in body or body[name] is None:
        if required:
            raise ApiError(400, f"'{name}' is required", "missing_field", name)
        return default
    v = body[name]
    ok = isinstance(v, kind) and not (kind in (int, float) and isinstance(v, bool))
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        ok, v = True, float(v)
    if not ok:
        raise ApiError(400, f"'{name}' must be {_NAMES.get(kind, kind.__name__)}", "invalid_type", name)
    return v


# ----------------------------------------------------------------------------------------------
# ASGI middleware: key, size limit, log line, metrics
# ----------------------------------------------------------------------------------------------
class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, f"the body is larger than {limit} bytes", "body_too_large")


class Gate:
    """Wraps the app: checks the API key (not for /health), refuses bodies over ``max_body`` bytes (413), logs
    one line per request on stderr and counts it. A response that fails after it started is cut off (the
    client sees an incomplete body, never a complete one)."""

    def __init__(self, app, api_key: str | None, max_body: int, metrics: Metrics, log=None):
        self.app, self.max_body, self.metrics = app, max_body, metrics
        self.key = api_key.encode() if api_key else None
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path = scope.get("path", "")
        state = {"status": 0, "started": False, "bytes": 0}

        async def send_wrapped(msg):
            if msg["type"] == "http.response.start":
                state["status"], state["started"] = msg["status"], True
            elif msg["type"] == "http.response.body":
                state["bytes"] += len(msg.get("body", b""))
            await send(msg)

        async def answer(err: ApiError):
            headers = [(b"content-type", b"application/json")]
            headers += [(k.lower().encode(), str(v).encode()) for k, v in err.headers.items()]
            await send_wrapped({"type": "http.response.start", "status": err.status, "headers": headers})
            await send_wrapped({"type": "http.response.body", "body": err.body()})

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        outcome = ""
        try:
            if self.key is not None and path != "/health" and not self._authorized(headers):
                await answer(ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", "invalid_api_key"))
                return
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                await answer(ApiError(413, f"the body is larger than {self.max_body} bytes", "body_too_large"))
                return
            seen = 0

            async def receive_limited():
                nonlocal seen
                msg = await receive()
                if msg["type"] == "http.request":
                    seen += len(msg.get("body", b""))
                    if seen > self.max_body:
                        raise BodyTooLarge(self.max_body)
                return msg

            try:
                await self.app(scope, receive_limited, send_wrapped)
            except BodyTooLarge as e:
                if not state["started"]:
                    await answer(e)
        except Exception as e:  # noqa: BLE001 - a failure after the response started: cut it off, log one line
            if not state["started"]:
                await answer(as_api_error(e))
            else:
                outcome = f" aborted ({type(e).__name__}: {str(e)[:120]})"
        finally:
            dt = time.perf_counter() - t0
            status = state["status"] or 499  # 499: the client went away before an answer
            self.metrics.record(path, status, dt)
            client = scope.get("client") or ("-", 0)
            self.log(f'aromni serve: {client[0]} "{scope.get("method", "")} {path}" {status} '
                     f'{state["bytes"]}B {dt * 1000:.0f}ms{outcome}')

    def _authorized(self, headers: dict) -> bool:
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
        return hmac.compare_digest(given.encode(), self.key)


def seed_of(body: dict) -> int | None:
    s = field(body, "seed", int)
    if s is not None and not 0 <= s < 2**62:
        raise ApiError(400, "'seed' must be in [0, 2^62)", "invalid_value", "seed")
    return s
