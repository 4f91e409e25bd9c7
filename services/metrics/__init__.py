"""`/metrics`: autotune in Prometheus text format (prometheus-client), for fleet monitoring.

An adapter over the read side (hosts, GPUs, tasks, experiments from the projection and the liveness
KV), JetStream (the streams' positions) and the services' own figures (the `autotune-stats` KV
bucket, where the scheduler and the projector publish their latency histograms). The API mounts it.

    metrics = Metrics(max_age_s=5)
    body = await metrics.scrape(nc, js, min_seq=...)   # bytes, CONTENT_TYPE

collect.py gathers a Snapshot, exposition.py renders it (and declares every series, METRICS).
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CONTENT_TYPE_LATEST

from autotune.metrics.collect import Snapshot, collect
from autotune.metrics.exposition import METRICS, render

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Scrapes that come within `max_age_s` of the last one get its exposition (several Prometheus
    servers, a dashboard refreshing): the figures are gathered at most once per `max_age_s`, and one
    gathering at a time. A write of the caller's newer than the cached figures (`min_seq`) makes
    them stale at once, so a scrape still reads its writes."""

    def __init__(self, max_age_s: float = 5.0) -> None:
        self.max_age_s = max_age_s
        self._body: bytes | None = None
        self._at = 0.0
        self._seq = 0
        self._lock = asyncio.Lock()

    async def scrape(self, nc, js, *, min_seq: int | None = None) -> bytes:
        async with self._lock:
            if self._body is None or time.monotonic() - self._at > self.max_age_s or (min_seq or 0) > self._seq:
                self._body = render(await collect(nc, js, min_seq=min_seq))
                self._at, self._seq = time.monotonic(), min_seq or 0
            return self._body


__all__ = ["CONTENT_TYPE", "METRICS", "Metrics", "Snapshot", "collect", "render"]
