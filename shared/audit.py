"""Invariants checked from the event log alone — what the chaos suite and the tests assert.

- every planned experiment attempt has exactly one terminal outcome (completed, failed, cancelled);
- no experiment is completed twice (across its attempts);
- no GPU is held by two running attempts at once (assigned → terminal intervals per host GPU);
- no event id is stored twice.
"""

from __future__ import annotations

from collections import Counter

from autotune.schemas import events as ev


def audit(history: list[tuple[str, ev.Event]], *, finished: bool = True) -> list[str]:
    """Violations found in one task's events, in log order. `finished`: the task should be over."""
    violations: list[str] = []
    ids = Counter(e.id for _, e in history)
    violations += [f"event {i} stored {c} times" for i, c in ids.items() if c > 1]

    planned = {(e.n, e.attempt) for _, e in history if isinstance(e, ev.ExperimentPlanned)}
    terminal = Counter((e.n, e.attempt) for _, e in history if isinstance(e, ev.TERMINAL_EXPERIMENT))
    for key, c in sorted(terminal.items()):
        if c > 1:
            violations.append(f"experiment {key[0]} attempt {key[1]} has {c} terminal outcomes")
        if key not in planned:
            violations.append(f"experiment {key[0]} attempt {key[1]} ended but was never planned")
    if finished:
        violations += [f"experiment {n} attempt {a} never ended" for n, a in sorted(planned - set(terminal))]

    completed = Counter(e.n for _, e in history if isinstance(e, ev.ExperimentCompleted))
    violations += [f"experiment {n} completed {c} times" for n, c in sorted(completed.items()) if c > 1]

    holding: dict[tuple[str, int], tuple[int, int]] = {}
    active: dict[tuple[int, int], list[tuple[str, int]]] = {}
    for _, e in history:
        if isinstance(e, ev.ExperimentAssigned):
            keys = [(e.host, g) for g in e.gpu_indices]
            for k in keys:
                if k in holding:
                    violations.append(f"GPU {k[1]} of {k[0]} given to experiment {e.n}/{e.attempt} while {holding[k][0]}/{holding[k][1]} holds it")
                holding[k] = (e.n, e.attempt)
            active[(e.n, e.attempt)] = keys
        elif isinstance(e, ev.TERMINAL_EXPERIMENT) and (e.n, e.attempt) in active:
            for k in active.pop((e.n, e.attempt)):
                if holding.get(k) == (e.n, e.attempt):
                    holding.pop(k)
    return violations


def peak_parallelism(history: list[tuple[str, ev.Event]]) -> int:
    active: set[tuple[int, int]] = set()
    peak = 0
    for _, e in history:
        if isinstance(e, ev.ExperimentAssigned):
            active.add((e.n, e.attempt))
            peak = max(peak, len(active))
        elif isinstance(e, ev.TERMINAL_EXPERIMENT):
            active.discard((e.n, e.attempt))
    return peak
