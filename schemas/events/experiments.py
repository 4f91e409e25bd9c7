"""Experiment events: one configuration's attempts, planned and placed by the scheduler, run and scored by
a runner; with the failure kinds and the summaries a finished attempt carries."""

from __future__ import annotations

from typing import Any

import msgspec

from autotune.schemas.metrics import ExperimentMetrics, RunMetrics

from .base import Event, Params
from .tasks import DatasetRef


class ExperimentPlanned(Event, frozen=True, kw_only=True, tag="experiment.planned"):
    """The scheduler chose a configuration (experiment n) or re-planned a retry (attempt > 0)."""

    task: str
    n: int
    attempt: int = 0
    parameters: Params
    gpus: int = 1
    retry_of: str | None = None  # the failure that caused this attempt


class ExperimentAssigned(Event, frozen=True, kw_only=True, tag="experiment.assigned"):
    """The scheduler placed an experiment attempt on a host's GPUs. Addressed to that host."""

    task: str
    n: int
    attempt: int = 0
    host: str
    instance: str = ""  # the runner instance it was placed with; another instance must not run it
    gpu_indices: list[int] = []
    gpu_uuids: list[str] = []
    parameters: Params
    spec: dict[str, Any]  # the task spec, so the runner needs nothing else
    deployment_mode: str = "simulated"  # effective runtime on that host
    timeout_s: float = 1800.0
    simulated: bool = False
    gpu_type: str = ""  # what the host's GPUs are (the simulator imitates it)
    dataset: DatasetRef | None = None  # the prompts to replay (the task's `dataset_fetched`)


class ExperimentWaiting(Event, frozen=True, kw_only=True, tag="experiment.waiting"):
    """The scheduler could not place a planned attempt, and says why. Recorded when the reason
    changes (a changed count at most every 30 s), not every round."""

    task: str
    n: int
    attempt: int = 0
    reason: str
    fits: bool = True  # some live host could run it once it has room; False: none can (unplaceable after a grace)
    gpus: int = 1


class ExperimentCancelRequested(Event, frozen=True, kw_only=True, tag="experiment.cancel_requested"):
    """The scheduler asked the host running an experiment attempt to stop it."""

    task: str
    n: int
    attempt: int = 0
    host: str
    reason: str = ""


class ExperimentStarted(Event, frozen=True, kw_only=True, tag="experiment.started"):
    """The runner launched the engine."""

    task: str
    n: int
    attempt: int = 0
    host: str
    instance: str
    runtime: str
    command: list[str] = []
    handle: str = ""  # pid, container id or deployment name
    device: str = ""  # "cpu": a real engine serving on the host's CPU (no GPU); "" for GPUs (or simulated ones)
    env: dict[str, str] = {}  # what autotune set in the engine's environment (task and host configuration; never secrets)


class ExperimentReady(Event, frozen=True, kw_only=True, tag="experiment.ready"):
    """The runner saw the engine answer its health check."""

    task: str
    n: int
    attempt: int = 0
    host: str
    startup_s: float


class ExperimentProgress(Event, frozen=True, kw_only=True, tag="experiment.progress"):
    """The runner finished one benchmark run (scenario x concurrency)."""

    task: str
    n: int
    attempt: int = 0
    host: str
    run_index: int
    runs_total: int
    run: RunMetrics


class TelemetrySummary(msgspec.Struct, frozen=True, kw_only=True):
    """The leased GPUs during the benchmark window."""

    samples: int = 0
    mean_util_gpu: float | None = None
    max_util_gpu: float | None = None
    max_memory_used_mib: float | None = None
    mean_power_w: float | None = None
    max_temperature_c: float | None = None


class EngineMetricsSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The engine's own Prometheus /metrics, scraped about once a second during the benchmark window:
    the queue and the KV cache explain a slow configuration (full cache, preempting, requests waiting).
    Gauges as mean and max over the samples; counters as their increase over the window."""

    source: str = ""  # the metric family scraped: "vllm" | "sglang"; "" when none answered
    samples: int = 0
    scrape_failures: int = 0  # scrapes that failed or timed out (a saturated engine answers /metrics late)
    mean_running: float | None = None  # requests being decoded or prefilled
    max_running: float | None = None
    mean_waiting: float | None = None  # requests queued for a slot or for KV cache
    max_waiting: float | None = None
    mean_kv_cache_usage: float | None = None  # fraction of the KV cache in use, 0..1
    max_kv_cache_usage: float | None = None
    preemptions: float | None = None  # requests evicted for lack of KV cache (recomputed later)
    prompt_tokens: float | None = None  # prefilled tokens, as the engine counts them
    generation_tokens: float | None = None  # generated tokens, as the engine counts them
    steps: float | None = None  # forward passes the engine ran (tokens / steps: its batch per step); vLLM only


class ExperimentCompleted(Event, frozen=True, kw_only=True, tag="experiment.completed"):
    """The runner benchmarked the engine and scored the result (lower score is better)."""

    task: str
    n: int
    attempt: int = 0
    host: str
    metrics: ExperimentMetrics
    score: float
    objective_value: float = 0.0
    objectives: list[float] = []
    slo_met: bool = True
    slo_violations: dict[str, float] = {}
    hard_fail: bool = False
    startup_s: float = 0.0
    duration_s: float = 0.0
    telemetry: TelemetrySummary = TelemetrySummary()
    engine: EngineMetricsSummary = EngineMetricsSummary()


FAILURE_KINDS = (
    "oom",
    "startup_timeout",
    "crashed",
    "unhealthy",
    "benchmark_error",
    "timeout",
    "gpus_busy",
    "cancelled",
    "runner_restarted",
    "host_lost",
    "slo_hard_fail",
    "launch_error",
    "unplaceable",  # no live host could ever fit it (the scheduler, after a grace period)
)
RETRYABLE = frozenset({"gpus_busy", "runner_restarted", "host_lost", "launch_error"})


class ExperimentFailed(Event, frozen=True, kw_only=True, tag="experiment.failed"):
    """The runner (or the scheduler, for a lost host) recorded that an attempt failed."""

    task: str
    n: int
    attempt: int = 0
    host: str = ""
    kind: str
    stage: str = "benchmark"  # placement | launch | startup | benchmark
    retryable: bool = False  # an infrastructure failure: the scheduler re-plans it
    message: str = ""
    log_tail: list[str] = []
    startup_s: float | None = None
    duration_s: float = 0.0
    metrics: ExperimentMetrics | None = None
    engine: EngineMetricsSummary = EngineMetricsSummary()  # what the engine reported until it failed


class ExperimentCancelled(Event, frozen=True, kw_only=True, tag="experiment.cancelled"):
    """The runner stopped an attempt on request and freed its GPUs."""

    task: str
    n: int
    attempt: int = 0
    host: str = ""
    reason: str = ""
