"""A Snapshot as Prometheus series (prometheus-client's metric families and text exposition). Every
series autotune exports is declared in METRICS, so the Grafana dashboard's test can check that it
names only series that exist."""

from __future__ import annotations

import functools
from collections.abc import Iterator

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from autotune.metrics.collect import DURATION_BUCKETS, Snapshot
from autotune.reads import models as m
from autotune.schemas.status import HostStatus

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
    "autotune_host_status": ("gauge", "1 for the host's status: online, busy, draining, offline, lost, stopped", ["host", "status"]),
    "autotune_host_simulated": ("gauge", "1 for a host with simulated GPUs and engines", ["host"]),
    "autotune_host_gpus_reporting": ("gauge", "GPUs of the host with readings: a sample from the last 60 s while the host is online "
                                              "(fewer than its GPUs: a gpumon is silent, or the projector is behind on telemetry)", ["host", "node"]),
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
    """Series into prometheus-client's metric families (what `families` yields)."""

    def __init__(self) -> None:
        self.by_name = {name: family(name) for name in METRICS}

    def add(self, name: str, labels: list[str], value: float | None) -> None:
        if value is not None:
            self.by_name[name].add_metric(labels, value)

    def histogram(self, name: str, labels: list[str], buckets: list[tuple[str, float]], total: float) -> None:
        self.by_name[name].add_metric(labels, buckets, total)  # type: ignore[attr-defined]


def _escape(v: str) -> str:  # a label value, as prometheus-client escapes it
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


@functools.lru_cache(maxsize=200_000)
def _label_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """`k="v",...` in label-name order. Cached across scrapes: a fleet's hosts and GPUs rarely change."""
    return ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(zip(names, values, strict=True)))


_value_text = functools.lru_cache(maxsize=100_000)(floatToGoString)  # 0, 1, memory totals, whole percents recur


class _Text:
    """Series straight into text-format lines, each exactly as prometheus-client's generate_latest
    writes it (tests/test_metrics.py compares the two byte for byte). Why not generate_latest
    itself: it validates and escapes every label name of every sample, ~25 us a series; at 1,000
    hosts x 8 GPUs (54,500 series) rendering took 1.1 to 1.6 s on a loaded 2-core machine, more than
    gathering the figures. Histograms (a few series) still go through the library."""

    def __init__(self) -> None:
        self.lines: dict[str, list[str]] = {name: [] for name in METRICS}
        self.histograms = {name: family(name) for name, (kind, _, _) in METRICS.items() if kind == "histogram"}
        self._names = {name: (f"{name}_total" if kind == "counter" else name, tuple(labels)) for name, (kind, _, labels) in METRICS.items()}

    def add(self, name: str, labels: list[str], value: float | None) -> None:
        if value is None:
            return
        sample, names = self._names[name]
        if not names:
            self.lines[name].append(f"{sample} {_value_text(value)}\n")
            return
        self.lines[name].append(f"{sample}{{{_label_text(names, tuple(labels))}}} {_value_text(value)}\n")

    def histogram(self, name: str, labels: list[str], buckets: list[tuple[str, float]], total: float) -> None:
        self.histograms[name].add_metric(labels, buckets, total)  # type: ignore[attr-defined]

    def render(self) -> bytes:
        out: list[str] = []
        for name, (kind, doc, _) in METRICS.items():
            if kind == "histogram":
                out.append(generate_latest(_One(self.histograms[name])).decode())
                continue
            sample, _ = self._names[name]
            help_text = doc.replace("\\", r"\\").replace("\n", r"\n")
            out.append(f"# HELP {sample} {help_text}\n# TYPE {sample} {kind}\n")
            out += self.lines[name]
        return "".join(out).encode()


class _One:
    """A collector of one metric family (generate_latest takes a collector)."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self.metric


HOST_STATUSES = tuple(s.value for s in HostStatus if s is not HostStatus.REMOVED)  # removed hosts are not listed


def _gpus(f: _Families | _Text, hosts: list[m.Host]) -> None:
    for h in hosts:
        node = h.node or ""
        f.add("autotune_host_online", [h.host, node], 1.0 if h.alive else 0.0)
        for status in HOST_STATUSES:
            f.add("autotune_host_status", [h.host, status], 1.0 if h.status == status else 0.0)
        f.add("autotune_host_simulated", [h.host], 1.0 if h.simulated else 0.0)
        f.add("autotune_host_gpus_reporting", [h.host, node], float(sum(1 for g in h.gpus if g.sampled_at)) if h.alive else 0.0)
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


def _fill(f: _Families | _Text, s: Snapshot) -> None:
    """Every series of the snapshot into `f`: the one mapping from figures to series."""
    _gpus(f, s.hosts)
    for status, n in sorted(s.tasks.items()):
        f.add("autotune_tasks", [status], n)
    for status, kind, n in sorted(s.experiments):
        f.add("autotune_experiments", [status, kind], n)
    f.add("autotune_queue_depth", [], sum(n for status, _, n in s.experiments if status == "planned"))
    for status, (counts, total, n) in sorted(s.durations.items()):
        buckets = [(repr(float(b)), c) for b, c in zip(DURATION_BUCKETS, counts, strict=True)] + [("+Inf", n)]
        f.histogram("autotune_experiment_duration_seconds", [status], buckets, total)
    for task, score, sim in s.best:
        f.add("autotune_task_best_score", [task, "true" if sim else "false"], score)
    for p in s.streams:
        f.add("autotune_stream_messages", [p.stream], p.last_seq)
        f.add("autotune_projector_lag_messages", [p.stream], p.lag_messages)
        f.add("autotune_projector_lag_seconds", [p.stream], p.lag_seconds)
        if p.applied_seq is not None:
            f.add("autotune_projector_dead_letters", [p.stream], p.dead_letters)
    for st in s.stats:  # its age when the figures were gathered (a cached exposition says the same)
        f.add("autotune_service_stats_age_seconds", [st.service, st.instance], max(0.0, s.collected_at - st.at))
        for key, h in st.histograms.items():
            name = SERVICE_HISTOGRAMS.get((st.service, key))
            if name is None or len(h.counts) != len(h.buckets) + 1:
                continue
            buckets = [(repr(float(b)), c) for b, c in zip(h.buckets, h.counts, strict=False)] + [("+Inf", h.counts[-1])]
            f.histogram(name, [st.instance], buckets, h.sum)
    f.add("autotune_metrics_collect_seconds", [], s.collect_seconds)


def families(s: Snapshot) -> Iterator[Metric]:
    """The snapshot as prometheus-client metric families (every family of METRICS, in its order)."""
    f = _Families()
    _fill(f, s)
    yield from f.by_name.values()


def render(snapshot: Snapshot) -> bytes:
    """The Prometheus text exposition of `snapshot`: what generate_latest makes of `families(snapshot)`."""
    text = _Text()
    _fill(text, snapshot)
    return text.render()
