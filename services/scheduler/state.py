"""The scheduler's state, rebuilt from the log: `evolve(state, seq, subject, event)`.

Everything the scheduler decides is a function of this state, the live fleet and the clock
(`decide.py`). The strategy of each task is part of the state: replaying `planned` events records
their parameters and replaying results tells the strategy, so a restarted scheduler continues
exactly where the old one stopped — it never re-samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.spec import SpecError, TaskSpec, spec_from_obj
from autotune.schemas.status import EXPERIMENT_ACTIVE, TASK_TERMINAL, HostLifecycle
from autotune.shared.log import get_logger

log = get_logger("scheduler")

@dataclass
class Attempt:
    n: int
    attempt: int
    parameters: dict[str, Any]
    gpus: int
    status: str = "planned"  # planned | assigned | running | completed | failed | cancelled
    host: str | None = None
    instance: str | None = None
    gpu_indices: list[int] = field(default_factory=list)
    planned_at: datetime | None = None
    assigned_at: datetime | None = None
    cancel_requested: bool = False
    failure: ev.ExperimentFailed | None = None
    score: float | None = None
    waiting: ev.ExperimentWaiting | None = None  # the last reason recorded for not placing it
    waitings: int = 0  # how many were recorded (their ids count on)

    @property
    def active(self) -> bool:
        return self.status in EXPERIMENT_ACTIVE


@dataclass
class Experiment:
    n: int
    parameters: dict[str, Any]
    attempts: list[Attempt] = field(default_factory=list)
    last_seq: int = 0  # last stream sequence on autotune.task.<t>.exp.<n>.>
    outcome: str | None = None  # completed | failed | cancelled: the experiment's final result
    score: float | None = None
    objectives: list[float] = field(default_factory=list)
    told: bool = False

    @property
    def current(self) -> Attempt:
        return self.attempts[-1]


@dataclass
class Task:
    id: str
    name: str
    raw_spec: dict[str, Any]
    simulate: bool
    submitted_at: datetime
    spec: TaskSpec | None = None
    spec_error: SpecError | None = None
    status: str = "submitted"  # submitted | running | cancelling | completed | failed | cancelled | rejected
    last_seq: int = 0  # last stream sequence on autotune.task.<t>.*
    all_seq: int = 0  # last stream sequence on autotune.task.<t>.> (its experiments' too)
    started_at: datetime | None = None
    experiments: dict[int, Experiment] = field(default_factory=dict)
    strategy: Any = None
    space: Any = None
    exhausted: bool = False
    cancel_requested: bool = False
    dataset: ev.TaskDatasetFetched | None = None  # the replay prompts, fetched before it started

    @property
    def finished(self) -> bool:
        return self.status in TASK_TERMINAL

    def active_attempts(self) -> list[Attempt]:
        return [e.current for e in self.experiments.values() if e.attempts and e.current.active]


@dataclass
class Host:
    id: str
    instance: str = ""
    status: HostLifecycle = HostLifecycle.ONLINE
    registered: ev.HostRegistered | None = None
    gone_at: datetime | None = None  # when it stopped taking work (lost, removed, draining, stopped); None while it takes it
    last_seq: int = 0  # last stream sequence on autotune.host.<h>.*


@dataclass
class State:
    tasks: dict[str, Task] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    applied_seq: int = 0


def build_strategy(task: Task) -> None:
    """Parse the spec and create the task's strategy; a spec that fails is kept as `spec_error`."""
    from autotune.scheduler.strategies import make_strategy
    from autotune.shared.expand import ExpandError, experiment_space

    try:
        task.spec = spec_from_obj(task.raw_spec)
        task.space = experiment_space(task.spec)
        task.strategy = make_strategy(task.spec, task.space)
    except SpecError as e:
        task.spec_error = e
    except ExpandError as e:
        task.spec_error = SpecError(e.message, e.path)


def saw(state: State, seq: int, subject: str) -> subj.Parsed:
    """The sequences the scheduler's writes expect (optimistic concurrency), moved for any message at
    `seq` on `subject`, whether it decodes and applies or not: a message skipped here would leave
    them behind the stream, and every write expecting them would be refused for ever. Returns the
    parsed subject."""
    state.applied_seq = max(state.applied_seq, seq)
    parsed = subj.parse(subject)
    # by tokens, not `parsed`: any message under autotune.task.<t>.> counts, even one of a shape
    # this scheduler does not know (parse calls it `other`)
    tokens = subject.split(".")
    if parsed.kind == "host" and (host := state.hosts.get(parsed.host or "")):
        host.last_seq = seq  # what subj.host_all(host) last had
    task = state.tasks.get(tokens[2]) if len(tokens) >= 4 and tokens[0] == subj.PREFIX and tokens[1] == "task" else None
    if task is None:
        return parsed
    task.all_seq = seq  # what subj.task_all(task) last had
    if parsed.kind == "task":
        task.last_seq = seq
    if parsed.kind == "experiment" and parsed.experiment is not None and (exp := task.experiments.get(parsed.experiment)):
        exp.last_seq = seq
    return parsed


