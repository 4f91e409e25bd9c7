"""Pure functions from raw request samples to run figures and the experiment aggregate.

Conventions (the same everywhere, so figures from the builtin client, genai-bench files and merged
repeats compare):
- percentiles interpolate linearly between closest ranks (numpy's default): rank = q/100 x (n - 1);
- stddev is the population standard deviation;
- latency statistics use the successful requests only; TPOT needs at least 2 output tokens;
- output speed = 1 / TPOT (tokens/s of one request after its first token), as genai-bench reports it;
- the experiment aggregate pools every run's raw samples for mean/p50/p90/p99 and weights run-level
  throughputs by each run's request count, so a run with 500 requests counts 10x one with 50.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from autotune.schemas.metrics import ExperimentMetrics, RequestSample, RunMetrics, Stats
from autotune.schemas.spec import SLO


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linear interpolation; 0.0 when empty."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    rank = q / 100.0 * (n - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, n - 1)
    frac = rank - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def stats(values: Iterable[float]) -> Stats:
    """Distribution summary of the values (empty -> all zeros)."""
    xs = sorted(float(v) for v in values)
    n = len(xs)
    if n == 0:
        return Stats()
    mean = math.fsum(xs) / n
    var = math.fsum((x - mean) ** 2 for x in xs) / n
    return Stats(
        count=n, min=xs[0], max=xs[-1], mean=mean, stddev=math.sqrt(var),
        p25=percentile(xs, 25), p50=percentile(xs, 50), p75=percentile(xs, 75),
        p90=percentile(xs, 90), p95=percentile(xs, 95), p99=percentile(xs, 99),
    )


def meets_slo(sample: RequestSample, slo: SLO) -> bool:
    """Whether one request met every per-request SLO: TTFT and TPOT under their thresholds, end-to-end
    latency under the loosest latency threshold given (a p99 bound is what 99% of requests must meet)."""
    if not sample.ok:
        return False
    if slo.ttft is not None and (sample.ttft is None or sample.ttft > slo.ttft.threshold):
        return False
    if slo.tpot is not None and sample.tpot is not None and sample.tpot > slo.tpot.threshold:
        return False
    if slo.latency is not None:
        bounds = [t.threshold for t in (slo.latency.p50, slo.latency.p90, slo.latency.p99) if t is not None]
        if bounds and sample.e2e > max(bounds):
            return False
    return True


def run_stats(
    samples: Sequence[RequestSample],
    *,
    scenario: str = "",
    concurrency: int = 1,
    duration_s: float | None = None,
    slo: SLO | None = None,
) -> RunMetrics:
    """RunMetrics of one scenario x concurrency run from its raw samples.

    `duration_s` defaults to first request start -> last request end.
    """
    ok = [s for s in samples if s.ok]
    errors: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            kind = s.error or "unknown"
            errors[kind] = errors.get(kind, 0) + 1
    if duration_s is None:
        duration_s = (max(s.start + s.e2e for s in samples) - min(s.start for s in samples)) if samples else 0.0
    per_s = (lambda x: x / duration_s) if duration_s > 0 else (lambda x: 0.0)
    in_tokens = sum(s.input_tokens for s in ok)
    out_tokens = sum(s.output_tokens for s in ok)
    return RunMetrics(
        scenario=scenario,
        concurrency=concurrency,
        requests=len(samples),
        completed=len(ok),
        errors=len(samples) - len(ok),
        errors_by_kind=dict(sorted(errors.items())),
        duration_s=duration_s,
        requests_per_s=per_s(len(ok)),
        input_tps=per_s(in_tokens),
        output_tps=per_s(out_tokens),
        total_tps=per_s(in_tokens + out_tokens),
        ttft=stats(s.ttft for s in ok if s.ttft is not None),
        tpot=stats(s.tpot for s in ok if s.tpot is not None),
        e2e_latency=stats(s.e2e for s in ok),
        output_latency=stats(s.e2e - s.ttft for s in ok if s.ttft is not None),
        output_speed=stats(1.0 / s.tpot for s in ok if s.tpot),
        input_tokens=stats(s.input_tokens for s in ok),
        output_tokens=stats(s.output_tokens for s in ok),
        goodput_rps=per_s(sum(1 for s in ok if meets_slo(s, slo))) if slo is not None else None,
    )


def _weighted(runs: Sequence[RunMetrics], value) -> float:
    total = sum(r.requests for r in runs)
    if total == 0:
        return 0.0
    return math.fsum(r.requests * value(r) for r in runs) / total


def aggregate(
    runs: Sequence[RunMetrics],
    samples: Sequence[RequestSample],
    gpus: int = 1,
) -> ExperimentMetrics:
    """The experiment aggregate: latency figures from the pooled raw samples of every run, throughputs
    as request-weighted means (and maxima) over runs, per-GPU figures divided by `gpus`."""
    gpus = max(1, gpus)
    ok = [s for s in samples if s.ok]
    e2e = sorted(s.e2e for s in ok)
    ttft = sorted(s.ttft for s in ok if s.ttft is not None)
    tpot = sorted(s.tpot for s in ok if s.tpot is not None)

    def mean(xs: Sequence[float]) -> float:
        return math.fsum(xs) / len(xs) if xs else 0.0

    requests = sum(r.requests for r in runs)
    completed = sum(r.completed for r in runs)
    errors = sum(r.errors for r in runs)
    mean_out = _weighted(runs, lambda r: r.output_tps)
    mean_total = _weighted(runs, lambda r: r.total_tps)
    max_out = max((r.output_tps for r in runs), default=0.0)
    max_total = max((r.total_tps for r in runs), default=0.0)
    return ExperimentMetrics(
        gpus=gpus,
        mean_e2e_latency=mean(e2e), p50_e2e_latency=percentile(e2e, 50), p90_e2e_latency=percentile(e2e, 90),
        p99_e2e_latency=percentile(e2e, 99),
        mean_ttft=mean(ttft), p50_ttft=percentile(ttft, 50), p90_ttft=percentile(ttft, 90), p99_ttft=percentile(ttft, 99),
        mean_tpot=mean(tpot), p50_tpot=percentile(tpot, 50), p90_tpot=percentile(tpot, 90), p99_tpot=percentile(tpot, 99),
        mean_output_tps=mean_out, max_output_tps=max_out, mean_total_tps=mean_total, max_total_tps=max_total,
        mean_output_tps_per_gpu=mean_out / gpus, max_output_tps_per_gpu=max_out / gpus,
        mean_total_tps_per_gpu=mean_total / gpus, max_total_tps_per_gpu=max_total / gpus,
        requests_per_s=_weighted(runs, lambda r: r.requests_per_s),
        success_rate=completed / requests if requests else 0.0,
        error_rate=errors / requests if requests else 0.0,
        requests=requests,
        completed=completed,
        runs=list(runs),
        samples=list(samples),
    )


def merge(experiments: Sequence[ExperimentMetrics]) -> ExperimentMetrics:
    """One aggregate over several measurements of the same configuration (repeats): runs are
    concatenated, samples renumbered to point at their run in the merged list."""
    runs: list[RunMetrics] = []
    samples: list[RequestSample] = []
    for exp in experiments:
        offset = len(runs)
        runs.extend(exp.runs)
        for s in exp.samples:
            samples.append(
                RequestSample(
                    run=s.run + offset, ok=s.ok, start=s.start, e2e=s.e2e, ttft=s.ttft, tpot=s.tpot,
                    input_tokens=s.input_tokens, output_tokens=s.output_tokens, error=s.error, itl=s.itl,
                )
            )
    first = experiments[0] if experiments else ExperimentMetrics()
    return aggregate(runs, samples, first.gpus)
