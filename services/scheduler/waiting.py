"""Why a planned experiment is not placed, and when it can never be. Pure: state, fleet and clock in.

A planned attempt that finds no room says why, in an `experiment.waiting` event every view shows:
"needs 4 GPUs of type H100 on one host; the largest matching host has 2", or "waiting: 3 matching
hosts, all busy with other tasks". The event is recorded when the reason changes, not every round
(a reason whose wording alone changes, e.g. a count, at most every `waiting_repeat_s`), and only
once the attempt has waited `waiting_after_s`: a brief wait for the next free GPUs says nothing.

When no live host could ever run it (not merely busy), it fails as `unplaceable` (stage
`placement`, not retried; the optimizer learns from it like any failed experiment) once that has
been so for `unplaceable_grace_s`: counted from the later of the task's start and the moment the
last host that could run it stopped taking work (lost, drained, removed), both read from the log.
A host that comes back within the grace (its runner restarted, a network blip) keeps it waiting.
The reason of the failure names what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from autotune.scheduler.state import Attempt, State, Task
from autotune.schemas import events as ev
from autotune.schemas.liveness import LiveGpu, LiveHost
from autotune.schemas.status import HOST_CLOSED, HostLifecycle
from autotune.shared.fit import capacity, fit

UNAVAILABLE = HOST_CLOSED


@dataclass(frozen=True)
class Why:
    reason: str
    fits: bool  # some live host could run it once it has room


def _kw(task: Task) -> dict[str, Any]:
    spec = task.spec
    assert spec is not None
    return dict(engine=spec.engine, deployment_mode=spec.deployment_mode, gpu_type=spec.gpu_type, simulate=task.simulate)


def available_hosts(state: State, fleet: dict[str, LiveHost]) -> dict[str, LiveHost]:
    """The live hosts that take work (what placement considers)."""
    return {
        h: v for h, v in fleet.items()
        if not v.draining and (state.hosts.get(h) is None or state.hosts[h].status not in UNAVAILABLE)
    }  # fmt: skip


def explain(task: Task, a: Attempt, state: State, fleet: dict[str, LiveHost], holders: dict[str, set[str]]) -> Why:
    """Why attempt `a` of `task` found no room. `holders`: host -> tasks holding leases on it."""
    f = fit(a.gpus, available_hosts(state, fleet), **_kw(task))
    if not f.fits:
        return Why(f.reason, False)
    others = set().union(*(holders.get(h, set()) for h in f.able)) - {task.id}
    whose = "other tasks" if others else "this task's other experiments"
    if not any(holders.get(h) for h in f.able):
        whose = "processes autotune did not start"
    return Why(f"waiting: {len(f.able)} matching host{'s' if len(f.able) != 1 else ''}, all busy with {whose}", True)


def _could_run(task: Task, reg: ev.HostRegistered, need: int) -> bool:
    """Whether a host, as it registered, could run this attempt (for when the last one went away)."""
    host = LiveHost(
        host=reg.host, instance=reg.instance, gpus=[LiveGpu(index=g.index, uuid=g.uuid, name=g.name) for g in reg.gpus],
        runtimes=list(reg.runtimes), engines=list(reg.engines), simulated=reg.simulated, cpu_slots=reg.cpu_slots, cpu_engines=list(reg.cpu_engines),
    )
    cap = capacity(host, **_kw(task))
    return cap is not None and cap >= need


def unfit_since(task: Task, a: Attempt, state: State, now: datetime) -> datetime:
    """Since when no host that takes work could run `a`: the later of the task's start and the moment
    the last host that could stopped taking work (now, when one is registered but not yet lost)."""
    since = task.started_at or a.planned_at or now
    for h in state.hosts.values():
        if h.registered is None or not _could_run(task, h.registered, a.gpus):
            continue
        gone = h.gone_at if h.status != HostLifecycle.ONLINE else now  # online but not live: it went just now
        if gone is not None and gone > since:
            since = gone
    return since


@dataclass(frozen=True)
class WaitLimits:
    waiting_after_s: float = 2.0  # say nothing about a wait shorter than this
    waiting_repeat_s: float = 30.0  # a reason whose wording alone changed is recorded at most this often
    unplaceable_grace_s: float = 300.0  # nothing can run it for this long: it fails as unplaceable


def note(task: Task, a: Attempt, why: Why, state: State, now: datetime, limits: WaitLimits) -> ev.Event | None:
    """The event to record for an attempt that was not placed this round, or None."""
    last = a.waiting
    if not why.fits and last is not None and not last.fits:
        since = unfit_since(task, a, state, now)
        if now - since >= timedelta(seconds=limits.unplaceable_grace_s):
            return ev.ExperimentFailed(
                id=ev.exp_id(task.id, a.n, a.attempt, "failed"), task=task.id, n=a.n, attempt=a.attempt, kind="unplaceable",
                stage="placement", retryable=False,
                message=f"unplaceable: {why.reason} (no host that takes work could run it for {limits.unplaceable_grace_s:.0f} s)",
            )
    if last is None:
        if a.planned_at is not None and now - a.planned_at < timedelta(seconds=limits.waiting_after_s):
            return None
    elif last.reason == why.reason or (last.fits == why.fits and now - last.at < timedelta(seconds=limits.waiting_repeat_s)):
        return None
    return ev.ExperimentWaiting(
        id=ev.exp_id(task.id, a.n, a.attempt, f"waiting-{a.waitings}"), task=task.id, n=a.n, attempt=a.attempt,
        reason=why.reason, fits=why.fits, gpus=a.gpus,
    )