def evolve(state: State, seq: int, subject: str, event: ev.AnyEvent) -> State:
    """Apply one event from AUTOTUNE_EVENTS. Mutates and returns `state`."""
    parsed = saw(state, seq, subject)
    task = state.tasks.get(parsed.task or "") if parsed.task else None

    match event:
        case ev.TaskSubmitted():
            if event.task in state.tasks:
                return state  # a duplicate name never gets this far (KV claim), but never overwrite
            t = Task(event.task, event.name, event.spec, event.simulate, event.at, last_seq=seq, all_seq=seq)
            build_strategy(t)
            state.tasks[event.task] = t
        case ev.TaskDatasetFetched() if task:
            task.dataset = event
        case ev.TaskStarted() if task:
            task.status = "running"
            task.started_at = event.at
        case ev.TaskCancelRequested() if task:
            task.cancel_requested = True
            if not task.finished:
                task.status = "cancelling"
        case ev.TaskCompleted() if task:
            task.status = "completed"
        case ev.TaskFailed() if task:
            task.status = "failed"
        case ev.TaskCancelled() if task:
            task.status = "cancelled"
        case ev.TaskRejected() if task:
            task.status = "rejected"
        case ev.ExperimentPlanned() if task:
            exp = task.experiments.get(event.n)
            if exp is None:
                exp = Experiment(event.n, dict(event.parameters), last_seq=seq)
                task.experiments[event.n] = exp
                if task.strategy is not None:
                    task.strategy.record(event.n, dict(event.parameters))
            exp.attempts.append(Attempt(event.n, event.attempt, dict(event.parameters), event.gpus, planned_at=event.at))
        case ev.ExperimentAssigned() if task and (a := _attempt(task, event.n, event.attempt)):
            a.status = "assigned"
            a.host = event.host
            a.instance = event.instance or None
            a.gpu_indices = list(event.gpu_indices)
            a.assigned_at = event.at
        case ev.ExperimentWaiting() if task and (a := _attempt(task, event.n, event.attempt)):
            a.waiting = event
            a.waitings += 1
        case ev.ExperimentCancelRequested() if task and (a := _attempt(task, event.n, event.attempt)):
            a.cancel_requested = True
        case ev.ExperimentStarted() | ev.ExperimentReady() | ev.ExperimentProgress() if task and (
            a := _attempt(task, event.n, event.attempt)
        ):
            if a.status in ("planned", "assigned"):
                a.status = "running"
            if isinstance(event, ev.ExperimentStarted):
                a.instance = event.instance
        case ev.ExperimentCompleted() if task and (a := _attempt(task, event.n, event.attempt)):
            a.status = "completed"
            a.score = event.score
            exp = task.experiments[event.n]
            if event.hard_fail:
                _finish(task, exp, "failed", None, failure="slo_hard_fail", stage="benchmark")
            else:
                exp.objectives = list(event.objectives)
                _finish(task, exp, "completed", event.score, objectives=event.objectives)
        case ev.ExperimentFailed() if task and (a := _attempt(task, event.n, event.attempt)):
            a.status = "failed"
            a.failure = event
            exp = task.experiments[event.n]
            max_retries = task.spec.optimization.max_retries if task.spec else 0
            if not (event.retryable and event.attempt < max_retries and not task.cancel_requested):
                _finish(task, exp, "failed", None, failure=event.kind, stage=event.stage)
        case ev.ExperimentCancelled() if task and (a := _attempt(task, event.n, event.attempt)):
            a.status = "cancelled"
            exp = task.experiments[event.n]
            if exp.outcome is None:
                exp.outcome = "cancelled"
        case ev.HostRegistered():
            h = state.hosts.setdefault(event.host, Host(event.host, last_seq=seq))
            h.instance, h.status, h.registered, h.gone_at = event.instance, HostLifecycle.ONLINE, event, None
        case ev.HostDrainRequested() if (h := state.hosts.get(event.host)):
            h.status, h.gone_at = HostLifecycle.DRAINING, h.gone_at or event.at
        case ev.HostDrained() if (h := state.hosts.get(event.host)):
            h.status, h.gone_at = HostLifecycle.DRAINED, h.gone_at or event.at
        case ev.HostRemoved() if (h := state.hosts.get(event.host)):
            h.status, h.gone_at = HostLifecycle.REMOVED, h.gone_at or event.at
        case ev.HostLost() if (h := state.hosts.get(event.host)) and (h.instance == event.instance or not event.instance):
            h.status, h.gone_at = HostLifecycle.LOST, h.gone_at or event.at
        case ev.HostStopped() if (h := state.hosts.get(event.host)) and h.instance == event.instance:
            if h.status != HostLifecycle.REMOVED:
                h.status = HostLifecycle.STOPPED
            h.gone_at = h.gone_at or event.at
        case ev.HostReturned() if (h := state.hosts.get(event.host)) and h.instance == event.instance:
            if h.status in (HostLifecycle.LOST, HostLifecycle.STOPPED, HostLifecycle.ONLINE):
                h.status = HostLifecycle.DRAINING if event.draining else HostLifecycle.ONLINE
                h.gone_at = h.gone_at if event.draining else None
        case _:
            pass
    return state


def _attempt(task: Task, n: int, attempt: int) -> Attempt | None:
    exp = task.experiments.get(n)
    if exp is None:
        return None
    for a in exp.attempts:
        if a.attempt == attempt:
            return a
    return None


def _finish(
    task: Task,
    exp: Experiment,
    outcome: str,
    score: float | None,
    *,
    objectives: list[float] | None = None,
    failure: str | None = None,
    stage: str = "benchmark",
) -> None:
    """Record the experiment's result and tell the strategy, once."""
    exp.outcome = outcome
    exp.score = score
    if exp.told or task.strategy is None:
        return
    exp.told = True
    if outcome == "completed":
        value: float | list[float] = list(objectives) if objectives and len(objectives) > 1 else score  # type: ignore[assignment]
        task.strategy.tell(exp.n, value)
    else:
        task.strategy.tell(exp.n, None, failure=failure or "failed", stage=stage)
