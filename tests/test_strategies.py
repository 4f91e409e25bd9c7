"""Search strategies (autotune.scheduler.strategies): order, no repeats, seeds, and exact resume."""

from __future__ import annotations

import math

import msgspec
import pytest

from autotune.scheduler.stopping import should_stop
from autotune.scheduler.strategies import Strategy, make_strategy
from autotune.schemas.spec import TaskSpec
from autotune.shared.expand import experiment_space
from tests.helpers import spec_of

DISCRETE = {
    "mem-fraction-static": [0.7, 0.75, 0.8, 0.85, 0.9],
    "max-running-requests": [64, 128, 256, 512],
    "schedule-policy": ["lpm", "fcfs"],
}
MIXED = {
    "mem-fraction-static": {"type": "continuous", "low": 0.7, "high": 0.95},
    "max-running-requests": {"type": "integer", "low": 16, "high": 1024, "log": True},
    "chunked-prefill-size": {"type": "int", "low": 1024, "high": 8500, "step": 1024},  # top value 8192
    "schedule-conservativeness": {"type": "float", "low": 0.3, "high": 1.02, "step": 0.1},  # top value 1.0
    "schedule-policy": ["lpm", "fcfs", "dfs-weight"],
}


def make(strategy: str, parameters=DISCRETE, **opt) -> TaskSpec:
    """A spec for `strategy` over `parameters`; `opt`: optimization fields (multi_objective gets two objectives)."""
    if strategy == "multi_objective":
        opt.setdefault("objectives", ["maximize_throughput", "minimize_latency"])
    return spec_of(parameters=parameters, optimization={"strategy": strategy, **opt})


def strategy_for(spec: TaskSpec) -> Strategy:
    return make_strategy(spec, experiment_space(spec))


def landscape(p: dict) -> float:
    """A smooth bowl with its optimum at mem 0.85, 256 requests, lpm (lower is better)."""
    mem = float(p["mem-fraction-static"])
    mrr = float(p["max-running-requests"])
    return (mem - 0.85) ** 2 * 100 + math.log2(mrr / 256) ** 2 * 0.2 + (0.0 if p["schedule-policy"] == "lpm" else 0.3)


def two_objectives(p: dict) -> list[float]:
    mem = float(p["mem-fraction-static"])
    mrr = float(p["max-running-requests"])
    return [-mrr * mem, mrr / 100 + (0.9 - mem)]


def planned(st: Strategy, upto: int, score=None) -> list[dict]:
    """Plan experiments 0, 1, … until the strategy has no more or `upto` are planned; with `score`, each
    one's result is told before the next is asked for."""
    out = []
    for n in range(upto):
        p = st.ask(n)
        if p is None:
            break
        st.record(n, p)
        if score is not None:
            st.tell(n, score(p))
        out.append(p)
    return out


def run_steps(st: Strategy, start: int, stop: int, log: list, multi: bool = False) -> None:
    """A scheduler with two experiments in flight: plan n, then learn the result of n − 1.
    Every 7th experiment fails at startup (OOM). Events go to `log` as the event log would hold them."""
    for n in range(start, stop):
        params = st.ask(n)
        if params is None:
            log.append(("exhausted", n))
            return
        st.record(n, params)
        log.append(("planned", n, msgspec.json.encode(params)))
        if n >= 1:
            prev = msgspec.json.decode(next(e[2] for e in log if e[0] == "planned" and e[1] == n - 1))
            if (n - 1) % 7 == 3:
                st.tell(n - 1, None, failure="oom", stage="startup")
                log.append(("failed", n - 1, "oom", "startup"))
            else:
                score = two_objectives(prev) if multi else landscape(prev)
                st.tell(n - 1, score)
                log.append(("completed", n - 1, score))


def replay(spec: TaskSpec, log: list) -> Strategy:
    st = strategy_for(spec)
    for event in log:
        match event:
            case ("planned", n, raw):
                st.record(n, msgspec.json.decode(raw))
            case ("completed", n, score):
                st.tell(n, score)
            case ("failed", n, kind, stage):
                st.tell(n, None, failure=kind, stage=stage)
    return st


# --- grid ------------------------------------------------------------------------------------------


