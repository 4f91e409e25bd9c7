"""CPU serving: a host without GPUs offers real engines on its CPU (`gpu_type: cpu`), as many at once as
it has CPU slots; the engine's executable, environment and model directory are the host's
configuration, reported when it registers, and recorded with each experiment.

The end-to-end test here runs the engine simulator under the name of the vLLM executable (a script
`vllm` that runs it with vLLM's real command line) so that it is quick; tests/test_real_vllm.py
runs the same path on the real vLLM (marker `real_engine`)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import msgspec
import pytest

from autotune import reads
from autotune.projector.service import run as projector_run
from autotune.runner.experiment import AttemptRun, Context, EngineExited, run_attempt
from autotune.runner.runtimes import Handle, Launch
from autotune.runner.runtimes.local import LocalRuntime, labelled_processes
from autotune.runner.service import run as runner_run
from autotune.runner.settings import RunnerSettings, parse_pairs
from autotune.scheduler.placement import LiveGpu, LiveHost, place
from autotune.scheduler.service import run as scheduler_run
from autotune.schemas import events as ev
from autotune.schemas.spec import SpecError, spec_from_obj
from autotune.shared import query as q
from autotune.shared.fit import fit
from tests.helpers import Services, events_of, small_spec, submit, task_finished


async def projector_answers(nc, timeout_s: float = 60.0) -> None:
    """The projector starts in seconds on a loaded machine: a short task can finish before it answers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            await q.sql(nc, "SELECT 1", timeout=2)
            return
        except q.QueryError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


def cpu_host(name: str = "c1", slots: int = 1, engines: list[str] | None = None) -> LiveHost:
    return LiveHost(host=name, instance=f"{name}-i", runtimes=["local", "simulated"], simulated=True, cpu_slots=slots,
                    cpu_engines=["vllm"] if engines is None else engines)  # fmt: skip


def place_cpu_task(fleet: dict[str, LiveHost], cpu_used: dict[str, int] | None = None, engine: str = "vllm", mode: str = "local", simulate: bool = False):
    return place(gpus_needed=1, engine=engine, deployment_mode=mode, gpu_type="cpu", simulate=simulate, fleet=fleet, leased={},
                 foreign_busy={}, cpu_used=cpu_used)  # fmt: skip


def test_a_cpu_task_takes_a_cpu_slot_not_a_gpu():
    p = place_cpu_task({"c1": cpu_host()})
    assert p is not None and (p.host, p.gpu_indices, p.gpu_type, p.deployment_mode, p.simulated) == ("c1", [], "cpu", "local", False)
    # a 2-core host has one slot: the second CPU engine waits instead of sharing (and measuring) its cores
    assert place_cpu_task({"c1": cpu_host()}, cpu_used={"c1": 1}) is None
    # the host with the most free slots wins
    assert place_cpu_task({"c1": cpu_host(), "c2": cpu_host("c2", slots=4)}, cpu_used={"c2": 1}).host == "c2"


def test_a_cpu_task_needs_a_host_that_serves_its_engine_on_cpu():
    assert place_cpu_task({"c1": cpu_host(slots=0)}) is None
    assert place_cpu_task({"c1": cpu_host(engines=[])}) is None
    assert place_cpu_task({"c1": cpu_host()}, engine="sglang") is None
    assert place_cpu_task({"c1": msgspec.structs.replace(cpu_host(), draining=True)}) is None
    # rehearsed (--simulate), a CPU task runs on a simulated GPU like any other, labelled SIMULATED
    sim = place(gpus_needed=1, engine="vllm", deployment_mode="local", gpu_type="cpu", simulate=True,
                fleet={"g1": LiveHost(host="g1", instance="i", runtimes=["simulated"], simulated=True, gpus=[LiveGpu(index=0, uuid="u", name="H100")])},
                leased={}, foreign_busy={})  # fmt: skip
    assert sim is not None and sim.simulated and sim.gpu_type == "H100"  # the simulated GPU it got, not "cpu"


def test_a_cpu_task_fits_a_host_with_cpu_slots_and_says_what_is_missing_otherwise():
    kw = dict(engine="vllm", deployment_mode="local", gpu_type="cpu", simulate=False)
    f = fit(2, {"c1": cpu_host(), "c2": cpu_host("c2", slots=0)}, **kw)  # an engine takes one slot, whatever its flags
    assert f.fits and f.able == ("c1",)
    gpu_only = LiveHost(host="g1", instance="i", runtimes=["local"], gpus=[LiveGpu(index=0, uuid="u", name="H100")])
    f = fit(1, {"g1": gpu_only}, **kw)
    assert not f.fits and "no live host serves vllm on its CPU" in f.reason


