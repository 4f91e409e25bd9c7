"""The scheduler with real NATS and real runner processes on simulated hosts: parallel placement, a
killed scheduler, a standby taking over, a lost host, cancel."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter, defaultdict
from pathlib import Path

import msgspec
import pytest

from autotune.runner.runtimes.local import labelled_processes
from autotune.scheduler.service import Scheduler
from autotune.scheduler.strategies import make_strategy
from autotune.schemas import events as ev
from autotune.schemas.spec import spec_from_obj
from autotune.shared import bus
from autotune.shared.audit import audit, peak_parallelism
from autotune.shared.expand import experiment_space
from tests.fixtures.runner_kit import Proc
from tests.helpers import Services, events_of, small_spec, submit, task_finished, wait_for
from tests.test_cli import autotune

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


async def start_runner(settings, js, tmp_path, host: str, gpus: str = "1xH100") -> Proc:
    p = Proc(settings, "runner", "--host", host, "--simulate", gpus, "--time-scale", "40", log=tmp_path / f"runner-{host}.log")
    await wait_for(js, f"autotune.host.{host}.registered", lambda e: True, timeout=30)
    return p


def terminal_counts(history) -> Counter:
    return Counter((e.n, e.attempt) for _, e in history if isinstance(e, ev.TERMINAL_EXPERIMENT))


def assert_engines_gone(hosts: list[str]) -> None:
    left = [p for p, lab in labelled_processes() if lab.get("AUTOTUNE_LABEL_HOST") in hosts]
    assert left == [], f"engine processes left behind: {left}"


async def test_parallel_experiments_on_three_hosts_never_share_a_gpu(settings, js, tmp_path):
    hosts = ["h1", "h2", "h3"]
    runners = [await start_runner(settings, js, tmp_path, h) for h in hosts]
    svc = Services()
    svc.start(lambda stop: Scheduler(settings).run(stop), "scheduler")
    try:
        task = await submit(js, small_spec("par", parameters={"max-running-requests": [8, 16, 32, 64, 128, 256]}, optimization={"max_parallel": 3, "max_iterations": 6}, benchmark={"max_requests_per_iteration": 40}))
        final = await task_finished(js, task, 150, logs=tuple(r.log for r in runners))
        assert isinstance(final, ev.TaskCompleted), final
        history = await events_of(js, f"autotune.task.{task}.>")
        assert audit(history) == []
        assert peak_parallelism(history) == 3
        assert {e.host for _, e in history if isinstance(e, ev.ExperimentAssigned)} == set(hosts)
        assert terminal_counts(history) == Counter({(n, 0): 1 for n in range(6)})
    finally:
        await svc.stop_all()
        for r in runners:
            r.stop()
    assert_engines_gone(hosts)


@pytest.mark.long
async def test_a_killed_scheduler_restarts_and_the_bayesian_history_is_exact(settings, js, tmp_path):
    hosts = ["b1", "b2"]
    runners = [await start_runner(settings, js, tmp_path, h) for h in hosts]
    raw = small_spec(
        "bayes",
        parameters={"max-running-requests": [4, 8, 16, 32, 64, 128], "mem-fraction-static": [0.7, 0.8, 0.88], "chunked-prefill-size": [1024, 4096]},
        optimization={"strategy": "bayesian", "n_initial_random": 3, "seed": 11, "max_iterations": 9, "max_parallel": 2},
    )
    sched = Proc(settings, "scheduler", log=tmp_path / "scheduler-1.log")
    try:
        task = await submit(js, raw)
        await wait_for(js, f"autotune.task.{task}.exp.*.completed", lambda e: e.n >= 3, timeout=120)
        sched.kill()  # kill -9 in the middle of the task
        await asyncio.sleep(1.0)
        sched = Proc(settings, "scheduler", log=tmp_path / "scheduler-2.log")
        final = await task_finished(js, task, 180, logs=(*(r.log for r in runners), sched.log))
        assert isinstance(final, ev.TaskCompleted), final
    finally:
        sched.stop()
        for r in runners:
            r.stop()
    history = await events_of(js, f"autotune.task.{task}.>")
    planned = [e for _, e in history if isinstance(e, ev.ExperimentPlanned)]
    assert sorted(e.n for e in planned if e.attempt == 0) == list(range(9)), "an experiment was lost or planned twice"
    assert len({str(sorted(e.parameters.items())) for e in planned if e.attempt == 0}) == 9, "a configuration ran twice"
    assert audit(history) == []
    # an uninterrupted scheduler, fed the same results in the same order, asks exactly what was planned
    spec = spec_from_obj(raw)
    fresh = make_strategy(spec, experiment_space(spec))
    for _, e in history:
        if isinstance(e, ev.ExperimentPlanned) and e.attempt == 0:
            assert fresh.ask(e.n) == e.parameters, f"experiment {e.n} differs from an uninterrupted run's"
            fresh.record(e.n, e.parameters)
        elif isinstance(e, ev.ExperimentCompleted):
            fresh.tell(e.n, e.score)
        elif isinstance(e, ev.ExperimentFailed) and not e.retryable:
            fresh.tell(e.n, None, failure=e.kind, stage=e.stage)
    assert_engines_gone(hosts)


async def test_an_event_the_scheduler_cannot_read_does_not_stop_its_task_planning(settings, js):
    """A plan expects nothing new on its whole task since the scheduler's view. An event it cannot
    decode (a newer type) must still count as seen, or every later plan would be refused for ever.
    No hosts: the scheduler plans experiment 0 and stops; experiment 0 fails, then the unreadable
    event is the task's last message when a restarted scheduler has experiment 1 to plan."""
    raw = small_spec("unread", parameters={"max-running-requests": [8, 16, 32, 64]}, optimization={"max_iterations": 3, "max_parallel": 1})
    svc = Services()
    svc.start(lambda stop: Scheduler(settings).run(stop), "scheduler")
    try:
        task = await submit(js, raw)
        await wait_for(js, f"autotune.task.{task}.exp.0.planned", lambda e: True, timeout=30)
    finally:
        await svc.stop_all()
    failed = ev.ExperimentFailed(id=ev.exp_id(task, 0, 0, "failed"), task=task, n=0, attempt=0, kind="launch_error", stage="launch", retryable=False, message="test")
    await bus.append(js, f"autotune.task.{task}.exp.0.failed", failed)
    await js.publish(f"autotune.task.{task}.exp.9.from_the_future", b'{"type": "experiment.from_the_future", "id": "f1"}')
    svc = Services()
    svc.start(lambda stop: Scheduler(settings).run(stop), "scheduler")
    try:
        planned = await wait_for(js, f"autotune.task.{task}.exp.1.planned", lambda e: True, timeout=15)
        assert planned.n == 1
    finally:
        await svc.stop_all()


