"""Scoring (autotune.shared.scoring): worked examples, every number computed by hand in the comments."""

from __future__ import annotations

import math

import msgspec
import pytest

from autotune.schemas.metrics import ExperimentMetrics, RequestSample, RunMetrics, Stats
from autotune.shared.scoring import Score, failure_penalty, percentile, score_experiment
from tests.helpers import spec_of


def sample(run: int, e2e: float, ttft: float = 0.1, tpot: float | None = 0.01, ok: bool = True) -> RequestSample:
    return RequestSample(run=run, ok=ok, start=0.0, e2e=e2e, ttft=ttft, tpot=tpot, input_tokens=100, output_tokens=100)


def run(concurrency: int, requests: int, **kw) -> RunMetrics:
    return RunMetrics(scenario="D(100,100)", concurrency=concurrency, requests=requests, completed=requests, **kw)


LATENCY_SLO = {
    "latency": {"p90": {"threshold": 2.0, "hard_fail": True, "fail_ratio": 0.5}},
    "ttft": {"threshold": 0.5, "weight": 2.0},
    "steepness": 0.1,
}


def test_percentile_is_linear_between_ranks():
    # [1, 2, 3, 4]: p90 sits at position 3 × 0.9 = 2.7 → 3 + 0.7 × (4 − 3) = 3.7
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) == 0.0


def test_worked_example_run_dropped_and_soft_ttft_penalty():
    spec = spec_of(slo=LATENCY_SLO)
    metrics = ExperimentMetrics(
        runs=[run(1, 4), run(8, 4)],
        samples=[
            # run 0: e2e 1.0 1.2 1.4 1.6, ttft 0.4 0.5 0.6 0.7
            *[sample(0, e2e, ttft) for e2e, ttft in ((1.0, 0.4), (1.2, 0.5), (1.4, 0.6), (1.6, 0.7))],
            # run 1: e2e 3.5 3.7 4.0 4.2, ttft 1.0
            *[sample(1, e2e, 1.0) for e2e in (3.5, 3.7, 4.0, 4.2)],
        ],
    )
    s = score_experiment(spec, metrics)
    # run 1 alone: p90 at position 2.7 → 4.0 + 0.7 × 0.2 = 4.14; ratio (4.14 − 2)/2 = 1.07 > fail_ratio 0.5 → dropped
    # run 0 alone: p90 = 1.4 + 0.7 × 0.2 = 1.54 ≤ 2 → kept
    assert s.runs_kept == [0]
    # aggregate = run 0: mean e2e (1.0 + 1.2 + 1.4 + 1.6)/4 = 1.3; mean ttft 0.55 → ratio (0.55 − 0.5)/0.5 = 0.1
    # P = weight 2 × exp(0.1 / 0.1) = 2e = 5.436563...; value = 1.3 + 2e × 1.3 = 1.3 × (1 + 2e) = 8.367533...
    assert s.objective_value == pytest.approx(1.3)
    assert s.violations == pytest.approx({"ttft": 0.1})
    assert s.penalty == pytest.approx(2 * math.e)
    assert s.value == pytest.approx(8.367532754)
    assert (s.hard_fail, s.slo_met, s.failure) == (False, False, None)
    assert s.objectives == [pytest.approx(1.3)]


