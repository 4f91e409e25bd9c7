"""gpumon: NVML readings through an NVML STAND-IN (tests/fixtures/nvml_standin.py: pynvml's functions
monkeypatched with fakes of the same signatures — there is no NVIDIA driver here), published per GPU
with the node name; one clear line without NVML; a simulated fleet that follows the engines running."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time

from autotune.gpumon.service import engines_by_gpu, nvml_samples, run, simulated_samples
from autotune.runner.gpus import nvml_busy, nvml_gpus, parse_simulated
from autotune.schemas import events as ev
from autotune.shared import bus
from tests.fixtures import nvml_standin
from tests.fixtures.nvml_standin import FakeGpu
from tests.helpers import Services


async def first_sample(js, subject: str) -> ev.GpuSample:
    async def scan():
        async for d in bus.replay(js, subject, stream="AUTOTUNE_TELEMETRY"):
            return d.event

    return await asyncio.wait_for(scan(), 20)


def fleet() -> list[FakeGpu]:
    return [
        FakeGpu("GPU-11111111-aaaa", util_gpu=97, util_memory=61, used_mib=70_000, temperature_c=66, power_mw=612_500, sm_clock_mhz=1980, processes=[(4242, 69_000)]),
        FakeGpu("GPU-22222222-bbbb", name="NVIDIA L4", total_mib=23034, unsupported={"power", "clocks"}),
    ]


def test_nvml_samples_read_every_field_through_the_nvml_standin(monkeypatch):
    calls = nvml_standin.install(monkeypatch, fleet())
    a, b = nvml_samples("h1", "node-7")
    assert (a.index, a.uuid, a.name, a.host, a.node) == (0, "GPU-11111111-aaaa", "NVIDIA H100 80GB HBM3", "h1", "node-7")
    assert a.memory_total_mib == 81559 and a.memory_used_mib == 70_000 and a.memory_free_mib == 81559 - 70_000
    assert (a.util_gpu, a.util_memory, a.temperature_c) == (97, 61, 66)
    assert a.power_w == 612.5 and a.power_limit_w == 700 and (a.sm_clock_mhz, a.mem_clock_mhz) == (1980, 2619)
    assert a.processes == [ev.GpuProcess(4242, 69_000)] and not a.simulated
    # a reading the board does not support is 0, not a lost sample
    assert (b.name, b.power_w, b.sm_clock_mhz, b.memory_total_mib) == ("NVIDIA L4", 0.0, 0.0, 23034)
    assert calls.init == calls.shutdown == 1
    assert [g.uuid for g in nvml_gpus() or []] == ["GPU-11111111-aaaa", "GPU-22222222-bbbb"]
    assert nvml_busy([0, 1]) == [0]


async def test_gpumon_publishes_each_gpu_with_the_node_name_using_nvml_standin(settings, js, monkeypatch):
    nvml_standin.install(monkeypatch, fleet())
    monkeypatch.setenv("NODE_NAME", "gpu-node-3")  # the downward API in the DaemonSet
    svc = Services()
    svc.start(lambda stop: run(settings, stop=stop, host="n3", interval_s=0.1), "gpumon")
    try:
        s0 = await first_sample(js, "autotune.gpu.n3.0")
        s1 = await first_sample(js, "autotune.gpu.n3.1")
    finally:
        await svc.stop_all()
    assert isinstance(s0, ev.GpuSample) and s0.node == "gpu-node-3" and s0.util_gpu == 97
    assert s1.name == "NVIDIA L4" and s1.node == "gpu-node-3"


async def test_without_nvml_gpumon_says_so_once_and_publishes_nothing(settings, js, monkeypatch, caplog):
    nvml_standin.install_absent(monkeypatch)
    caplog.set_level(logging.INFO)
    stop = asyncio.Event()
    t = asyncio.create_task(run(settings, stop=stop, host="nonvml", interval_s=0.05))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(t, 5)
    lines = [r.getMessage() for r in caplog.records if r.name == "gpumon"]
    assert lines == ["NVML is not available on this machine: no GPU telemetry (pass --simulate 4xH100 for a simulated fleet)"]
    info = await js.stream_info("AUTOTUNE_TELEMETRY")
    assert info.state.messages == 0


def test_the_simulated_fleet_follows_the_engines_actually_running():
    gpus = parse_simulated("2xH100")
    env = {**os.environ, "AUTOTUNE_LABEL_HOST": "simfleet", "AUTOTUNE_LABEL_EXPERIMENT": "t/0/0", "CUDA_VISIBLE_DEVICES": "1"}
    p = subprocess.Popen(["sleep", "30"], env=env)
    try:
        import random

        # Until the child has exec'd, /proc/<pid>/environ still shows the parent's environment.
        for _ in range(500):
            if p.pid in engines_by_gpu("simfleet").get(1, []):
                break
            time.sleep(0.01)

        idle, busy = simulated_samples("simfleet", gpus, random.Random(0), 100.0, node="n1")
        assert idle.util_gpu == 0 and idle.processes == [] and idle.simulated
        assert busy.util_gpu > 50 and [pr.pid for pr in busy.processes] == [p.pid] and busy.memory_used_mib > 0.8 * busy.memory_total_mib
        assert busy.node == "n1" and busy.name == "Simulated NVIDIA H100"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    idle2, _ = simulated_samples("simfleet", gpus, random.Random(0), 101.0)
    assert idle2.util_gpu == 0
