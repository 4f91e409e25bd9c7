"""One experiment attempt through a real nats-server with real engine-simulator processes: the events
it writes, its telemetry window, log flushing, failure classification, timeout, cancel, busy GPUs."""

from __future__ import annotations

import asyncio
import os
import signal

from autotune.gpumon.service import run as gpumon_run
from autotune.runner.experiment import Context, run_attempt
from autotune.runner.gpus import wait_gpus_free
from autotune.runner.runtimes.local import SimulatedRuntime
from autotune.runner.writer import Writer
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from tests.fixtures import nvml_standin
from tests.fixtures.genai_bench import fake_genai_bench
from tests.fixtures.runner_kit import assign, context, engines_of, experiment_events, log_lines, run_one, spec
from tests.helpers import Services, wait_for


def kinds(events) -> list[str]:
    return [ev.tag_of(type(e)) for e in events]


async def test_an_attempt_reports_started_ready_progress_completed_with_telemetry_and_flushed_logs(settings, js):
    svc = Services()
    svc.start(lambda stop: gpumon_run(settings, stop=stop, host="tel", simulate="2xH100", interval_s=0.05), "gpumon")
    try:
        raw = spec("tel", benchmark={"num_concurrency": [1, 2], "max_requests_per_iteration": 12})
        events = await run_one(js, context(js, "tel", time_scale=30), raw, gpus=[1], params={"mem-fraction-static": 0.8, "max-running-requests": 16})
    finally:
        await svc.stop_all()
    assert kinds(events) == ["experiment.assigned", "experiment.started", "experiment.ready", "experiment.progress", "experiment.progress", "experiment.completed"]
    started, ready, done = events[1], events[2], events[-1]
    assert started.runtime == "simulated" and started.handle.isdigit()
    assert started.command[started.command.index("--mem-fraction-static") + 1] == "0.8"  # the tuned flags reach the engine
    assert ready.startup_s > 0 and done.startup_s == ready.startup_s
    assert [p.run_index for p in events[3:5]] == [0, 1] and events[3].runs_total == 2
    assert done.metrics.requests == 24 and done.score != 0
    # gpumon saw the engine on GPU 1 (its CUDA_VISIBLE_DEVICES) during the benchmark window
    t = done.telemetry
    assert t.samples > 0 and t.mean_util_gpu > 50 and t.max_memory_used_mib > 0.5 * 81559 and t.max_temperature_c > 34
    engine = await log_lines(js, "tel", 0, stream="engine")
    assert any("ready to roll" in line for line in engine)
    assert "shutting down" in engine[-1]  # written after SIGTERM at teardown: flushed, not lost
    assert any("launching on simulated" in line for line in await log_lines(js, "tel", 0, stream="runner"))
    assert engines_of("tel") == []


async def test_oom_and_crash_are_told_apart_and_carry_the_engine_last_lines(settings, js):
    ctx = context(js, "fail", time_scale=50)
    oom = spec("oom", model={"id_or_path": "meta-llama/Llama-3.1-70B-Instruct"})
    crash = spec("crash")
    oom_events, crash_events = await asyncio.gather(
        run_one(js, ctx, oom, params={"mem-fraction-static": 0.8}),
        run_one(js, ctx, crash, params={"tp-size": 2}),  # two-way tensor parallel on one leased GPU
    )
    o, c = oom_events[-1], crash_events[-1]
    assert isinstance(o, ev.ExperimentFailed) and o.kind == "oom" and o.stage == "startup" and not o.retryable
    assert any("OutOfMemoryError" in line for line in o.log_tail) and "exited with code 1" in o.message
    assert isinstance(c, ev.ExperimentFailed) and c.kind == "crashed" and not c.retryable
    assert any("needs tp x pp x dp" in line for line in c.log_tail)
    assert "experiment.ready" not in kinds(oom_events) and "experiment.started" in kinds(oom_events)
    assert engines_of("fail") == []


async def test_startup_timeout_and_benchmark_timeout_stop_the_engine(settings, js):
    slow = context(js, "slow", time_scale=1, startup_timeout_s=1.0)  # real-time startup takes tens of seconds
    events = await run_one(js, slow, spec("slowstart"))
    f = events[-1]
    assert isinstance(f, ev.ExperimentFailed) and f.kind == "startup_timeout" and f.stage == "startup" and not f.retryable
    assert f.duration_s < 10
    long_bench = spec("longbench", benchmark={"num_concurrency": [1], "max_requests_per_iteration": 5000, "max_time_per_iteration": 10})
    events = await run_one(js, context(js, "slow", time_scale=50), long_bench, timeout_s=5)  # startup takes ~1 s of it
    f = events[-1]
    assert isinstance(f, ev.ExperimentFailed) and f.kind == "timeout" and f.stage == "benchmark"
    assert "experiment.ready" in kinds(events)
    assert engines_of("slow") == []


