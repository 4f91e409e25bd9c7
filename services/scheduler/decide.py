"""The scheduler's decisions: `decide(state, fleet, now) -> [Action]`. Pure: no NATS, no clock reads.

Level-triggered: every round looks at the whole state and says what is missing, so a restarted or
newly elected scheduler needs no memory of what it was doing. Each action carries the sequence the
decision was based on; the server refuses it if the log moved on meanwhile (another scheduler, a
runner), and the next round decides again from the newer state. A round emits at most one action
per task and per experiment, because each action's outcome changes what the next one must expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from autotune.scheduler import waiting
from autotune.scheduler.datasets import needs_dataset
from autotune.scheduler.placement import place
from autotune.scheduler.state import Attempt, State, Task
from autotune.scheduler.stopping import should_stop
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.liveness import LiveHost
from autotune.schemas.spec import is_cpu_serving
from autotune.schemas.status import HOST_CLOSED, HOST_EXPECTED


@dataclass(frozen=True)
class Action:
    subject: str
    event: ev.Event
    expect_seq: int | None = None
    expect_filter: str | None = None


@dataclass(frozen=True)
class Limits:
    host_grace_s: float = 10.0  # an attempt's host must be missing this long before it counts as lost
    watchdog_grace_s: float = 30.0  # past the per-experiment timeout before the scheduler steps in
    waiting: waiting.WaitLimits = waiting.WaitLimits()  # when a wait is explained, and when nothing can ever run it


def decide(
    state: State,
    fleet: dict[str, LiveHost],
    now: datetime,
    *,
    occupied: dict[str, set[int]] | None = None,
    limits: Limits = Limits(),
) -> list[Action]:
    """`occupied`: GPUs that telemetry shows running processes; those autotune holds no lease on
    are busy with someone else's work and are avoided. GPUs a host itself reports in use (by an
    attempt its runner runs, or an engine it cannot account for) are avoided too, whatever the log
    says of that attempt (docs/fencing.md)."""
    actions: list[Action] = []
    actions += _hosts_lost(state, fleet)
    leased = _leases(state)
    cpu_used = _cpu_slots_used(state)
    foreign_busy = {h: gpus - leased.get(h, set()) for h, gpus in (occupied or {}).items()}
    for h, gpus in _host_reported(state, fleet).items():
        foreign_busy[h] = foreign_busy.get(h, set()) | gpus
    to_place: list[tuple[Task, Attempt]] = []
    for task in sorted(state.tasks.values(), key=lambda t: t.submitted_at):
        if task.finished:
            continue
        if task.status == "submitted":
            if needs_dataset(task):  # the service fetches it first (datasets.py), outside this pure core
                if task.cancel_requested:
                    actions.append(_task_event(task, ev.TaskCancelled(id=ev.task_event_id(task.id, "cancelled"), task=task.id)))
                continue
            actions.append(_start_or_reject(task, now))
            continue
        touched = _experiment_actions(task, fleet, now, limits)
        actions += touched
        busy = {a.event.n for a in touched if hasattr(a.event, "n")}  # type: ignore[attr-defined]
        if task.cancel_requested:
            if not task.active_attempts() and not touched:
                actions.append(_task_event(task, ev.TaskCancelled(id=ev.task_event_id(task.id, "cancelled"), task=task.id, experiments=len(task.experiments))))
            continue
        for e in task.experiments.values():
            a = e.current
            if a.status == "planned" and e.n not in busy:
                to_place.append((task, a))
        plan = _next_plan(task, now)
        if plan is not None:
            actions.append(plan)
        elif not task.active_attempts() and not touched and _retry_pending(task) == 0:
            actions.append(_finish_task(task, now))
    actions += _placements(to_place, state, fleet, leased, foreign_busy, now, limits, cpu_used)
    # decisions are stamped with the decision's clock, so the pure core never reads the time
    return [Action(a.subject, msgspec.structs.replace(a.event, at=now), a.expect_seq, a.expect_filter) for a in actions]


# --- tasks -------------------------------------------------------------------------------------------


def _task_event(task: Task, event: ev.Event) -> Action:
    return Action(subj.task(task.id, _kind(event)), event, task.last_seq, subj.task_level(task.id))


def _kind(event: ev.Event) -> str:
    return ev.tag_of(type(event)).split(".", 1)[1]


def _start_or_reject(task: Task, now: datetime) -> Action:
    if task.spec_error is not None or task.strategy is None:
        err = task.spec_error
        return _task_event(
            task,
            ev.TaskRejected(
                id=ev.task_event_id(task.id, "rejected"),
                task=task.id,
                reason=err.message if err else "the task spec could not be planned",
                path=err.path if err else "",
            ),
        )
    spec = task.spec
    assert spec is not None
    size = getattr(task.space, "size", None)
    budget = spec.optimization.max_iterations if size is None else min(size * spec.optimization.repeats, spec.optimization.max_iterations)
    return _task_event(
        task,
        ev.TaskStarted(id=ev.task_event_id(task.id, "started"), task=task.id, strategy=spec.optimization.strategy, space_size=size, budget=budget),
    )


def _stop_reason(task: Task, now: datetime) -> str | None:
    """The task's reason to plan no more experiments (`stopping.should_stop`), from what the log says."""
    spec = task.spec
    assert spec is not None and task.strategy is not None
    elapsed = (now - task.started_at).total_seconds() if task.started_at else 0.0
    return should_stop(spec, task.strategy.history(), elapsed, planned=len(task.experiments), exhausted=task.exhausted, space=task.space)