def test_worked_example_all_runs_dropped_keeps_all_and_hard_fails():
    spec = spec_of(slo=LATENCY_SLO)
    metrics = ExperimentMetrics(
        runs=[run(1, 4), run(8, 4)],
        samples=[*[sample(0, e, 0.3) for e in (3.5, 3.7, 4.0, 4.2)], *[sample(1, e, 0.3) for e in (3.2, 3.4, 3.6, 3.8)]],
    )
    s = score_experiment(spec, metrics)
    # run 0 p90 = 4.14 (ratio 1.07), run 1 p90 = 3.6 + 0.7 × 0.2 = 3.74 (ratio 0.87): both > 0.5, so both kept
    assert s.runs_kept == [0, 1]
    # pooled sorted: 3.2 3.4 3.5 3.6 3.7 3.8 4.0 4.2 → mean 29.4/8 = 3.675
    # p90 at position 7 × 0.9 = 6.3 → 4.0 + 0.3 × 0.2 = 4.06 → ratio 1.03 > 0.5: hard violation on the aggregate
    # P = exp(1.03 / 0.1) = exp(10.3); value = 3.675 × (1 + exp(10.3)); ttft 0.3 < 0.5 is fine
    assert s.violations == pytest.approx({"latency.p90": 1.03})
    assert s.value == pytest.approx(3.675 * (1 + math.exp(10.3)))
    assert (s.hard_fail, s.failure, s.slo_met) == (True, "slo_hard_fail", False)


def test_worked_example_request_weighting_without_samples():
    spec = spec_of()
    # 10 requests at 1.0 s and 30 requests at 2.0 s: (10 × 1 + 30 × 2)/40 = 1.75 (the unweighted mean, 1.5, was the bug)
    metrics = ExperimentMetrics(
        runs=[run(1, 10, e2e_latency=Stats(count=10, mean=1.0)), run(16, 30, e2e_latency=Stats(count=30, mean=2.0))]
    )
    s = score_experiment(spec, metrics)
    assert s.value == pytest.approx(1.75)
    assert (s.penalty, s.slo_met, s.runs_kept) == (0.0, True, [0, 1])


def test_worked_example_pooled_samples_weight_by_requests():
    spec = spec_of()
    # run 0: one request at 1.0 s; run 1: three at 2.0 s. Pooled mean (1 + 2 + 2 + 2)/4 = 1.75, not (1 + 2)/2.
    metrics = ExperimentMetrics(runs=[run(1, 1), run(4, 3)], samples=[sample(0, 1.0), *[sample(1, 2.0)] * 3])
    assert score_experiment(spec, metrics).value == pytest.approx(1.75)


def test_worked_example_throughput_per_gpu_with_soft_latency_penalty_and_objectives():
    spec = spec_of(
        optimization={"strategy": "multi_objective", "objective": "maximize_throughput",
                      "objectives": ["maximize_throughput", "minimize_latency"]},
        slo={"latency": {"p50": {"threshold": 1.5}}},
    )  # fmt: skip
    metrics = ExperimentMetrics(
        gpus=2,
        runs=[
            run(1, 10, total_tps=1000.0, e2e_latency=Stats(count=10, mean=1.0, p50=1.0)),
            run(16, 30, total_tps=3000.0, e2e_latency=Stats(count=30, mean=2.0, p50=2.0)),
        ],
    )
    s = score_experiment(spec, metrics)
    # tokens/s per GPU = (10 × 1000 + 30 × 3000)/40/2 = 1250 → base −1250
    # p50 (no samples: request-weighted run p50) = (10 × 1 + 30 × 2)/40 = 1.75 → ratio 0.25/1.5 = 1/6
    # P = exp((1/6)/0.1) = exp(5/3) = 5.294490...; value = −1250 + 5.294490 × 1250 = 5368.11...
    assert s.objective_value == pytest.approx(-1250.0)
    assert s.penalty == pytest.approx(math.exp(5 / 3))
    assert s.value == pytest.approx(-1250 + math.exp(5 / 3) * 1250)
    assert s.objectives == [pytest.approx(-1250.0), pytest.approx(1.75)]
    assert s.hard_fail is False


def test_ttft_and_tpot_objectives_use_means_of_successful_requests():
    metrics = ExperimentMetrics(
        runs=[run(1, 3)],
        samples=[sample(0, 1.0, 0.2, 0.010), sample(0, 1.0, 0.4, None), sample(0, 9.0, 5.0, 0.5, ok=False)],
    )
    # ttft: (0.2 + 0.4)/2 = 0.3 (the failed request is ignored); tpot: only one request has one: 0.010
    assert score_experiment(spec_of(optimization={"objective": "minimize_ttft"}), metrics).value == pytest.approx(0.3)
    assert score_experiment(spec_of(optimization={"objective": "minimize_tpot"}), metrics).value == pytest.approx(0.010)


