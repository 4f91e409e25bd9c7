"""Tasks as people see them: pages of tasks, one task's progress, best experiment and Pareto set,
and a tuned configuration exported as something to run."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

import msgspec

from autotune.reads import export as ex
from autotune.reads import models as m
from autotune.reads.common import BadRequest, NotFound, as_time, finite, headline, on_cpu, redact, rows, simulated
from autotune.schemas.spec import REAL_CPU_NOTE
from autotune.schemas.status import EXPERIMENT_ON_HOST, sql_list
from autotune.shared.pareto import front

TASK_COLUMNS = (
    "id", "name", "status", "strategy", "objective", "engine", "model", "deployment_mode", "gpu_type", "submitted_by",
    "cloned_from", "submitted_at", "started_at", "finished_at", "reason", "experiments_completed", "experiments_failed",
    "budget", "best_n", "best_score", "simulate",
)  # fmt: skip



def _task(row: dict) -> m.Task:
    fields = {f: row.get(f) for f in m.Task.__struct_fields__ if f in row}
    fields["simulate"] = simulated(row)
    fields["real_cpu"] = on_cpu(row)
    fields["experiments_completed"] = row.get("experiments_completed") or 0
    fields["experiments_failed"] = row.get("experiments_failed") or 0
    fields["best_score"] = finite(row.get("best_score"))
    return msgspec.convert(fields, m.Task, strict=False)



# --- tasks -------------------------------------------------------------------------------------------------


async def list_tasks(nc, *, status: str | Collection[str] | None = None, name: str | None = None, simulate: bool | None = None,
                     model: str | None = None, engine: str | None = None,
                     limit: int = 50, offset: int = 0, min_seq: int | None = None) -> m.TaskPage:  # fmt: skip
    """Newest first; `name` and `model` match substrings (any case), `engine` exactly; `status` one
    status or any of several."""
    where, params = [], []
    if isinstance(status, str):
        where.append("status = ?")
        params.append(status)
    elif status:
        where.append(f"status IN ({', '.join('?' for _ in status)})")
        params += sorted(status)
    if name:
        where.append("(name ILIKE ? OR id ILIKE ?)")
        params += [f"%{name}%", f"%{name}%"]
    if model:
        where.append("model ILIKE ?")
        params.append(f"%{model}%")
    if engine:
        where.append("engine = ?")
        params.append(engine)
    if simulate is not None:
        where.append("(coalesce(simulate, false) OR coalesce(deployment_mode = 'simulated', false)) = ?")
        params.append(simulate)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    cols = ", ".join(f'"{c}"' for c in TASK_COLUMNS)
    sql = (
        f"SELECT {cols}, count(*) OVER () AS _total FROM tasks {clause} "
        "ORDER BY submitted_at DESC NULLS LAST, id LIMIT ? OFFSET ?"
    )
    got = await rows(nc, sql, [*params, limit, offset], min_seq=min_seq)
    if got or not offset:  # an empty first page counts none; past the end, the count says how far it goes
        total = got[0]["_total"] if got else 0
    else:
        total = (await rows(nc, f"SELECT count(*) AS n FROM tasks {clause}", params or None))[0]["n"]
    return m.TaskPage(items=[_task(r) for r in got], total=total, limit=limit, offset=offset)


async def task_row(nc, task: str, *, min_seq: int | None = None) -> dict:
    got = await rows(nc, "SELECT * FROM tasks WHERE id = ?", [task], min_seq=min_seq)
    if not got:
        raise NotFound(f"no task `{task}`; GET /api/tasks (or `autotune tasks`) lists them")
    return got[0]



async def task_detail(nc, task: str, *, min_seq: int | None = None, port: int | None = None, row: dict | None = None) -> m.TaskDetail:
    """`row`: the task's row (task_row) when the caller has just read it; read here otherwise."""
    row = row if row is not None else await task_row(nc, task, min_seq=min_seq)
    spec = row.get("spec") if isinstance(row.get("spec"), dict) else {}
    opt = spec.get("optimization") if isinstance(spec.get("optimization"), dict) else {}
    objectives = list(opt.get("objectives") or [opt.get("objective") or row.get("objective") or "minimize_latency"])
    # what the row does not hold is read at once: a page waits for one round trip, not three
    count_rows, waiting, best_rows, cand = await asyncio.gather(
        rows(nc, f"SELECT count(*) FILTER (WHERE status IN {sql_list(EXPERIMENT_ON_HOST)}) AS running FROM experiments WHERE task = ?", [task]),
        rows(nc, "SELECT n, attempt, gpus, waiting_reason AS reason, waiting_fits AS fits, waiting_since AS since FROM experiments "
                 "WHERE task = ? AND status = 'planned' AND waiting_reason IS NOT NULL ORDER BY n, attempt", [task]),
        rows(nc, "SELECT * FROM experiments WHERE task = ? AND n = ? AND attempt = ?", [task, row["best_n"], row.get("best_attempt") or 0])
        if row.get("best_n") is not None else _nothing(),
        rows(nc, "SELECT n, attempt, score, objectives, parameters FROM experiments WHERE task = ? AND status = 'completed' "
                 "AND NOT coalesce(hard_fail, false) ORDER BY n, attempt", [task])
        if len(objectives) > 1 or row.get("pareto") else _nothing(),
    )  # fmt: skip
    counts = count_rows[0]
    done = (row.get("experiments_completed") or 0) + (row.get("experiments_failed") or 0)
    budget = row.get("budget")
    started, finished = as_time(row.get("started_at")), as_time(row.get("finished_at"))
    elapsed = ((finished or datetime.now(UTC)) - started).total_seconds() if started else None
    progress = m.Progress(
        budget=budget, space_size=row.get("space_size"), planned=row.get("experiments_planned") or 0, running=counts["running"] or 0,
        completed=row.get("experiments_completed") or 0, failed=row.get("experiments_failed") or 0,
        retried=row.get("experiments_retried") or 0, cancelled=row.get("experiments_cancelled") or 0, done=done,
        percent=round(100.0 * min(done, budget) / budget, 1) if budget else None,
        time_budget_s=opt.get("time_budget_s"), elapsed_s=round(elapsed, 3) if elapsed is not None else None,
    )  # fmt: skip
    best = None
    if row.get("best_n") is not None:
        params = row.get("best_parameters") if isinstance(row.get("best_parameters"), dict) else {}
        exp = best_rows[0] if best_rows else {}
        best = m.BestExperiment(
            n=row["best_n"], attempt=row.get("best_attempt") or 0, score=finite(row.get("best_score")), parameters=params,
            command=ex.command_line(spec, params, port=port) or "", metrics=headline(exp),
        )
    pareto: list[m.ParetoPoint] = []
    if len(objectives) > 1 or row.get("pareto"):
        recorded = row.get("pareto") if isinstance(row.get("pareto"), list) else []
        chosen = [c for c in cand if c["n"] in set(recorded)] if recorded else front(cand, key=lambda c: c.get("objectives"))
        pareto = [
            m.ParetoPoint(n=c["n"], attempt=c["attempt"], score=finite(c["score"]), objectives=list(c.get("objectives") or []),
                          parameters=c.get("parameters") or {})
            for c in chosen
        ]  # fmt: skip
    base = _task(row)
    return m.TaskDetail(
        **msgspec.structs.asdict(base), reason_path=row.get("reason_path"), cancel_requested_at=row.get("cancel_requested_at"),
        objectives=objectives, progress=progress, best=best, pareto=pareto, spec=redact(spec),
        waiting=[msgspec.convert(w, m.Waiting, strict=False) for w in waiting],
        dataset=row.get("dataset") if isinstance(row.get("dataset"), dict) else None,
        links={
            "experiments": f"/api/tasks/{task}/experiments", "events": f"/api/tasks/{task}/events",
            "export": f"/api/tasks/{task}/export?format=cmd", "clone": f"/api/tasks/{task}/clone", "cancel": f"/api/tasks/{task}/cancel",
        },
    )  # fmt: skip


