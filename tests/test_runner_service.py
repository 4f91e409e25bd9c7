"""The runner service: one live instance per host (real processes), takeover, kill -9 and restart,
reconciliation of what a previous instance left, drain, and a clean stop."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import Counter

import msgspec

from autotune.runner.runtimes import Launch
from autotune.runner.runtimes.local import LocalRuntime
from autotune.runner.service import run as runner_run
from autotune.runner.settings import RunnerSettings
from autotune.scheduler.service import run as scheduler_run
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.liveness import LiveHost
from autotune.shared import bus
from tests.fixtures.runner_kit import Proc, assign, engines_of, experiment_events, spec
from tests.helpers import Services, events_of, submit, task_finished, wait_for


async def live_value(js, host: str) -> LiveHost:
    kv = await js.key_value(subj.HOSTS_BUCKET)
    return msgspec.json.decode((await kv.get(host)).value, type=LiveHost)


async def registered(js, host: str, after: int = 0) -> ev.HostRegistered:
    return await wait_for(js, subj.host(host, "registered"), lambda e: True, timeout=30) if not after else await _registered_after(js, host, after)


async def _registered_after(js, host: str, after: int) -> ev.HostRegistered:
    async def scan():
        async for d in bus.replay(js, subj.host(host, "registered"), start_seq=after + 1):
            return d.event

    return await asyncio.wait_for(scan(), 30)


async def test_a_second_instance_refuses_to_start_and_takeover_replaces_the_first(settings, js, tmp_path):
    first = Proc(settings, "runner", "--host", "dup", "--simulate", "1xH100", log=tmp_path / "first.log")
    second = third = None
    try:
        reg = await registered(js, "dup")
        second = Proc(settings, "runner", "--host", "dup", "--simulate", "1xH100", log=tmp_path / "second.log")
        code = await asyncio.to_thread(second.p.wait, 30)
        assert code == 2
        msg = second.text()
        assert f"host `dup` is already served by runner instance {reg.instance}" in msg and "--takeover" in msg
        assert first.p.poll() is None

        seq = await bus.last_seq(js, subj.host("dup", "registered"))
        third = Proc(settings, "runner", "--host", "dup", "--simulate", "1xH100", "--takeover", log=tmp_path / "third.log")
        new = await registered(js, "dup", after=seq)
        assert new.instance != reg.instance
        assert await asyncio.to_thread(first.p.wait, 20) == 0  # the first sees it was replaced and stops by itself
        assert "another instance took this host over" in first.text()
        assert (await live_value(js, "dup")).instance == new.instance  # and leaves the new instance's key alone
    finally:
        for p in (first, second, third):
            if p is not None:
                p.stop()


async def test_kill_9_mid_experiment_then_restart_leaves_no_engine_and_fails_the_attempt_once(settings, js, tmp_path):
    svc = Services()
    svc.start(lambda stop: scheduler_run(settings, stop=stop), "scheduler")
    args = ("runner", "--host", "k9", "--simulate", "2xH100", "--time-scale", "20")
    runner = Proc(settings, *args, log=tmp_path / "runner-1.log")
    restarted = None
    try:
        await registered(js, "k9")
        raw = spec("k9", optimization={"max_iterations": 1}, benchmark={"num_concurrency": [2], "max_requests_per_iteration": 40})
        task = await submit(js, raw)
        await wait_for(js, subj.experiment(task, 0, "ready"), lambda e: e.attempt == 0, timeout=40)
        (orphan,) = engines_of("k9")
        runner.kill()
        await asyncio.sleep(0.2)
        assert engines_of("k9") == [orphan]  # the engine outlived its runner

        restarted = Proc(settings, *args, log=tmp_path / "runner-2.log")
        final = await task_finished(js, task, timeout=90)
        assert isinstance(final, ev.TaskCompleted), final
        history = [e for _, e in await events_of(js, subj.task_all(task))]
        terminal = Counter((e.n, e.attempt) for e in history if isinstance(e, ev.TERMINAL_EXPERIMENT))
        assert terminal == Counter({(0, 0): 1, (0, 1): 1}), terminal
        (lost,) = [e for e in history if isinstance(e, ev.ExperimentFailed)]
        assert lost.attempt == 0 and lost.retryable and lost.kind in ("runner_restarted", "host_lost")
        assert any(isinstance(e, ev.ExperimentCompleted) and e.attempt == 1 for e in history)
        assert orphan not in engines_of("k9")
    finally:
        for p in (runner, restarted):
            if p is not None:
                p.stop()
        await svc.stop_all()
    assert engines_of("k9") == []


async def test_a_restarted_runner_reconciles_what_the_previous_instance_left(settings, js):
    """In-process and deterministic: a liveness value from a dead instance naming a running attempt,
    and that attempt's engine still running."""
    raw = spec("rc")
    a, seq = await assign(js, raw, host="rc")
    await bus.append(js, subj.experiment("rc", 0, "started"), ev.ExperimentStarted(id=ev.exp_id("rc", 0, 0, "started"), task="rc", n=0, host="rc", instance="old", runtime="simulated"), expect_seq=seq, expect_filter=subj.experiment_all("rc", 0))
    kv = await js.key_value(subj.HOSTS_BUCKET)
    dead = LiveHost(host="rc", instance="old", hostname=socket.gethostname(), pid=2**22 + 12345, running=["rc/0/0"], at=time.time())
    await kv.put("rc", msgspec.json.encode(dead))
    orphan = await LocalRuntime().launch(Launch(key="rc/0/0", task="rc", n=0, attempt=0, host="rc", instance="old", argv=["sleep", "300"]))
    svc = Services()
    svc.start(lambda stop: runner_run(settings, stop=stop, runner=RunnerSettings(host="rc", simulate="1xH100")), "runner")
    try:
        await asyncio.wait_for(orphan.exited.wait(), 20)
        failed = await wait_for(js, subj.experiment("rc", 0, "failed"), lambda e: True, timeout=20)
        assert failed.kind == "runner_restarted" and failed.retryable and "old" in failed.message
        assert (await live_value(js, "rc")).instance != "old"
    finally:
        await svc.stop_all()
        await orphan.stop()
    events = await experiment_events(js, "rc", 0)
    assert sum(isinstance(e, ev.TERMINAL_EXPERIMENT) for e in events) == 1


