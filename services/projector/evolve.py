"""How each event evolves the rows of the upserted tables (tasks, hosts, experiments): the state
lane's half of views.apply. Every update is a function of (row, event) only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from autotune.projector import schema as sc
from autotune.projector.view_state import Changes, Message, ViewState, jsonstr
from autotune.schemas import events as ev
from autotune.schemas.metrics import ExperimentMetrics
from autotune.schemas.runtime import engine_of_recorded
from autotune.schemas.status import EXPERIMENT_RANK, EXPERIMENT_TERMINAL, TASK_TERMINAL, HostLifecycle

TASK_EVENTS = frozenset(
    {ev.TaskSubmitted, ev.TaskDatasetFetched, ev.TaskStarted, ev.TaskRejected, ev.TaskCancelRequested, ev.TaskCompleted, ev.TaskFailed, ev.TaskCancelled}
)
HOST_EVENTS = frozenset({ev.HostRegistered, ev.HostDrainRequested, ev.HostDrained, ev.HostRemoved, ev.HostLost, ev.HostReturned, ev.HostStopped, ev.HostDeployStarted, ev.HostDeployStep, ev.HostDeployFinished})
_DEPLOY_EVENTS = frozenset({ev.HostDeployStarted, ev.HostDeployStep, ev.HostDeployFinished})


def evolve(state: ViewState, ch: Changes, m: Message, e: Any) -> None:
    kind = type(e)
    if kind in TASK_EVENTS:
        _task_event(state, ch, m, e)
    elif kind in HOST_EVENTS:
        _host_event(state, ch, m, e)
    elif hasattr(e, "n"):
        _experiment_event(state, ch, m, e)
    else:
        raise TypeError(f"no view handles `{e.__struct_config__.tag}`")


def _touch(ch: Changes, table: sc.Table, key: tuple, row: dict, m: Message, at: datetime) -> None:
    row["last_seq"] = m.seq
    row["last_event_at"] = at
    ch.upserts[table.name][key] = row


def _task_event(state: ViewState, ch: Changes, m: Message, e: Any) -> None:
    key = (e.task,)
    row = state.get(sc.TASKS, key)
    if row is None:
        row = sc.TASKS.empty_row()
        row["id"] = e.task
        state.rows[sc.TASKS.name][key] = row
    terminal = row["status"] in TASK_TERMINAL
    match e:
        case ev.TaskSubmitted():
            spec = e.spec
            opt = spec.get("optimization") if isinstance(spec.get("optimization"), dict) else {}
            model = spec.get("model")
            row.update(
                name=e.name,
                spec=jsonstr(spec),
                simulate=e.simulate,
                submitted_by=e.submitted_by or None,
                cloned_from=e.cloned_from,
                submitted_at=e.at,
                strategy=row["strategy"] or opt.get("strategy") or "grid_search",
                objective=opt.get("objective") or "minimize_latency",
                engine=engine_of_recorded(spec),  # in OME mode base_runtime names a ClusterServingRuntime
                model=model.get("id_or_path") if isinstance(model, dict) else model,
                deployment_mode=spec.get("deployment_mode"),
                gpu_type=spec.get("gpu_type"),
            )
            if row["status"] is None:
                row["status"] = "submitted"
        case ev.TaskDatasetFetched():
            row["dataset"] = jsonstr({f: getattr(e, f) for f in e.__struct_fields__ if f not in ("type", "id", "at", "task")})
        case ev.TaskStarted():
            row.update(strategy=e.strategy, space_size=e.space_size, budget=e.budget)
            row["started_at"] = row["started_at"] or e.at
            if row["status"] in (None, "submitted"):
                row["status"] = "running"
        case ev.TaskRejected():
            if not terminal:
                row.update(status="rejected", reason=e.reason, reason_path=e.path or None, finished_at=e.at)
        case ev.TaskCancelRequested():
            row["cancel_requested_at"] = row["cancel_requested_at"] or e.at
            if not terminal:
                row.update(status="cancelling", reason=e.reason or row["reason"])
        case ev.TaskCompleted():
            if not terminal:
                row.update(status="completed", reason=e.reason, finished_at=e.at, pareto=jsonstr(e.pareto))
                if e.best_experiment is not None:  # the scheduler's verdict (the `tasks` view prefers it)
                    row.update(verdict_n=e.best_experiment, verdict_attempt=e.best_attempt, verdict_score=e.best_score)
                    if e.best_parameters is not None:
                        row["verdict_parameters"] = jsonstr(e.best_parameters)
        case ev.TaskFailed():
            if not terminal:
                row.update(status="failed", reason=e.reason, finished_at=e.at)
        case ev.TaskCancelled():
            if not terminal:
                row.update(status="cancelled", finished_at=e.at)
    _touch(ch, sc.TASKS, key, row, m, e.at)


def _host_event(state: ViewState, ch: Changes, m: Message, e: Any) -> None:
    key = (e.host,)
    row = state.get(sc.HOSTS, key)
    if row is None and type(e) in _DEPLOY_EVENTS:  # a host exists once it registered; a failed first deploy leaves no row
        return
    if row is None:
        row = sc.HOSTS.empty_row()
        row["host"] = e.host
        state.rows[sc.HOSTS.name][key] = row
    match e:
        case ev.HostRegistered():  # `online`; the `hosts` view says `busy` while it runs attempts
            row.update(
                status=HostLifecycle.ONLINE.value,
                instance=e.instance,
                hostname=e.hostname or None,
                node=e.node,
                version=e.version or None,
                gpus=jsonstr(e.gpus),
                gpu_count=len(e.gpus),
                runtimes=list(e.runtimes),
                engines=list(e.engines),
                simulated=e.simulated,
                cpu_slots=e.cpu_slots,
                cpu_engines=list(e.cpu_engines),
                engine_paths=jsonstr(e.engine_paths),
                registered_at=e.at,
            )
        case ev.HostDrainRequested():
            row.update(status=HostLifecycle.DRAINING.value, drain_requested_at=e.at)
        case ev.HostDrained():
            row.update(status=HostLifecycle.DRAINED.value, drained_at=e.at)
        case ev.HostRemoved():
            row.update(status=HostLifecycle.REMOVED.value, removed_at=e.at)
        # the runner instance's own lifecycle: a late event of an instance replaced since changes nothing
        case ev.HostLost() if _same_instance(row, e):
            row.update(status=HostLifecycle.LOST.value, lost_at=e.at)
        case ev.HostStopped() if _same_instance(row, e):
            if row["status"] != HostLifecycle.REMOVED:
                row["status"] = HostLifecycle.STOPPED.value
            row["stopped_at"] = e.at
        case ev.HostReturned() if _same_instance(row, e):
            if row["status"] in (HostLifecycle.LOST, HostLifecycle.STOPPED, HostLifecycle.ONLINE):
                row["status"] = (HostLifecycle.DRAINING if e.draining else HostLifecycle.ONLINE).value
            row["returned_at"] = e.at
        case ev.HostDeployStarted():
            row.update(deploy_outcome="deploying")
        case ev.HostDeployStep():
            pass
        case ev.HostDeployFinished():
            row.update(release=e.release or None, deploy_outcome=e.outcome if e.action != "undeploy" else "undeployed", deployed_at=e.at,
                       deployed_by=e.requested_by or None)  # fmt: skip
    _touch(ch, sc.HOSTS, key, row, m, e.at)


def _same_instance(row: dict, e: Any) -> bool:
    """Whether a lifecycle event speaks of the runner instance the row knows (or of any, when either is unknown)."""
    return not e.instance or not row["instance"] or e.instance == row["instance"]


def _experiment_event(state: ViewState, ch: Changes, m: Message, e: Any) -> None:
    key = (e.task, e.n, e.attempt)
    row = state.get(sc.EXPERIMENTS, key)
    if row is None:
        row = sc.EXPERIMENTS.empty_row()
        row.update(task=e.task, n=e.n, attempt=e.attempt)
        state.rows[sc.EXPERIMENTS.name][key] = row
    host = getattr(e, "host", "") or None
    match e:
        case ev.ExperimentPlanned():
            row["planned_at"] = row["planned_at"] or e.at
            row.update(parameters=jsonstr(e.parameters), gpus=e.gpus, retry_of=e.retry_of)
            _advance(row, "planned", None)
        case ev.ExperimentWaiting():  # why it is not placed (shown while it is planned)
            if row["status"] in (None, "planned"):
                row.update(waiting_reason=e.reason, waiting_fits=e.fits, waiting_since=e.at)
        case ev.ExperimentAssigned():
            if _advance(row, "assigned", host):
                row.update(
                    gpu_indices=list(e.gpu_indices),
                    gpu_uuids=list(e.gpu_uuids),
                    parameters=jsonstr(e.parameters),
                    deployment_mode=e.deployment_mode,
                    simulated=e.simulated,
                    timeout_s=e.timeout_s,
                    gpu_type=e.gpu_type or None,
                    assigned_at=e.at,
                )
                row["gpus"] = row["gpus"] or len(e.gpu_indices) or None
        case ev.ExperimentCancelRequested():
            row["cancel_requested_at"] = row["cancel_requested_at"] or e.at
            row["cancel_reason"] = e.reason or row["cancel_reason"]
            _advance(row, "cancelling", host)
        case ev.ExperimentStarted():
            if _advance(row, "running", host):
                row.update(instance=e.instance, runtime=e.runtime, handle=e.handle or None, started_at=e.at, device=e.device or None,
                           engine_env=jsonstr(e.env) if e.env else None)
        case ev.ExperimentReady():
            if _advance(row, "ready", host):
                row.update(startup_s=e.startup_s, ready_at=e.at)
        case ev.ExperimentProgress():
            if row["status"] not in EXPERIMENT_TERMINAL:
                row["runs_done"] = max(row["runs_done"] or 0, e.run_index + 1)
                row["runs_total"] = e.runs_total
        case ev.ExperimentCompleted():
            if _advance(row, "completed", host, finished_at=e.at):
                t = e.telemetry
                row.update(
                    score=e.score,
                    objective_value=e.objective_value,
                    objectives=list(e.objectives),
                    slo_met=e.slo_met,
                    slo_violations=jsonstr(e.slo_violations),
                    hard_fail=e.hard_fail,
                    startup_s=e.startup_s or row["startup_s"],
                    duration_s=e.duration_s,
                    telemetry_samples=t.samples,
                    mean_util_gpu=t.mean_util_gpu,
                    max_util_gpu=t.max_util_gpu,
                    max_memory_used_mib=t.max_memory_used_mib,
                    mean_power_w=t.mean_power_w,
                    max_temperature_c=t.max_temperature_c,
                )
                _engine(row, e.engine)
                _metrics(row, e.metrics)
        case ev.ExperimentFailed():
            if _advance(row, "failed", host, finished_at=e.at):
                row.update(
                    retryable=e.retryable,  # the `tasks` view counts it as retried, not failed
                    failure_kind=e.kind,
                    failure_stage=e.stage,
                    failure_message=e.message or None,
                    log_tail=list(e.log_tail) or None,
                    startup_s=e.startup_s if e.startup_s is not None else row["startup_s"],
                    duration_s=e.duration_s,
                )
                _engine(row, e.engine)
                if e.metrics is not None:
                    _metrics(row, e.metrics)
        case ev.ExperimentCancelled():
            if _advance(row, "cancelled", host, finished_at=e.at):
                row["cancel_reason"] = e.reason or row["cancel_reason"]
        case _:
            raise TypeError(f"no view handles `{e.__struct_config__.tag}`")
    _touch(ch, sc.EXPERIMENTS, key, row, m, e.at)


def _advance(row: dict, status: str, host: str | None, finished_at: datetime | None = None) -> bool:
    """Move an attempt forward in its lifecycle (never back; the first terminal event wins). False
    when the event is stale. Its task's counters and its host's running count are not written:
    the `tasks` and `hosts` views derive them from `experiments`."""
    old = row["status"]
    if old is not None and EXPERIMENT_RANK[status] <= EXPERIMENT_RANK[old]:
        return False
    row["status"] = status
    row["host"] = host or row["host"]
    if finished_at is not None:
        row["finished_at"] = finished_at
    return True


def _engine(row: dict, x: ev.EngineMetricsSummary) -> None:
    """The engine's own telemetry (its /metrics during the benchmark) onto the attempt's row."""
    if not x.source:  # no engine metrics scraped (a gauge summary may rest on no sample while the counters have a window)
        return
    row.update(engine_source=x.source or None, engine_samples=x.samples, engine_scrape_failures=x.scrape_failures)
    for c in sc.ENGINE:
        row[c] = getattr(x, c.removeprefix("engine_"))


def _metrics(row: dict, x: ExperimentMetrics) -> None:
    """Headline figures onto the attempt's row (its runs and raw samples: the log lane, _results)."""
    for h in sc.HEADLINE:
        row[h] = getattr(x, h)
    row.update(gpus=x.gpus, requests=x.requests, requests_completed=x.completed)
