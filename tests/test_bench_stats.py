"""Pure statistics: percentiles, run figures, the request-weighted experiment aggregate, merging, SLOs."""

from __future__ import annotations

import math
import random

import msgspec
import pytest

from autotune.bench import aggregate, meets_slo, merge, percentile, run_stats, stats
from autotune.schemas.metrics import ExperimentMetrics, RequestSample
from autotune.schemas.spec import SLO, LatencySLO, SLOTerm


def reference_percentile(values, q):
    """Closest ranks with linear interpolation, written out independently."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    below = int(pos)
    above = min(below + 1, len(xs) - 1)
    return xs[below] * (1 - (pos - below)) + xs[above] * (pos - below)


def sample(run=0, ok=True, e2e=1.0, ttft=0.1, out=10, inp=100, error=None, start=0.0, itl=()):
    tpot = (e2e - ttft) / (out - 1) if ok and out > 1 else None
    return RequestSample(run=run, ok=ok, start=start, e2e=e2e, ttft=ttft if ok else None, tpot=tpot, input_tokens=inp,
                         output_tokens=out if ok else 0, error=error, itl=list(itl))


def test_percentiles_match_the_reference():
    rng = random.Random(3)
    for n in (1, 2, 3, 10, 101, 257):
        xs = [rng.expovariate(1.0) for _ in range(n)]
        for q in (0, 25, 50, 90, 95, 99, 100):
            assert percentile(sorted(xs), q) == pytest.approx(reference_percentile(xs, q), rel=1e-12)
    assert percentile([], 50) == 0.0


def test_stats_summary():
    s = stats([4.0, 1.0, 3.0, 2.0])
    assert (s.count, s.min, s.max, s.mean) == (4, 1.0, 4.0, 2.5)
    assert s.stddev == pytest.approx(math.sqrt(1.25))  # population standard deviation
    assert s.p50 == 2.5 and s.p25 == 1.75 and s.p99 == pytest.approx(3.97)
    assert stats([]) == stats(())


def test_run_stats_counts_errors_by_kind_and_throughputs():
    samples = [sample(e2e=1.0, ttft=0.1, out=10, itl=[0.1] * 9), sample(e2e=2.0, ttft=0.2, out=19, itl=[0.1] * 18),
               sample(ok=False, error="http_503", e2e=0.05), sample(ok=False, error="http_503"), sample(ok=False, error="timeout")]
    r = run_stats(samples, scenario="D(100,10)", concurrency=2, duration_s=4.0)
    assert (r.requests, r.completed, r.errors) == (5, 2, 3)
    assert r.errors_by_kind == {"http_503": 2, "timeout": 1}
    assert r.requests_per_s == 0.5 and r.output_tps == 29 / 4 and r.input_tps == 200 / 4 and r.total_tps == 229 / 4
    assert r.ttft.mean == pytest.approx(0.15) and r.e2e_latency.max == 2.0
    assert r.tpot.mean == pytest.approx((0.1 + 0.1) / 2)
    assert r.output_latency.mean == pytest.approx((0.9 + 1.8) / 2)
    assert r.output_speed.mean == pytest.approx(10.0)
    assert r.goodput_rps is None
    # the duration defaults to first start -> last end
    assert run_stats([sample(start=1.0, e2e=2.0), sample(start=2.0, e2e=2.5)]).duration_s == pytest.approx(3.5)


def test_goodput_counts_requests_meeting_every_slo():
    slo = SLO(ttft=SLOTerm(threshold=0.15), tpot=SLOTerm(threshold=0.2), latency=LatencySLO(p50=SLOTerm(threshold=1.0), p99=SLOTerm(threshold=1.5)))
    good, slow_first, slow_total = sample(e2e=1.0, ttft=0.1), sample(e2e=1.0, ttft=0.2), sample(e2e=1.6, ttft=0.1)
    assert meets_slo(good, slo) and not meets_slo(slow_first, slo) and not meets_slo(slow_total, slo)
    assert not meets_slo(sample(ok=False, error="http_500"), slo)
    r = run_stats([good, slow_first, slow_total], duration_s=2.0, slo=slo)
    assert r.goodput_rps == 0.5


def test_the_aggregate_weights_runs_by_requests_and_pools_raw_samples():
    rng = random.Random(1)
    small = [sample(run=0, e2e=rng.uniform(0.5, 1.0)) for _ in range(10)]
    big = [sample(run=1, e2e=rng.uniform(2.0, 4.0)) for _ in range(40)] + [sample(run=1, ok=False, error="http_503")] * 10
    r0 = msgspec.structs.replace(run_stats(small, duration_s=10.0), output_tps=100.0, total_tps=1000.0)
    r1 = msgspec.structs.replace(run_stats(big, duration_s=10.0), output_tps=200.0, total_tps=3000.0)
    exp = aggregate([r0, r1], small + big, gpus=2)
    assert exp.mean_output_tps == pytest.approx((10 * 100 + 50 * 200) / 60)  # not (100 + 200) / 2
    assert exp.max_output_tps == 200.0 and exp.mean_total_tps_per_gpu == pytest.approx((10 * 1000 + 50 * 3000) / 60 / 2)
    pooled = [s.e2e for s in small + big if s.ok]
    assert exp.mean_e2e_latency == pytest.approx(sum(pooled) / len(pooled))
    for q, got in ((50, exp.p50_e2e_latency), (90, exp.p90_e2e_latency), (99, exp.p99_e2e_latency)):
        assert got == pytest.approx(reference_percentile(pooled, q))
    assert (exp.requests, exp.completed) == (60, 50)
    assert exp.success_rate == pytest.approx(50 / 60) and exp.error_rate == pytest.approx(10 / 60)
    assert exp.gpus == 2 and exp.runs == [r0, r1] and len(exp.samples) == 60


def test_an_empty_aggregate_is_all_zero():
    exp = aggregate([], [], 1)
    assert exp.requests == 0 and exp.success_rate == 0.0 and exp.mean_e2e_latency == 0.0


def test_merge_renumbers_samples_and_recomputes():
    a_samples = [sample(run=0, e2e=1.0), sample(run=1, e2e=2.0)]
    b_samples = [sample(run=0, e2e=3.0), sample(run=1, e2e=4.0)]
    a = aggregate([run_stats(a_samples[:1]), run_stats(a_samples[1:])], a_samples, 1)
    b = aggregate([run_stats(b_samples[:1]), run_stats(b_samples[1:])], b_samples, 1)
    m = merge([a, b])
    assert [s.run for s in m.samples] == [0, 1, 2, 3] and len(m.runs) == 4
    assert m.mean_e2e_latency == pytest.approx(2.5)
    assert msgspec.json.decode(msgspec.json.encode(m), type=ExperimentMetrics) == m