async def test_drain_takes_no_new_work_and_reports_drained_after_the_running_experiment(settings, js):
    svc = Services()
    svc.start(lambda stop: runner_run(settings, stop=stop, runner=RunnerSettings(host="dr", simulate="2xH100", time_scale=50)), "runner")
    try:
        await registered(js, "dr")
        running = spec("drain1", benchmark={"num_concurrency": [1], "max_requests_per_iteration": 60})
        await assign(js, running, host="dr", gpus=[0])
        await wait_for(js, subj.experiment("drain1", 0, "ready"), lambda e: True, timeout=30)
        await bus.append(js, subj.host("dr", "drain_requested"), ev.HostDrainRequested(id="host.dr.drain", host="dr"))
        for _ in range(50):
            if (await live_value(js, "dr")).draining:
                break
            await asyncio.sleep(0.1)
        assert (await live_value(js, "dr")).draining
        await assign(js, spec("drain2"), host="dr", gpus=[1])  # placed just before the scheduler saw the drain
        refused = await wait_for(js, subj.experiment("drain2", 0, "failed"), lambda e: True, timeout=20)
        assert refused.retryable and "draining" in refused.message
        drained = await wait_for(js, subj.host("dr", "drained"), lambda e: True, timeout=60)
        assert isinstance(drained, ev.HostDrained)
        done_seq = await bus.last_seq(js, subj.experiment("drain1", 0, "completed"))
        assert 0 < done_seq < await bus.last_seq(js, subj.host("dr", "drained"))
    finally:
        await svc.stop_all()


async def test_a_removed_host_takes_no_new_work_and_reports_drained(settings, js):
    svc = Services()
    svc.start(lambda stop: runner_run(settings, stop=stop, runner=RunnerSettings(host="rm", simulate="1xH100", time_scale=50)), "runner")
    try:
        await registered(js, "rm")
        await bus.append(js, subj.host("rm", "removed"), ev.HostRemoved(id="host.rm.removed", host="rm"))
        drained = await wait_for(js, subj.host("rm", "drained"), lambda e: True, timeout=30)
        assert isinstance(drained, ev.HostDrained) and (await live_value(js, "rm")).draining
        await assign(js, spec("late"), host="rm", gpus=[0])
        refused = await wait_for(js, subj.experiment("late", 0, "failed"), lambda e: True, timeout=20)
        assert refused.retryable and "draining" in refused.message
    finally:
        await svc.stop_all()


