"""Experiments of a task: list (sorted by score or any metric, filtered by status), one with its runs,
GPU telemetry, failure and log excerpt, and its engine log live-tailed over SSE."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, Request, get
from litestar.params import FromQuery, PathParameter, QueryParameter
from litestar.response import ServerSentEvent

from autotune import reads
from autotune.api import models as m
from autotune.api.common import min_seq, sse
from autotune.api.tasks import Follow, Limit, Offset, Seq, StreamLimit, TaskId
from autotune.reads import stream
from autotune.schemas.status import ExperimentStatus
from autotune.shared import commands

N = Annotated[int, PathParameter(ge=0, le=2**53, description="experiment number within the task")]
Attempt = Annotated[int | None, QueryParameter(ge=0, le=2**31, description="attempt (default: the latest)")]


class ExperimentController(Controller):
    path = "/api/tasks/{task_id:str}/experiments"
    tags = ["experiments"]

    @get("/", operation_id="listExperiments", summary="A task's experiments, sorted and filtered")
    async def list_experiments(
        self, request: Request, task_id: TaskId, status: FromQuery[ExperimentStatus | None] = None,
        sort: Annotated[str, QueryParameter(description="score, n, or any column of the experiments table", max_length=64)] = "n",
        order: FromQuery[Literal["asc", "desc"] | None] = None,
        latest: Annotated[bool, QueryParameter(description="only the latest attempt of each experiment")] = False,
        failure_kind: Annotated[str | None, QueryParameter(description="e.g. oom, startup_timeout", max_length=64)] = None,
        host: Annotated[str | None, QueryParameter(description="placed on this host", max_length=256)] = None,
        limit: Limit = 100, offset: Offset = 0,
    ) -> m.ExperimentPage:  # fmt: skip
        return await reads.list_experiments(
            request.app.state.nc, task_id, status=status, sort=sort, order=order, latest=latest, failure_kind=failure_kind, host=host,
            limit=limit, offset=offset, min_seq=min_seq(request),
        )  # fmt: skip

    @get("/{n:int}", operation_id="getExperiment", summary="One experiment: parameters, runs, GPU telemetry, failure, log excerpt")
    async def get_experiment(
        self, request: Request, task_id: TaskId, n: N, attempt: Attempt = None,
        log_lines: Annotated[int, QueryParameter(ge=0, le=10_000, description="lines of the log excerpt")] = 40,
    ) -> m.ExperimentDetail:  # fmt: skip
        return await reads.experiment_detail(request.app.state.nc, task_id, n, attempt=attempt, log_lines=log_lines, min_seq=min_seq(request))

    @get("/{n:int}/logs", operation_id="streamExperimentLogs", summary="The experiment's engine and runner log (SSE), live with follow",
         media_type="text/event-stream")  # fmt: skip
    async def logs(
        self, request: Request, task_id: TaskId, n: N, attempt: Attempt = None, since_seq: Seq = None, follow: Follow = False,
        limit: StreamLimit = None,
    ) -> ServerSentEvent:  # fmt: skip
        """Events `log` (`data`: {seq, attempt, host, source, at, lines}) and a final `end` ({attempt, status})."""
        js = request.app.state.nc.jetstream()
        await commands.submitted(js, task_id)  # 404 for an unknown task

        async def items():
            async for kind, data in stream.logs(js, task_id, n, attempt=attempt, since_seq=since_seq, follow=follow, limit=limit):
                yield kind, data.get("seq"), data

        return sse(items())
