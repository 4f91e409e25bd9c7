"""Experiments as people see them: a task's experiments sorted by any metric, and one attempt with
its runs, GPU telemetry, failure and log excerpt."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime

import msgspec

from autotune.reads import export as ex
from autotune.reads import models as m
from autotune.reads.common import COLUMN, BadRequest, NotFound, as_time, clean, finite, on_cpu, rows, simulated
from autotune.reads.tasks import task_row
from autotune.schemas.events import EngineMetricsSummary


async def list_experiments(nc, task: str, *, status: str | None = None, sort: str = "n", order: str | None = None,
                           latest: bool = False, failure_kind: str | None = None, host: str | None = None,
                           limit: int = 100, offset: int = 0, min_seq: int | None = None, row: dict | None = None) -> m.ExperimentPage:  # fmt: skip
    """`row`: the task's row (task_row) when the caller has just read it; read at once with the page otherwise."""
    if not COLUMN.match(sort):
        raise BadRequest(f"cannot sort by `{sort}`; use score, n, or any column of the experiments table (e.g. mean_total_tps_per_gpu)")
    if order not in (None, "asc", "desc"):
        raise BadRequest(f"order `{order}` is not asc or desc")
    direction = (order or "asc").upper()
    where, params = ["task = ?"], [task]
    if status:
        where.append("status = ?")
        params.append(status)
    if failure_kind:
        where.append("failure_kind = ?")
        params.append(failure_kind)
    if host:
        where.append("host = ?")
        params.append(host)
    source = "experiments"
    if latest:
        source = "(SELECT * FROM experiments WHERE task = ? QUALIFY row_number() OVER (PARTITION BY n ORDER BY attempt DESC) = 1)"
        params = [task, *params]
    # the page (a top-N) and the count side by side: `count(*) OVER ()` over `*` held every column of
    # every matching row to count them (10,000 experiments: 52 ms against 11)
    order = f'ORDER BY "{sort}" {direction} NULLS LAST, n, attempt'
    body = f'FROM {source} WHERE {" AND ".join(where)}'
    sql = f"SELECT e.*, c._total FROM (SELECT * {body} {order} LIMIT ? OFFSET ?) e, (SELECT count(*) AS _total {body}) c {order}"
    args = [*params, limit, offset, *params]
    if row is None:  # the row says whether the task exists; the page does not need to wait for it
        row, got = await asyncio.gather(task_row(nc, task, min_seq=min_seq), rows(nc, sql, args, min_seq=min_seq))
    else:
        got = await rows(nc, sql, args, min_seq=min_seq)
    for r in got:
        total = r.pop("_total")
    if not got:  # past the end (or none): the count alone
        total = (await rows(nc, f"SELECT count(*) AS n {body}", params))[0]["n"] if offset else 0
    return m.ExperimentPage(task=task, simulate=simulated(row), real_cpu=on_cpu(row), items=[clean(r) for r in got], total=total, limit=limit, offset=offset)



def bucket_for(seconds: float, points: int = 120) -> int:
    """A bucket width (seconds) that gives about `points` points over `seconds`."""
    return max(1, int(math.ceil(seconds / points)))


TELEMETRY_COLUMNS = (
    'avg(util_gpu) AS util_gpu, max(util_gpu) AS util_gpu_max, max(memory_used_mib) AS memory_used_mib, '
    'max(temperature_c) AS temperature_c, avg(power_w) AS power_w, count(*) AS samples'
)


async def _nothing() -> list[dict]:
    return []


def telemetry_points(got: list[dict]) -> list[m.TelemetryPoint]:
    return [msgspec.convert(clean(r), m.TelemetryPoint, strict=False) for r in got]


