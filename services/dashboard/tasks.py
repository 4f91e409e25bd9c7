"""Tasks: the paged list, one task (progress, why it waits, the best configuration, its experiments
and charts), several tasks compared, and a task file submitted."""

from __future__ import annotations

import asyncio
import gzip
from collections import OrderedDict
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, PathParameter, QueryParameter
from litestar.response import Response, Template

from autotune import reads
from autotune.dashboard.common import GZIP_LEVEL, PAGE_SIZE, Live, events_url, fragment, nc, page, positions, written
from autotune.reads import results
from autotune.schemas import subjects as subj
from autotune.schemas.spec import SpecError, is_simulated
from autotune.schemas.status import ExperimentStatus, TaskStatus
from autotune.shared import commands

Part = Annotated[str | None, QueryParameter(description="one section of the page (a live refresh)", max_length=32)]
PageNo = Annotated[int, QueryParameter(ge=1, le=10_000_000)]
Text = Annotated[str | None, QueryParameter(max_length=256)]
Metric = Annotated[str, QueryParameter(max_length=64)]
ENGINES = ("sglang", "vllm")
EXPERIMENT_COLUMNS = ("n", "status", "score", "mean_total_tps_per_gpu", "mean_output_tps", "mean_ttft", "mean_tpot", "p90_e2e_latency",
                      "host", "duration_s")  # fmt: skip


def waiting(detail: Any) -> str | None:
    """Why the task is not making progress, from what the read side knows (never guessed): not started
    yet, or the scheduler's own reason for its first waiting experiment (`experiment.waiting`)."""
    if detail.status == TaskStatus.SUBMITTED:
        return "submitted: waiting for a scheduler to start it (is `autotune up` or `autotune run scheduler` running?)"
    if detail.status != TaskStatus.RUNNING or not detail.waiting:
        return None
    w = detail.waiting[0]
    why = f"experiment {w.n} waits for placement: {w.reason}"
    if not w.fits:
        why += " (no live host could ever run it: it fails as unplaceable after a grace)"
    if len(detail.waiting) > 1:
        why += f"; {len(detail.waiting) - 1} more experiment(s) wait"
    return why


async def _head(request: Request, task_id: str, row: dict | None = None) -> dict[str, Any]:
    conn = nc(request)
    row = row if row is not None else await reads.task_row(conn, task_id, min_seq=written(request))
    detail = await reads.task_detail(conn, task_id, row=row)
    return {"t": detail, "waiting": waiting(detail)}


async def _best(request: Request, task_id: str, row: dict) -> dict[str, Any]:
    """The best configuration as cmd, docker and k8s: built from the task's row, no read of its own."""
    if row.get("best_n") is None:
        return {"exports": {}}
    got = await asyncio.gather(*(reads.export(nc(request), task_id, fmt, row=row) for fmt in ("cmd", "docker", "k8s")))
    return {"exports": {e.format: e for e in got}}