def _next_plan(task: Task, now: datetime) -> Action | None:
    spec = task.spec
    assert spec is not None and task.strategy is not None
    if _stop_reason(task, now):
        return None
    in_flight = len(task.active_attempts()) + _retry_pending(task)
    if in_flight >= spec.optimization.max_parallel:
        return None
    n = len(task.experiments)
    params = task.strategy.ask(n)
    if params is None:
        task.exhausted = True  # derived from the strategy, which is rebuilt from the log
        return None
    from autotune.shared.expand import gpus_for

    event = ev.ExperimentPlanned(id=ev.exp_id(task.id, n, 0, "planned"), task=task.id, n=n, attempt=0, parameters=params, gpus=gpus_for(params))
    # expected: nothing new on the whole task since this view (not only on experiment n). A result
    # that lands meanwhile refuses the plan, and it is asked again knowing that result: the log's
    # order is then the order the strategy learned in, and a replay of the log (a restarted
    # scheduler, tests/test_scheduler_integration.py) asks exactly what was planned
    return Action(subj.experiment(task.id, n, "planned"), event, task.all_seq, subj.task_all(task.id))


def _retry_pending(task: Task) -> int:
    return sum(1 for e in task.experiments.values() if e.outcome is None and e.attempts and e.current.status == "failed")


def _finish_task(task: Task, now: datetime) -> Action:
    done = [e for e in task.experiments.values() if e.outcome == "completed" and e.score is not None]
    reason = _stop_reason(task, now) or "grid_exhausted"
    if not done:
        failed = sum(1 for e in task.experiments.values() if e.outcome == "failed")
        return _task_event(task, ev.TaskFailed(id=ev.task_event_id(task.id, "failed"), task=task.id, reason=f"no experiment succeeded ({failed} failed; stopped by {reason})"))
    best = min(done, key=lambda e: (e.score, e.n))
    pareto = list(task.strategy.pareto()) if hasattr(task.strategy, "pareto") else []
    return _task_event(
        task,
        ev.TaskCompleted(
            id=ev.task_event_id(task.id, "completed"),
            task=task.id,
            reason=reason,
            experiments=len(task.experiments),
            best_experiment=best.n,
            best_attempt=best.current.attempt,
            best_score=best.score,
            best_parameters=best.parameters,
            pareto=pareto,
        ),
    )


# --- experiments -------------------------------------------------------------------------------------


def _exp_action(task: Task, n: int, subject: str, event: ev.Event) -> Action:
    return Action(subject, event, task.experiments[n].last_seq, subj.experiment_all(task.id, n))


