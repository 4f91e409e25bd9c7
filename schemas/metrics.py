"""Benchmark measurements: raw per-request samples, per-run figures and the experiment aggregate.

Times are seconds, throughputs tokens (or requests) per second. Percentiles are computed from the raw
samples, which travel with the result, so they are exact and can be merged across runs.
"""

from __future__ import annotations

import msgspec


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    """Distribution summary of one quantity over a run's successful requests."""

    count: int = 0
    min: float = 0.0
    max: float = 0.0
    mean: float = 0.0
    stddev: float = 0.0
    p25: float = 0.0
    p50: float = 0.0
    p75: float = 0.0
    p90: float = 0.0
    p95: float = 0.0
    p99: float = 0.0


class RequestSample(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One request as the client saw it. Encoded as a JSON array to keep results compact."""

    run: int  # index into ExperimentMetrics.runs
    ok: bool
    start: float  # seconds since the run started
    e2e: float  # request sent -> last byte
    ttft: float | None = None  # request sent -> first token
    tpot: float | None = None  # (e2e - ttft) / (output_tokens - 1)
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None  # kind, e.g. "http_503", "timeout", "connection"
    itl: list[float] = []  # every inter-token gap, when kept


class RunMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """One scenario x concurrency run of the benchmark."""

    scenario: str
    concurrency: int
    requests: int = 0  # attempted, warm-up excluded
    completed: int = 0
    errors: int = 0
    errors_by_kind: dict[str, int] = {}
    duration_s: float = 0.0
    requests_per_s: float = 0.0
    input_tps: float = 0.0
    output_tps: float = 0.0
    total_tps: float = 0.0
    ttft: Stats = Stats()
    tpot: Stats = Stats()
    e2e_latency: Stats = Stats()
    output_latency: Stats = Stats()  # e2e - ttft
    output_speed: Stats = Stats()  # per-request output tokens/s
    input_tokens: Stats = Stats()
    output_tokens: Stats = Stats()
    goodput_rps: float | None = None  # requests/s that met every SLO, when the task has SLOs


class ExperimentMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """Everything measured for one experiment: aggregates weighted by requests, runs, raw samples."""

    gpus: int = 1
    mean_e2e_latency: float = 0.0
    p50_e2e_latency: float = 0.0
    p90_e2e_latency: float = 0.0
    p99_e2e_latency: float = 0.0
    mean_ttft: float = 0.0
    p50_ttft: float = 0.0
    p90_ttft: float = 0.0
    p99_ttft: float = 0.0
    mean_tpot: float = 0.0
    p50_tpot: float = 0.0
    p90_tpot: float = 0.0
    p99_tpot: float = 0.0
    mean_output_tps: float = 0.0
    max_output_tps: float = 0.0
    mean_total_tps: float = 0.0
    max_total_tps: float = 0.0
    mean_output_tps_per_gpu: float = 0.0
    max_output_tps_per_gpu: float = 0.0
    mean_total_tps_per_gpu: float = 0.0
    max_total_tps_per_gpu: float = 0.0
    requests_per_s: float = 0.0
    success_rate: float = 0.0
    error_rate: float = 0.0
    requests: int = 0
    completed: int = 0
    runs: list[RunMetrics] = []
    samples: list[RequestSample] = []
