"""Search strategies: which configuration experiment n runs. Pure, deterministic, resumable.

EXACT RESUME: a strategy keeps no hidden state between asks. `ask(n)` is a function of (the seed, n,
the recorded history): random draws come from a fresh `random.Random` seeded with (seed, n's group),
and the Bayesian strategies rebuild their Optuna study from the recorded experiments at every ask
(`study.add_trial`, in experiment order: told ones COMPLETE with their score — failures with a graded
penalty recomputed from the successes known at that ask — the rest RUNNING, which TPE's constant liar
treats as taken) with a TPE sampler seeded from (seed, group). After a restart the scheduler replays the
log — `record(n, params)` for every planned experiment, `tell(...)` for every result, in log order —
and the next `ask` returns exactly what an uninterrupted scheduler would have returned.

Without `optimization.seed` the seed is derived from the task name, so it is still stable across
restarts. With `repeats = r` experiments n = g·r … g·r + r − 1 (group g) run the same configuration;
otherwise no configuration runs twice: duplicates proposed by TPE fall back to a deterministic random
unseen configuration, and an exhausted space ends the search (`ask` → None).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping
from typing import Any

import msgspec
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from autotune.scheduler.stopping import ScoreValue
from autotune.schemas.spec import Scalar, TaskSpec
from autotune.shared.expand import Dimension, SearchSpace
from autotune.shared.pareto import dominates
from autotune.shared.scoring import failure_penalty

__all__ = [
    "BayesianStrategy",
    "GridStrategy",
    "MultiObjectiveStrategy",
    "RandomStrategy",
    "Strategy",
    "derive_seed",
    "make_strategy",
]

optuna.logging.set_verbosity(optuna.logging.WARNING)

_TPE_ATTEMPTS = 8  # TPE proposals tried before falling back to a random unseen configuration
_ENUMERATE_LIMIT = 200_000  # spaces up to this size are enumerated when random draws keep colliding


def derive_seed(*parts: Any) -> int:
    """A 32-bit seed from any parts, stable across processes and Python versions."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 2**32


class Trial(msgspec.Struct, kw_only=True):
    """What a strategy knows about one planned experiment."""

    n: int
    params: dict[str, Any]
    key: str
    point: dict[str, Scalar] | None  # None when the params are not a member of the space
    told: bool = False
    score: ScoreValue | None = None
    failure: str | None = None
    stage: str = "benchmark"

    @property
    def ok(self) -> bool:
        return self.told and self.failure is None and self.score is not None


