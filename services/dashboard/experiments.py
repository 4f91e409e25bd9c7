"""One experiment: parameters and command line, runs, latency distributions from the raw samples,
GPU telemetry over its lifetime, its log (live while it runs) and its failure."""

from __future__ import annotations

import asyncio
from typing import Annotated
from urllib.parse import urlencode

from litestar import Controller, Request, get
from litestar.params import PathParameter, QueryParameter
from litestar.response import Template

from autotune import reads
from autotune.dashboard.common import Live, events_url, fragment, nc, page, positions, written
from autotune.reads import results
from autotune.reads.experiments import log_excerpt
from autotune.schemas import subjects as subj
from autotune.schemas.status import EXPERIMENT_TERMINAL

Part = Annotated[str | None, QueryParameter(description="one section of the page (a live refresh)", max_length=32)]
RUN_COLUMNS = ("run", "scenario", "concurrency", "requests", "completed", "errors", "requests_per_s", "output_tps", "total_tps",
               "ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90", "e2e_latency_p50", "e2e_latency_p99")  # fmt: skip


class ExperimentPages(Controller):
    tags = ["dashboard"]
    include_in_schema = False

    @get("/tasks/{task_id:str}/experiments/{n:int}", name="experiment")
    async def experiment(self, request: Request, task_id: Annotated[str, PathParameter(max_length=256)], n: Annotated[int, PathParameter(ge=0, le=2**53)],
                         attempt: Annotated[int | None, QueryParameter(ge=0, le=2**31)] = None, part: Part = None) -> Template:  # fmt: skip
        conn = nc(request)
        pos = None if part else await positions(request)
        d = await reads.experiment_detail(conn, task_id, n, attempt=attempt, log_lines=0, min_seq=written(request))
        if part == "head":
            return fragment("experiment_head", request, d=d, run_columns=RUN_COLUMNS)
        if part == "dist":
            return fragment("distributions", request, d=d, dist=await results.latency_distributions(conn, task_id, n, d.attempt))
        dist, (log, log_seq) = await asyncio.gather(results.latency_distributions(conn, task_id, n, d.attempt), log_excerpt(conn, task_id, n, d.attempt))
        finished = d.status in EXPERIMENT_TERMINAL
        live = [Live(id="events", url=events_url(subj.experiment_all(task_id, n)), since_seq=pos[subj.EVENTS_STREAM] + 1)]
        live.append(Live(id="logs", url=f"/api/tasks/{task_id}/experiments/{n}/logs?" + urlencode({"follow": "true", "attempt": d.attempt}),
                         since_seq=log_seq + 1, until=["end"], stream=subj.LOGS_STREAM))  # fmt: skip
        host = d.experiment.get("host")
        if host and not finished:
            live.append(Live(id="telemetry", url=events_url(subj.gpu_all(host)), since_seq=pos[subj.TELEMETRY_STREAM] + 1, stream=subj.TELEMETRY_STREAM))
        return page("experiment.html", request, title=f"{task_id} experiment {n}", live=live, simulated=d.simulate, real_cpu=d.real_cpu, d=d, dist=dist, log=log,
                    run_columns=RUN_COLUMNS, finished=finished, task_id=task_id)  # fmt: skip