def test_absurd_violations_stay_finite():
    # TTFT 100 s against 0.1 s: ratio 999, exp(999 / 0.1) would overflow; the exponent is capped at 100
    spec = spec_of(slo={"ttft": {"threshold": 0.1}})
    s = score_experiment(spec, ExperimentMetrics(runs=[run(1, 1)], samples=[sample(0, 120.0, 100.0)]))
    assert s.penalty == pytest.approx(math.exp(100)) and math.isfinite(s.value)
    assert msgspec.json.decode(msgspec.json.encode(s), type=Score) == s


def test_no_successful_request_is_a_failure_not_a_perfect_latency():
    metrics = ExperimentMetrics(runs=[run(1, 2)], samples=[sample(0, 0.0, ok=False), sample(0, 0.0, ok=False)])
    s = score_experiment(spec_of(), metrics)
    assert (s.hard_fail, s.failure) == (True, "no_successful_requests")


def test_aggregate_only_metrics_are_scored_from_the_experiment_fields():
    metrics = ExperimentMetrics(gpus=4, completed=10, mean_e2e_latency=2.5, mean_total_tps=4000.0)
    assert score_experiment(spec_of(), metrics).value == 2.5
    # no per-GPU figure given: 4000 / 4 GPUs = 1000
    assert score_experiment(spec_of(optimization={"objective": "maximize_throughput"}), metrics).value == -1000.0


def test_score_is_a_frozen_json_struct():
    s = score_experiment(spec_of(), ExperimentMetrics(runs=[run(1, 1)], samples=[sample(0, 1.0)]))
    assert msgspec.json.decode(msgspec.json.encode(s), type=Score) == s
    with pytest.raises(AttributeError):
        s.value = 0.0  # type: ignore[misc]


# --- failure penalties -----------------------------------------------------------------------------


def test_failure_penalty_worked_examples():
    lat = [1.3, 2.0]  # worst 2.0, span max(2.0 − 1.3, |2.0|) = 2.0
    assert failure_penalty("timeout", stage="benchmark", observed=lat) == pytest.approx(4.0)  # 2 + 2 × 1 × 1.0
    assert failure_penalty("oom", stage="benchmark", observed=lat) == pytest.approx(5.0)  # 2 + 2 × 1 × 1.5
    assert failure_penalty("timeout", stage="ready", observed=lat) == pytest.approx(6.0)  # 2 + 2 × 2 × 1.0
    assert failure_penalty("oom", stage="startup", observed=lat) == pytest.approx(14.0)  # 2 + 2 × 4 × 1.5
    assert failure_penalty("slo_hard_fail", stage="benchmark", observed=lat) == pytest.approx(3.0)  # 2 + 2 × 0.5
    tput = [-1250.0, -1000.0]  # worst −1000, span max(250, 1000) = 1000
    assert failure_penalty("timeout", stage="benchmark", observed=tput) == pytest.approx(0.0)
    assert failure_penalty("crash", stage="startup", observed=tput) == pytest.approx(4000.0)  # −1000 + 1000 × 4 × 1.25
    assert failure_penalty("CUDA error: out of memory", stage="startup", observed=[]) == 6e6  # 1e6 × 4 × 1.5


def test_failure_penalty_is_graded_and_worse_than_every_success():
    observed = [3.0, -2.0, 0.5]
    ranked = [
        ("slo_hard_fail", "benchmark"),
        ("timeout", "benchmark"),
        ("crash", "benchmark"),
        ("oom", "benchmark"),
        ("timeout", "ready"),
        ("oom", "ready"),
        ("timeout", "startup"),
        ("crash", "startup"),
        ("cuda_error", "startup"),
    ]
    values = [failure_penalty(k, stage=s, observed=observed) for k, s in ranked]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert min(values) > max(observed)
