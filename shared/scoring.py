"""Scoring: an experiment's metrics → one number, lower is better (the original autotuner's rules).

1. Per run (one scenario × concurrency), each hard SLO term is checked on that run alone; a run that
   misses a hard term by more than its `fail_ratio` — (actual − threshold) / threshold > fail_ratio —
   is dropped. If every run is dropped, all are kept and the penalties decide.
2. The kept runs are aggregated WEIGHTED BY REQUESTS: their raw successful samples are pooled (so a run
   of 200 requests weighs 20 times a run of 10; the original took unweighted means across concurrency
   levels). Without raw samples, run statistics are averaged with the run's successful request count as
   weight (percentiles then are weighted means of the run percentiles, an approximation).
3. base (objective_value): minimize_latency → mean end-to-end latency (s); maximize_throughput →
   −(total tokens/s per GPU), where the kept runs' total token throughput is averaged weighted by each
   run's requests and divided by the experiment's GPUs; minimize_ttft → mean TTFT (s); minimize_tpot →
   mean TPOT (s).
4. SLO terms on the aggregate: `latency.p50/p90/p99` are end-to-end latency percentiles (linear
   interpolation between samples); `ttft` and `tpot` thresholds apply to MEAN TTFT and MEAN TPOT (the
   original's experiment figures are means; REFERENCE gives no percentile for them). A term with
   ratio = (actual − threshold) / threshold > 0 is violated and adds weight × exp(ratio / steepness)
   to the penalty P (the exponent is capped at 100 to keep scores finite). value = base + P × |base|.
5. A hard term violated by more than its fail_ratio on the aggregate sets `hard_fail`: the experiment
   counts as failed (the scheduler scores it with `failure_penalty`, kind "slo_hard_fail"). So does a
   result without a single successful request (`failure="no_successful_requests"`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from autotune.schemas.metrics import ExperimentMetrics, RunMetrics
from autotune.schemas.spec import SLOTerm, TaskSpec

__all__ = ["Score", "failure_penalty", "objective_value", "percentile", "score_experiment"]


# exp(ratio / steepness) is capped at e^100 (~2.7e43) so absurd violations still give finite,
# JSON-encodable scores (e^710 overflows a float); below the cap the original formula holds exactly.
_MAX_EXPONENT = 100.0


class Score(msgspec.Struct, frozen=True, kw_only=True):
    """An experiment's score. `value` is what strategies minimize."""

    value: float
    objective_value: float  # the base, before SLO penalties
    penalty: float  # P: value = base + P * |base|
    violations: dict[str, float] = {}  # SLO term (e.g. "latency.p90", "ttft") -> (actual - threshold) / threshold
    hard_fail: bool = False
    runs_kept: list[int] = []
    objectives: list[float] = []  # spec.optimization.objectives (or [objective]), raw, oriented lower-is-better
    slo_met: bool = True
    failure: str | None = None  # why a hard-failed experiment failed: "slo_hard_fail" | "no_successful_requests"


