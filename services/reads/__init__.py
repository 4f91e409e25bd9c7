"""The read side, shared by the HTTP API and the command line: SQL on the projection (through the
query service) plus host liveness from the `autotune-hosts` KV bucket, shaped into the Structs of
models.py. No Litestar here, so the CLI imports it cheaply.

Every function takes `min_seq`: the sequence of the caller's own last write, so what it reads
includes it (read-your-writes).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError, NotFoundError

from autotune.api import export as ex
from autotune.api import models as m
from autotune.schemas import subjects as subj
from autotune.schemas.liveness import LiveHost
from autotune.shared import query as q

ACTIVE = ("assigned", "running", "ready", "cancelling")
SECRET_FIELDS = frozenset({"hf_token"})
COLUMN = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
TASK_COLUMNS = (
    "id", "name", "status", "strategy", "objective", "engine", "model", "deployment_mode", "gpu_type", "submitted_by",
    "cloned_from", "submitted_at", "started_at", "finished_at", "reason", "experiments_completed", "experiments_failed",
    "budget", "best_n", "best_score", "simulate",
)  # fmt: skip


def headline(row: dict) -> dict[str, Any]:
    """The experiment's headline metrics (latency percentiles, throughputs, success rate)."""
    keep = ("requests_per_s", "success_rate", "error_rate")
    return {k: _finite(v) for k, v in row.items() if k.startswith(("mean_", "p50_", "p90_", "p99_", "max_")) and "util" not in k
            and "memory" not in k and "power" not in k and "temperature" not in k or k in keep}  # fmt: skip
TASK_STATUSES = ("submitted", "running", "cancelling", "completed", "failed", "cancelled", "rejected")
EXPERIMENT_STATUSES = ("planned", "assigned", "running", "ready", "cancelling", "completed", "failed", "cancelled")
HOST_STATUSES = ("online", "busy", "draining", "offline", "removed")


class NotFound(Exception):
    """What was asked for does not exist; the message says what to try."""


class BadRequest(Exception):
    """A parameter that cannot be answered; the message says what is accepted."""


async def rows(nc, sql: str, params: list[Any] | None = None, *, min_seq: int | None = None, limit: int | None = None) -> list[dict]:
    res = await q.sql(nc, sql, params, min_seq=min_seq or None, limit=limit)
    return res.rows_as_dicts()