async def _nothing() -> list[dict]:
    return []


async def export(nc, task: str, fmt: str, *, n: int | None = None, attempt: int | None = None, port: int | None = None,
                 min_seq: int | None = None, row: dict | None = None) -> m.Export:  # fmt: skip
    """`row`: the task's row (task_row) when the caller has just read it; read here otherwise."""
    if fmt not in ex.FORMATS:
        raise BadRequest(f"unknown format `{fmt}`; one of {', '.join(ex.FORMATS)}")
    row = row if row is not None else await task_row(nc, task, min_seq=min_seq)
    spec_dict = row.get("spec") if isinstance(row.get("spec"), dict) else {}
    if n is None:
        if row.get("best_n") is None:
            raise NotFound(f"task `{task}` has no successful experiment yet; nothing to export (status {row.get('status')})")
        n, attempt = row["best_n"], row.get("best_attempt") or 0
        params, score = row.get("best_parameters") or {}, row.get("best_score")
    else:
        sql = "SELECT attempt, parameters, score FROM experiments WHERE task = ? AND n = ?"
        args: list[Any] = [task, n]
        if attempt is not None:
            sql += " AND attempt = ?"
            args.append(attempt)
        got = await rows(nc, sql + " ORDER BY attempt DESC LIMIT 1", args)
        if not got:
            raise NotFound(f"task `{task}` has no experiment {n}" + (f" attempt {attempt}" if attempt is not None else ""))
        attempt, params, score = got[0]["attempt"], got[0].get("parameters") or {}, got[0].get("score")
    spec = ex.spec_of(spec_dict)
    if spec is None:
        raise NotFound(f"the recorded spec of task `{task}` no longer validates; cannot build a command line")
    sim, cpu = simulated(row), on_cpu(row)
    note = "measured on SIMULATED engines and GPUs: confirm on real hardware before relying on it" if sim else (REAL_CPU_NOTE if cpu else None)
    if fmt != "k8s" and (where := ex.storage_note(spec)):
        note = f"{note}; {where}" if note else where
    return m.Export(
        task=task, n=n, attempt=attempt or 0, score=finite(score), format=fmt,  # type: ignore[arg-type]
        content=ex.render(fmt, spec, params, port=port, note=note), parameters=params, simulate=sim, real_cpu=cpu, note=note,
    )


