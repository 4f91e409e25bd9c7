"""The leased GPUs during an experiment's benchmark window, summarized from gpumon's samples.

A plain core-NATS subscription to `autotune.gpu.<host>.<i>` for the leased indices, open only for the
window: the samples are already in the telemetry stream, this is just the experiment's own view of them.
"""

from __future__ import annotations

import contextlib

import msgspec

from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared.log import get_logger

log = get_logger("runner")
_decoder = msgspec.json.Decoder(ev.GpuSample)


class TelemetryWindow:
    def __init__(self, nc, host: str, gpu_indices: list[int]) -> None:
        self.nc, self.host, self.indices = nc, host, list(gpu_indices)
        self.samples: list[ev.GpuSample] = []
        self._subs: list = []

    async def __aenter__(self) -> TelemetryWindow:
        if self.nc is not None:
            for i in self.indices:
                try:
                    self._subs.append(await self.nc.subscribe(subj.gpu(self.host, i), cb=self._on))
                except Exception as e:  # telemetry is best effort: the experiment runs without it
                    log.warning("cannot subscribe to GPU telemetry", gpu=i, error=repr(e))
        return self

    async def _on(self, msg) -> None:
        with contextlib.suppress(msgspec.MsgspecError):
            self.samples.append(_decoder.decode(msg.data))

    async def __aexit__(self, *exc: object) -> None:
        for s in self._subs:
            with contextlib.suppress(Exception):
                await s.unsubscribe()
        self._subs.clear()

    def summary(self) -> ev.TelemetrySummary:
        return summarize(self.samples)


def summarize(samples: list[ev.GpuSample]) -> ev.TelemetrySummary:
    if not samples:
        return ev.TelemetrySummary()
    util = [s.util_gpu for s in samples]
    return ev.TelemetrySummary(
        samples=len(samples),
        mean_util_gpu=sum(util) / len(util),
        max_util_gpu=max(util),
        max_memory_used_mib=max(s.memory_used_mib for s in samples),
        mean_power_w=sum(s.power_w for s in samples) / len(samples),
        max_temperature_c=max(s.temperature_c for s in samples),
    )