async def test_cancel_stops_the_engine_before_the_cancelled_event(settings, js):
    ctx = context(js, "can", time_scale=50)
    raw = spec("cancelme", benchmark={"num_concurrency": [1], "max_requests_per_iteration": 5000, "max_time_per_iteration": 10})
    a, seq = await assign(js, raw, host="can")
    attempt = asyncio.create_task(run_attempt(ctx, a, seq))
    await wait_for(js, subj.experiment(a.task, 0, "ready"), lambda e: True, timeout=30)
    assert len(engines_of("can")) == 1
    seen_alive: list[int] = []

    async def watch() -> None:
        await wait_for(js, subj.experiment(a.task, 0, "cancelled"), lambda e: True, timeout=30)
        seen_alive.extend(engines_of("can"))  # at the moment the scheduler could reuse the GPU

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    attempt.cancel()  # what the runner does on experiment.cancel_requested
    try:
        await attempt
    except asyncio.CancelledError:
        pass
    await watcher
    assert seen_alive == []
    events = await experiment_events(js, a.task, 0)
    assert isinstance(events[-1], ev.ExperimentCancelled) and sum(isinstance(e, ev.TERMINAL_EXPERIMENT) for e in events) == 1


async def test_a_cancel_that_lands_while_an_append_is_in_flight_still_records_the_cancelled_event(settings, js):
    """A cancel can come while `ready` (or a `progress`) is being appended: the event is stored, but its
    ack is lost with the cancelled await, so the writer's last sequence is behind its own event. The
    `cancelled` event must still land after the scheduler's request: without it the task waited for
    the watchdog (a CI run saw this). The lost ack is stood in for by rewinding the writer's sequence."""
    from autotune.shared import bus

    a, seq = await assign(js, spec("inflight"), host="inf")
    base = dict(task=a.task, n=0, attempt=0, host="inf")
    w = Writer(js, a, seq)
    await w.append("started", ev.ExperimentStarted(id=ev.exp_id(a.task, 0, 0, "started"), **base, instance="i", runtime="simulated"))
    before_ready = w.last_seq
    await w.append("ready", ev.ExperimentReady(id=ev.exp_id(a.task, 0, 0, "ready"), **base, startup_s=1.0))
    w.last_seq = before_ready  # `ready` is stored; its ack never came back
    request = ev.ExperimentCancelRequested(id=ev.exp_id(a.task, 0, 0, "cancel_requested"), **base, reason="task cancelled")
    await bus.append(js, subj.experiment(a.task, 0, "cancel_requested", "inf"), request)
    await w.append("cancelled", ev.ExperimentCancelled(id=ev.exp_id(a.task, 0, 0, "cancelled"), **base, reason="cancel requested"))
    assert w.cancel_seen
    assert kinds(await experiment_events(js, a.task, 0)) == [
        "experiment.assigned", "experiment.started", "experiment.ready", "experiment.cancel_requested", "experiment.cancelled",
    ]


async def test_a_hung_engine_is_unhealthy_and_killed(settings, js):
    ctx = context(js, "hung", time_scale=50, health_interval_s=0.2, health_timeout_s=0.3, health_failures=2, stop_grace_s=2)
    raw = spec("hung", benchmark={"num_concurrency": [1], "max_requests_per_iteration": 5000, "max_time_per_iteration": 10})
    a, seq = await assign(js, raw, host="hung")
    attempt = asyncio.create_task(run_attempt(ctx, a, seq))
    started = await wait_for(js, subj.experiment(a.task, 0, "ready"), lambda e: True, timeout=30)
    assert started
    await asyncio.sleep(0.3)
    (pid,) = engines_of("hung")
    os.kill(pid, signal.SIGSTOP)  # alive but answering nothing
    await asyncio.wait_for(attempt, 60)
    f = (await experiment_events(js, a.task, 0))[-1]
    assert isinstance(f, ev.ExperimentFailed) and f.kind == "unhealthy" and f.stage == "benchmark"
    assert f.metrics is not None  # what finished before it hung
    assert engines_of("hung") == []


