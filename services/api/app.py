"""The HTTP API. It never owns state: it validates, publishes events, and reads through the
projector's query service (`autotune.query.sql`), passing the sequence of its own last publish as
`min_seq` so a GET right after a POST sees the change."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Litestar, Request, get, post
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.response import Response
from nats.aio.client import Client as NATS

from autotune import __version__
from autotune.schemas.spec import SpecError, parse_spec
from autotune.shared import commands
from autotune.shared import query as q
from autotune.shared.settings import Settings


class ApiError(msgspec.Struct):
    error: str
    path: str | None = None
    line: int | None = None


class TaskCreated(msgspec.Struct):
    id: str
    seq: int
    url: str


def _error(status: int, message: str, **extra: Any) -> Response:
    return Response(content=msgspec.to_builtins(ApiError(error=message, **extra)), status_code=status)


def _check_token(request: Request) -> None:
    token = request.app.state.settings.api_token
    if token and request.headers.get("authorization", "") != f"Bearer {token}":
        raise HTTPException(status_code=401, detail="missing or wrong bearer token; pass `Authorization: Bearer <token>`")


async def _sql(request: Request, sql: str, params: list | None = None, *, min_seq: int | None = None) -> list[dict]:
    try:
        res = await q.sql(request.app.state.nc, sql, params, min_seq=min_seq or request.app.state.last_seq or None)
    except q.QueryError as e:
        raise HTTPException(status_code=503, detail=str(e)) from None
    return res.rows_as_dicts()


class TaskController(Controller):
    path = "/api/tasks"

    @post("/", operation_id="submitTask", status_code=201)
    async def submit(self, request: Request) -> Response:
        _check_token(request)
        body = await request.body()
        fmt = "json" if "json" in request.headers.get("content-type", "") else None
        simulate = request.query_params.get("simulate", "").lower() in ("1", "true", "yes")
        try:
            spec = parse_spec(body, source="request body", fmt=fmt)
        except SpecError as e:
            return _error(400, e.message, path=e.path, line=e.line)
        js = request.app.state.nc.jetstream()
        try:
            task, seq = await commands.submit_task(js, spec, simulate=simulate, submitted_by="api")
        except commands.DuplicateTask as e:
            return _error(409, str(e), path="$.task_name")
        request.app.state.last_seq = max(request.app.state.last_seq, seq)
        return Response(content=msgspec.to_builtins(TaskCreated(id=task, seq=seq, url=f"/api/tasks/{task}")), status_code=201)

    @get("/", operation_id="listTasks")
    async def list_tasks(self, request: Request, status: str | None = None, name: str | None = None, limit: int = 50, offset: int = 0) -> list[dict]:
        where, params = [], []
        if status:
            where.append("status = ?")
            params.append(status)
        if name:
            where.append("name ILIKE ?")
            params.append(f"%{name}%")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        params += [max(1, min(limit, 1000)), max(0, offset)]
        return await _sql(request, f"SELECT * FROM tasks {clause} ORDER BY submitted_at DESC LIMIT ? OFFSET ?", params)

    @get("/{task_id:str}", operation_id="getTask")
    async def get_task(self, request: Request, task_id: str) -> dict:
        rows = await _sql(request, "SELECT * FROM tasks WHERE id = ?", [task_id])
        if not rows:
            raise HTTPException(status_code=404, detail=f"no task `{task_id}`")
        return rows[0]

    @get("/{task_id:str}/experiments", operation_id="listExperiments")
    async def experiments(self, request: Request, task_id: str, status: str | None = None) -> list[dict]:
        params: list[Any] = [task_id]
        clause = ""
        if status:
            clause, params = " AND status = ?", [task_id, status]
        return await _sql(request, f"SELECT * FROM experiments WHERE task = ?{clause} ORDER BY n, attempt", params)

    @post("/{task_id:str}/cancel", operation_id="cancelTask", status_code=202)
    async def cancel(self, request: Request, task_id: str) -> Response:
        _check_token(request)
        try:
            seq = await commands.cancel_task(request.app.state.nc.jetstream(), task_id, requested_by="api")
        except commands.UnknownTask as e:
            return _error(404, str(e))
        request.app.state.last_seq = max(request.app.state.last_seq, seq)
        return Response(content={"id": task_id, "seq": seq, "status": "cancel_requested"}, status_code=202)


class SqlRequest(msgspec.Struct, forbid_unknown_fields=True):
    sql: str
    params: list[Any] | None = None
    limit: int | None = None


@post("/api/sql", operation_id="querySql", status_code=200)
async def run_sql(request: Request, data: SqlRequest) -> Response:
    try:
        res = await q.sql(request.app.state.nc, data.sql, data.params, limit=data.limit)
    except q.QueryError as e:
        return _error(400, str(e))
    return Response(content=msgspec.to_builtins(res))


@get("/api/health", operation_id="health")
async def health(request: Request) -> dict:
    nc: NATS = request.app.state.nc
    return {"status": "ok" if nc.is_connected else "degraded", "nats_connected": nc.is_connected, "version": __version__}


def create_app(*, nc: NATS, settings: Settings) -> Litestar:
    def _http_error(request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail))

    def _any_error(request: Request, exc: Exception) -> Response:
        return _error(500, f"internal error: {type(exc).__name__}")

    app = Litestar(
        route_handlers=[TaskController, run_sql, health],
        openapi_config=OpenAPIConfig(title="autotune", version=__version__, path="/schema"),
        exception_handlers={HTTPException: _http_error},
        debug=False,
    )
    app.state.nc = nc
    app.state.settings = settings
    app.state.last_seq = 0
    return app