@pytest.mark.long
async def test_a_standby_scheduler_takes_over_and_they_never_conflict(settings, js, tmp_path):
    runners = [await start_runner(settings, js, tmp_path, h, "2xH100") for h in ["s1"]]
    leader = Proc(settings, "scheduler", log=tmp_path / "leader.log")
    await asyncio.sleep(1.5)  # let the first one win the lease
    standby = Proc(settings, "scheduler", log=tmp_path / "standby.log")
    try:
        task = await submit(js, small_spec("ha", parameters={"max-running-requests": [4, 8, 16, 32, 64, 128]}, optimization={"max_iterations": 6}))
        await wait_for(js, f"autotune.task.{task}.exp.*.completed", lambda e: True, timeout=90)
        leader.kill()
        final = await task_finished(js, task, 150, logs=(runners[0].log, leader.log, standby.log))
        assert isinstance(final, ev.TaskCompleted), final
    finally:
        standby.stop()
        leader.stop()
        for r in runners:
            r.stop()
    history = await events_of(js, f"autotune.task.{task}.>")
    assert audit(history) == []
    per_attempt = defaultdict(list)
    for _, e in history:
        if isinstance(e, (ev.ExperimentPlanned, ev.ExperimentAssigned)):
            per_attempt[(type(e), e.n, e.attempt)].append(e)
    assert all(len(v) == 1 for v in per_attempt.values()), "two schedulers decided the same thing differently"
    assert sum(1 for _, e in history if isinstance(e, ev.TaskCompleted)) == 1
    assert "became leader" in (tmp_path / "standby.log").read_text()