class _Figures(msgspec.Struct, kw_only=True):
    """The quantities objectives and SLOs are computed on, for one run or the aggregate."""

    ok: int = 0
    mean_e2e: float = 0.0
    p50_e2e: float = 0.0
    p90_e2e: float = 0.0
    p99_e2e: float = 0.0
    mean_ttft: float = 0.0
    mean_tpot: float = 0.0
    total_tps_per_gpu: float = 0.0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0 for no values."""
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _weight(run: RunMetrics) -> float:
    return float(run.requests or run.completed)


def _throughput_per_gpu(runs: Sequence[RunMetrics], gpus: int) -> float:
    total = sum(_weight(r) for r in runs)
    if total <= 0:
        return _mean([r.total_tps for r in runs]) / max(gpus, 1)
    return sum(_weight(r) * r.total_tps for r in runs) / total / max(gpus, 1)


def _from_samples(metrics: ExperimentMetrics, runs: Sequence[int]) -> _Figures:
    keep = set(runs)
    ok = [s for s in metrics.samples if s.ok and s.run in keep]
    e2e = sorted(s.e2e for s in ok)
    return _Figures(
        ok=len(ok),
        mean_e2e=_mean(e2e),
        p50_e2e=percentile(e2e, 50),
        p90_e2e=percentile(e2e, 90),
        p99_e2e=percentile(e2e, 99),
        mean_ttft=_mean([s.ttft for s in ok if s.ttft is not None]),
        mean_tpot=_mean([s.tpot for s in ok if s.tpot is not None]),
        total_tps_per_gpu=_throughput_per_gpu([metrics.runs[i] for i in runs], metrics.gpus),
    )


def _from_run_stats(metrics: ExperimentMetrics, runs: Sequence[int]) -> _Figures:
    chosen = [metrics.runs[i] for i in runs]
    weights = [float(r.completed or r.e2e_latency.count) for r in chosen]
    total = sum(weights)

    def wmean(get) -> float:  # type: ignore[no-untyped-def]
        if total <= 0:
            return 0.0
        return sum(w * get(r) for w, r in zip(weights, chosen, strict=True)) / total

    return _Figures(
        ok=int(total),
        mean_e2e=wmean(lambda r: r.e2e_latency.mean),
        p50_e2e=wmean(lambda r: r.e2e_latency.p50),
        p90_e2e=wmean(lambda r: r.e2e_latency.p90),
        p99_e2e=wmean(lambda r: r.e2e_latency.p99),
        mean_ttft=wmean(lambda r: r.ttft.mean),
        mean_tpot=wmean(lambda r: r.tpot.mean),
        total_tps_per_gpu=_throughput_per_gpu(chosen, metrics.gpus),
    )


def _from_aggregate(metrics: ExperimentMetrics) -> _Figures:
    per_gpu = metrics.mean_total_tps_per_gpu or metrics.mean_total_tps / max(metrics.gpus, 1)
    return _Figures(
        ok=metrics.completed or (1 if metrics.mean_e2e_latency > 0 else 0),
        mean_e2e=metrics.mean_e2e_latency,
        p50_e2e=metrics.p50_e2e_latency,
        p90_e2e=metrics.p90_e2e_latency,
        p99_e2e=metrics.p99_e2e_latency,
        mean_ttft=metrics.mean_ttft,
        mean_tpot=metrics.mean_tpot,
        total_tps_per_gpu=per_gpu,
    )


def _figures(metrics: ExperimentMetrics, runs: Sequence[int]) -> _Figures:
    if metrics.samples:
        return _from_samples(metrics, runs)
    return _from_run_stats(metrics, runs)


def objective_value(objective: str, fig: _Figures) -> float:
    """The base of an objective, oriented so lower is better."""
    match objective:
        case "minimize_latency":
            return fig.mean_e2e
        case "maximize_throughput":
            return -fig.total_tps_per_gpu
        case "minimize_ttft":
            return fig.mean_ttft
        case "minimize_tpot":
            return fig.mean_tpot
    raise ValueError(f"unknown objective `{objective}`")


def _slo_terms(spec: TaskSpec) -> list[tuple[str, SLOTerm, str]]:
    """(name, term, figure attribute) for every SLO term the spec sets."""
    slo = spec.slo
    if slo is None:
        return []
    terms: list[tuple[str, SLOTerm, str]] = []
    if slo.latency is not None:
        for q in ("p50", "p90", "p99"):
            term = getattr(slo.latency, q)
            if term is not None:
                terms.append((f"latency.{q}", term, f"{q}_e2e"))
    if slo.ttft is not None:
        terms.append(("ttft", slo.ttft, "mean_ttft"))
    if slo.tpot is not None:
        terms.append(("tpot", slo.tpot, "mean_tpot"))
    return terms


def _ratio(fig: _Figures, term: SLOTerm, attr: str) -> float:
    return (getattr(fig, attr) - term.threshold) / term.threshold


def _hard_violation(fig: _Figures, terms: list[tuple[str, SLOTerm, str]]) -> bool:
    return fig.ok > 0 and any(t.hard_fail and _ratio(fig, t, attr) > t.fail_ratio for _, t, attr in terms)


def score_experiment(spec: TaskSpec, metrics: ExperimentMetrics) -> Score:
    """Score one experiment's metrics under the spec's objective(s) and SLOs (rules in the module doc)."""
    terms = _slo_terms(spec)
    if metrics.runs:
        all_runs = list(range(len(metrics.runs)))
        kept = [i for i in all_runs if not _hard_violation(_figures(metrics, [i]), terms)] or all_runs
        agg = _figures(metrics, kept)
    else:
        kept = []
        agg = _from_aggregate(metrics)

    opt = spec.optimization
    base = objective_value(opt.objective, agg)
    objectives = [objective_value(o, agg) for o in (opt.objectives or [opt.objective])]

    violations: dict[str, float] = {}
    penalty = 0.0
    hard = False
    steepness = spec.slo.steepness if spec.slo else 0.1
    for name, term, attr in terms:
        ratio = _ratio(agg, term, attr)
        if ratio > 0:
            violations[name] = ratio
            penalty += term.weight * math.exp(min(ratio / steepness, _MAX_EXPONENT))
            hard = hard or (term.hard_fail and ratio > term.fail_ratio)
    failure = None
    if agg.ok == 0:
        failure, hard = "no_successful_requests", True
    elif hard:
        failure = "slo_hard_fail"
    return Score(
        value=base + penalty * abs(base),
        objective_value=base,
        penalty=penalty,
        violations=violations,
        hard_fail=hard,
        runs_kept=kept,
        objectives=objectives,
        slo_met=not violations,
        failure=failure,
    )


# --- failed experiments ----------------------------------------------------------------------------

STAGE_WEIGHTS = {"placement": 4.0, "startup": 4.0, "ready": 2.0, "benchmark": 1.0}  # placement: no host could run it
_STAGE_ALIASES = {
    "start": "startup",
    "launch": "startup",
    "started": "startup",
    "health": "ready",
    "bench": "benchmark",
    "run": "benchmark",
}


def kind_weight(kind: str) -> float:
    """How bad a failure kind is: OOM/CUDA 1.5 > crash and anything unknown 1.25 > timeout 1.0 > SLO hard fail 0.5."""
    k = kind.lower()
    if "oom" in k or "memory" in k or "cuda" in k:
        return 1.5
    if "timeout" in k or "timed_out" in k:
        return 1.0
    if "slo" in k or "hard_fail" in k:
        return 0.5
    return 1.25


def failure_penalty(kind: str, *, stage: str = "benchmark", observed: Sequence[float] = ()) -> float:
    """Graded score of a failed experiment, worse than every successful score in `observed`.

    penalty = worst + span × stage_weight × kind_weight, where worst = max(observed) and
    span = max(worst − min(observed), |worst|) (1.0 when both are 0). Stage weights: startup 4,
    ready 2, benchmark 1 (the earlier it failed, the further from a working configuration); kind
    weights in [0.5, 1.5] (`kind_weight`), so the stage always dominates and within a stage OOM/CUDA
    errors rank worse than crashes, crashes worse than timeouts, timeouts worse than SLO hard fails.
    Unknown stages weigh 2. With nothing observed yet: 1e6 × stage_weight × kind_weight.
    The strategies recompute it at every ask from the scores known then, so it stays worse than
    every success as the optimization goes on.
    """
    stage_key = _STAGE_ALIASES.get(stage.lower(), stage.lower())
    severity = STAGE_WEIGHTS.get(stage_key, 2.0) * kind_weight(kind)
    finite = [v for v in observed if math.isfinite(v)]
    if not finite:
        return 1e6 * severity
    worst, best = max(finite), min(finite)
    span = max(worst - best, abs(worst)) or 1.0
    return worst + span * severity