def test_grid_follows_the_stable_order_and_ends():
    spec = make("grid_search", {"a": [1, 2], "b": ["x", "y"]})
    assert planned(strategy_for(spec), 10) == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]


def test_max_iterations_cuts_every_strategy():
    for name in ("grid_search", "random", "bayesian"):
        st = strategy_for(make(name, max_iterations=3, seed=1))
        assert st.ask(2) is not None
        assert st.ask(3) is None


def test_grid_refuses_continuous_space():
    spec = make("random", MIXED)
    with pytest.raises(ValueError, match="finite"):
        grid = msgspec.structs.replace(spec, optimization=msgspec.structs.replace(spec.optimization, strategy="grid_search"))
        make_strategy(grid, experiment_space(spec))


def test_repeats_run_each_configuration_that_many_times():
    st = strategy_for(make("grid_search", {"a": [1, 2]}, repeats=2))
    assert [p["a"] for p in planned(st, 5)] == [1, 1, 2, 2]


# --- random ----------------------------------------------------------------------------------------


def test_random_is_seeded_never_repeats_and_exhausts():
    def sequence(seed: int) -> list[str]:
        st = strategy_for(make("random", seed=seed))
        return [st.space.key(p) for p in planned(st, 45)]

    a = sequence(7)
    assert len(a) == 40 == len(set(a))  # the whole 5 × 4 × 2 space, once each, then None
    assert a == sequence(7)
    assert a[:10] != sequence(8)[:10]


def test_seedless_task_is_still_deterministic():
    spec = make("random")
    assert spec.optimization.seed is None
    assert strategy_for(spec).ask(0) == strategy_for(spec).ask(0)


# --- bayesian --------------------------------------------------------------------------------------


@pytest.mark.parametrize("parameters", [DISCRETE, MIXED], ids=["discrete", "mixed"])
def test_bayesian_resume_is_exact(parameters):
    spec = make("bayesian", parameters, seed=11, n_initial_random=4, max_iterations=40)
    total = 22
    full: list = []
    run_steps(strategy_for(spec), 0, total, full)
    for cut in (3, 9, 16):
        # the log up to the moment experiment `cut` is about to be planned
        upto = next(i for i, e in enumerate(full) if e[0] == "planned" and e[1] == cut)
        resumed_log = list(full[:upto])
        run_steps(replay(spec, resumed_log), cut, total, resumed_log)
        assert resumed_log == full, f"diverged after a restart before experiment {cut}"


def test_bayesian_ask_is_repeatable_after_a_crash_before_planned():
    spec = make("bayesian", MIXED, seed=5, n_initial_random=3)
    log: list = []
    st = strategy_for(spec)
    run_steps(st, 0, 8, log)
    # the scheduler asked for 8 and died before publishing `planned`: a rebuilt strategy proposes the same
    assert replay(spec, log).ask(8) == st.ask(8) == st.ask(8)


def test_bayesian_startup_is_the_random_strategys_sequence():
    bayes, rand = strategy_for(make("bayesian", seed=6, n_initial_random=4)), strategy_for(make("random", seed=6))
    for n in range(4):
        p = bayes.ask(n)
        assert p == rand.ask(n)
        bayes.record(n, p)
        rand.record(n, p)
        bayes.tell(n, landscape(p))


def test_bayesian_never_repeats_and_exhausts_a_small_space():
    spec = make("bayesian", {"a": [1, 2, 3], "b": ["x", "y"]}, seed=2, n_initial_random=2, max_iterations=20)
    st = strategy_for(spec)
    keys = [st.space.key(p) for p in planned(st, 20, score=lambda p: float(p["a"]) + (p["b"] == "y"))]
    assert len(keys) == 6 == len(set(keys))


def test_bayesian_mixed_space_values_stay_in_range():
    spec = make("bayesian", MIXED, seed=3, n_initial_random=3, max_iterations=15)
    asked = planned(strategy_for(spec), 15, score=landscape)
    assert len(asked) == 15
    for p in asked:
        assert 0.7 <= p["mem-fraction-static"] <= 0.95
        assert 16 <= p["max-running-requests"] <= 1024 and isinstance(p["max-running-requests"], int)
        assert p["chunked-prefill-size"] in range(1024, 8193, 1024)
        assert p["schedule-conservativeness"] in [round(0.3 + 0.1 * i, 12) for i in range(8)]