def test_spec_refuses_cpu_serving_outside_the_local_runtime_and_bad_env_names():
    base = {**small_spec("c", base_runtime="vllm", deployment_mode="local", gpu_type="cpu"), "parameters": {"max-num-seqs": [1, 16]}}
    assert spec_from_obj(base).engine_env == {}
    with pytest.raises(SpecError, match="deployment_mode local") as e:
        spec_from_obj({**base, "deployment_mode": "docker"})
    assert e.value.path == "$.deployment_mode"
    with pytest.raises(SpecError) as e:
        spec_from_obj({**base, "engine_env": {"1BAD": "x"}})
    assert e.value.path == "$.engine_env.1BAD"


def test_runner_settings_name_what_is_wrong_with_an_engine(tmp_path):
    with pytest.raises(ValueError, match="not NAME=VALUE"):
        parse_pairs(["vllm"], "engine")
    assert parse_pairs("HF_HUB_OFFLINE=1, VLLM_CPU_KVCACHE_SPACE=2", "engine-env") == {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "2"}
    with pytest.raises(ValueError, match="is not an executable file"):
        RunnerSettings.from_env(engines={"vllm": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="not vllm or sglang"):
        RunnerSettings.from_env(engines={"trt": sys.executable})


def test_local_runtime_runs_the_hosts_executable_and_serves_the_model_by_the_tasks_name(tmp_path):
    rt = LocalRuntime(models_dir=str(tmp_path), engines={"vllm": "/opt/vllm/bin/vllm"}, engine_env={"HF_HUB_OFFLINE": "1"})
    spec = Launch(key="t/0/0", task="t", n=0, attempt=0, host="c1", instance="i", engine="vllm", model="tiny-llama",
                  argv=["vllm", "serve", "tiny-llama", "--port", "8000", "--max-num-seqs", "4"], env={"VLLM_CPU_KVCACHE_SPACE": "1"})  # fmt: skip
    assert rt.command(spec) == ["/opt/vllm/bin/vllm", "serve", str(tmp_path / "tiny-llama"), "--port", "8000", "--max-num-seqs", "4",
                                "--served-model-name", "tiny-llama"]  # fmt: skip
    assert rt.environment(spec) == {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "CUDA_VISIBLE_DEVICES": ""}
    # a name the task already serves under is kept; a model given as a path is not rewritten
    named = Launch(**{**spec.__dict__, "argv": [*spec.argv, "--served-model-name", "x"]})
    assert rt.command(named).count("--served-model-name") == 1
    assert rt.command(Launch(**{**spec.__dict__, "model": "/m/tiny", "argv": ["vllm", "serve", "/m/tiny"]})) == ["/opt/vllm/bin/vllm", "serve", "/m/tiny"]


# vLLM 0.32.0's own last lines for each failure (captured from real runs of infra/engines' tiny model)
FLAG_REJECTED = ["usage: vllm [-h] [-v]", "            {chat,complete,serve,launch,bench,collect-env,download-kernels,preload,run-batch,snapshot}",
                 "            ...", "vllm: error: unrecognized arguments: --bogus-flag 3"]  # fmt: skip
KV_TOO_SMALL = [
    "(EngineCore pid=15869) ERROR 12-07 14:54:02 [core.py:1510]     raise ValueError(",
    "(EngineCore pid=15869) ERROR 12-07 14:54:02 [core.py:1510] ValueError: To serve at least one request with the model's max seq len (2048), "
    "(0.0 GiB KV cache is needed, which is larger than the available KV cache memory (0.0 GiB). Try increasing `gpu_memory_utilization` "
    "(which also controls CPU memory on the CPU backend) or decreasing `max_model_len` when initializing the engine.",
    "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
]


def classify(lines: list[str], code: int, stage: str):
    a = ev.ExperimentAssigned(id="x", task="t", n=0, attempt=0, host="h", parameters={}, spec={}, deployment_mode="local")
    run = AttemptRun(Context(js=None, host="h", instance="i", runtimes={}), a, 0)
    run.handle = Handle("1", "http://127.0.0.1:1")
    for line in lines:
        run.handle.add_line(line)
    return run._classify_exit(EngineExited(code, stage))


def test_real_vllm_failures_are_classified_with_the_line_that_says_why():
    f = classify(FLAG_REJECTED, 2, "startup")
    assert (f.kind, f.retryable) == ("launch_error", False)  # another host would refuse the same flags
    assert f.message.startswith("the engine rejected its command line: vllm: error: unrecognized arguments: --bogus-flag 3")
    f = classify(KV_TOO_SMALL, 1, "startup")
    assert f.kind == "oom" and "KV cache is too small" in f.message
    assert "ValueError: To serve at least one request with the model's max seq len (2048)" in f.message and "EngineCore pid" not in f.message
    f = classify(["INFO:     127.0.0.1:40000 - \"POST /v1/completions HTTP/1.1\" 200 OK"], -9, "benchmark")
    assert (f.kind, f.message) == ("crashed", "the engine exited with code -9 during benchmark")


async def test_a_cpu_task_runs_one_engine_at_a_time_and_records_what_it_started_with(settings, js, nc, tmp_path, capsys):
    vllm = tmp_path / "vllm-venv" / "bin" / "vllm"  # the simulator under the vLLM executable's name
    vllm.parent.mkdir(parents=True)
    vllm.write_text(f'#!/bin/sh\n[ "$1" = serve ] || exit 64\nexec {sys.executable} -m autotune.simulator vllm "$@"\n')
    vllm.chmod(0o755)
    host_env = {"HF_HUB_OFFLINE": "1", "AUTOTUNE_SIM_TIME_SCALE": "20", "AUTOTUNE_SIM_STARTUP_SCALE": "1000"}
    rs = RunnerSettings(host="cpu1", engines={"vllm": str(vllm)}, engine_env=host_env, models_dir=str(tmp_path / "models"))
    svc = Services()
    svc.start(lambda stop: scheduler_run(settings, stop=stop), "scheduler")
    svc.start(lambda stop: projector_run(settings, stop=stop, db_path=str(tmp_path / "view.duckdb")), "projector")
    svc.start(lambda stop: runner_run(settings, stop=stop, runner=rs), "runner")
    raw = small_spec(
        "cpu", base_runtime="vllm", deployment_mode="local", gpu_type="cpu", model={"id_or_path": "Llama-3.1-8B"},
        parameters={"max-num-seqs": [1, 16]}, engine_env={"VLLM_CPU_KVCACHE_SPACE": "1"},
        optimization={"max_iterations": 2, "max_parallel": 2},
        benchmark={"traffic_scenarios": ["D(64,16)"], "num_concurrency": [4], "max_requests_per_iteration": 12, "warmup_requests": 0},
    )
    raw["parameters"] = {"max-num-seqs": [1, 16]}  # small_spec merges dicts: not its SGLang flags
    try:
        task = await submit(js, raw)
        final = await task_finished(js, task, timeout=120)
        assert isinstance(final, ev.TaskCompleted), final
        history = await events_of(js, f"autotune.task.{task}.>")
        assigned = [e for _, e in history if isinstance(e, ev.ExperimentAssigned)]
        assert [(a.host, a.gpu_indices, a.gpu_type, a.deployment_mode, a.simulated) for a in assigned] == [("cpu1", [], "cpu", "local", False)] * 2
        # one CPU slot: the second engine was placed only once the first had finished
        seqs = [(type(e).__name__, e.n) for _, e in history if isinstance(e, ev.ExperimentAssigned | ev.ExperimentCompleted)]
        assert seqs in ([("ExperimentAssigned", 0), ("ExperimentCompleted", 0), ("ExperimentAssigned", 1), ("ExperimentCompleted", 1)],
                        [("ExperimentAssigned", 1), ("ExperimentCompleted", 1), ("ExperimentAssigned", 0), ("ExperimentCompleted", 0)])  # fmt: skip
        started = [e for _, e in history if isinstance(e, ev.ExperimentStarted)]
        for s in started:
            assert s.device == "cpu" and s.command[0] == str(vllm) and s.command[2] == str(tmp_path / "models" / "Llama-3.1-8B")
            assert s.command[-2:] == ["--served-model-name", "Llama-3.1-8B"]
            assert s.env == {**host_env, "VLLM_CPU_KVCACHE_SPACE": "1", "CUDA_VISIBLE_DEVICES": ""}
        for c in (e for _, e in history if isinstance(e, ev.ExperimentCompleted)):
            assert c.engine.source == "vllm"  # the benchmark is shorter than a scrape interval here: counters, maybe no load sample
            assert c.engine.generation_tokens == 12 * 16 and c.engine.prompt_tokens == 12 * 64
            assert c.engine.max_running is None or c.engine.max_running <= 4
        registered = [e for _, e in await events_of(js, "autotune.host.cpu1.>") if isinstance(e, ev.HostRegistered)][-1]
        assert (registered.cpu_slots, registered.cpu_engines, registered.engine_paths) == (1, ["vllm"], {"vllm": str(vllm)})

        # every surface reads it labelled as a real engine on CPU, with the engine's own telemetry
        await projector_answers(nc)
        last = (await js.stream_info("AUTOTUNE_EVENTS")).state.last_seq
        t = await reads.task_detail(nc, task, min_seq=last)
        assert t.real_cpu and not t.simulate
        d = await reads.experiment_detail(nc, task, 0)
        assert d.real_cpu and d.device == "cpu" and d.engine_env["VLLM_CPU_KVCACHE_SPACE"] == "1"
        assert d.engine_telemetry is not None and d.engine_telemetry["generation_tokens"] == 12 * 16
        assert d.engine_telemetry["steps"] and d.engine_telemetry["tokens_per_step"] > 1  # a prefill pass carries 64 tokens
        from autotune import demo_real

        await demo_real._explain(nc, js, task)  # `just demo-real`'s table: the engine's batch per forward pass beside the gauges
        table = capsys.readouterr().out
        assert "tokens/pass" in table and "Each forward pass of the best carried" in table, table
        assert (await reads.list_experiments(nc, task)).real_cpu
        assert "REAL engine serving on CPU" in ((await reads.export(nc, task, fmt="cmd")).note or "")
        shown = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "autotune.cli", "experiment", task, "0", "--nats", settings.nats_url],
                                        capture_output=True, text=True, timeout=60)  # fmt: skip
        assert "REAL engine on CPU" in shown.stdout and "engine      vllm /metrics" in shown.stdout, shown.stdout + shown.stderr
        assert "tokens per pass)" in shown.stdout, shown.stdout
        assert "VLLM_CPU_KVCACHE_SPACE=1" in shown.stdout
        (host,) = [h for h in await reads.list_hosts(nc, js) if h.host == "cpu1"]
        assert (host.cpu_slots, host.cpu_engines, host.engine_paths) == (1, ["vllm"], {"vllm": str(vllm)})
    finally:
        await svc.stop_all()
    assert [p for p, labels in labelled_processes() if labels.get("AUTOTUNE_LABEL_HOST") == "cpu1"] == []



