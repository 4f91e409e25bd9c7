"""Tasks: submit (JSON or YAML, the original tool's format), list, get, cancel, clone, export the best
configuration, and the live stream of a task's events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from litestar import Controller, Request, get, post
from litestar.openapi.spec import OpenAPIMediaType, Operation, Reference, RequestBody, Schema
from litestar.params import FromQuery, JSONBody, PathParameter, QueryParameter
from litestar.response import ServerSentEvent
from nats.aio.client import Client as NATS

from autotune import reads
from autotune.api import models as m
from autotune.api.common import SECURED, min_seq, requires_token, sse, wrote
from autotune.reads import stream
from autotune.schemas import subjects as subj
from autotune.schemas.status import TaskStatus
from autotune.shared import commands

Limit = Annotated[int, QueryParameter(ge=1, le=1000, description="rows per page")]
Offset = Annotated[int, QueryParameter(ge=0, le=1_000_000_000, description="rows to skip")]
Seq = Annotated[int | None, QueryParameter(ge=1, le=2**53, description="start at this stream sequence (SSE: the `id` of an event)")]
StreamLimit = Annotated[int | None, QueryParameter(ge=1, le=1_000_000, description="end the stream after this many events")]
Follow = Annotated[bool, QueryParameter(description="keep the stream open for live events (default: end once caught up)")]
SinceTime = Annotated[datetime | None, QueryParameter(description="start at the first message stored at or after this time (ISO 8601)")]
TaskId = Annotated[str, PathParameter(description="task id (its name, or the name's slug)", max_length=256)]


@dataclass
class SubmitOperation(Operation):
    """The submit body is a task file: JSON (schema below) or the same in YAML."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            description="a task file in the original tool's format (JSON or YAML); unknown fields are refused",
            content={
                "application/json": OpenAPIMediaType(schema=Reference(ref="#/components/schemas/SpecTaskSpec")),
                "application/yaml": OpenAPIMediaType(schema=Schema(type="string")),  # type: ignore[arg-type]
            },
        )


def _nc(request: Request) -> NATS:
    return request.app.state.nc