def _experiment_actions(task: Task, fleet: dict[str, LiveHost], now: datetime, limits: Limits) -> list[Action]:
    """Cancels, retries, the timeout watchdog and lost hosts: at most one action per experiment."""
    out: list[Action] = []
    spec = task.spec
    assert spec is not None
    timeout = timedelta(seconds=spec.optimization.timeout_per_iteration)
    grace = timedelta(seconds=max(limits.watchdog_grace_s, 0.1 * spec.optimization.timeout_per_iteration))
    for e in task.experiments.values():
        a = e.current
        ids = (task.id, e.n, a.attempt)
        if a.status == "failed" and e.outcome is None:
            if task.cancel_requested:
                continue
            nxt = a.attempt + 1
            planned = ev.ExperimentPlanned(
                id=ev.exp_id(task.id, e.n, nxt, "planned"), task=task.id, n=e.n, attempt=nxt, parameters=e.parameters, gpus=a.gpus,
                retry_of=a.failure.id if a.failure else None,
            )
            out.append(_exp_action(task, e.n, subj.experiment(task.id, e.n, "planned"), planned))
            continue
        if not a.active:
            continue
        if a.status == "planned":
            if task.cancel_requested:
                out.append(_exp_action(task, e.n, subj.experiment(task.id, e.n, "cancelled"), ev.ExperimentCancelled(id=ev.exp_id(*ids, "cancelled"), task=task.id, n=e.n, attempt=a.attempt, reason="task cancelled before the experiment was placed")))
            continue
        host = fleet.get(a.host or "")
        gone = host is None or (a.instance is not None and host.instance != a.instance)
        if gone and a.assigned_at and now - a.assigned_at > timedelta(seconds=limits.host_grace_s):
            kind = "host_lost" if host is None else "runner_restarted"
            msg = f"host {a.host} stopped answering" if host is None else f"the runner on {a.host} restarted"
            out.append(_exp_action(task, e.n, subj.experiment(task.id, e.n, "failed"), ev.ExperimentFailed(id=ev.exp_id(*ids, "failed"), task=task.id, n=e.n, attempt=a.attempt, host=a.host or "", kind=kind, stage="benchmark", retryable=True, message=msg)))
            continue
        overdue = a.assigned_at is not None and now - a.assigned_at > timeout + grace
        if (task.cancel_requested or overdue) and not a.cancel_requested:
            reason = "task cancelled" if task.cancel_requested else "timeout watchdog: the runner did not finish in time"
            out.append(_exp_action(task, e.n, subj.experiment(task.id, e.n, "cancel_requested", a.host), ev.ExperimentCancelRequested(id=ev.exp_id(*ids, "cancel_requested"), task=task.id, n=e.n, attempt=a.attempt, host=a.host or "", reason=reason)))
        elif overdue and a.cancel_requested and a.assigned_at and now - a.assigned_at > timeout + 2 * grace:
            out.append(_exp_action(task, e.n, subj.experiment(task.id, e.n, "failed"), ev.ExperimentFailed(id=ev.exp_id(*ids, "failed"), task=task.id, n=e.n, attempt=a.attempt, host=a.host or "", kind="timeout", stage="benchmark", retryable=False, message="the scheduler's watchdog stopped waiting for the runner")))
    return out


def _cpu_slots_used(state: State) -> dict[str, int]:
    """Real engines serving on each host's CPU now (tasks with gpu_type cpu, not simulated)."""
    used: dict[str, int] = {}
    for task in state.tasks.values():
        if task.spec is None or task.simulate or not is_cpu_serving(task.spec.gpu_type):
            continue
        for a in task.active_attempts():
            if a.host and a.status in ("assigned", "running"):
                used[a.host] = used.get(a.host, 0) + 1
    return used


def _leases(state: State) -> dict[str, set[int]]:
    leased: dict[str, set[int]] = {}
    for task in state.tasks.values():
        for a in task.active_attempts():
            if a.host and a.status in ("assigned", "running"):
                leased.setdefault(a.host, set()).update(a.gpu_indices)
    return leased


def _host_reported(state: State, fleet: dict[str, LiveHost]) -> dict[str, set[int]]:
    """GPUs each live host says are in use: its `busy_gpus`, and those of the attempts it lists as
    running (known from their assignments, even when the log has ended them since)."""
    out: dict[str, set[int]] = {}
    for h, live in fleet.items():
        gpus = set(live.busy_gpus)
        for key in live.running:
            task_id, _, rest = key.partition("/")
            n, _, attempt = rest.partition("/")
            task = state.tasks.get(task_id)
            exp = task.experiments.get(int(n)) if task and n.isdigit() else None
            for a in exp.attempts if exp and attempt.isdigit() else []:
                if a.attempt == int(attempt) and a.host == h:
                    gpus.update(a.gpu_indices)
        if gpus:
            out[h] = gpus
    return out


