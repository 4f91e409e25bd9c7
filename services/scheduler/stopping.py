"""When a task plans no more experiments: the one stopping rule, `should_stop`. Pure.

The scheduler's `decide` calls it for every running task with what the log says: the results in the
order they were recorded (`Strategy.history()`), the experiments planned, whether the strategy has run
out of configurations, and the time since the task started.
"""

from __future__ import annotations

from collections.abc import Sequence

from autotune.schemas.spec import TaskSpec
from autotune.shared.expand import SearchSpace
from autotune.shared.pareto import dominates

ScoreValue = float | list[float]  # one objective, or one value per objective (multi_objective)


def should_stop(
    spec: TaskSpec,
    history: Sequence[ScoreValue | None],
    elapsed_s: float,
    *,
    planned: int | None = None,
    exhausted: bool = False,
    space: SearchSpace | None = None,
) -> str | None:
    """Why to plan no more experiments, or None to go on.

    `history`: finished experiments in the order they finished, each its score (a float, or a list for
    multi_objective) or None when it failed (`Strategy.history()` gives exactly this). `planned`:
    experiments planned so far (default: len(history)). `exhausted`: the strategy's ask returned None.
    Reasons, checked in this order: `max_iterations` (planned ≥ max_iterations), `grid_exhausted`
    (exhausted, or planned ≥ space.size × repeats), `time_budget` (elapsed_s ≥ time_budget_s),
    `converged` (the last `patience` finished experiments, counted after the first success, brought no
    improvement: no lower score, or for multi_objective no point outside the dominated region).
    """
    opt = spec.optimization
    planned = len(history) if planned is None else planned
    if planned >= opt.max_iterations:
        return "max_iterations"
    size = space.size if space is not None else None
    if exhausted or (size is not None and planned >= size * max(1, opt.repeats)):
        return "grid_exhausted"
    if opt.time_budget_s is not None and elapsed_s >= opt.time_budget_s:
        return "time_budget"
    if opt.patience is not None:
        since = _since_improvement(history)
        if since is not None and since >= opt.patience:
            return "converged"
    return None


def _since_improvement(history: Sequence[ScoreValue | None]) -> int | None:
    """Finished experiments since the last improvement; None before the first success."""
    best: float | None = None
    front: list[list[float]] = []
    since: int | None = None
    for item in history:
        improved = False
        if item is not None:
            if isinstance(item, (list, tuple)):
                v = [float(x) for x in item]
                if not any(dominates(f, v) or f == v for f in front):
                    improved = True
                    front = [f for f in front if not dominates(v, f)] + [v]
            elif best is None or item < best:
                best, improved = float(item), True
        if improved:
            since = 0
        elif since is not None:
            since += 1
    return since