async def experiment_detail(nc, task: str, n: int, *, attempt: int | None = None, log_lines: int = 40,
                            min_seq: int | None = None) -> m.ExperimentDetail:  # fmt: skip
    trow, attempts = await asyncio.gather(
        task_row(nc, task, min_seq=min_seq), rows(nc, "SELECT * FROM experiments WHERE task = ? AND n = ? ORDER BY attempt", [task, n], min_seq=min_seq)
    )
    if not attempts:
        raise NotFound(f"task `{task}` has no experiment {n}; GET /api/tasks/{task}/experiments lists them")
    if attempt is None:
        exp = attempts[-1]
    else:
        match = [a for a in attempts if a["attempt"] == attempt]
        if not match:
            raise NotFound(f"experiment {n} of task `{task}` has no attempt {attempt} (attempts: {', '.join(str(a['attempt']) for a in attempts)})")
        exp = match[0]
    a = exp["attempt"]
    start, end = as_time(exp.get("started_at") or exp.get("assigned_at")), as_time(exp.get("finished_at"))
    bucket = bucket_for(((end or datetime.now(UTC)) - start).total_seconds()) if start else 1
    # the runs are the log lane's, which may trail the row above by its gathering (~250 ms): read
    # them as of the row's own last event, so that a finished attempt shows its results
    runs, telemetry, logs = await asyncio.gather(
        rows(nc, "SELECT * FROM experiment_runs WHERE task = ? AND n = ? AND attempt = ? ORDER BY run", [task, n, a], min_seq=exp.get("last_seq")),
        rows(
            nc,
            f'SELECT g."index" AS gpu, time_bucket(to_seconds(?), g."at") AS t, {TELEMETRY_COLUMNS} '
            'FROM experiments e JOIN gpu_samples g ON g.host = e.host AND list_contains(e.gpu_indices, g."index") '
            'AND g."at" >= coalesce(e.started_at, e.assigned_at) AND g."at" <= coalesce(e.finished_at, now()) '
            "WHERE e.task = ? AND e.n = ? AND e.attempt = ? GROUP BY ALL ORDER BY t, gpu",
            [bucket, task, n, a],
        ),
        rows(
            nc,
            "SELECT line FROM (SELECT seq, line_no, line FROM log_lines WHERE task = ? AND n = ? AND attempt = ? "
            "ORDER BY seq DESC, line_no DESC LIMIT ?) ORDER BY seq, line_no",
            [task, n, a, log_lines],
        )
        if log_lines > 0 else _nothing(),
    )  # fmt: skip
    params = exp.get("parameters") if isinstance(exp.get("parameters"), dict) else {}
    failure = None
    if exp.get("status") == "failed" or exp.get("failure_kind"):
        failure = {
            "kind": exp.get("failure_kind"), "stage": exp.get("failure_stage"), "message": exp.get("failure_message"),
            "retryable": exp.get("retryable"), "log_tail": exp.get("log_tail") or [],
        }  # fmt: skip
    summary_cols = ("attempt", "status", "host", "gpu_indices", "score", "failure_kind", "failure_message", "retry_of",
                    "started_at", "finished_at", "cancel_reason")  # fmt: skip
    return m.ExperimentDetail(
        task=task, n=n, attempt=a, status=exp.get("status"), simulate=simulated(trow) or bool(exp.get("simulated")),
        parameters=params, command=ex.command_line(trow.get("spec") or {}, params), experiment=clean(exp),
        runs=[clean(r) for r in runs], attempts=[{c: finite(x.get(c)) for c in summary_cols} for x in attempts],
        telemetry=telemetry_points(telemetry), telemetry_bucket_s=bucket, failure=failure, log_excerpt=[r["line"] for r in logs],
        real_cpu=on_cpu(trow) or exp.get("device") == "cpu", device=exp.get("device"),
        engine_env=exp.get("engine_env") if isinstance(exp.get("engine_env"), dict) else {}, engine_telemetry=engine_telemetry(exp),
    )  # fmt: skip




async def log_excerpt(nc, task: str, n: int, attempt: int, *, lines: int = 200, min_seq: int | None = None) -> tuple[list[dict], int]:
    """The attempt's last `lines` log lines ({seq, source, line}) and the AUTOTUNE_LOGS sequence the
    projection holds them up to (a live tail goes on after it; 0 when it holds none)."""
    got, last = await asyncio.gather(
        rows(
            nc,
            "SELECT seq, source, line FROM (SELECT seq, line_no, source, line FROM log_lines WHERE task = ? AND n = ? AND attempt = ? "
            "ORDER BY seq DESC, line_no DESC LIMIT ?) ORDER BY seq, line_no",
            [task, n, attempt, lines],
            min_seq=min_seq,
        ),
        rows(nc, "SELECT coalesce(max(seq), 0) AS seq FROM log_lines WHERE task = ? AND n = ?", [task, n], min_seq=min_seq),
    )
    return got, last[0]["seq"]


def engine_telemetry(exp: dict) -> dict | None:
    """The engine's own /metrics summary of an attempt's row, or None when none was scraped."""
    if not exp.get("engine_source"):
        return None
    out = {"source": exp.get("engine_source"), "samples": exp.get("engine_samples"), "scrape_failures": exp.get("engine_scrape_failures") or 0}
    out.update({f: finite(exp.get(f"engine_{f}")) for f in EngineMetricsSummary.__struct_fields__ if f not in out})
    out["tokens_per_step"] = tokens_per_step(out["prompt_tokens"], out["generation_tokens"], out["steps"])
    return out


def tokens_per_step(prompt_tokens: float | None, generation_tokens: float | None, steps: float | None) -> float | None:
    """The engine's batch: tokens (prefilled and generated) per forward pass, where it counts its passes.
    About 2 when requests are served one at a time (a prefill pass, then one token per pass)."""
    tokens = (prompt_tokens or 0) + (generation_tokens or 0)
    return round(tokens / steps, 2) if steps and tokens else None