def redact(value: Any) -> Any:
    """A copy with secrets (the model's hf_token) replaced: responses never carry them."""
    if isinstance(value, dict):
        return {k: ("***" if k in SECRET_FIELDS and v else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def simulated(row: dict) -> bool:
    return bool(row.get("simulate")) or row.get("deployment_mode") == "simulated"


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _time(v: Any) -> datetime | None:
    if isinstance(v, datetime):
        return v
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v)
        except ValueError:
            return None
    return None


def _task(row: dict) -> m.Task:
    fields = {f: row.get(f) for f in m.Task.__struct_fields__ if f in row}
    fields["simulate"] = simulated(row)
    fields["experiments_completed"] = row.get("experiments_completed") or 0
    fields["experiments_failed"] = row.get("experiments_failed") or 0
    fields["best_score"] = _finite(row.get("best_score"))
    return msgspec.convert(fields, m.Task, strict=False)


# --- tasks -------------------------------------------------------------------------------------------------


async def list_tasks(nc, *, status: str | None = None, name: str | None = None, simulate: bool | None = None,
                     limit: int = 50, offset: int = 0, min_seq: int | None = None) -> m.TaskPage:  # fmt: skip
    where, params = [], []
    if status:
        where.append("status = ?")
        params.append(status)
    if name:
        where.append("(name ILIKE ? OR id ILIKE ?)")
        params += [f"%{name}%", f"%{name}%"]
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
    total = got[0]["_total"] if got else (await rows(nc, f"SELECT count(*) AS n FROM tasks {clause}", params or None))[0]["n"]
    return m.TaskPage(items=[_task(r) for r in got], total=total, limit=limit, offset=offset)


async def task_row(nc, task: str, *, min_seq: int | None = None) -> dict:
    got = await rows(nc, "SELECT * FROM tasks WHERE id = ?", [task], min_seq=min_seq)
    if not got:
        raise NotFound(f"no task `{task}`; GET /api/tasks (or `autotune tasks`) lists them")
    return got[0]


def _pareto(candidates: list[dict]) -> list[dict]:
    """Experiments no other dominates (every objective oriented lower-is-better)."""
    pts = [c for c in candidates if isinstance(c.get("objectives"), list) and len(c["objectives"]) >= 2]
    front = []
    for a in pts:
        va = a["objectives"]
        dominated = any(
            all(x <= y for x, y in zip(b["objectives"], va, strict=False)) and any(x < y for x, y in zip(b["objectives"], va, strict=False)) for b in pts if b is not a
        )
        if not dominated:
            front.append(a)
    return sorted(front, key=lambda c: c["objectives"])


async def task_detail(nc, task: str, *, min_seq: int | None = None, port: int | None = None) -> m.TaskDetail:
    row = await task_row(nc, task, min_seq=min_seq)
    spec = row.get("spec") if isinstance(row.get("spec"), dict) else {}
    counts = (await rows(nc, "SELECT count(*) FILTER (WHERE status IN ('assigned', 'running', 'ready', 'cancelling')) AS running FROM experiments WHERE task = ?", [task]))[0]
    opt = spec.get("optimization") if isinstance(spec.get("optimization"), dict) else {}
    done = (row.get("experiments_completed") or 0) + (row.get("experiments_failed") or 0)
    budget = row.get("budget")
    started, finished = _time(row.get("started_at")), _time(row.get("finished_at"))
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
        got = await rows(
            nc, "SELECT * FROM experiments WHERE task = ? AND n = ? AND attempt = ?", [task, row["best_n"], row.get("best_attempt") or 0]
        )
        params = row.get("best_parameters") if isinstance(row.get("best_parameters"), dict) else {}
        exp = got[0] if got else {}
        best = m.BestExperiment(
            n=row["best_n"], attempt=row.get("best_attempt") or 0, score=_finite(row.get("best_score")), parameters=params,
            command=ex.command_line(spec, params, port=port) or "", metrics=headline(exp),
        )
    objectives = list(opt.get("objectives") or [opt.get("objective") or row.get("objective") or "minimize_latency"])
    pareto: list[m.ParetoPoint] = []
    if len(objectives) > 1 or row.get("pareto"):
        cand = await rows(
            nc,
            "SELECT n, attempt, score, objectives, parameters FROM experiments WHERE task = ? AND status = 'completed' "
            "AND NOT coalesce(hard_fail, false) ORDER BY n, attempt",
            [task],
        )
        recorded = row.get("pareto") if isinstance(row.get("pareto"), list) else []
        chosen = [c for c in cand if c["n"] in set(recorded)] if recorded else _pareto(cand)
        pareto = [
            m.ParetoPoint(n=c["n"], attempt=c["attempt"], score=_finite(c["score"]), objectives=list(c.get("objectives") or []),
                          parameters=c.get("parameters") or {})
            for c in chosen
        ]  # fmt: skip
    base = _task(row)
    return m.TaskDetail(
        **msgspec.structs.asdict(base), reason_path=row.get("reason_path"), cancel_requested_at=row.get("cancel_requested_at"),
        objectives=objectives, progress=progress, best=best, pareto=pareto, spec=redact(spec),
        links={
            "experiments": f"/api/tasks/{task}/experiments", "events": f"/api/tasks/{task}/events",
            "export": f"/api/tasks/{task}/export?format=cmd", "clone": f"/api/tasks/{task}/clone", "cancel": f"/api/tasks/{task}/cancel",
        },
    )  # fmt: skip


async def export(nc, task: str, fmt: str, *, n: int | None = None, attempt: int | None = None, port: int | None = None,
                 min_seq: int | None = None) -> m.Export:  # fmt: skip
    if fmt not in ex.FORMATS:
        raise BadRequest(f"unknown format `{fmt}`; one of {', '.join(ex.FORMATS)}")
    row = await task_row(nc, task, min_seq=min_seq)
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
    sim = simulated(row)
    note = "measured on SIMULATED engines and GPUs: confirm on real hardware before relying on it" if sim else None
    return m.Export(
        task=task, n=n, attempt=attempt or 0, score=_finite(score), format=fmt,  # type: ignore[arg-type]
        content=ex.render(fmt, spec, params, port=port, note=note), parameters=params, simulate=sim, note=note,
    )


# --- experiments ---------------------------------------------------------------------------------------------


async def list_experiments(nc, task: str, *, status: str | None = None, sort: str = "n", order: str | None = None,
                           latest: bool = False, limit: int = 100, offset: int = 0, min_seq: int | None = None) -> m.ExperimentPage:  # fmt: skip
    if not COLUMN.match(sort):
        raise BadRequest(f"cannot sort by `{sort}`; use score, n, or any column of the experiments table (e.g. mean_total_tps_per_gpu)")
    if order not in (None, "asc", "desc"):
        raise BadRequest(f"order `{order}` is not asc or desc")
    row = await task_row(nc, task, min_seq=min_seq)
    direction = (order or "asc").upper()
    where, params = ["task = ?"], [task]
    if status:
        where.append("status = ?")
        params.append(status)
    source = "experiments"
    if latest:
        source = "(SELECT * FROM experiments WHERE task = ? QUALIFY row_number() OVER (PARTITION BY n ORDER BY attempt DESC) = 1)"
        params = [task, *params]
    sql = (
        f'SELECT *, count(*) OVER () AS _total FROM {source} WHERE {" AND ".join(where)} '
        f'ORDER BY "{sort}" {direction} NULLS LAST, n, attempt LIMIT ? OFFSET ?'
    )
    got = await rows(nc, sql, [*params, limit, offset])
    total = got[0].pop("_total") if got else 0
    for r in got[1:]:
        r.pop("_total", None)
    return m.ExperimentPage(task=task, simulate=simulated(row), items=[_clean(r) for r in got], total=total, limit=limit, offset=offset)


def _clean(row: dict) -> dict:
    return {k: _finite(v) for k, v in row.items()}


def bucket_for(seconds: float, points: int = 120) -> int:
    """A bucket width (seconds) that gives about `points` points over `seconds`."""
    return max(1, int(math.ceil(seconds / points)))


TELEMETRY_COLUMNS = (
    'avg(util_gpu) AS util_gpu, max(util_gpu) AS util_gpu_max, max(memory_used_mib) AS memory_used_mib, '
    'max(temperature_c) AS temperature_c, avg(power_w) AS power_w, count(*) AS samples'
)


def _points(got: list[dict]) -> list[m.TelemetryPoint]:
    return [msgspec.convert(_clean(r), m.TelemetryPoint, strict=False) for r in got]


async def experiment_detail(nc, task: str, n: int, *, attempt: int | None = None, log_lines: int = 40,
                            min_seq: int | None = None) -> m.ExperimentDetail:  # fmt: skip
    trow = await task_row(nc, task, min_seq=min_seq)
    attempts = await rows(nc, "SELECT * FROM experiments WHERE task = ? AND n = ? ORDER BY attempt", [task, n])
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
    # the runs are the log lane's, which may trail the row above by its gathering (~250 ms): read
    # them as of the row's own last event, so that a finished attempt shows its results
    runs = await rows(
        nc, "SELECT * FROM experiment_runs WHERE task = ? AND n = ? AND attempt = ? ORDER BY run", [task, n, a], min_seq=exp.get("last_seq")
    )
    start, end = _time(exp.get("started_at") or exp.get("assigned_at")), _time(exp.get("finished_at"))
    bucket = bucket_for(((end or datetime.now(UTC)) - start).total_seconds()) if start else 1
    telemetry = await rows(
        nc,
        f'SELECT g."index" AS gpu, time_bucket(to_seconds(?), g."at") AS t, {TELEMETRY_COLUMNS} '
        'FROM experiments e JOIN gpu_samples g ON g.host = e.host AND list_contains(e.gpu_indices, g."index") '
        'AND g."at" >= coalesce(e.started_at, e.assigned_at) AND g."at" <= coalesce(e.finished_at, now()) '
        "WHERE e.task = ? AND e.n = ? AND e.attempt = ? GROUP BY ALL ORDER BY t, gpu",
        [bucket, task, n, a],
    )
    logs = await rows(
        nc,
        "SELECT line FROM (SELECT seq, line_no, line FROM log_lines WHERE task = ? AND n = ? AND attempt = ? "
        "ORDER BY seq DESC, line_no DESC LIMIT ?) ORDER BY seq, line_no",
        [task, n, a, log_lines],
    )
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
        parameters=params, command=ex.command_line(trow.get("spec") or {}, params), experiment=_clean(exp),
        runs=[_clean(r) for r in runs], attempts=[{c: _finite(x.get(c)) for c in summary_cols} for x in attempts],
        telemetry=_points(telemetry), telemetry_bucket_s=bucket, failure=failure, log_excerpt=[r["line"] for r in logs],
    )  # fmt: skip