class TaskController(Controller):
    path = "/api/tasks"
    tags = ["tasks"]

    @post(
        "/", operation_id="submitTask", status_code=201, guards=[requires_token], security=SECURED, operation_class=SubmitOperation,
        summary="Submit a task file",
    )  # fmt: skip
    async def submit(
        self, request: Request, simulate: Annotated[bool, QueryParameter(description="rehearse on simulated engines and GPUs, whatever deployment_mode says")] = False
    ) -> m.TaskCreated:
        """201 with the task id (and `unfit`: the configurations the live fleet could never run); 400 with the field
        path and line; 409 when the name is taken."""
        body = await request.body()
        ctype = request.headers.get("content-type", "").lower()
        fmt = "json" if "json" in ctype else None  # YAML or unlabelled: sniffed (JSON is YAML too)
        spec = commands.parse(body, source="request body", fmt=fmt)
        nc = _nc(request)
        unfit = await _unfit(nc, spec, simulate)
        task, seq, _, simulated = await commands.submit_task(nc.jetstream(), spec, simulate=simulate, submitted_by="api")
        wrote(request, seq)
        return m.TaskCreated(id=task, seq=seq, url=f"/api/tasks/{task}", simulate=simulated, unfit=unfit)

    @get("/", operation_id="listTasks", summary="List tasks")
    async def list_tasks(
        self, request: Request, status: FromQuery[TaskStatus | None] = None,
        name: Annotated[str | None, QueryParameter(description="substring of the name or id", max_length=256)] = None,
        simulate: FromQuery[bool | None] = None,
        model: Annotated[str | None, QueryParameter(description="substring of the model", max_length=256)] = None,
        engine: Annotated[str | None, QueryParameter(description="sglang or vllm", max_length=64)] = None,
        limit: Limit = 50, offset: Offset = 0,
    ) -> m.TaskPage:  # fmt: skip
        return await reads.list_tasks(_nc(request), status=status, name=name, simulate=simulate, model=model, engine=engine, limit=limit,
                                      offset=offset, min_seq=min_seq(request))  # fmt: skip

    @get("/{task_id:str}", operation_id="getTask", summary="One task: status, progress, best experiment, Pareto set")
    async def get_task(self, request: Request, task_id: TaskId) -> m.TaskDetail:
        return await reads.task_detail(_nc(request), task_id, min_seq=min_seq(request))

    @post("/{task_id:str}/cancel", operation_id="cancelTask", status_code=202, guards=[requires_token], security=SECURED,
          summary="Cancel a task: its running engines are stopped")  # fmt: skip
    async def cancel(self, request: Request, task_id: TaskId, data: JSONBody[m.CancelRequest | None] = None) -> m.Accepted:
        seq = await commands.cancel_task(_nc(request).jetstream(), task_id, reason=data.reason if data else "", requested_by="api")
        wrote(request, seq)
        return m.Accepted(id=task_id, seq=seq, status="cancel_requested", url=f"/api/tasks/{task_id}")

    @post("/{task_id:str}/clone", operation_id="cloneTask", status_code=201, guards=[requires_token], security=SECURED,
          summary="Re-run a task as a new one, with overrides")  # fmt: skip
    async def clone(self, request: Request, task_id: TaskId, data: JSONBody[m.CloneRequest | None] = None) -> m.TaskCreated:
        """The source is never edited: the clone is a new task whose `cloned_from` names it."""
        data = data or m.CloneRequest()
        task, seq, spec, simulated = await commands.clone_task(
            _nc(request).jetstream(), task_id, name=data.task_name, overrides=data.overrides, simulate=data.simulate, submitted_by="api"
        )
        wrote(request, seq)
        unfit = await _unfit(_nc(request), spec, simulated)
        return m.TaskCreated(id=task, seq=seq, url=f"/api/tasks/{task}", simulate=simulated, cloned_from=task_id, unfit=unfit)

    @get("/{task_id:str}/export", operation_id="exportTask", summary="The best configuration as a command line, docker run or Kubernetes manifest")
    async def export(
        self, request: Request, task_id: TaskId,
        fmt: Annotated[Literal["cmd", "docker", "k8s"], QueryParameter(name="format", description="cmd | docker | k8s")] = "cmd",
        n: Annotated[int | None, QueryParameter(ge=0, le=2**53, description="export this experiment instead of the best")] = None,
        attempt: Annotated[int | None, QueryParameter(ge=0, le=2**31)] = None,
        port: Annotated[int | None, QueryParameter(ge=1, le=65535)] = None,
    ) -> m.Export:  # fmt: skip
        return await reads.export(_nc(request), task_id, fmt, n=n, attempt=attempt, port=port, min_seq=min_seq(request))

    @get("/{task_id:str}/events", operation_id="streamTaskEvents", summary="A task's events (SSE): history from a sequence or time, then live",
         media_type="text/event-stream")  # fmt: skip
    async def events(
        self, request: Request, task_id: TaskId, since_seq: Seq = None, since_time: SinceTime = None, follow: Follow = False,
        limit: StreamLimit = None,
    ) -> ServerSentEvent:  # fmt: skip
        """With follow, the stream ends after the task's last event (completed, failed, cancelled,
        rejected)."""
        await commands.submitted(_nc(request).jetstream(), task_id)  # 404 for an unknown task
        since_seq = resume_from(request, since_seq)
        return sse(_events(request, subj.task_all(task_id), since_seq, since_time, follow, limit, stream.TASK_FINISHED))


async def _unfit(nc: NATS, spec, simulate: bool) -> list:
    """The configurations the live fleet could never run: a warning only (none when the fleet cannot be read)."""
    fit = await reads.fleet_fit_or_none(nc, nc.jetstream(), spec, simulate=simulate)
    return fit.unfit if fit else []


def resume_from(request: Request, since_seq: int | None) -> int | None:
    """A reconnecting EventSource sends the last `id` it saw: go on after it."""
    last = request.headers.get("last-event-id", "")
    if since_seq is None and last.isdigit() and 0 <= int(last) < 2**53:
        return int(last) + 1
    return since_seq


async def _events(request: Request, subject: str, since_seq: int | None, since_time: datetime | None, follow: bool, limit: int | None,
                  until: frozenset[str] = frozenset()):  # fmt: skip
    async for env in stream.events(
        _nc(request).jetstream(), subject, since_seq=since_seq, since_time=since_time, follow=follow, limit=limit, keepalive_s=15.0, until=until
    ):
        yield None if env is None else (env["type"], env["seq"], env)


def stream_events(request: Request, subject: str, since_seq: int | None, since_time: datetime | None, follow: bool, limit: int | None) -> Any:
    return sse(_events(request, subject, since_seq, since_time, follow, limit))


