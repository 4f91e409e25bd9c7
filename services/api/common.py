"""What every controller shares: the bearer-token guard, read-your-writes bookkeeping, errors as JSON,
and the SSE wrapper that turns a live view into `text/event-stream`."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats.errors
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException, ValidationException
from litestar.handlers import BaseRouteHandler
from litestar.response import Response
from litestar.response.sse import ServerSentEvent, ServerSentEventMessage
from nats.js.errors import Error as JetStreamError

from autotune.api import models as m
from autotune.reads import BadRequest, NotFound
from autotune.reads.stream import BadSubject
from autotune.schemas.spec import SpecError
from autotune.schemas.subjects import SubjectError
from autotune.shared import commands
from autotune.shared import query as q
from autotune.shared.log import get_logger

log = get_logger("api")

BEARER = "BearerToken"
SECURED: list[dict[str, list[str]]] = [{BEARER: []}]
UNAVAILABLE = ("no projector is answering", "did not answer within", "the projector is behind", "no query slot")


def requires_token(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard for every mutating call: with a token configured, `Authorization: Bearer <token>` (the
    admin token, when one is set, is accepted too: it may do everything)."""
    token = connection.app.state.settings.api_token
    if not token:
        return
    given = connection.headers.get("authorization", "").encode()
    admin = connection.app.state.settings.api_admin_token
    if hmac.compare_digest(given, f"Bearer {token}".encode()) or (admin and hmac.compare_digest(given, f"Bearer {admin}".encode())):
        return
    raise NotAuthorizedException(
        detail="missing or wrong bearer token; send `Authorization: Bearer <token>` (`autotune up` prints it)",
        headers={"WWW-Authenticate": "Bearer"},
    )


def requires_admin(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard for what changes machines (deploy, undeploy): the admin token, which must be configured."""
    token = connection.app.state.settings.api_admin_token
    if not token:
        raise PermissionDeniedException(
            detail="deploying through the API is off: start the API with AUTOTUNE_API_ADMIN_TOKEN set, and send it as `Authorization: Bearer <admin token>`"
        )
    given = connection.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise NotAuthorizedException(
            detail="missing or wrong admin token; send `Authorization: Bearer <admin token>` (AUTOTUNE_API_ADMIN_TOKEN)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def min_seq(request: Request) -> int | None:
    """Read-your-writes: the sequence of this API's last publish; the projector answers once it has
    applied it."""
    return request.app.state.last_seq or None


def wrote(request: Request, seq: int) -> None:
    request.app.state.last_seq = max(request.app.state.last_seq, seq)


def error(status: int, message: str, **extra: Any) -> Response:
    body = m.ApiError(error=message, status=status, **extra)
    return Response(content=msgspec.to_builtins(body), status_code=status, media_type="application/json")


# --- exceptions → JSON ------------------------------------------------------------------------------------


def _http(request: Request, exc: HTTPException) -> Response:
    detail = None
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        detail = [d if isinstance(d, dict) else {"message": str(d)} for d in exc.extra]
    message = str(exc.detail)
    if exc.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
        message = f"no endpoint {request.method} {request.url.path}; every endpoint is described at /schema"
    if isinstance(exc, ValidationException) and detail:
        message = "; ".join(f"{d.get('key') or d.get('source') or 'input'}: {d.get('message')}" for d in detail)
    resp = error(exc.status_code, message, detail=detail)
    if exc.headers:
        resp.headers.update(exc.headers)
    return resp


def _spec(request: Request, exc: SpecError) -> Response:
    return error(400, exc.message, path=exc.path, line=exc.line)


def _query(request: Request, exc: q.QueryError) -> Response:
    if any(s in exc.message for s in UNAVAILABLE):
        return error(503, exc.message)
    return error(400, exc.message)


def _nats(request: Request, exc: Exception) -> Response:
    log.warning("nats unavailable", exc=True, error=repr(exc), path=request.url.path)
    return error(503, f"the event log (NATS) is not available: {type(exc).__name__}; retry shortly")


def _internal(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc=True, path=request.url.path, error=repr(exc))
    return error(500, f"internal error ({type(exc).__name__}); this is a bug in autotune, please report it with the request")


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    HTTPException: _http,
    SpecError: _spec,
    q.QueryError: _query,
    NotFound: lambda r, e: error(404, str(e)),
    commands.UnknownTask: lambda r, e: error(404, str(e)),
    commands.UnknownHost: lambda r, e: error(404, str(e)),
    SubjectError: lambda r, e: error(404, f"no such id: {e}"),
    commands.DuplicateTask: lambda r, e: error(409, str(e), path="$.task_name"),
    BadRequest: lambda r, e: error(400, str(e)),
    BadSubject: lambda r, e: error(400, str(e)),
    nats.errors.Error: _nats,
    JetStreamError: _nats,
    TimeoutError: _nats,
    Exception: _internal,
}


# --- server-sent events ----------------------------------------------------------------------------------

_json = msgspec.json.Encoder()


def sse(items: AsyncIterator[tuple[str, Any, Any] | None], *, keepalive: str = "keepalive") -> ServerSentEvent:
    """(event, id, data) tuples as SSE; None becomes a comment (keeps proxies from closing the
    connection). An error mid-stream is sent as an `error` event instead of cutting the stream."""

    async def messages() -> AsyncIterator[ServerSentEventMessage]:
        try:
            async for item in items:
                if item is None:
                    yield ServerSentEventMessage(comment=keepalive)
                    continue
                event, ident, data = item
                yield ServerSentEventMessage(event=event, id=ident, data=_json.encode(data).decode())
        except (nats.errors.Error, JetStreamError, TimeoutError) as e:
            yield ServerSentEventMessage(event="error", data=_json.encode({"error": f"the event log (NATS) failed: {type(e).__name__}"}).decode())

    return ServerSentEvent(messages(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


SSE_RESPONSES = {
    200: "text/event-stream: one event per message (`id` = stream sequence, `event` = its type, `data` = JSON)",
}
