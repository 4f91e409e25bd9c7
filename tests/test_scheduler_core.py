"""The scheduler's pure core: evolve the state from events, decide what to do. No NATS here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from autotune.scheduler.decide import Limits, decide
from autotune.scheduler.placement import place
from autotune.scheduler.state import State, evolve
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.liveness import LiveGpu, LiveHost
from autotune.schemas.metrics import ExperimentMetrics
from autotune.schemas.spec import spec_from_obj
from autotune.schemas.status import HostLifecycle
from autotune.shared.commands import spec_to_dict
from tests.helpers import small_spec

T0 = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)


def host(name: str, n: int = 2, model: str = "H100", **kw) -> LiveHost:
    return LiveHost(host=name, instance=f"{name}-i", gpus=[LiveGpu(index=i, uuid=f"{name}-{i}", name=f"Simulated NVIDIA {model}") for i in range(n)], runtimes=["simulated"], simulated=True, **kw)


class Log:
    """Applies decided actions back as if the log had stored them, with increasing sequences."""

    def __init__(self) -> None:
        self.state = State()
        self.seq = 0

    def add(self, subject: str, event: ev.Event) -> None:
        self.seq += 1
        evolve(self.state, self.seq, subject, event)

    def step(self, fleet, now=T0, **kw) -> list:
        actions = decide(self.state, fleet, now, **kw)
        for a in actions:
            self.add(a.subject, a.event)
        return actions


def submitted(name="t", **over) -> tuple[str, ev.TaskSubmitted]:
    spec = spec_from_obj(small_spec(name, **over))
    return f"autotune.task.{name}.submitted", ev.TaskSubmitted(id=f"{name}.submitted", task=name, name=name, spec=spec_to_dict(spec), at=T0)


def complete(log: Log, a: ev.ExperimentAssigned, score: float, objectives: list[float] | None = None) -> None:
    log.add(
        f"autotune.task.{a.task}.exp.{a.n}.completed",
        ev.ExperimentCompleted(id=f"{a.task}.{a.n}.{a.attempt}.completed", task=a.task, n=a.n, attempt=a.attempt, host=a.host, metrics=ExperimentMetrics(), score=score, objectives=objectives or []),
    )


def assigned(actions) -> list[ev.ExperimentAssigned]:
    return [a.event for a in actions if isinstance(a.event, ev.ExperimentAssigned)]


def test_placement_prefers_best_fit_and_never_reuses_a_leased_gpu():
    fleet = {"a": host("a", 4), "b": host("b", 2)}
    p = place(gpus_needed=2, engine="sglang", deployment_mode="simulated", gpu_type="h100", simulate=False, fleet=fleet, leased={}, foreign_busy={})
    assert p and p.host == "b" and p.gpu_indices == [0, 1]
    p = place(gpus_needed=2, engine="sglang", deployment_mode="simulated", gpu_type="h100", simulate=False, fleet=fleet, leased={"b": {0}}, foreign_busy={"a": {1}})
    assert p and p.host == "a" and p.gpu_indices == [0, 2]
    # simulated GPUs imitate the type a task asks for; real ones must match it
    p = place(gpus_needed=1, engine="sglang", deployment_mode="simulated", gpu_type="A100", simulate=False, fleet=fleet, leased={}, foreign_busy={})
    assert p and p.gpu_type == "A100" and p.simulated
    real = {"r": LiveHost(host="r", instance="r-i", gpus=[LiveGpu(index=0, uuid="u", name="NVIDIA H100 80GB HBM3")], runtimes=["docker"])}
    assert place(gpus_needed=1, engine="sglang", deployment_mode="docker", gpu_type="A100", simulate=False, fleet=real, leased={}, foreign_busy={}) is None
    assert place(gpus_needed=1, engine="sglang", deployment_mode="docker", gpu_type="h100", simulate=False, fleet=real, leased={}, foreign_busy={}).host == "r"
    drained = {"a": host("a", 4, draining=True)}
    assert place(gpus_needed=1, engine="sglang", deployment_mode="simulated", gpu_type=None, simulate=False, fleet=drained, leased={}, foreign_busy={}) is None


def test_a_task_is_started_planned_placed_and_completed_with_the_best():
    log = Log()
    log.add(*submitted())
    fleet = {"h": host("h", 2)}
    assert [type(a.event) for a in log.step(fleet)] == [ev.TaskStarted]
    scores = iter([5.0, 3.0, 4.0, 6.0])
    done = 0
    for _ in range(40):
        actions = log.step(fleet)
        for a in assigned(actions):
            complete(log, a, next(scores))
            done += 1
        # never more than max_parallel (2) attempts active at once
        assert len(log.state.tasks["t"].active_attempts()) <= 2
        if any(isinstance(a.event, ev.TaskCompleted) for a in actions):
            break
    final = [a.event for a in actions if isinstance(a.event, ev.TaskCompleted)][0]
    assert done == 4 and final.best_experiment == 1 and final.best_score == 3.0 and final.reason in ("grid_exhausted", "max_iterations")


def test_nothing_fits_means_queued_not_failed():
    log = Log()
    log.add(*submitted())
    log.step({})
    for _ in range(5):
        actions = log.step({})
    t = log.state.tasks["t"]
    assert [a.status for a in t.active_attempts()] == ["planned", "planned"]
    assert not any(isinstance(a.event, ev.ExperimentFailed) for a in actions)


def test_a_lost_host_fails_its_attempt_as_retryable_and_it_is_replanned_elsewhere():
    log = Log()
    log.add(*submitted(optimization={"max_parallel": 1, "max_iterations": 1}))
    log.add("autotune.host.a.registered", ev.HostRegistered(id="a.reg", host="a", instance="a-i"))
    log.step({"a": host("a")})  # started
    log.step({"a": host("a")})  # planned
    a = assigned(log.step({"a": host("a")}))[0]
    assert a.host == "a"
    later = T0 + timedelta(seconds=30)
    actions = log.step({"b": host("b")}, now=later, limits=Limits(host_grace_s=5))
    kinds = {type(x.event) for x in actions}
    assert ev.HostLost in kinds and ev.ExperimentFailed in kinds
    failed = [x.event for x in actions if isinstance(x.event, ev.ExperimentFailed)][0]
    assert failed.kind == "host_lost" and failed.retryable
    retry = [x.event for x in log.step({"b": host("b")}, now=later) if isinstance(x.event, ev.ExperimentPlanned)][0]
    assert (retry.n, retry.attempt, retry.retry_of) == (a.n, 1, failed.id)
    again = assigned(log.step({"b": host("b")}, now=later))[0]
    assert again.host == "b" and again.attempt == 1


def test_cancel_asks_running_hosts_then_cancels_the_task():
    log = Log()
    log.add(*submitted())
    fleet = {"h": host("h", 2)}
    for _ in range(4):
        log.step(fleet)
    running = [a for a in log.state.tasks["t"].active_attempts() if a.status == "assigned"]
    assert len(running) == 2
    log.add("autotune.task.t.cancel_requested", ev.TaskCancelRequested(id="t.cancel_requested", task="t"))
    actions = log.step(fleet)
    asks = [a.event for a in actions if isinstance(a.event, ev.ExperimentCancelRequested)]
    assert sorted(e.n for e in asks) == sorted(a.n for a in running)
    assert not any(isinstance(a.event, (ev.ExperimentPlanned, ev.TaskCancelled)) for a in actions)
    for e in asks:
        log.add(f"autotune.task.t.exp.{e.n}.cancelled", ev.ExperimentCancelled(id=f"t.{e.n}.0.cancelled", task="t", n=e.n, host="h"))
    assert [type(a.event) for a in log.step(fleet)] == [ev.TaskCancelled]


def test_the_watchdog_cancels_then_fails_an_overdue_attempt():
    log = Log()
    log.add(*submitted(optimization={"max_parallel": 1, "max_iterations": 1, "timeout_per_iteration": 60}))
    fleet = {"h": host("h")}
    log.step(fleet)
    log.step(fleet)
    a = assigned(log.step(fleet))[0]
    late = T0 + timedelta(seconds=60 + 31)
    acts = log.step(fleet, now=late)
    assert [type(x.event) for x in acts] == [ev.ExperimentCancelRequested]
    acts = log.step(fleet, now=late + timedelta(seconds=31))
    assert [(type(x.event), x.event.kind) for x in acts] == [(ev.ExperimentFailed, "timeout")]
    assert a.n == 0


def test_an_invalid_spec_in_the_log_is_rejected_not_crashed_on():
    log = Log()
    bad = ev.TaskSubmitted(id="x.submitted", task="x", name="x", spec={"task_name": "x", "model": "m", "optimization": {"strategy": "nope"}}, at=T0)
    log.add("autotune.task.x.submitted", bad)
    acts = log.step({})
    assert isinstance(acts[0].event, ev.TaskRejected) and acts[0].event.path == "$.optimization.strategy"


def test_a_scheduler_rebuilt_from_the_log_decides_exactly_like_the_one_that_wrote_it():
    sub = submitted(optimization={"strategy": "random", "seed": 7, "max_parallel": 1})
    log = Log()
    log.add(*sub)
    fleet = {"h": host("h")}
    history = [sub]
    for i in range(5):
        for a in log.step(fleet):
            history.append((a.subject, a.event))
            if isinstance(a.event, ev.ExperimentAssigned):
                complete(log, a.event, float(i))
                history.append((f"autotune.task.t.exp.{a.event.n}.completed", None))
    fresh = Log()
    for s_, e in history:
        if e is not None:
            fresh.add(s_, e)
        else:  # the completion we applied directly
            n = int(s_.split(".")[4])
            fresh.add(s_, ev.ExperimentCompleted(id=f"t.{n}.0.completed", task="t", n=n, host="h", metrics=ExperimentMetrics(), score=float([x for x in range(5)][0])))
    a = [(x.subject, x.event.id, getattr(x.event, "parameters", None)) for x in decide(log.state, fleet, T0)]
    b = [(x.subject, x.event.id, getattr(x.event, "parameters", None)) for x in decide(fresh.state, fleet, T0)]
    assert a == b and a


def test_gpus_busy_with_foreign_processes_are_avoided_and_our_own_are_not_double_counted():
    log = Log()
    log.add(*submitted(optimization={"max_parallel": 2, "max_iterations": 2}))
    fleet = {"h": host("h", 2)}
    log.step(fleet)
    log.step(fleet)
    # GPU 0 runs somebody else's process: the first experiment goes to GPU 1
    first = assigned(log.step(fleet, occupied={"h": {0}}))
    assert [a.gpu_indices for a in first] == [[1]]
    # now GPU 1 shows our own engine (leased) and GPU 0 is free again: the second goes to GPU 0
    second = []
    for _ in range(3):
        second += assigned(log.step(fleet, occupied={"h": {1}}))
    assert [a.gpu_indices for a in second] == [[0]]


def test_two_tasks_share_the_fleet_fairly():
    log = Log()
    log.add(*submitted("a", optimization={"max_parallel": 4, "max_iterations": 4}))
    log.add(*submitted("b", optimization={"max_parallel": 4, "max_iterations": 4}))
    fleet = {"h": host("h", 2)}
    placed = []
    for _ in range(6):
        placed += assigned(log.step(fleet))
    assert sorted(a.task for a in placed) == ["a", "b"], "one task took every GPU"


# --- stopping, through decide ------------------------------------------------------------------------

WIDE = {"mem-fraction-static": [0.7, 0.75, 0.8, 0.85, 0.88], "max-running-requests": [8, 16, 32, 64]}  # 20 points


def run_task(results, *, clock=lambda i: T0, **over) -> tuple[ev.TaskCompleted | ev.TaskFailed, int]:
    """Drive one task through `decide` alone, one experiment at a time; the i-th result (a score, or a
    list of objective values) is told when experiment i is placed, at `clock(i)`. Returns the task's
    terminal event and how many experiments were planned."""
    log = Log()
    log.add(*submitted(**over))
    fleet = {"h": host("h", 1)}
    results = iter(results)
    i = 0
    for _ in range(200):
        for a in log.step(fleet, now=clock(i)):
            if isinstance(a.event, ev.ExperimentAssigned):
                r = next(results)
                complete(log, a.event, r[0] if isinstance(r, list) else r, r if isinstance(r, list) else None)
                i += 1
            if isinstance(a.event, (ev.TaskCompleted, ev.TaskFailed)):
                return a.event, len(log.state.tasks["t"].experiments)
    raise AssertionError("the task never ended")


def test_max_iterations_stops_a_task_through_decide():
    final, planned = run_task([5.0, 4.0, 3.0, 2.0], parameters=WIDE, optimization={"strategy": "random", "seed": 3, "max_iterations": 3, "max_parallel": 1})
    assert (final.reason, planned, final.best_score) == ("max_iterations", 3, 3.0)


def test_grid_exhaustion_stops_a_task_through_decide():
    # a 2×2 grid, three repeats each: 12 experiments, though max_iterations allows 50
    final, planned = run_task([float(i) for i in range(12)], optimization={"max_iterations": 50, "max_parallel": 1, "repeats": 3})
    assert (final.reason, planned) == ("grid_exhausted", 12)


def test_time_budget_stops_a_task_through_decide():
    # experiment i is placed 25 s after experiment i-1: the third is placed at 50 s, none at 75 s
    final, planned = run_task(
        [3.0, 2.0, 1.0, 0.5], clock=lambda i: T0 + timedelta(seconds=25 * i), parameters=WIDE,
        optimization={"strategy": "random", "seed": 3, "max_iterations": 20, "max_parallel": 1, "time_budget_s": 60.0},
    )
    assert (final.reason, planned) == ("time_budget", 3)


def test_patience_stops_a_task_through_decide():
    # the best comes second; two results without a lower score after it end the search
    final, planned = run_task(
        [5.0, 3.0, 4.0, 3.5, 1.0], parameters=WIDE, optimization={"strategy": "random", "seed": 3, "max_iterations": 20, "max_parallel": 1, "patience": 2},
    )
    assert (final.reason, planned, final.best_experiment) == ("converged", 4, 1)


def test_multi_objective_patience_counts_new_pareto_points_as_progress():
    # (throughput, latency) as minimized values: the second result is worse on the first objective but
    # better on the second, a new Pareto point, so patience counts from there
    results = [[1.0, 1.0], [2.0, 0.5], [1.5, 1.5], [3.0, 3.0], [0.1, 0.1]]
    final, planned = run_task(
        results, parameters=WIDE,
        optimization={"strategy": "multi_objective", "objectives": ["maximize_throughput", "minimize_latency"], "seed": 3, "max_iterations": 20, "max_parallel": 1, "patience": 2},
    )
    assert (final.reason, planned) == ("converged", 4)


# --- hosts: reported busy GPUs, loss, return, clean stop (issue 19) ------------------------------------


def registered(log: Log, h: str = "a", instance: str = "a-i") -> None:
    log.add(subj.host(h, "registered"), ev.HostRegistered(id=f"{h}.{instance}.reg", host=h, instance=instance))


def lost_events(actions) -> list[ev.HostLost]:
    return [a.event for a in actions if isinstance(a.event, ev.HostLost)]


def test_gpus_a_host_reports_in_use_get_no_work_whatever_the_log_says():
    log = Log()
    log.add(*submitted(optimization={"max_parallel": 2, "max_iterations": 4}))
    registered(log)
    fleet = {"a": host("a", 2)}
    first = []
    for _ in range(6):
        first += assigned(log.step(fleet))
    assert sorted(g for a in first for g in a.gpu_indices) == [0, 1]
    # the log says attempt 0 ended, but the host still runs it (a runner back from a pause, before its fence)
    done = next(a for a in first if a.gpu_indices == [0])
    complete(log, done, 1.0)
    still = {"a": host("a", 2, running=[f"t/{done.n}/0"])}
    for _ in range(3):
        assert not assigned(log.step(still)), "placed on a GPU the host reports running an attempt"
    # an engine the runner cannot account for: the GPU it names stays busy
    assert not assigned(log.step({"a": host("a", 2, busy_gpus=[0], unaccounted=["x/0/0"])}))
    again = assigned(log.step(fleet))
    assert [a.gpu_indices for a in again] == [[0]]


def test_a_stopped_host_is_not_lost_a_returned_one_is_online_and_each_loss_is_its_own_event():
    log = Log()
    registered(log)
    log.step({"a": host("a")})
    log.add(subj.host("a", "stopped"), ev.HostStopped(id="a.stopped", host="a", instance="a-i"))
    assert log.state.hosts["a"].status == HostLifecycle.STOPPED
    assert lost_events(log.step({})) == []  # its key is gone because it stopped: not a loss

    registered(log, instance="a-2")
    assert log.state.hosts["a"].status == HostLifecycle.ONLINE
    (first,) = lost_events(log.step({}))
    assert (first.instance, log.state.hosts["a"].status) == ("a-2", HostLifecycle.LOST)
    log.add(subj.host("a", "returned"), ev.HostReturned(id="a.ret.1", host="a", instance="a-2"))
    assert log.state.hosts["a"].status == HostLifecycle.ONLINE
    seen = log.state.hosts["a"].last_seq
    actions = log.step({})
    (second,) = lost_events(actions)
    assert second.id != first.id  # lost, back and lost again: two losses in the log, not one deduplicated
    (action,) = [a for a in actions if isinstance(a.event, ev.HostLost)]
    assert (action.expect_seq, action.expect_filter) == (seen, subj.host_all("a"))  # a newer host event (host.stopped) refuses it
    # a stale event of an instance replaced since changes nothing
    registered(log, instance="a-3")
    log.add(subj.host("a", "stopped"), ev.HostStopped(id="a.old.stopped", host="a", instance="a-2"))
    assert log.state.hosts["a"].status == HostLifecycle.ONLINE


def test_a_returned_host_gets_work_again():
    log = Log()
    log.add(*submitted(optimization={"max_parallel": 1, "max_iterations": 2}))
    registered(log)
    log.step({})
    log.step({}, now=T0 + timedelta(seconds=1))  # lost: nothing to place on
    assert log.state.hosts["a"].status == HostLifecycle.LOST
    log.add(subj.host("a", "returned"), ev.HostReturned(id="a.ret", host="a", instance="a-i"))
    assert assigned(log.step({"a": host("a")})) or assigned(log.step({"a": host("a")}))