async def test_stopping_the_runner_tears_engines_down_and_reports_retryable(settings, js):
    svc = Services()
    stop = svc.start(lambda stop: runner_run(settings, stop=stop, runner=RunnerSettings(host="st", simulate="1xH100", time_scale=50)), "runner")
    await registered(js, "st")
    await assign(js, spec("stopme", benchmark={"num_concurrency": [1], "max_requests_per_iteration": 5000, "max_time_per_iteration": 10}), host="st")
    await wait_for(js, subj.experiment("stopme", 0, "ready"), lambda e: True, timeout=30)
    stop.set()
    await svc.stop_all()
    f = (await experiment_events(js, "stopme", 0))[-1]
    assert isinstance(f, ev.ExperimentFailed) and f.kind == "runner_restarted" and f.retryable
    assert engines_of("st") == []
    kv = await js.key_value(subj.HOSTS_BUCKET)
    try:
        await kv.get("st")
        raise AssertionError("the liveness key should be gone")
    except Exception as e:
        assert "not found" in str(e).lower() or "deleted" in type(e).__name__.lower() or "NotFound" in type(e).__name__


def test_the_host_id_is_stable_and_configurable(monkeypatch):
    from autotune.runner.settings import default_host_id

    monkeypatch.delenv("AUTOTUNE_HOST", raising=False)
    monkeypatch.delenv("NODE_NAME", raising=False)
    assert default_host_id() == default_host_id()  # derived from the machine id: the same after a restart
    monkeypatch.setenv("NODE_NAME", "gpu-node-7")
    assert default_host_id() == "gpu-node-7"
    monkeypatch.setenv("AUTOTUNE_HOST", "rack3-a")
    assert default_host_id() == "rack3-a"
    assert os.environ["AUTOTUNE_HOST"] == RunnerSettings().host


async def test_a_runner_on_nvml_gpus_registers_them_and_refuses_busy_ones_using_nvml_standin(settings, js, monkeypatch):
    from tests.fixtures import nvml_standin

    nvml_standin.install(monkeypatch, [nvml_standin.FakeGpu("GPU-aaa"), nvml_standin.FakeGpu("GPU-bbb", processes=[(777, 30_000)])])
    svc = Services()
    svc.start(lambda stop: runner_run(settings, stop=stop, runner=RunnerSettings(host="nv", runtimes=["local"], gpu_busy_wait_s=0.3)), "runner")
    try:
        reg = await registered(js, "nv")
        assert [g.uuid for g in reg.gpus] == ["GPU-aaa", "GPU-bbb"] and not reg.simulated and reg.runtimes == ["local"]
        await assign(js, spec("nvbusy"), host="nv", gpus=[1], mode="local", simulated=False, uuids=["GPU-bbb"])
        f = await wait_for(js, subj.experiment("nvbusy", 0, "failed"), lambda e: True, timeout=20)
        assert f.kind == "gpus_busy" and f.retryable and f.stage == "launch"
    finally:
        await svc.stop_all()
    assert [type(e).__name__ for e in await experiment_events(js, "nvbusy", 0)] == ["ExperimentAssigned", "ExperimentFailed"]


async def test_a_cancel_right_behind_its_assignment_is_reported_and_nothing_keeps_running(settings, js):
    svc = Services()
    svc.start(lambda stop: runner_run(settings, stop=stop, runner=RunnerSettings(host="cq", simulate="1xH100", time_scale=50)), "runner")
    try:
        await registered(js, "cq")
        a, seq = await assign(js, spec("quick"), host="cq")
        c = ev.ExperimentCancelRequested(id=ev.exp_id("quick", 0, 0, "cancel_requested"), task="quick", n=0, host="cq", reason="task cancelled")
        await bus.append(js, subj.experiment("quick", 0, "cancel_requested", "cq"), c, expect_seq=seq, expect_filter=subj.experiment_all("quick", 0))
        done = await wait_for(js, subj.experiment_all("quick", 0), lambda e: isinstance(e, ev.TERMINAL_EXPERIMENT), timeout=20)
        assert isinstance(done, ev.ExperimentCancelled)
        for _ in range(50):
            if (await live_value(js, "cq")).running == []:
                break
            await asyncio.sleep(0.1)
        assert (await live_value(js, "cq")).running == []
    finally:
        await svc.stop_all()
    assert engines_of("cq") == []