def test_bayesian_finds_the_optimum_of_a_bowl_faster_than_the_grid():
    spec = make("bayesian", seed=4, n_initial_random=5, max_iterations=40)
    st = strategy_for(spec)
    optimum = min(landscape(p) for p in st.space.grid())
    assert len(planned(st, 20, score=landscape)) == 20
    assert st.best()[1] <= optimum + 0.05  # within 20 of 40 experiments


def test_failures_get_graded_penalties_and_never_become_best():
    st = strategy_for(make("bayesian", seed=1))
    for n, p in enumerate(st.space.grid(4)):
        st.record(n, p)
    st.tell(0, 2.0)
    st.tell(1, None, failure="oom", stage="startup")
    st.tell(2, 1.0)
    st.tell(3, 0.5, failure="slo_hard_fail")  # a hard-failed experiment's own score never wins
    values = st._optimizer_values()
    # observed successes 2.0 and 1.0: worst 2.0, span 2.0 → oom at startup 2 + 2 × 6 = 14, slo 2 + 2 × 0.5 = 3
    assert values[1] == [pytest.approx(14.0)] and values[3] == [pytest.approx(3.0)]
    assert st.best() == (2, 1.0)
    assert st.history() == [2.0, None, 1.0, None]


# --- multi-objective -------------------------------------------------------------------------------


def test_multi_objective_pareto_and_exact_resume():
    spec = make("multi_objective", seed=9, n_initial_random=4, max_iterations=30)
    full: list = []
    st = strategy_for(spec)
    run_steps(st, 0, 16, full, multi=True)
    upto = next(i for i, e in enumerate(full) if e[0] == "planned" and e[1] == 10)
    resumed = list(full[:upto])
    run_steps(replay(spec, resumed), 10, 16, resumed, multi=True)
    assert resumed == full
    front = st.pareto()
    vectors = {n: st.experiments[n].score for n in st._ok_numbers()}
    for n in front:  # nothing dominates a front member, and every non-member is dominated
        assert not any(all(a <= b for a, b in zip(v, vectors[n], strict=True)) and v != vectors[n] for v in vectors.values())
    for n in set(vectors) - set(front):
        assert any(all(a <= b for a, b in zip(vectors[m], vectors[n], strict=True)) for m in front)
    assert st.best()[0] in front


def test_multi_objective_needs_a_vector():
    st = strategy_for(make("multi_objective", seed=1))
    st.record(0, st.ask(0))
    with pytest.raises(TypeError):
        st.tell(0, 1.0)


# --- stopping --------------------------------------------------------------------------------------


def test_should_stop_reasons():
    spec = make("random", max_iterations=10, patience=3, time_budget_s=60.0)
    space = experiment_space(spec)
    assert should_stop(spec, [1.0, 0.9], 5.0) is None
    assert should_stop(spec, [1.0] * 3, 5.0, planned=10) == "max_iterations"
    assert should_stop(spec, [1.0], 61.0) == "time_budget"
    assert should_stop(spec, [1.0], 5.0, exhausted=True) == "grid_exhausted"
    small = make("grid_search", {"a": [1, 2]}, max_iterations=10)
    assert should_stop(small, [1.0, 2.0], 0.0, space=experiment_space(small)) == "grid_exhausted"
    # best 0.9 at the 2nd result, then three without a lower score → converged
    assert should_stop(spec, [1.0, 0.9, 0.95, None, 0.9], 5.0, space=space) == "converged"
    assert should_stop(spec, [1.0, 0.9, 0.95, None, 0.8], 5.0, space=space) is None
    # failures before the first success do not count towards patience
    assert should_stop(spec, [None, None, None, 2.0], 5.0) is None
    # multi-objective: a new non-dominated point is an improvement
    assert should_stop(spec, [[1.0, 1.0], [2.0, 0.5], [1.5, 1.5], [3.0, 3.0]], 5.0) is None
    assert should_stop(spec, [[1.0, 1.0], [2.0, 0.5], [1.5, 1.5], [3.0, 3.0], [2.0, 2.0]], 5.0) == "converged"