async def test_a_lost_host_has_its_experiment_retried_elsewhere(settings, js, tmp_path):
    doomed = await start_runner(settings, js, tmp_path, "doomed")
    svc = Services()
    svc.start(lambda stop: Scheduler(settings).run(stop), "scheduler")
    survivor = None
    try:
        raw = small_spec("lost", parameters={"max-running-requests": [16]}, optimization={"max_iterations": 1, "max_parallel": 1},
                         benchmark={"max_requests_per_iteration": 200, "max_time_per_iteration": 10})
        task = await submit(js, raw)
        await wait_for(js, f"autotune.task.{task}.exp.0.ready", lambda e: True, timeout=60)
        doomed.kill()  # the whole host dies: runner killed, and its engine with it
        for pid, lab in labelled_processes():
            if lab.get("AUTOTUNE_LABEL_HOST") == "doomed":
                os.kill(pid, signal.SIGKILL)
        survivor = await start_runner(settings, js, tmp_path, "survivor")
        final = await task_finished(js, task, 120, logs=(doomed.log, survivor.log))
        assert isinstance(final, ev.TaskCompleted), final
        history = await events_of(js, f"autotune.task.{task}.>")
        failed = [e for _, e in history if isinstance(e, ev.ExperimentFailed)]
        assert [(f.kind, f.retryable, f.host) for f in failed] == [("host_lost", True, "doomed")]
        done = [e for _, e in history if isinstance(e, ev.ExperimentCompleted)]
        assert [(d.n, d.attempt, d.host) for d in done] == [(0, 1, "survivor")]
        assert any(isinstance(e, ev.HostLost) and e.host == "doomed" for _, e in await events_of(js, "autotune.host.>"))
    finally:
        await svc.stop_all()
        if survivor:
            survivor.stop()
        doomed.stop()


async def test_cancel_stops_the_running_engines(settings, js, tmp_path):
    runner = await start_runner(settings, js, tmp_path, "c1", "2xH100")
    svc = Services()
    svc.start(lambda stop: Scheduler(settings).run(stop), "scheduler")
    try:
        raw = small_spec("cancelme", benchmark={"max_requests_per_iteration": 5000, "max_time_per_iteration": 30})
        task = await submit(js, raw)
        await wait_for(js, f"autotune.task.{task}.exp.*.ready", lambda e: True, timeout=60)
        assert [p for p, lab in labelled_processes() if lab.get("AUTOTUNE_LABEL_HOST") == "c1"], "no engine was running"
        r = await asyncio.to_thread(autotune, "cancel", task, "--wait", "--timeout", "60", "--nats", settings.nats_url, timeout=90)
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n--- runner log:\n{runner.text()[-4000:]}"
        assert_engines_gone(["c1"])  # already when `cancel --wait` returns
        assert r.stdout.count(" on c1: engine stopped") == 2 and f"task {task} cancelled: none of its engines is running" in r.stdout, r.stdout
        final = await task_finished(js, task, 10, logs=(runner.log,))
        assert isinstance(final, ev.TaskCancelled), final
        history = await events_of(js, f"autotune.task.{task}.>")
        assert not any(isinstance(e, ev.ExperimentPlanned) and e.n >= 2 for _, e in history), "planned after the cancel"
        cancelled = [e for _, e in history if isinstance(e, ev.ExperimentCancelled)]
        assert len(cancelled) == 2
        assert_engines_gone(["c1"])
    finally:
        await svc.stop_all()
        runner.stop()


async def test_cancel_wait_names_the_experiments_not_yet_stopped_when_its_timeout_passes(settings, js, tmp_path):
    settings = msgspec.structs.replace(settings, host_ttl_s=30.0)  # the stopped runner must not look lost meanwhile, however slow the machine
    runner = await start_runner(settings, js, tmp_path, "w1")
    svc = Services()
    svc.start(lambda stop: Scheduler(settings).run(stop), "scheduler")
    try:
        raw = small_spec("stuck", optimization={"max_parallel": 1}, benchmark={"max_requests_per_iteration": 5000, "max_time_per_iteration": 30})
        task = await submit(js, raw)
        await wait_for(js, f"autotune.task.{task}.exp.0.ready", lambda e: True, timeout=60)
        os.kill(runner.p.pid, signal.SIGSTOP)  # the runner hears the cancel only once it runs again
        try:
            r = await asyncio.to_thread(autotune, "cancel", task, "--wait", "--timeout", "2", "--nats", settings.nats_url)
        finally:
            os.kill(runner.p.pid, signal.SIGCONT)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"task {task} is still stopping after 2 s; not yet reported: experiment 0 (attempt 0) on w1." in r.stderr, r.stderr
        r = await asyncio.to_thread(autotune, "cancel", task, "--wait", "--json", "--nats", settings.nats_url, timeout=150)
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n--- runner log:\n{runner.text()[-4000:]}"
        out = json.loads(r.stdout)
        assert out["status"] == "cancelled" and out["stopped"] == [{"n": 0, "attempt": 0, "host": "w1", "outcome": "experiment.cancelled"}], out
        assert_engines_gone(["w1"])
    finally:
        await svc.stop_all()
        runner.stop()
