"""The GPU monitor: one sample per GPU per interval on `autotune.gpu.<host>.<index>`.

With NVML (nvidia-ml-py) it reads the real GPUs: UUID, name, memory, utilization, temperature, power,
clocks and compute processes. Without it, it says so once and — when asked with `--simulate 4xH100` —
publishes a simulated fleet whose load follows the engines actually running on this host (found by
their AUTOTUNE_LABEL_* environment and CUDA_VISIBLE_DEVICES), every sample marked `simulated`.

In Kubernetes it runs as a DaemonSet: the node name (NODE_NAME, from the downward API) goes on every
sample; `autotune.gpumon.kube.cluster_gpu_inventory` gives the cluster's GPU nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import time
from pathlib import Path

from autotune.runner.gpus import nvml_gpus, parse_simulated
from autotune.runner.runtimes import LABEL_HOST
from autotune.runner.runtimes.local import labelled_processes
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared import bus
from autotune.shared.lifecycle import wait_event
from autotune.shared.log import get_logger
from autotune.shared.provision import provision
from autotune.shared.settings import Settings

log = get_logger("gpumon")


def engines_by_gpu(host: str) -> dict[int, list[int]]:
    """GPU index → pids of this host's engines that were given that GPU."""
    out: dict[int, list[int]] = {}
    for pid, labels in labelled_processes():
        if labels.get(LABEL_HOST) != host:
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"CUDA_VISIBLE_DEVICES="):
                for idx in item.split(b"=", 1)[1].split(b","):
                    if idx.strip().isdigit():
                        out.setdefault(int(idx), []).append(pid)
    return out


def simulated_samples(host: str, gpus, rng: random.Random, t: float, node: str | None = None) -> list[ev.GpuSample]:
    busy = engines_by_gpu(host)
    samples = []
    for g in gpus:
        pids = busy.get(g.index, [])
        load = 0.0 if not pids else 0.75 + 0.2 * math.sin(t / 7 + g.index) + rng.uniform(-0.05, 0.05)
        util = max(0.0, min(100.0, 100 * load))
        used = (0.06 + (0.82 if pids else 0.0)) * g.memory_total_mib
        samples.append(
            ev.GpuSample(
                id=f"gpu.{host}.{g.index}.{int(t * 1000)}", host=host, index=g.index, uuid=g.uuid, name=g.name,
                memory_total_mib=g.memory_total_mib, memory_used_mib=used, memory_free_mib=g.memory_total_mib - used,
                util_gpu=util, util_memory=util * 0.6, temperature_c=34 + 0.45 * util + rng.uniform(-1, 1),
                power_w=70 + 6.3 * util, power_limit_w=700, sm_clock_mhz=1980 if pids else 345, mem_clock_mhz=2619,
                processes=[ev.GpuProcess(pid, used / max(1, len(pids))) for pid in pids], node=node, simulated=True,
            )
        )
    return samples


def _s(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


def nvml_samples(host: str, node: str | None) -> list[ev.GpuSample]:
    """One reading of every GPU. A reading a GPU does not support (power on some boards) is 0, not an error."""
    import pynvml

    def opt(fn, *args, default=0.0):
        try:
            return fn(*args)
        except pynvml.NVMLError:
            return default

    t = time.time()
    out = []
    pynvml.nvmlInit()
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            util = opt(pynvml.nvmlDeviceGetUtilizationRates, h, default=None)
            procs = [ev.GpuProcess(p.pid, (p.usedGpuMemory or 0) / 2**20) for p in opt(pynvml.nvmlDeviceGetComputeRunningProcesses, h, default=[])]
            out.append(
                ev.GpuSample(
                    id=f"gpu.{host}.{i}.{int(t * 1000)}", host=host, index=i, uuid=_s(pynvml.nvmlDeviceGetUUID(h)),
                    name=_s(pynvml.nvmlDeviceGetName(h)), memory_total_mib=mem.total / 2**20,
                    memory_used_mib=mem.used / 2**20, memory_free_mib=mem.free / 2**20,
                    util_gpu=float(util.gpu) if util else 0.0, util_memory=float(util.memory) if util else 0.0,
                    temperature_c=float(opt(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU)),
                    power_w=opt(pynvml.nvmlDeviceGetPowerUsage, h) / 1000, power_limit_w=opt(pynvml.nvmlDeviceGetEnforcedPowerLimit, h) / 1000,
                    sm_clock_mhz=float(opt(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM)),
                    mem_clock_mhz=float(opt(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM)), processes=procs, node=node,
                )
            )
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return out


async def run(
    settings: Settings, *, stop: asyncio.Event, host: str, simulate: str | None = None, interval_s: float = 1.0, node: str | None = None
) -> None:
    node = node or os.environ.get("NODE_NAME") or None
    host = subj.token(host, "host")
    real = None if simulate else nvml_gpus()
    if real is None and not simulate:
        log.info("NVML is not available on this machine: no GPU telemetry (pass --simulate 4xH100 for a simulated fleet)")
        await stop.wait()
        return
    sim_gpus = parse_simulated(simulate) if simulate else []
    if simulate:
        log.info("publishing SIMULATED GPU telemetry", host=host, gpus=simulate)
    else:
        log.info("publishing GPU telemetry", host=host, gpus=len(real or []), node=node or "-")
    nc = await bus.connect(settings, f"gpumon-{host}", stop=stop)
    js = nc.jetstream()
    await provision(js, settings)
    rng = random.Random(host)
    failing = False
    try:
        while not stop.is_set():
            t = time.time()
            try:
                samples = simulated_samples(host, sim_gpus, rng, t, node) if simulate else await asyncio.to_thread(nvml_samples, host, node)
                failing = False
            except Exception as e:  # a GPU fell off the bus, the driver restarted: say it once, keep trying
                if not failing:
                    log.error("cannot read the GPUs; retrying every interval", error=repr(e))
                failing = True
                samples = []
            for s in samples:
                try:
                    await js.publish(subj.gpu(host, s.index), ev.encode(s), headers={"Nats-Msg-Id": s.id})
                except Exception as e:  # telemetry is best effort; the next sample follows in a second
                    log.warning("sample not published", error=repr(e))
            await wait_event(stop, max(0.05, interval_s - (time.time() - t)))
    finally:
        await bus.close(nc)
