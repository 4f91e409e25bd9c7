"""Fencing (issue 19, docs/fencing.md), with real processes: a runner frozen (SIGSTOP) past its liveness
TTL in the middle of a benchmark, then resumed, never lets a GPU run two engines at once — checked by
watching the machine (/proc), not only the log — and the host's views tell the truth throughout: lost
while it is gone, online once it is back; a clean stop is `stopped`, never `lost`.

No GPU monitor runs here: the scheduler has no telemetry that would show the stale engine's GPU busy.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from autotune.projector.service import run as projector_run
from autotune.reads.hosts import list_hosts
from autotune.scheduler.service import Scheduler
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared import bus
from autotune.shared.settings import Settings
from tests.fixtures.machine import GpuWatch
from tests.fixtures.runner_kit import Proc, engines_of, spec
from tests.helpers import Services, events_of, submit, task_finished, wait_for

pytestmark = pytest.mark.timeout(180)

TTL_S = 3.0


@pytest.fixture
def settings(nats_server, tmp_path) -> Settings:
    """A short liveness TTL, so that a freeze past it stays short."""
    return Settings(nats_url=nats_server.url, data_dir=str(tmp_path / "data"), host_ttl_s=TTL_S)


def long_benchmark(name: str) -> dict:
    # one run of 15 s (5 minutes at time scale 20), so a freeze lands in the middle of it and ends well before it
    return spec(name, optimization={"max_iterations": 1, "max_parallel": 1},
                benchmark={"num_concurrency": [1], "max_requests_per_iteration": 100_000, "max_time_per_iteration": 5})  # fmt: skip


def runner(settings, host: str, tmp_path, n: int = 1) -> Proc:
    return Proc(settings, "runner", "--host", host, "--simulate", "1xH100", "--time-scale", "20", log=tmp_path / f"runner-{host}-{n}.log")


async def host_views(nc, js, host: str, seq: int) -> tuple[str, str]:
    """(the projection's `hosts` view status, the read side's status) once the projector applied `seq`."""
    from autotune.shared import query as q

    view = (await q.sql(nc, "SELECT status FROM hosts WHERE host = ?", [host], min_seq=seq)).rows[0][0]
    (read,) = [h for h in await list_hosts(nc, js, min_seq=seq) if h.host == host]
    return view, read.status


async def first(js, subject: str, pred=lambda e: True, timeout: float = 30.0) -> tuple[int, ev.Event]:
    """The first event on `subject` that satisfies `pred`, with its sequence."""

    async def scan():
        async for d in bus.replay(js, subject):
            if pred(d.event):
                return d.seq, d.event

    return await asyncio.wait_for(scan(), timeout)


async def test_a_runner_frozen_past_its_ttl_mid_benchmark_never_shares_a_gpu_when_it_returns(settings, nc, js, tmp_path):
    svc = Services()
    svc.start(lambda stop: Scheduler(settings).run(stop), "scheduler")
    svc.start(lambda stop: projector_run(settings, stop=stop, db_path=str(tmp_path / "view.duckdb")), "projector")
    proc = runner(settings, "fz", tmp_path)
    try:
        with GpuWatch(["fz"]) as watch:
            await wait_for(js, subj.host("fz", "registered"), lambda e: True, timeout=30)
            task = await submit(js, long_benchmark("fz"))
            await wait_for(js, subj.experiment(task, 0, "ready"), lambda e: e.attempt == 0, timeout=40)
            await asyncio.sleep(1.0)  # in the benchmark now
            os.killpg(proc.p.pid, signal.SIGSTOP)
            try:
                lost_seq, _ = await first(js, subj.host("fz", "lost"), timeout=30)
                _, failed = await first(js, subj.experiment(task, 0, "failed"), lambda e: e.attempt == 0, timeout=30)
                assert failed.kind == "host_lost", failed
                assert await host_views(nc, js, "fz", lost_seq) == ("lost", "lost")
                await asyncio.sleep(1.0)  # the retry waits for a GPU meanwhile: the only host is gone
            finally:
                os.killpg(proc.p.pid, signal.SIGCONT)
            final = await task_finished(js, task, timeout=90, logs=(proc.log,))
        assert isinstance(final, ev.TaskCompleted), final
        # the machine's view: never two engines on one GPU (the old runner started attempt 1 beside attempt 0's engine)
        assert watch.violations == [], watch.violations
        assert {f"fz:{task}/0/0", f"fz:{task}/0/1"} <= watch.engines_seen and watch.samples > 100, (watch.engines_seen, watch.samples)

        _, returned = await first(js, subj.host("fz", "returned"), timeout=10)
        # the fence found attempt 0 taken (on a machine slow enough, the attempt's own refused write may find it first)
        assert returned.kept == [] and returned.fenced in ([f"{task}/0/0"], []) and returned.away_s > TTL_S, returned
        view, read = await host_views(nc, js, "fz", await bus.last_seq(js, subj.task_all(task)))
        assert view == "online" and read == "online", (view, read)
        # late output is fenced: attempt 0's log lines all predate its failure
        late = [d.event for d in [d async for d in bus.replay(js, subj.log(task, 0), stream=subj.LOGS_STREAM, follow=False)]
                if d.event.attempt == 0 and d.event.at > failed.at]  # fmt: skip
        assert late == [], [(e.at, e.stream, e.lines[:2]) for e in late]
    finally:
        proc.stop()
        await svc.stop_all()
    assert engines_of("fz") == []


async def test_a_clean_stop_is_stopped_not_lost_and_its_experiment_is_accounted_for_by_the_runner(settings, nc, js, tmp_path):
    scheduler = Scheduler(settings)
    svc = Services()
    svc.start(lambda stop: scheduler.run(stop), "scheduler")
    svc.start(lambda stop: projector_run(settings, stop=stop, db_path=str(tmp_path / "view.duckdb")), "projector")
    proc = runner(settings, "cs", tmp_path)
    again = None
    try:
        await wait_for(js, subj.host("cs", "registered"), lambda e: True, timeout=30)
        task = await submit(js, long_benchmark("cs"))
        await wait_for(js, subj.experiment(task, 0, "ready"), lambda e: e.attempt == 0, timeout=40)
        proc.stop()  # SIGTERM
        stopped_seq, stopped = await first(js, subj.host("cs", "stopped"), timeout=10)
        await asyncio.sleep(2 * TTL_S)  # long past the time the scheduler would have called it lost
        host_events = [type(e) for _, e in await events_of(js, "autotune.host.cs.*")]
        assert ev.HostLost not in host_events, host_events
        attempt0 = [e for _, e in await events_of(js, subj.experiment_all(task, 0)) if getattr(e, "attempt", None) == 0]
        terminal = [e for e in attempt0 if isinstance(e, ev.TERMINAL_EXPERIMENT)]
        assert [(type(e), e.kind) for e in terminal] == [(ev.ExperimentFailed, "runner_restarted")], terminal
        assert scheduler.state.hosts["cs"].status == "stopped"
        assert await host_views(nc, js, "cs", stopped_seq) == ("stopped", "stopped")

        seq = await bus.last_seq(js, subj.host("cs", "stopped"))
        again = runner(settings, "cs", tmp_path, 2)
        registered_seq, _ = await first(js, subj.host("cs", "registered"), lambda e: e.instance != stopped.instance, timeout=30)
        assert registered_seq > seq
        view, read = await host_views(nc, js, "cs", registered_seq)
        assert view in ("online", "busy") and read in ("online", "busy"), (view, read)
    finally:
        proc.stop()
        if again is not None:
            again.stop()
        await svc.stop_all()
    assert engines_of("cs") == []


async def test_scan_sees_an_engine_process_no_attempt_owns_through_the_local_runtimes(tmp_path):
    """What a returning (or restarted) runner counts as busy: a real process labelled as an engine of this
    host. LocalRuntime keeps the engines' executables too (`vllm=<path>`), which once hid its `engines()`
    method, so every scan of a local host failed and logged instead of answering."""
    from autotune.runner import fencing
    from autotune.runner.runtimes import LABEL_EXPERIMENT, LABEL_GPUS, LABEL_HOST
    from autotune.runner.runtimes.local import LocalRuntime, SimulatedRuntime

    host = f"scan-{os.getpid()}"
    env = {**os.environ, LABEL_HOST: host, LABEL_EXPERIMENT: "t/1/0", LABEL_GPUS: "2,3"}
    stray = await asyncio.create_subprocess_exec("sleep", "60", env=env)
    try:
        runtimes = {"local": LocalRuntime(engines={"vllm": str(tmp_path / "vllm")}), "simulated": SimulatedRuntime()}
        found = await fencing.scan(runtimes, host, set())
        assert found == {"t/1/0": [2, 3]}
        assert fencing.busy_gpus({}, found, [0, 1, 2, 3]) == [2, 3]
        assert await fencing.scan(runtimes, host, {"t/1/0"}) == {}  # its own attempt's engine: accounted for
    finally:
        stray.kill()
        await stray.wait()
