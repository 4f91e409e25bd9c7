"""The Docker runtime against a real Docker Engine (skipped where none can run).

Images cannot be pulled here, so the test image is built locally from scratch and borrows the host's
/usr, /lib, /lib64 and /etc read-only: the engine simulator then runs inside a real container with the
host's python3, as a Python engine image would run it — host networking, ipc=host, labels, logs, stop
and removal are all Docker's own.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile

import pytest

from autotune.runner.experiment import run_attempt
from autotune.runner.runtimes import Launch
from autotune.runner.runtimes.docker import L_HOST, DockerRuntime, parse_size
from autotune.runner.settings import RunnerSettings
from autotune.scheduler.service import run as scheduler_run
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared.net import free_port
from tests.fixtures.runner_kit import assign, context, experiment_events, log_lines, run_one, spec
from tests.helpers import Services, events_of, scheduler_and_runner, submit, task_finished, wait_for

IMAGE = "autotune-test/host-python:latest"
HOST_BINDS = [f"{p}:{p}:ro" for p in ("/usr", "/lib", "/lib64", "/etc") if os.path.exists(p)]


async def _docker_or_skip():
    try:
        import aiodocker

        d = aiodocker.Docker()
    except Exception as e:
        pytest.skip(f"no Docker Engine here ({e}); start one with `dockerd --iptables=false --bridge=none`")
    try:
        await d.version()
    except Exception as e:
        await d.close()
        pytest.skip(f"the Docker Engine does not answer ({type(e).__name__}: {e}); start dockerd, or these tests skip")
    return d


_can_run: list[str | None] = []  # once per session: can this engine run our container at all?


@pytest.fixture
async def docker():
    d = await _docker_or_skip()
    try:
        await d.images.inspect(IMAGE)
    except Exception:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            dockerfile = b"FROM scratch\nLABEL org.opencontainers.image.description=autotune-test-host-python\n"
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(dockerfile)
            tar.addfile(info, io.BytesIO(dockerfile))
        buf.seek(0)
        await d.images.build(fileobj=buf, encoding="application/x-tar", tag=IMAGE, rm=True)
    if not _can_run:
        try:
            c = await d.containers.run({"Image": IMAGE, "Cmd": ["python3", "-c", "pass"], "HostConfig": {"Binds": HOST_BINDS, "NetworkMode": "host"}})
            code = (await c.wait()).get("StatusCode")
            await c.delete(force=True)
            _can_run.append(None if code == 0 else f"a test container exited with {code}")
        except Exception as e:
            _can_run.append(f"{type(e).__name__}: {e}")
    if _can_run[0] is not None:
        await d.close()
        pytest.skip(f"the Docker Engine cannot run a container with the host's python3 bind-mounted: {_can_run[0]}")
    yield d
    await d.close()


async def containers_of(d, host: str) -> list[dict]:
    return [c._container for c in await d.containers.list(all=True, filters=json.dumps({"label": [f"{L_HOST}={host}"]}))]


def runtime(**kw) -> DockerRuntime:
    return DockerRuntime(image=IMAGE, always_simulate=True, binds=HOST_BINDS, hf_cache="/nonexistent", pull=False, **kw)


@pytest.mark.docker
async def test_docker_runtime_runs_the_engine_in_a_container_with_host_network_ipc_labels_and_logs(settings, js, docker):
    rt = runtime(shm_size="2g")
    ctx = context(js, "dk", runtimes={"simulated": rt}, time_scale=50)
    raw = spec("dock", benchmark={"max_requests_per_iteration": 8})
    a, seq = await assign(js, raw, host="dk", gpus=[1])
    attempt = asyncio.create_task(run_attempt(ctx, a, seq))
    await wait_for(js, subj.experiment("dock", 0, "ready"), lambda e: True, timeout=60)
    (c,) = await containers_of(docker, "dk")
    info = await (await docker.containers.get(c["Id"])).show()
    await asyncio.wait_for(attempt, 60)
    await rt.close()

    hc = info["HostConfig"]
    assert hc["NetworkMode"] == "host" and hc["IpcMode"] == "host" and hc["ShmSize"] == 2 * 2**30 and hc["Init"] is True
    assert not hc.get("DeviceRequests")  # simulated GPUs: no device request
    labels = info["Config"]["Labels"]
    assert labels["autotune.experiment"] == "dock/0/0" and labels["autotune.host"] == "dk" and labels["autotune.task"] == "dock"
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["AUTOTUNE_LABEL_EXPERIMENT"] == "dock/0/0"
    assert info["Config"]["Cmd"][:4] == ["python3", "-m", "simulator", "sglang"] and "--mem-fraction-static" in info["Config"]["Cmd"]

    events = await experiment_events(js, "dock", 0)
    started, done = events[1], events[-1]
    assert isinstance(done, ev.ExperimentCompleted) and done.metrics.requests == 8
    assert started.runtime == "docker" and c["Id"].startswith(started.handle)
    lines = await log_lines(js, "dock", 0, stream="engine")
    assert any("SIMULATED sglang server" in line for line in lines) and "shutting down" in lines[-1]
    assert await containers_of(docker, "dk") == []  # stopped and removed


@pytest.mark.docker
async def test_docker_engine_crash_is_classified_and_its_container_removed(settings, js, docker):
    rt = runtime()
    events = await run_one(js, context(js, "dkc", runtimes={"simulated": rt}), spec("dcrash"), params={"tp-size": 2})
    await rt.close()
    f = events[-1]
    assert isinstance(f, ev.ExperimentFailed) and f.kind == "crashed" and "code 1" in f.message
    assert any("needs tp x pp x dp" in line for line in f.log_tail)
    assert await containers_of(docker, "dkc") == []


@pytest.mark.docker
async def test_docker_orphans_are_reaped_by_label(docker):
    rt = runtime()

    def launch(key: str, host: str) -> Launch:
        task, n, attempt = key.split("/")
        port = free_port()
        argv = ["python3", "-m", "sglang.launch_server", "--model-path", "m", "--host", "127.0.0.1", "--port", str(port)]
        return Launch(key=key, task=task, n=int(n), attempt=int(attempt), host=host, instance="old", argv=argv, port=port)

    kept = await rt.launch(launch("o/0/0", "dko"))
    orphan = await rt.launch(launch("o/1/0", "dko"))
    other = await rt.launch(launch("o/2/0", "dko-other"))
    try:
        removed = await rt.reap_orphans("dko", keep={"o/0/0"})
        assert removed == [orphan.ident]
        left = {c["Labels"]["autotune.experiment"] for c in await containers_of(docker, "dko")}
        assert left == {"o/0/0"} and len(await containers_of(docker, "dko-other")) == 1
    finally:
        for h in (kept, orphan, other):
            await h.stop(grace_s=1)
        await rt.close()
    assert await containers_of(docker, "dko") == [] and await containers_of(docker, "dko-other") == []


@pytest.mark.docker
async def test_a_runner_with_simulated_engines_in_docker_runs_a_task_end_to_end(settings, js, docker):
    rs = RunnerSettings(host="dke", simulate="2xH100", time_scale=50, simulated_runtime="docker", docker_image=IMAGE, docker_binds=HOST_BINDS, docker_hf_cache="/nonexistent")
    async with scheduler_and_runner(settings, rs):
        task = await submit(js, spec("dend", optimization={"max_iterations": 2}))
        final = await task_finished(js, task, timeout=90)
        assert isinstance(final, ev.TaskCompleted), final
        history = [e for _, e in await events_of(js, subj.task_all(task))]
        assert sorted(e.n for e in history if isinstance(e, ev.ExperimentCompleted)) == [0, 1]
        assert {e.runtime for e in history if isinstance(e, ev.ExperimentStarted)} == {"docker"}
    assert await containers_of(docker, "dke") == []


def test_gpu_device_requests_and_mounts_follow_the_lease_and_the_model(tmp_path):
    rt = DockerRuntime(image=None, models_dir=str(tmp_path), hf_cache=str(tmp_path), shm_size="16g")
    argv = ["python3", "-m", "sglang.launch_server", "--model-path", "meta-llama/Llama-3.1-8B-Instruct", "--host", "127.0.0.1", "--port", "30001", "--tp-size", "2"]
    spec_ = Launch(
        key="t/3/1", task="t", n=3, attempt=1, host="h", instance="i", argv=argv, image="lmsysorg/sglang:v0.4.6", model="meta-llama/Llama-3.1-8B-Instruct",
        port=30001, gpu_indices=[2, 5], gpu_uuids=["GPU-2", "GPU-5"], real_gpus=True, hf_token="hf_x",
    )
    cfg = rt.container_config(spec_)
    assert cfg["Image"] == "lmsysorg/sglang:v0.4.6" and cfg["Cmd"] == argv
    assert cfg["HostConfig"]["DeviceRequests"] == [{"Driver": "nvidia", "DeviceIDs": ["GPU-2", "GPU-5"], "Capabilities": [["gpu"]]}]
    assert f"{tmp_path}:/root/.cache/huggingface" in cfg["HostConfig"]["Binds"] and "HF_TOKEN=hf_x" in cfg["Env"]
    assert not any(e.startswith("CUDA_VISIBLE_DEVICES=") for e in cfg["Env"])  # Docker maps the devices; CUDA sees 0..n-1
    assert cfg["HostConfig"]["ShmSize"] == parse_size("16g") and cfg["HostConfig"]["IpcMode"] == "host"
    # a model named by directory under the models dir is mounted read-only and the flag points into it
    spec_.model, spec_.argv = "llama-8b", [*argv[:4], "llama-8b", *argv[5:]]
    cfg = rt.container_config(spec_)
    assert f"{tmp_path}:/models:ro" in cfg["HostConfig"]["Binds"] and cfg["Cmd"][4] == "/models/llama-8b"
    assert cfg["Cmd"][-2:] == ["--served-model-name", "llama-8b"]  # else it serves /models/llama-8b: 404 to requests for llama-8b
    # without real GPUs there is nothing to request
    spec_.real_gpus = False
    assert "DeviceRequests" not in rt.container_config(spec_)["HostConfig"]


@pytest.mark.long
@pytest.mark.docker
async def test_kill_9_the_runner_mid_experiment_then_restart_leaves_no_container(settings, js, docker, tmp_path):
    from collections import Counter

    from tests.fixtures.runner_kit import Proc

    env = {"AUTOTUNE_SIMULATED_RUNTIME": "docker", "AUTOTUNE_DOCKER_IMAGE": IMAGE, "AUTOTUNE_DOCKER_BINDS": ",".join(HOST_BINDS), "AUTOTUNE_HF_CACHE": "/nonexistent"}
    args = ("runner", "--host", "dk9", "--simulate", "1xH100", "--time-scale", "20")
    svc = Services()
    svc.start(lambda stop: scheduler_run(settings, stop=stop), "scheduler")
    runner = Proc(settings, *args, log=tmp_path / "runner-1.log", env=env)
    restarted = None
    try:
        await wait_for(js, subj.host("dk9", "registered"), lambda e: True, timeout=30)
        task = await submit(js, spec("dk9", optimization={"max_iterations": 1}, benchmark={"num_concurrency": [2], "max_requests_per_iteration": 40}))
        await wait_for(js, subj.experiment(task, 0, "ready"), lambda e: e.attempt == 0, timeout=40)
        (orphan,) = await containers_of(docker, "dk9")
        runner.kill()
        assert [c["Id"] for c in await containers_of(docker, "dk9")] == [orphan["Id"]]  # it outlived its runner
        restarted = Proc(settings, *args, log=tmp_path / "runner-2.log", env=env)
        final = await task_finished(js, task, timeout=90)
        assert isinstance(final, ev.TaskCompleted), final
        history = [e for _, e in await events_of(js, subj.task_all(task))]
        assert Counter((e.n, e.attempt) for e in history if isinstance(e, ev.TERMINAL_EXPERIMENT)) == Counter({(0, 0): 1, (0, 1): 1})
        assert orphan["Id"] not in {c["Id"] for c in await containers_of(docker, "dk9")}
    finally:
        for p in (runner, restarted):
            if p is not None:
                p.stop()
        await svc.stop_all()
    assert await containers_of(docker, "dk9") == []
