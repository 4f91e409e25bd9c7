"""The search space: its dimensions, the configurations they span, and the error for a spec that cannot become one."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import msgspec

from autotune.schemas.spec import Scalar


class ExpandError(ValueError):
    """The spec asks for something that cannot become an engine command line. `path` names the field."""

    def __init__(self, message: str, path: str = "$") -> None:
        self.message = message
        self.path = path
        super().__init__(f"{path}: {message}")


DimKind = Literal["choice", "bundle", "int", "float"]


def same(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1 (flags are often booleans next to sizes)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _on(value: Any) -> Any:
    """A flag's effect: absent, None and False all leave it off."""
    return None if value is False else value


class Dimension(msgspec.Struct, frozen=True, kw_only=True):
    """One thing a strategy chooses. `bundle` values are labels; `bundles[i]` holds label i's flags."""

    name: str
    kind: DimKind
    values: tuple[Scalar, ...] = ()
    bundles: tuple[dict[str, Scalar], ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    path: str = "$"

    @property
    def size(self) -> int | None:
        """Number of distinct values, None for a continuous range."""
        if self.kind in ("choice", "bundle"):
            return len(self.values)
        if self.step is None:
            return int(self.high - self.low) + 1 if self.kind == "int" else None
        return int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1

    def value_at(self, i: int) -> Scalar:
        if self.kind in ("choice", "bundle"):
            return self.values[i]
        step = self.step if self.step is not None else 1
        if self.kind == "int":
            return int(self.low + i * step)
        return round(self.low + i * step, 12)

    def index_of(self, value: Any) -> int | None:
        """Position of `value` among the dimension's values, None when it is not one of them."""
        if self.kind in ("choice", "bundle"):
            for i, v in enumerate(self.values):
                if same(v, value):
                    return i
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        step = self.step if self.step is not None else 1
        i = round((value - self.low) / step)
        return i if 0 <= i < (self.size or 0) and math.isclose(self.value_at(i), value, abs_tol=1e-9) else None

    def contains(self, value: Any) -> bool:
        if self.kind in ("choice", "bundle") or self.step is not None or self.kind == "int":
            return self.index_of(value) is not None
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def flags_of(self, label: Scalar) -> dict[str, Scalar]:
        i = self.index_of(label)
        return dict(self.bundles[i]) if self.kind == "bundle" and i is not None else {}


class SearchSpace(msgspec.Struct, frozen=True, kw_only=True):
    """The experiment space of a task: dimensions to choose plus settings common to every experiment."""

    engine: str
    dims: tuple[Dimension, ...] = ()
    fixed: dict[str, Scalar] = {}

    @property
    def size(self) -> int | None:
        """Number of distinct configurations; None when a dimension is continuous."""
        total = 1
        for d in self.dims:
            n = d.size
            if n is None:
                return None
            total *= n
        return total

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def dim(self, name: str) -> Dimension:
        for d in self.dims:
            if d.name == name:
                return d
        raise KeyError(name)

    def configuration(self, point: Mapping[str, Scalar]) -> dict[str, Scalar]:
        """Flatten a point (dimension name → value or bundle label) into a configuration."""
        params: dict[str, Scalar] = dict(self.fixed)
        for d in self.dims:
            value = point[d.name]
            params[d.name] = value
            if d.kind == "bundle":
                params.update(d.flags_of(value))
        return params

    def point(self, params: Mapping[str, Any]) -> dict[str, Scalar] | None:
        """The dimension values of a configuration, None when it is not a member of this space.

        A bundle is found by its `__` label, or else by matching its flags.
        """
        point: dict[str, Scalar] = {}
        for d in self.dims:
            if d.kind == "bundle":
                label = params.get(d.name)
                if label is None or d.index_of(label) is None:
                    union = {k for fl in d.bundles for k in fl}
                    label = next(
                        (
                            lab
                            for lab, fl in zip(d.values, d.bundles, strict=True)
                            if all(same(_on(params.get(k)), _on(fl.get(k))) for k in union)
                        ),
                        None,
                    )
                    if label is None:
                        return None
                point[d.name] = label
            else:
                if d.name not in params or not d.contains(params[d.name]):
                    return None
                point[d.name] = params[d.name]
        return point

    def key(self, params: Mapping[str, Any]) -> str:
        """Canonical text of a configuration, equal for equal configurations (used to avoid repeats)."""
        point = self.point(params)
        return msgspec.json.encode(point if point is not None else dict(params), order="sorted").decode()

    def config_at(self, index: int) -> dict[str, Scalar]:
        """The configuration at `index` of `grid()` without building the grid (first dimension slowest)."""
        size = self.size
        if size is None or not 0 <= index < size:
            raise IndexError(f"configuration {index} is outside a space of {size} configurations")
        point: dict[str, Scalar] = {}
        for d in reversed(self.dims):
            n = d.size or 1
            index, i = divmod(index, n)
            point[d.name] = d.value_at(i)
        return self.configuration({d.name: point[d.name] for d in self.dims})

    def iter_grid(self) -> Iterator[dict[str, Scalar]]:
        if self.size is None:
            raise ValueError("a continuous range cannot be enumerated; give a list of values or a step")
        axes = [[d.value_at(i) for i in range(d.size or 0)] for d in self.dims]
        for combo in itertools.product(*axes):
            yield self.configuration(dict(zip(self.names, combo, strict=True)))

    def grid(self, limit: int | None = None) -> list[dict[str, Scalar]]:
        """The Cartesian product in a stable order (spec order, first dimension varying slowest)."""
        return list(itertools.islice(self.iter_grid(), limit))
