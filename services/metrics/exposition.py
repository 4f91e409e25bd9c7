"""A Snapshot as Prometheus series (prometheus-client's metric families and text exposition). Every
series autotune exports is declared in METRICS, so the Grafana dashboard's test can check that it
names only series that exist."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from autotune.metrics.collect import DURATION_BUCKETS, Snapshot
from autotune.reads import models as m

MIB = 1024 * 1024
GPU = ["host", "gpu", "model", "node"]

# name -> (kind, help, labels); a counter's samples end in _total, a histogram's in _bucket/_sum/_count
METRICS: dict[str, tuple[str, str, list[str]]] = {
    "autotune_gpu_utilization_percent": ("gauge", "GPU utilization in the latest sample", GPU),
    "autotune_gpu_memory_used_bytes": ("gauge", "GPU memory used in the latest sample", GPU),
    "autotune_gpu_memory_total_bytes": ("gauge", "GPU memory in total", GPU),
    "autotune_gpu_temperature_celsius": ("gauge", "GPU temperature in the latest sample", GPU),
    "autotune_gpu_power_watts": ("gauge", "GPU power draw in the latest sample", GPU),
    "autotune_gpu_busy": ("gauge", "1 while an experiment holds the GPU", GPU),
    "autotune_gpu_experiment": ("gauge", "the experiment attempt holding the GPU (value 1)", [*GPU, "task", "experiment", "attempt"]),
    "autotune_host_online": ("gauge", "1 while the host's runner heartbeats (its liveness key exists)", ["host", "node"]),
    "autotune_host_status": ("gauge", "1 for the host's status: online, busy, draining, offline", ["host", "status"]),
    "autotune_host_simulated": ("gauge", "1 for a host with simulated GPUs and engines", ["host"]),
    "autotune_tasks": ("gauge", "tasks by status", ["status"]),
    "autotune_experiments": ("gauge", "experiment attempts by status and failure kind", ["status", "failure_kind"]),
    "autotune_experiment_duration_seconds": ("histogram", "experiment attempts by their duration end to end", ["status"]),
    "autotune_queue_depth": ("gauge", "experiments planned and not yet placed on a host", []),
    "autotune_task_best_score": ("gauge", "the best score so far of each running task (lower is better)", ["task", "simulated"]),
    "autotune_stream_messages": ("counter", "messages ever appended to the stream (rate() is the append rate)", ["stream"]),
    "autotune_projector_lag_messages": ("gauge", "messages of the stream the projector has not applied yet", ["stream"]),
    "autotune_projector_lag_seconds": ("gauge", "how long ago the first message the projector has not applied was stored", ["stream"]),
    "autotune_projector_dead_letters": ("gauge", "messages the projector could not decode or apply", ["stream"]),
    "autotune_projector_query_seconds": ("histogram", "read-only SQL answered by the projector, by instance", ["instance"]),
    "autotune_scheduler_decision_seconds": ("histogram", "one decide() pass of the leading scheduler, by instance", ["instance"]),
    "autotune_service_stats_age_seconds": ("gauge", "age of a service's published figures", ["service", "instance"]),
    "autotune_metrics_collect_seconds": ("gauge", "how long this scrape's figures took to gather", []),
}
SERVICE_HISTOGRAMS = {("projector", "query_seconds"): "autotune_projector_query_seconds",
                      ("scheduler", "decision_seconds"): "autotune_scheduler_decision_seconds"}  # fmt: skip


def family(name: str) -> Metric:
    kind, doc, labels = METRICS[name]
    cls = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily, "histogram": HistogramMetricFamily}[kind]
    return cls(name, doc, labels=labels)


def _num(v: float | None) -> float | None:
    return None if v is None else float(v)


class _Families:
    def __init__(self) -> None:
        self.by_name = {name: family(name) for name in METRICS}

    def add(self, name: str, labels: list[str], value: float | None) -> None:
        if value is not None:
            self.by_name[name].add_metric(labels, value)


def _gpus(f: _Families, hosts: list[m.Host]) -> None:
    for h in hosts:
        node = h.node or ""
        f.add("autotune_host_online", [h.host, node], 1.0 if h.alive else 0.0)
        for status in ("online", "busy", "draining", "offline"):
            f.add("autotune_host_status", [h.host, status], 1.0 if h.status == status else 0.0)
        f.add("autotune_host_simulated", [h.host], 1.0 if h.simulated else 0.0)
        for g in h.gpus:
            labels = [h.host, str(g.index), g.name or "", node]
            f.add("autotune_gpu_memory_total_bytes", labels, None if g.memory_total_mib is None else g.memory_total_mib * MIB)
            if not h.alive:
                continue  # a dead host's last reading is not its state
            f.add("autotune_gpu_utilization_percent", labels, _num(g.util_gpu))
            f.add("autotune_gpu_memory_used_bytes", labels, None if g.memory_used_mib is None else g.memory_used_mib * MIB)
            f.add("autotune_gpu_temperature_celsius", labels, _num(g.temperature_c))
            f.add("autotune_gpu_power_watts", labels, _num(g.power_w))
            f.add("autotune_gpu_busy", labels, 1.0 if g.leased_by else 0.0)
            if g.leased_by:
                task, n, attempt = g.leased_by.rsplit("/", 2)
                f.add("autotune_gpu_experiment", [*labels, task, n, attempt], 1.0)


def families(s: Snapshot) -> Iterator[Metric]:
    f = _Families()
    _gpus(f, s.hosts)
    for status, n in sorted(s.tasks.items()):
        f.add("autotune_tasks", [status], n)
    for status, kind, n in sorted(s.experiments):
        f.add("autotune_experiments", [status, kind], n)
    f.add("autotune_queue_depth", [], sum(n for status, _, n in s.experiments if status == "planned"))
    durations = f.by_name["autotune_experiment_duration_seconds"]
    for status, (counts, total, n) in sorted(s.durations.items()):
        buckets = [(repr(float(b)), c) for b, c in zip(DURATION_BUCKETS, counts, strict=True)] + [("+Inf", n)]
        durations.add_metric([status], buckets, total)  # type: ignore[attr-defined]
    for task, score, sim in s.best:
        f.add("autotune_task_best_score", [task, "true" if sim else "false"], score)
    for p in s.streams:
        f.add("autotune_stream_messages", [p.stream], p.last_seq)
        f.add("autotune_projector_lag_messages", [p.stream], p.lag_messages)
        f.add("autotune_projector_lag_seconds", [p.stream], p.lag_seconds)
        if p.applied_seq is not None:
            f.add("autotune_projector_dead_letters", [p.stream], p.dead_letters)
    now = time.time()
    for st in s.stats:
        f.add("autotune_service_stats_age_seconds", [st.service, st.instance], max(0.0, now - st.at))
        for key, h in st.histograms.items():
            name = SERVICE_HISTOGRAMS.get((st.service, key))
            if name is None or len(h.counts) != len(h.buckets) + 1:
                continue
            buckets = [(repr(float(b)), c) for b, c in zip(h.buckets, h.counts, strict=False)] + [("+Inf", h.counts[-1])]
            f.by_name[name].add_metric([st.instance], buckets, h.sum)  # type: ignore[attr-defined]
    f.add("autotune_metrics_collect_seconds", [], s.collect_seconds)
    yield from f.by_name.values()


class _Collector:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return families(self.snapshot)


def render(snapshot: Snapshot) -> bytes:
    """The Prometheus text exposition of `snapshot`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snapshot))
    return generate_latest(registry)
