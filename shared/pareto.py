"""Pareto dominance, with every objective oriented lower-is-better: the one implementation the
strategies (multi-objective best, convergence) and the read side (a task's Pareto set) share."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """`a` is no worse than `b` in every objective and better in at least one."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def front(items: Iterable[T], key: Callable[[T], Sequence[float] | None]) -> list[T]:
    """The items no other item dominates, sorted by their vectors. Items whose vector is missing or
    has fewer than two objectives take no part."""
    pts = [(list(v), i) for i in items if isinstance(v := key(i), (list, tuple)) and len(v) >= 2]
    kept = [(v, i) for v, i in pts if not any(dominates(w, v) for w, j in pts if j is not i)]
    return [i for _, i in sorted(kept, key=lambda vi: vi[0])]