# --- hosts ---------------------------------------------------------------------------------------------------


async def live_hosts(js, hosts: list[str]) -> dict[str, LiveHost]:
    """The liveness values of `hosts` (key gets only: every role may read them, none may list them)."""
    out: dict[str, LiveHost] = {}
    try:
        kv = await js.key_value(subj.HOSTS_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return out
    decoder = msgspec.json.Decoder(LiveHost)
    for h in hosts:
        if not subj.TOKEN.match(h or ""):
            continue
        try:
            entry = await kv.get(h)
        except (KeyNotFoundError, KeyDeletedError, NotFoundError):
            continue
        if entry.value:
            try:
                out[h] = decoder.decode(entry.value)
            except msgspec.MsgspecError:
                continue
    return out


def _host_status(row: dict, live: LiveHost | None) -> str:
    lifecycle = row.get("status")
    if lifecycle == "removed" and live is None:
        return "removed"
    if live is None:
        return "offline"
    if live.draining or lifecycle in ("draining", "drained"):
        return "draining"
    return "busy" if live.running else "online"


async def _latest_samples(nc, hosts: list[str] | None) -> dict[tuple[str, int], dict]:
    where, params = '"at" >= now() - INTERVAL 10 MINUTE', []
    if hosts is not None:
        where += " AND host = ?"
        params = hosts[:1]
    got = await rows(
        nc,
        'SELECT host, "index", name, uuid, memory_total_mib, memory_used_mib, util_gpu, util_memory, temperature_c, power_w, "at", node '
        f"FROM gpu_samples WHERE {where} QUALIFY row_number() OVER (PARTITION BY host, \"index\" ORDER BY seq DESC) = 1",
        params or None,
    )
    return {(r["host"], r["index"]): r for r in got}


def _host(row: dict, live: LiveHost | None, samples: dict[tuple[str, int], dict], kind: type = m.Host) -> Any:
    h = row["host"]
    registered = row.get("gpus") if isinstance(row.get("gpus"), list) else []
    by_index: dict[int, dict] = {}
    for g in registered:
        if isinstance(g, dict) and isinstance(g.get("index"), int):
            by_index[g["index"]] = {"index": g["index"], "uuid": g.get("uuid"), "name": g.get("name"), "memory_total_mib": g.get("memory_total_mib")}
    for g in live.gpus if live else []:
        by_index.setdefault(g.index, {"index": g.index, "uuid": g.uuid, "name": g.name, "memory_total_mib": g.memory_total_mib})
    for (sh, i), s in samples.items():
        if sh == h:
            by_index.setdefault(i, {"index": i, "uuid": s.get("uuid"), "name": s.get("name"), "memory_total_mib": s.get("memory_total_mib")})
    node = (live.node if live else None) or row.get("node")
    gpus = []
    for i in sorted(by_index):
        g = dict(by_index[i])
        s = samples.get((h, i))
        if s and live is not None:  # a dead host's last reading is not its state
            g.update(
                memory_used_mib=s.get("memory_used_mib"), util_gpu=s.get("util_gpu"), util_memory=s.get("util_memory"),
                temperature_c=s.get("temperature_c"), power_w=s.get("power_w"), sampled_at=s.get("at"),
            )  # fmt: skip
            node = node or s.get("node")
            if not g.get("memory_total_mib"):
                g["memory_total_mib"] = s.get("memory_total_mib")
        gpus.append(msgspec.convert(_clean(g), m.HostGpu, strict=False))
    running = list(live.running) if live else []
    fields: dict[str, Any] = dict(
        host=h, status=_host_status(row, live), lifecycle=row.get("status"), alive=live is not None,
        instance=(live.instance if live else None) or row.get("instance"), hostname=(live.hostname if live else None) or row.get("hostname"),
        node=node, simulated=bool(row.get("simulated") or (live and live.simulated)), version=row.get("version"),
        gpu_count=len(gpus), gpus=gpus, runtimes=list((live.runtimes if live else None) or row.get("runtimes") or []),
        engines=list((live.engines if live else None) or row.get("engines") or []), running=running,
        registered_at=row.get("registered_at"),
        last_heartbeat=datetime.fromtimestamp(live.at, UTC).isoformat() if live and live.at else None,
    )  # fmt: skip
    if kind is m.HostDetail:
        for c in ("drain_requested_at", "drained_at", "removed_at", "lost_at"):
            fields[c] = row.get(c)
    return kind(**fields)


async def list_hosts(nc, js, *, status: str | None = None, include_removed: bool = False, min_seq: int | None = None) -> list[m.Host]:
    host_rows = await rows(nc, "SELECT * FROM hosts ORDER BY host", min_seq=min_seq)
    live = await live_hosts(js, [r["host"] for r in host_rows])
    samples = await _latest_samples(nc, None)
    hosts = [_host(r, live.get(r["host"]), samples) for r in host_rows]
    _lease_gpus(hosts, await _leases(nc, [h.host for h in hosts if h.running]))
    if status:
        hosts = [h for h in hosts if h.status == status]
    elif not include_removed:
        hosts = [h for h in hosts if h.status != "removed"]
    return hosts


async def _leases(nc, hosts: list[str]) -> list[dict]:
    if not hosts:
        return []
    marks = ", ".join("?" for _ in hosts)
    return await rows(
        nc, f"SELECT task, n, attempt, host, gpu_indices FROM experiments WHERE host IN ({marks}) AND status IN ('assigned', 'running', 'ready', 'cancelling')", hosts
    )


def _lease_gpus(hosts: list[m.Host], leases: list[dict]) -> None:
    by_host = {h.host: h for h in hosts}
    for lease in leases:
        h = by_host.get(lease["host"])
        if h is None:
            continue
        key = f"{lease['task']}/{lease['n']}/{lease['attempt']}"
        for g in h.gpus:
            if g.index in (lease.get("gpu_indices") or []):
                g.leased_by = key


async def host_detail(nc, js, host: str, *, min_seq: int | None = None, experiments: int = 20) -> m.HostDetail:
    got = await rows(nc, "SELECT * FROM hosts WHERE host = ?", [host], min_seq=min_seq)
    live = await live_hosts(js, [host])
    if not got:
        if host not in live:
            raise NotFound(f"no host `{host}`; GET /api/hosts (or `autotune hosts`) lists them")
        got = [{"host": host, "status": None}]
    samples = await _latest_samples(nc, [host])
    detail = _host(got[0], live.get(host), samples, m.HostDetail)
    _lease_gpus([detail], await _leases(nc, [host]))
    detail.experiments = [
        _clean(r)
        for r in await rows(
            nc,
            "SELECT task, n, attempt, status, gpu_indices, score, failure_kind, assigned_at, started_at, finished_at "
            "FROM experiments WHERE host = ? ORDER BY assigned_at DESC NULLS LAST LIMIT ?",
            [host, experiments],
        )
    ]
    return detail


async def gpu_history(nc, host: str, *, since: datetime | None = None, until: datetime | None = None, bucket_s: int | None = None,
                      gpu: int | None = None, min_seq: int | None = None) -> m.GpuHistory:  # fmt: skip
    until = until or datetime.now(UTC)
    since = since or until - timedelta(hours=1)
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    if until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    if since >= until:
        raise BadRequest("`since` must be before `until`")
    span = (until - since).total_seconds()
    bucket = bucket_s or bucket_for(span, 200)
    if span / bucket > 5000:
        raise BadRequest(f"a {bucket} s bucket over {span:.0f} s gives more than 5000 points; pass a larger bucket_s")
    known = await rows(nc, "SELECT 1 FROM hosts WHERE host = ? UNION ALL SELECT 1 FROM gpu_samples WHERE host = ? LIMIT 1", [host, host], min_seq=min_seq)
    if not known:
        raise NotFound(f"no host `{host}`; GET /api/hosts lists them")
    where, params = 'host = ? AND "at" >= ?::TIMESTAMPTZ AND "at" < ?::TIMESTAMPTZ', [host, since.isoformat(), until.isoformat()]
    if gpu is not None:
        where += ' AND "index" = ?'
        params.append(gpu)
    got = await rows(
        nc,
        f'SELECT "index" AS gpu, time_bucket(to_seconds(?), "at") AS t, {TELEMETRY_COLUMNS} FROM gpu_samples '
        f"WHERE {where} GROUP BY ALL ORDER BY t, gpu",
        [bucket, *params],
        limit=100_000,
    )
    return m.GpuHistory(host=host, since=since.isoformat(), until=until.isoformat(), bucket_s=bucket, points=_points(got))


async def gpu_summary(nc, js, *, kubernetes: bool | None = None, min_seq: int | None = None) -> m.GpuSummary:
    """GPUs by model over the fleet; plus the Kubernetes cluster's inventory when asked, or when this
    process runs in a cluster or has a kubeconfig."""
    hosts = await list_hosts(nc, js, min_seq=min_seq)
    models: dict[str, m.GpuModelSummary] = {}
    for h in hosts:
        for g in h.gpus:
            s = models.setdefault(g.name or "?", m.GpuModelSummary(name=g.name or "?", total=0, busy=0, free=0, offline=0, hosts=[]))
            if h.host not in s.hosts:
                s.hosts.append(h.host)
            if not h.alive:
                s.offline += 1
                continue
            s.total += 1
            if g.leased_by:
                s.busy += 1
            else:
                s.free += 1
    out = m.GpuSummary(fleet=sorted(models.values(), key=lambda s: s.name))
    if kubernetes is None:
        kubernetes = bool(os.environ.get("KUBERNETES_SERVICE_HOST") or os.environ.get("KUBECONFIG") or os.environ.get("AUTOTUNE_K8S_API_URL"))
    if kubernetes:
        try:
            from autotune.gpumon.kube import inventory_from_settings

            out.kubernetes = await asyncio.wait_for(inventory_from_settings(os.environ.get("AUTOTUNE_K8S_API_URL")), 10)
        except Exception as e:  # no cluster, no rights, unreachable: say so, it is not the API failing
            out.kubernetes_error = f"cannot read the Kubernetes API: {type(e).__name__}: {e}"[:500]
    return out
