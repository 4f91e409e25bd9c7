"""The whole event log as a live stream, read-only SQL on the projection, health, readiness, version."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import JSONBody, QueryParameter
from litestar.response import Response, ServerSentEvent

from autotune import __version__
from autotune.api import models as m
from autotune.api.common import SECURED, min_seq, requires_token
from autotune.api.tasks import Follow, Seq, SinceTime, StreamLimit, resume_from, stream_events
from autotune.projector.schema import SCHEMA_VERSION
from autotune.schemas import subjects as subj
from autotune.shared import query as q

API_VERSION = "1"


class EventController(Controller):
    path = "/api/events"
    tags = ["events"]

    @get("/", operation_id="streamEvents", summary="Events of any subject filter (SSE): history from a sequence or a time, then live",
         media_type="text/event-stream")  # fmt: skip
    async def events(
        self, request: Request,
        subject: Annotated[str, QueryParameter(description="e.g. autotune.task.<task>.>, autotune.host.>, autotune.gpu.<host>.*, autotune.log.<task>.<n>", max_length=512)] = subj.ALL,
        since_seq: Seq = None, since_time: SinceTime = None, follow: Follow = False, limit: StreamLimit = None,
    ) -> ServerSentEvent:  # fmt: skip
        """One SSE event per message: `id` is its stream sequence (reconnect with since_seq = id + 1),
        `event` its type, `data` {seq, stream, subject, stored_at, type, event}."""
        from autotune.reads.stream import route

        route(subject)  # 400 before the stream starts
        return stream_events(request, subject, resume_from(request, since_seq), since_time, follow, limit)


class SystemController(Controller):
    path = "/api"
    tags = ["system"]

    @post("/sql", operation_id="querySql", status_code=200, guards=[requires_token], security=SECURED,
          summary="Read-only SQL on the projection (DuckDB)")  # fmt: skip
    async def sql(self, request: Request, data: JSONBody[m.SqlRequest]) -> Response:
        """One SELECT (or WITH/DESCRIBE/SHOW/SUMMARIZE/EXPLAIN) on the tables of the read model; the
        answer has columns, DuckDB types, rows, whether it was truncated and the applied sequence.
        Needs the token when one is configured: the projection holds every task spec."""
        limit = None if data.limit is None else max(0, min(data.limit, 1_000_000))
        res = await q.sql(request.app.state.nc, data.sql, data.params, limit=limit, min_seq=min_seq(request))
        return Response(content=msgspec.to_builtins(res), media_type="application/json")

    @get("/health", operation_id="health", summary="Liveness: the API runs and NATS is connected")
    async def health(self, request: Request) -> Response:
        ok = request.app.state.nc.is_connected
        body = m.Health(status="ok" if ok else "degraded", nats_connected=ok, version=__version__)
        return Response(content=msgspec.to_builtins(body), status_code=200 if ok else 503, media_type="application/json")

    @get("/ready", operation_id="ready", summary="Readiness: NATS connected, the projector answering and caught up")
    async def ready(
        self, request: Request,
        max_lag: Annotated[int, QueryParameter(ge=0, le=2**53, description="events the projector may be behind and still be ready")] = 10_000,
    ) -> Response:  # fmt: skip
        nc = request.app.state.nc
        body = m.Ready(ready=False, nats_connected=nc.is_connected, projector=False, max_lag=max_lag)
        if not nc.is_connected:
            body.reason = "NATS is not connected"
        else:
            try:
                body.last_seq = (await nc.jetstream().stream_info(subj.EVENTS_STREAM)).state.last_seq
                res = await q.sql(nc, "SELECT 1 AS ok", timeout=3.0)
                body.projector = True
                body.applied_seq = res.applied_seq
                body.lag = max(0, body.last_seq - res.applied_seq)
                body.ready = body.lag <= max_lag
                if not body.ready:
                    body.reason = f"the projector is {body.lag} events behind (more than {max_lag})"
            except q.QueryError as e:
                body.reason = e.message
            except Exception as e:  # NATS hiccups: not ready, say why
                body.reason = f"NATS: {type(e).__name__}"
        return Response(content=msgspec.to_builtins(body), status_code=200 if body.ready else 503, media_type="application/json")

    @get("/version", operation_id="version", summary="Versions of autotune, the API and the projection schema")
    async def version(self) -> m.Version:
        return m.Version(version=__version__, api=API_VERSION, projector_schema=SCHEMA_VERSION)