async def test_busy_gpus_fail_retryable_without_launching_using_nvml_standin(settings, js, monkeypatch):
    nvml_standin.install(monkeypatch, [nvml_standin.FakeGpu("GPU-aaa"), nvml_standin.FakeGpu("GPU-bbb", processes=[(4242, 70000)])])
    assert await wait_gpus_free([0, 1], wait_s=0.3, poll_s=0.1) == [1]
    ctx = Context(js=js, host="real", instance="i", runtimes={"local": SimulatedRuntime()}, real_gpus=True, gpus_busy=lambda idx: wait_gpus_free(idx, 0.3, 0.1))
    events = await run_one(js, ctx, spec("busy"), gpus=[1], mode="local", simulated=False)
    assert kinds(events) == ["experiment.assigned", "experiment.failed"]
    f = events[-1]
    assert f.kind == "gpus_busy" and f.retryable and "[1]" in f.message and f.stage == "launch"


async def test_a_stale_assignment_is_not_launched(settings, js):
    raw = spec("stale")
    a, seq = await assign(js, raw, host="stl")
    from autotune.shared import bus

    lost = ev.ExperimentFailed(id=ev.exp_id("stale", 0, 0, "failed"), task="stale", n=0, attempt=0, host="stl", kind="host_lost", retryable=True)
    await bus.append(js, subj.experiment("stale", 0, "failed"), lost)
    await asyncio.wait_for(run_attempt(context(js, "stl"), a, seq), 30)
    assert kinds(await experiment_events(js, "stale", 0)) == ["experiment.assigned", "experiment.failed"]
    assert engines_of("stl") == []


async def test_a_benchmark_that_breaks_is_a_benchmark_error_and_the_engine_still_goes(settings, js, monkeypatch):
    import autotune.bench

    async def broken(*a, **k):
        raise RuntimeError("the benchmark client fell over")

    monkeypatch.setattr(autotune.bench, "run_benchmark", broken)
    events = await run_one(js, context(js, "be"), spec("benchbreak"))
    f = events[-1]
    assert isinstance(f, ev.ExperimentFailed) and f.kind == "benchmark_error" and f.stage == "benchmark" and "fell over" in f.message
    assert "experiment.ready" in kinds(events) and engines_of("be") == []


async def test_the_attempt_rides_out_a_nats_server_restart(settings, js, nats_server):
    """The server goes away between `ready` and the result: the runner's appends wait and land once, in order."""
    ctx = context(js, "nr", time_scale=50)
    raw = spec("natsrestart", benchmark={"num_concurrency": [1, 2], "max_requests_per_iteration": 150})
    a, seq = await assign(js, raw, host="nr")
    attempt = asyncio.create_task(run_attempt(ctx, a, seq))
    await wait_for(js, subj.experiment(a.task, 0, "ready"), lambda e: True, timeout=30)
    nats_server.stop(kill=True)
    await asyncio.sleep(2)
    nats_server.start()  # same port, same store
    await asyncio.wait_for(attempt, 90)
    events = await experiment_events(js, a.task, 0)
    assert kinds(events)[-1] == "experiment.completed" and sum(isinstance(e, ev.TERMINAL_EXPERIMENT) for e in events) == 1
    assert [e.run_index for e in events if isinstance(e, ev.ExperimentProgress)] == [0, 1]
    assert engines_of("nr") == []


async def test_benchmark_driver_genai_bench_measures_with_the_external_tool(settings, js, tmp_path, monkeypatch):
    """`benchmark.driver: genai-bench` runs genai-bench (a stand-in executable: the real tool cannot be installed
    here) against the engine, and its result files become the experiment's metrics; without it on PATH the
    attempt fails as benchmark_error saying so, and the engine still goes."""
    exe = fake_genai_bench(tmp_path)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")
    events = await run_one(js, context(js, "gb"), spec("genai", benchmark={"driver": "genai-bench"}))
    done = events[-1]
    assert isinstance(done, ev.ExperimentCompleted), events[-1]
    assert len(done.metrics.runs) == 5 and done.metrics.requests == 20  # the hand-made files, not the builtin client's 6 requests
    assert [p.run_index for p in events if isinstance(p, ev.ExperimentProgress)] == [0, 1, 2, 3, 4]
    assert any("fake genai-bench benchmark" in line for line in await log_lines(js, "genai", 0, stream="runner"))
    monkeypatch.setenv("PATH", "/nonexistent")
    events = await run_one(js, context(js, "gb2"), spec("genai2", benchmark={"driver": "genai-bench"}))
    f = events[-1]
    assert isinstance(f, ev.ExperimentFailed) and f.kind == "benchmark_error" and "not on PATH" in f.message
    assert engines_of("gb") == [] and engines_of("gb2") == []