async def test_an_engine_whose_main_process_dies_mid_benchmark_crashed_though_its_children_hold_the_pipe(js, tmp_path):
    """vLLM's engine core and worker keep the output pipe open when its API server is killed: the runner
    noticed the death only at EOF, the client meanwhile burnt through its requests on refused
    connections, and the attempt was recorded `completed` (seen on the real vLLM, tests/test_real_vllm.py).
    Here a `sleep` child holds the pipe the same way."""
    from tests.fixtures.runner_kit import assign, context, experiment_events

    vllm = tmp_path / "vllm"
    vllm.write_text(f'#!/bin/sh\nsleep 120 &\nexec {sys.executable} -m autotune.simulator vllm "$@"\n')
    vllm.chmod(0o755)
    rt = LocalRuntime(engines={"vllm": str(vllm)}, engine_env={"AUTOTUNE_SIM_TIME_SCALE": "1", "AUTOTUNE_SIM_STARTUP_SCALE": "1000"})
    ctx = context(js, host="cpu-die", runtimes={"local": rt}, time_scale=1.0)
    raw = small_spec("die", base_runtime="vllm", deployment_mode="local", gpu_type="cpu", model={"id_or_path": "/m/Llama-3.1-8B"},
                     benchmark={"traffic_scenarios": ["D(64,200)"], "num_concurrency": [4], "max_requests_per_iteration": 400,
                                "max_time_per_iteration": 2, "warmup_requests": 0})  # fmt: skip
    a, seq = await assign(js, raw, host="cpu-die", mode="local", simulated=False, gpus=[], params={"max-num-seqs": 4}, timeout_s=120)
    attempt = asyncio.create_task(run_attempt(ctx, a, seq))
    for _ in range(300):
        events = await experiment_events(js, a.task, a.n)
        if any(isinstance(e, ev.ExperimentReady) for e in events):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    leader = int(next(e for e in events if isinstance(e, ev.ExperimentStarted)).handle)
    os.kill(leader, signal.SIGKILL)
    await asyncio.wait_for(attempt, 60)
    f = (await experiment_events(js, a.task, a.n))[-1]
    assert isinstance(f, ev.ExperimentFailed) and (f.kind, f.stage) == ("crashed", "benchmark"), (f.metrics.runs if f.metrics else None, f)
    assert "SIGKILL" in f.message
    assert [p for p, labels in labelled_processes() if labels.get("AUTOTUNE_LABEL_HOST") == "cpu-die"] == []  # the sleep too
