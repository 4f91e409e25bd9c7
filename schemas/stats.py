"""A service's own figures, for `/metrics`: the value of its key in the `autotune-stats` KV bucket
(`<service>.<instance>`), rewritten every few seconds; the bucket's max age drops a service that
stopped. Not an event: figures of one process's life, not facts of the log. Histograms are
cumulative since the process started, as Prometheus expects of them (a restart resets them)."""

from __future__ import annotations

import msgspec


class HistogramSnapshot(msgspec.Struct, kw_only=True):
    buckets: list[float]  # upper bounds, ascending; +Inf is implied
    counts: list[int]  # observations <= each bound (cumulative), then the total (+Inf): len(buckets) + 1
    sum: float = 0.0


class ServiceStats(msgspec.Struct, kw_only=True):
    service: str  # scheduler | projector
    instance: str
    at: float  # epoch seconds of this record
    histograms: dict[str, HistogramSnapshot] = {}