class Strategy:
    """Base: bookkeeping of planned and finished experiments; subclasses implement `_propose`."""

    name = "base"

    def __init__(self, spec: TaskSpec, space: SearchSpace) -> None:
        opt = spec.optimization
        self.spec = spec
        self.space = space
        self.seed = opt.seed if opt.seed is not None else derive_seed("task", spec.task_name)
        self.repeats = max(1, opt.repeats)
        self.max_iterations = opt.max_iterations
        self.objectives = list(opt.objectives or [opt.objective]) if opt.strategy == "multi_objective" else [opt.objective]
        self.experiments: dict[int, Trial] = {}
        self._told_order: list[int] = []

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    # --- the interface the scheduler calls ---------------------------------------------------------

    def ask(self, n: int) -> dict[str, Scalar] | None:
        """Parameters for experiment n, None when the search is over. Deterministic given the history."""
        if n < 0:
            raise ValueError(f"experiment numbers start at 0, got {n}")
        if n >= self.max_iterations:
            return None
        if n in self.experiments:
            return dict(self.experiments[n].params)
        group, within = divmod(n, self.repeats)
        if within:
            first = self.experiments.get(n - within)
            if first is not None:
                return dict(first.params)
        return self._propose(group)

    def record(self, n: int, params: Mapping[str, Any]) -> None:
        """Experiment n was planned with `params` (after ask, or replaying a `planned` event)."""
        params = dict(params)
        prior = self.experiments.get(n)
        exp = Trial(n=n, params=params, key=self.space.key(params), point=self.space.point(params))
        if prior is not None and prior.told:
            exp.told, exp.score, exp.failure, exp.stage = prior.told, prior.score, prior.failure, prior.stage
        self.experiments[n] = exp

    def tell(
        self,
        n: int,
        score: ScoreValue | None,
        *,
        failure: str | None = None,
        stage: str = "benchmark",
    ) -> None:
        """Experiment n finished. `failure` (a kind: oom, crash, timeout, slo_hard_fail, ...) marks it
        failed; its optimizer value is then a graded penalty (`failure_penalty`), or `score` if that is
        worse. A later tell for the same n replaces the earlier one."""
        if score is not None:
            score = self._normalize(score)
        elif failure is None:
            failure = "unknown"
        exp = self.experiments.get(n)
        if exp is None:  # a result without a planned record: keep it, it is only used once recorded
            exp = Trial(n=n, params={}, key="", point=None)
            self.experiments[n] = exp
        exp.told, exp.score, exp.failure, exp.stage = True, score, failure, stage
        if n in self._told_order:
            self._told_order.remove(n)
        self._told_order.append(n)

    def best(self) -> tuple[int, float] | None:
        """(experiment, score) of the best successful experiment; for multi-objective the Pareto member
        with the lowest first objective. Ties go to the earlier experiment."""
        candidates = [self.experiments[n] for n in (self.pareto() if self.multi else self._ok_numbers())]
        if not candidates:
            return None
        top = min(candidates, key=lambda e: (self._vector(e)[0], e.n))
        return top.n, self._vector(top)[0]

    def pareto(self) -> list[int]:
        """Successful experiments no other successful experiment dominates (all objectives minimized)."""
        ok = [self.experiments[n] for n in self._ok_numbers()]
        front = []
        for e in ok:
            v = self._vector(e)
            if not any(dominates(self._vector(o), v) for o in ok if o is not e):
                front.append(e.n)
        if not self.multi and front:
            low = min(self._vector(self.experiments[n])[0] for n in front)
            front = [n for n in front if self._vector(self.experiments[n])[0] == low]
        return sorted(front)

    def history(self) -> list[ScoreValue | None]:
        """Finished experiments in the order they were told: the score, or None when failed."""
        out: list[ScoreValue | None] = []
        for n in self._told_order:
            e = self.experiments[n]
            out.append(e.score if e.ok else None)
        return out

    # --- helpers for subclasses ----------------------------------------------------------------------

    def _propose(self, group: int) -> dict[str, Scalar] | None:
        raise NotImplementedError

    def _normalize(self, score: ScoreValue) -> ScoreValue:
        if isinstance(score, (list, tuple)):
            values = [float(v) for v in score]
            if self.multi:
                if len(values) != len(self.objectives):
                    raise ValueError(f"expected {len(self.objectives)} objective values, got {len(values)}")
                return values
            return values[0]
        if self.multi:
            raise TypeError(f"multi_objective needs one value per objective ({', '.join(self.objectives)})")
        return float(score)

    def _vector(self, e: Trial) -> list[float]:
        s = e.score
        return list(s) if isinstance(s, list) else [float(s)]  # type: ignore[arg-type]

    def _ok_numbers(self) -> list[int]:
        return sorted(n for n, e in self.experiments.items() if e.ok)

    def _seen(self) -> set[str]:
        return {e.key for e in self.experiments.values() if e.key}

    def _optimizer_values(self) -> dict[int, list[float]]:
        """The value each told experiment has for the optimizer; failures get graded penalties that
        are worse than every success known now."""
        ok = {n: self._vector(e) for n, e in self.experiments.items() if e.ok}
        k = len(self.objectives)
        observed = [[v[j] for v in ok.values()] for j in range(k)]
        values = dict(ok)
        for n, e in self.experiments.items():
            if e.told and not e.ok:
                given = self._vector(e) if e.score is not None else [-math.inf] * k
                values[n] = [
                    max(given[j], failure_penalty(e.failure or "unknown", stage=e.stage, observed=observed[j]))
                    for j in range(k)
                ]
        return values

    def _random_unseen(self, salt: str, group: int) -> dict[str, Scalar] | None:
        """A uniformly random configuration not planned before, from a generator seeded by (seed, salt,
        group); None when every configuration of a finite space has been planned."""
        rng = random.Random(derive_seed(self.seed, salt, group))
        seen = self._seen()
        size = self.space.size
        if size is not None:
            if len({e.key for e in self.experiments.values() if e.point is not None}) >= size:
                return None
            for _ in range(64):
                params = self.space.config_at(rng.randrange(size))
                if self.space.key(params) not in seen:
                    return params
            if size <= _ENUMERATE_LIMIT:
                remaining = [i for i in range(size) if self.space.key(self.space.config_at(i)) not in seen]
                return self.space.config_at(rng.choice(remaining)) if remaining else None
            for _ in range(10_000):
                params = self.space.config_at(rng.randrange(size))
                if self.space.key(params) not in seen:
                    return params
            return None
        for _ in range(64):
            params = self.space.configuration({d.name: _draw(d, rng) for d in self.space.dims})
            if self.space.key(params) not in seen:
                return params
        return None


def _draw(d: Dimension, rng: random.Random) -> Scalar:
    size = d.size
    if size is not None and not (d.kind == "int" and d.log):
        return d.value_at(rng.randrange(size))
    if d.log:
        v = math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
        return min(max(int(round(v)), int(d.low)), int(d.high)) if d.kind == "int" else v
    return rng.uniform(d.low, d.high)


class GridStrategy(Strategy):
    """The Cartesian product in its stable order; `max_iterations` cuts it."""

    name = "grid_search"

    def __init__(self, spec: TaskSpec, space: SearchSpace) -> None:
        super().__init__(spec, space)
        if space.size is None:
            raise ValueError("grid_search needs a finite space: give lists of values instead of ranges")

    def _propose(self, group: int) -> dict[str, Scalar] | None:
        return self.space.config_at(group) if group < (self.space.size or 0) else None


class RandomStrategy(Strategy):
    """Uniform draws without replacement, seeded by optimization.seed."""

    name = "random"

    def _propose(self, group: int) -> dict[str, Scalar] | None:
        return self._random_unseen("random", group)