async def _experiments(request: Request, task_id: str, status: str | None, failure: str | None, host: str | None, sort: str,
                       order: str | None, page_no: int, row: dict | None = None) -> dict[str, Any]:  # fmt: skip
    got = await reads.list_experiments(
        nc(request), task_id, status=status or None, failure_kind=failure or None, host=host or None, sort=sort, order=order,
        limit=PAGE_SIZE, offset=(page_no - 1) * PAGE_SIZE, min_seq=written(request), row=row,
    )  # fmt: skip
    pages = max(1, -(-got.total // PAGE_SIZE))
    return {"exps": got, "page_no": page_no, "pages": pages, "sort": sort, "order": order or "asc", "columns": EXPERIMENT_COLUMNS,
            "statuses": list(ExperimentStatus), "status": status, "failure": failure, "host": host}  # fmt: skip


class Versioned:
    """Encoded answers keyed by the version of the data they show, the last few only. Honest only
    where the key names every input: a task's chart data is its experiments' rows, and the task's
    last_seq moves with every event of any of them (a finished task's 10,000 points are read,
    encoded and compressed once, not on every visit)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[tuple, bytes] = OrderedDict()

    def get(self, key: tuple) -> bytes | None:
        body = self.items.get(key)
        if body is not None:
            self.items.move_to_end(key)
        return body

    def put(self, key: tuple, body: bytes) -> bytes:
        self.items[key] = body
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return body


POINTS = Versioned(16)  # gzipped points.json bodies (~150 KB each for 10,000 experiments)


class TaskPages(Controller):
    tags = ["dashboard"]
    include_in_schema = False

    @get("/tasks", name="tasks")
    async def tasks(self, request: Request, status: Text = None, name: Text = None, model: Text = None, engine: Text = None,
                    page_no: Annotated[int, QueryParameter(name="page", ge=1, le=10_000_000)] = 1, part: Part = None) -> Template:  # fmt: skip
        if status and status not in set(TaskStatus):
            raise reads.BadRequest(f"status `{status}` is not one of {', '.join(TaskStatus)}")
        pos = None if part else await positions(request)
        got = await reads.list_tasks(nc(request), status=status or None, name=name or None, model=model or None, engine=engine or None,
                                     limit=PAGE_SIZE, offset=(page_no - 1) * PAGE_SIZE, min_seq=written(request))  # fmt: skip
        ctx = {"tasks": got, "page_no": page_no, "pages": max(1, -(-got.total // PAGE_SIZE)), "statuses": list(TaskStatus), "engines": ENGINES,
               "f": {"status": status or "", "name": name or "", "model": model or "", "engine": engine or ""}}  # fmt: skip
        if part == "table":
            return fragment("task_table", request, **ctx)
        live = [Live(id="events", url=events_url(subj.tasks_all()), since_seq=pos[subj.EVENTS_STREAM] + 1)] if pos else []
        return page("tasks.html", request, title="tasks", live=live, simulated=any(t.simulate for t in got.items), real_cpu=any(t.real_cpu for t in got.items), **ctx)

    @get("/tasks/{task_id:str}", name="task")
    async def task(
        self, request: Request, task_id: Annotated[str, PathParameter(max_length=256)], x: Metric = results.DEFAULT_X, y: Metric = results.DEFAULT_Y, status: Text = None,
        failure: Text = None, host: Text = None, sort: Metric = "n", order: Text = None,
        page_no: Annotated[int, QueryParameter(name="page", ge=1, le=10_000_000)] = 1, part: Part = None,
    ) -> Template:  # fmt: skip
        if status and status not in set(ExperimentStatus):
            raise reads.BadRequest(f"status `{status}` is not one of {', '.join(ExperimentStatus)}")
        if order not in (None, "", "asc", "desc"):
            raise reads.BadRequest(f"order `{order}` is not asc or desc")
        if part == "head":
            return fragment("task_head", request, **await _head(request, task_id))
        if part == "experiments":
            return fragment("experiments", request, task_id=task_id, **await _experiments(request, task_id, status, failure, host, sort, order, page_no))
        if part == "best":
            row = await reads.task_row(nc(request), task_id, min_seq=written(request))
            head, best = await asyncio.gather(_head(request, task_id, row), _best(request, task_id, row))
            return fragment("best", request, **head, **best)
        results.check_metric(x, "x"), results.check_metric(y, "y")
        pos = await positions(request)
        # the task's row once, then everything that depends on it at once; the charts' data (every
        # finished experiment) is points.json, fetched by the page: the table is not held up by it
        row = await reads.task_row(nc(request), task_id, min_seq=written(request))
        head, exps, best = await asyncio.gather(
            _head(request, task_id, row), _experiments(request, task_id, status, failure, host, sort, order, page_no, row), _best(request, task_id, row)
        )
        t = head["t"]
        live = [Live(id="events", url=f"/api/tasks/{task_id}/events?follow=true", since_seq=pos[subj.EVENTS_STREAM] + 1,
                     until=["task.completed", "task.failed", "task.cancelled", "task.rejected"])]  # fmt: skip
        return page("task.html", request, title=f"task {task_id}", live=live, simulated=t.simulate, real_cpu=t.real_cpu, task_id=task_id,
                    metrics=results.METRICS, x=x, y=y, **head, **best, **exps)  # fmt: skip

    @get("/tasks/{task_id:str}/points.json", name="task-points")
    async def points(self, request: Request, task_id: Annotated[str, PathParameter(max_length=256)], x: Metric = results.DEFAULT_X, y: Metric = results.DEFAULT_Y,
                     n: Annotated[list[int] | None, QueryParameter(max_items=1000)] = None) -> Response:  # fmt: skip
        """The chart data of the task page (what a live chart appends): `n` limits it to those experiments."""
        conn = nc(request)
        if n is not None:  # a live chart's append: a few points, never asked twice
            got = await results.task_points(conn, task_id, x=x, y=y, ns=n, min_seq=written(request))
            return Response(content=msgspec.json.encode(got), media_type="application/json")
        row, keys = await asyncio.gather(reads.task_row(conn, task_id, min_seq=written(request)), results.parameter_keys(conn, task_id))
        # every event of the task or of one of its experiments moves its last_seq: the same key is the same data
        version = (task_id, x, y, row.get("submitted_at"), row.get("last_seq"))
        body = POINTS.get(version)
        if body is None:
            # read as of at least that sequence (another projector replica may be behind the one that gave the row)
            got = await results.task_points(conn, task_id, x=x, y=y, row=row, keys=keys, min_seq=row.get("last_seq"))
            body = POINTS.put(version, gzip.compress(msgspec.json.encode(got), GZIP_LEVEL))
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(content=body, media_type="application/json", headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
        return Response(content=gzip.decompress(body), media_type="application/json", headers={"Vary": "Accept-Encoding"})

    @get("/compare", name="compare")
    async def compare(self, request: Request, task: Annotated[list[str] | None, QueryParameter(max_items=8)] = None,
                      x: Metric = results.DEFAULT_X, y: Metric = results.DEFAULT_Y, part: Part = None) -> Template:  # fmt: skip
        chosen = list(dict.fromkeys(t for t in (task or []) if t))
        results.check_metric(x, "x"), results.check_metric(y, "y")
        conn = nc(request)
        if part == "best":  # a live refresh: the tasks' progress and best configurations (the chart appends its points itself)
            details = await asyncio.gather(*(reads.task_detail(conn, t, min_seq=written(request)) for t in chosen))
            return fragment("compare_best", request, details=details, chosen=chosen)
        pos = await positions(request)
        recent, details, points = await asyncio.gather(
            reads.list_tasks(conn, limit=200, min_seq=written(request)),
            asyncio.gather(*(reads.task_detail(conn, t) for t in chosen)),
            asyncio.gather(*(results.task_points(conn, t, x=x, y=y) for t in chosen)),
        )
        live = [Live(id="events", url=events_url(subj.tasks_all()), since_seq=pos[subj.EVENTS_STREAM] + 1)] if chosen else []
        return page("compare.html", request, title="compare", live=live, simulated=any(d.simulate for d in details), real_cpu=any(d.real_cpu for d in details), recent=recent.items,
                    chosen=chosen, details=details, points=points, metrics=results.METRICS, x=x, y=y)  # fmt: skip

    @get("/submit", name="submit")
    async def submit(self, request: Request) -> Template:
        return page("submit.html", request, title="submit a task")

    @post("/submit/check", name="submit-check", status_code=200)
    async def check(self, request: Request,
                    data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]) -> Template:  # fmt: skip
        """Validate a task file as `autotune submit` would (nothing is published): the same message,
        with the file name, line and field path."""
        text, source = data.get("text", ""), (data.get("source") or "task file").strip()[:200]
        rehearse = data.get("simulate") in ("on", "true", "1")
        if not text.strip():
            return fragment("validation", request, error="the task file is empty: paste it or choose a file", lines=[], line=None)
        try:
            spec = commands.parse(text, source=source)
        except SpecError as e:
            lines = text.splitlines()
            around = [(i + 1, lines[i]) for i in range(max(0, (e.line or 1) - 3), min(len(lines), (e.line or 1) + 2))] if e.line else []
            return fragment("validation", request, error=f"invalid task file {e}", lines=around, line=e.line, path=e.path)
        return fragment("validation", request, error=None, spec=reads.redact(commands.spec_to_dict(spec)),
                        simulated=is_simulated(rehearse, spec.deployment_mode))  # fmt: skip
