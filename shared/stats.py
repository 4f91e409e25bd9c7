"""A service's own figures for `/metrics` (scheduler decision latency, projector query latency):
histograms kept in the process and published to the `autotune-stats` KV bucket every few seconds,
where the API reads them. Cheap: one small KV put per service every PERIOD_S."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import re
import time

import msgspec

from autotune.schemas import subjects as subj
from autotune.schemas.stats import HistogramSnapshot, ServiceStats
from autotune.shared.lifecycle import wait_event
from autotune.shared.log import get_logger

log = get_logger("stats")
PERIOD_S = 5.0
# seconds: a decision or a query takes a millisecond to a few seconds
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = list(buckets)
        self.counts = [0] * (len(buckets) + 1)  # per bucket, not cumulative; the last is > every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def snapshot(self) -> HistogramSnapshot:
        cumulative, total = [], 0
        for c in self.counts:
            total += c
            cumulative.append(total)
        return HistogramSnapshot(buckets=list(self.buckets), counts=cumulative, sum=self.sum)


def stats_key(service: str, instance: str) -> str:
    return f"{service}.{re.sub(r'[^A-Za-z0-9_-]', '_', instance)[:128]}"


class StatsPublisher:
    """The histograms of one service instance, published to its key while `run` runs."""

    def __init__(self, service: str, instance: str, **histograms: Histogram) -> None:
        self.service, self.instance = service, instance
        self.histograms = histograms
        self.key = stats_key(service, instance)

    def record(self) -> ServiceStats:
        return ServiceStats(service=self.service, instance=self.instance, at=time.time(),
                            histograms={k: h.snapshot() for k, h in self.histograms.items()})  # fmt: skip

    async def run(self, js, stop: asyncio.Event) -> None:
        """Until `stop`; figures that cannot be published (NATS away, a role without the bucket) are
        skipped with a warning: /metrics then shows them missing, the service goes on."""
        warned = False
        kv = None
        while not stop.is_set():
            try:
                kv = kv or await js.key_value(subj.STATS_BUCKET)
                await kv.put(self.key, msgspec.json.encode(self.record()))
                warned = False
            except Exception as e:
                if not warned:
                    log.warning("cannot publish this service's figures for /metrics", service=self.service, error=repr(e))
                    warned = True
            await wait_event(stop, PERIOD_S)
        if kv is not None:
            with contextlib.suppress(Exception):
                await kv.delete(self.key)  # stopped: its figures leave /metrics now, not at the bucket's max age