# --- Optuna-backed strategies ----------------------------------------------------------------------


class _Codec:
    """Space dimensions ↔ Optuna distributions. Numeric choice lists become ordinal integer positions
    (in sorted order) so TPE learns that 0.85 lies between 0.8 and 0.9; other choices and bundles are
    categorical over value positions (so None, booleans and strings need no special care)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.dists: dict[str, BaseDistribution] = {}
        self.order: dict[str, list[int]] = {}  # ordinal dims: position -> index into values
        for d in space.dims:
            if d.kind in ("choice", "bundle"):
                numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in d.values)
                if d.kind == "choice" and numeric and len(d.values) >= 3:
                    self.order[d.name] = sorted(range(len(d.values)), key=lambda i: d.values[i])  # type: ignore[arg-type,return-value]
                    self.dists[d.name] = IntDistribution(0, len(d.values) - 1)
                else:
                    self.dists[d.name] = CategoricalDistribution(list(range(len(d.values))))
            elif d.kind == "int":
                # the top of a stepped range is its last reachable value (Optuna warns otherwise)
                high = int(d.value_at((d.size or 1) - 1)) if d.step else int(d.high)
                self.dists[d.name] = IntDistribution(int(d.low), high, log=d.log, step=int(d.step or 1))
            else:
                high = float(d.value_at((d.size or 1) - 1)) if d.step else d.high
                self.dists[d.name] = FloatDistribution(d.low, high, log=d.log, step=d.step)

    def encode(self, point: Mapping[str, Scalar]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d in self.space.dims:
            value = point[d.name]
            if d.kind in ("choice", "bundle"):
                i = d.index_of(value)
                out[d.name] = self.order[d.name].index(i) if d.name in self.order else i  # type: ignore[arg-type]
            else:
                out[d.name] = value
        return out

    def decode(self, params: Mapping[str, Any]) -> dict[str, Scalar]:
        point: dict[str, Scalar] = {}
        for d in self.space.dims:
            raw = params[d.name]
            if d.kind in ("choice", "bundle"):
                point[d.name] = d.values[self.order[d.name][raw] if d.name in self.order else raw]
            elif d.step is not None:  # snap to the grid value, so equal choices have equal keys
                point[d.name] = d.value_at(min(max(round((raw - d.low) / d.step), 0), (d.size or 1) - 1))
            elif d.kind == "int":
                point[d.name] = int(raw)
            else:
                point[d.name] = float(raw)
        return point


class BayesianStrategy(Strategy):
    """Optuna TPE after `n_initial_random` random startup experiments; the study is rebuilt per ask."""

    name = "bayesian"

    def __init__(self, spec: TaskSpec, space: SearchSpace) -> None:
        super().__init__(spec, space)
        self.codec = _Codec(space)
        self.n_initial_random = spec.optimization.n_initial_random

    def _propose(self, group: int) -> dict[str, Scalar] | None:
        told = [e for e in self.experiments.values() if e.told and e.point is not None]
        if group < self.n_initial_random or not told or not self.space.dims:
            return self._random_unseen("random", group)
        study = self._study(group)
        seen = self._seen()
        for _ in range(_TPE_ATTEMPTS):
            trial = study.ask(self.codec.dists)  # earlier attempts stay RUNNING: the liar pushes away
            params = self.space.configuration(self.codec.decode(trial.params))
            if self.space.key(params) not in seen:
                return params
        return self._random_unseen("fallback", group)

    def _sampler(self, group: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(
            seed=derive_seed(self.seed, "tpe", group),
            n_startup_trials=0,  # the random startup is ours, so it is exactly the random strategy's
            multivariate=True,
            constant_liar=True,
        )

    def _study(self, group: int) -> optuna.Study:
        study = optuna.create_study(directions=["minimize"] * len(self.objectives), sampler=self._sampler(group))
        values = self._optimizer_values()
        for n in sorted(self.experiments):
            e = self.experiments[n]
            if e.point is None:
                continue
            params = self.codec.encode(e.point)
            if n in values:
                trial = create_trial(
                    state=TrialState.COMPLETE, values=values[n], params=params, distributions=self.codec.dists
                )
            else:
                trial = create_trial(state=TrialState.RUNNING, params=params, distributions=self.codec.dists)
            study.add_trial(trial)
        return study


class MultiObjectiveStrategy(BayesianStrategy):
    """Multi-objective TPE over `optimization.objectives` (better than NSGA-II at the small budgets of
    real experiments, where NSGA-II's first generation alone would be random); reports the Pareto set."""

    name = "multi_objective"


_STRATEGIES: dict[str, type[Strategy]] = {
    "grid_search": GridStrategy,
    "random": RandomStrategy,
    "bayesian": BayesianStrategy,
    "multi_objective": MultiObjectiveStrategy,
}


def make_strategy(spec: TaskSpec, space: SearchSpace) -> Strategy:
    try:
        cls = _STRATEGIES[spec.optimization.strategy]
    except KeyError:
        raise ValueError(f"unknown strategy `{spec.optimization.strategy}`; use one of {', '.join(_STRATEGIES)}") from None
    return cls(spec, space)