def _placements(
    queue: list[tuple[Task, Attempt]],
    state: State,
    fleet: dict[str, LiveHost],
    leased: dict[str, set[int]],
    foreign_busy: dict[str, set[int]],
    now: datetime,
    limits: Limits = Limits(),
    cpu_used: dict[str, int] | None = None,
) -> list[Action]:
    """Fair share: repeatedly give the next GPU block to the task with the fewest running attempts.
    An attempt that finds no room says why (waiting.py), and fails when nothing could ever run it."""
    running = {t.id: sum(1 for a in t.active_attempts() if a.status != "planned") for t in state.tasks.values()}
    holders: dict[str, set[str]] = {}  # host -> tasks holding GPUs there (for the waiting reason)
    for t in state.tasks.values():
        for x in t.active_attempts():
            if x.host and x.status in ("assigned", "running"):
                holders.setdefault(x.host, set()).add(t.id)
    pending = sorted(queue, key=lambda ta: (ta[0].submitted_at, ta[1].n))
    out: list[Action] = []
    while pending:
        pending.sort(key=lambda ta: (running.get(ta[0].id, 0), ta[0].submitted_at, ta[1].n))
        task, a = pending.pop(0)
        spec = task.spec
        assert spec is not None
        hosts = {h: v for h, v in fleet.items() if state.hosts.get(h) is None or state.hosts[h].status not in HOST_CLOSED}
        p = place(
            gpus_needed=a.gpus, engine=spec.engine, deployment_mode=spec.deployment_mode, gpu_type=spec.gpu_type,
            simulate=task.simulate, fleet=hosts, leased=leased, foreign_busy=foreign_busy, cpu_used=cpu_used,
        )
        if p is None:  # stays queued while some host could run it; says why, fails once none can
            noted = waiting.note(task, a, waiting.explain(task, a, state, fleet, holders), state, now, limits.waiting)
            if noted is not None:
                out.append(_exp_action(task, a.n, subj.experiment(task.id, a.n, _kind(noted)), noted))
            continue
        leased.setdefault(p.host, set()).update(p.gpu_indices)
        holders.setdefault(p.host, set()).add(task.id)
        if cpu_used is not None and is_cpu_serving(p.gpu_type):
            cpu_used[p.host] = cpu_used.get(p.host, 0) + 1
        running[task.id] = running.get(task.id, 0) + 1
        assigned = ev.ExperimentAssigned(
            id=ev.exp_id(task.id, a.n, a.attempt, "assigned"), task=task.id, n=a.n, attempt=a.attempt, host=p.host, instance=p.instance,
            gpu_indices=p.gpu_indices, gpu_uuids=p.gpu_uuids, parameters=a.parameters, spec=task.raw_spec,
            deployment_mode=p.deployment_mode, timeout_s=spec.optimization.timeout_per_iteration, simulated=p.simulated, gpu_type=p.gpu_type,
            dataset=task.dataset.ref() if task.dataset else None,
        )
        out.append(_exp_action(task, a.n, subj.experiment(task.id, a.n, "assigned", p.host), assigned))
    return out


def _hosts_lost(state: State, fleet: dict[str, LiveHost]) -> list[Action]:
    """A host the log says is online whose liveness key is gone. Expected: nothing newer on the host,
    so a clean stop (`host.stopped`, written before the runner removes its key) refuses the loss. The
    id names the host's position, so a host lost, returned and lost again is lost twice."""
    out = []
    for h in state.hosts.values():
        if h.status in HOST_EXPECTED and h.id not in fleet:
            e = ev.HostLost(id=f"host.{h.id}.{h.instance}.lost.{h.last_seq}", host=h.id, instance=h.instance)
            out.append(Action(subj.host(h.id, "lost"), e, h.last_seq, subj.host_all(h.id)))
    return out
