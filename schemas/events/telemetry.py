"""The high-volume streams: gpumon's GPU samples and the engines' log lines."""

from __future__ import annotations

import msgspec

from .base import Event


class GpuProcess(msgspec.Struct, frozen=True, array_like=True):
    pid: int
    used_memory_mib: float


class GpuSample(Event, frozen=True, kw_only=True, tag="gpu.sample"):
    """gpumon's once-a-second reading of one GPU."""

    host: str
    index: int
    uuid: str = ""
    name: str = ""
    memory_total_mib: float = 0.0
    memory_used_mib: float = 0.0
    memory_free_mib: float = 0.0
    util_gpu: float = 0.0
    util_memory: float = 0.0
    temperature_c: float = 0.0
    power_w: float = 0.0
    power_limit_w: float = 0.0
    sm_clock_mhz: float = 0.0
    mem_clock_mhz: float = 0.0
    processes: list[GpuProcess] = []
    node: str | None = None
    simulated: bool = False


class LogLines(Event, frozen=True, kw_only=True, tag="log.lines"):
    """The runner's batch of engine (and runner) output lines for one experiment attempt."""

    task: str
    n: int
    attempt: int = 0
    host: str = ""
    stream: str = "engine"  # engine | runner
    seq: int = 0
    lines: list[str] = []
