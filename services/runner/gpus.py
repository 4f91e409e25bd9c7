"""Which GPUs this host has: NVML when it answers, else a simulated set (`4xH100`), labelled as such."""

from __future__ import annotations

import asyncio
import contextlib
import re

from autotune.schemas.liveness import LiveGpu

# memory per simulated GPU model, MiB (what NVML would report)
SIM_MEMORY_MIB = {
    "H100": 81559, "H200": 143771, "A100": 81920, "A100-40GB": 40960, "L40S": 46068,
    "RTX4090": 24564, "H20": 97871, "L4": 23034, "A10G": 23028,
}


class GpuSpecError(ValueError):
    pass


def parse_simulated(spec: str) -> list[LiveGpu]:
    """`4xH100` or `2xH100,2xA100` → simulated GPUs with stable fake UUIDs."""
    gpus: list[LiveGpu] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*([A-Za-z0-9-]+)\s*", part)
        if not m:
            raise GpuSpecError(f"`{part}` is not a GPU set; write COUNTxMODEL, e.g. 4xH100")
        count, model = int(m[1]), m[2].upper()
        if model not in SIM_MEMORY_MIB:
            raise GpuSpecError(f"unknown simulated GPU `{m[2]}`; known: {', '.join(SIM_MEMORY_MIB)}")
        for _ in range(count):
            i = len(gpus)
            gpus.append(
                LiveGpu(index=i, uuid=f"GPU-sim-{i:04d}-{model.lower()}", name=f"Simulated NVIDIA {model}", memory_total_mib=SIM_MEMORY_MIB[model])
            )
    return gpus


def nvml_gpus() -> list[LiveGpu] | None:
    """The real GPUs, or None when NVML is not available on this machine."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            out.append(LiveGpu(index=i, uuid=_s(uuid), name=_s(name), memory_total_mib=mem.total / 2**20))
        return out
    finally:
        pynvml.nvmlShutdown()


def _s(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


def sim_model(gpu_name: str) -> str:
    """`Simulated NVIDIA H100` → `H100` (what the engine simulator imitates)."""
    return gpu_name.removeprefix("Simulated ").removeprefix("NVIDIA ").strip() or "H100"


def nvml_busy(indices: list[int]) -> list[int]:
    """Which of these GPUs have compute processes right now (NVML); [] when NVML cannot tell."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        busy = []
        for i in indices:
            try:
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                if pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                    busy.append(i)
            except pynvml.NVMLError:
                continue
        return busy
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


async def wait_gpus_free(indices: list[int], wait_s: float = 5.0, poll_s: float = 0.5) -> list[int]:
    """The leased GPUs still busy after up to `wait_s` (a just-stopped engine's context takes a moment to go)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        busy = await asyncio.to_thread(nvml_busy, indices)
        if not busy or loop.time() >= deadline:
            return busy
        await asyncio.sleep(poll_s)
