"""A task spec → its SearchSpace: parameters become dimensions, quant_config and parallel_config become bundles,
and no engine setting may be set in two places."""

from __future__ import annotations

from autotune.schemas.spec import ParameterRange, Scalar, TaskSpec
from autotune.shared.expand.flags import canonical
from autotune.shared.expand.parallelism import parallel_bundles
from autotune.shared.expand.quantization import quant_bundles
from autotune.shared.expand.space import Dimension, ExpandError, SearchSpace, same


def _dedupe(values: list[Scalar]) -> list[Scalar]:
    out: list[Scalar] = []
    for v in values:
        if not any(same(v, o) and type(v) is type(o) for o in out):
            out.append(v)
    return out


def _range_dimension(name: str, p: ParameterRange, path: str) -> Dimension:
    assert p.low is not None and p.high is not None  # spec validation guarantees both
    if p.low > p.high:
        raise ExpandError(f"low ({p.low}) is greater than high ({p.high})", path)
    if p.log and p.low <= 0:
        raise ExpandError("a log-scaled range needs low > 0", f"{path}.low")
    if p.step is not None and p.step <= 0:
        raise ExpandError(f"step must be positive, got {p.step}", f"{path}.step")
    if p.type in ("integer", "int"):
        for what, v in (("low", p.low), ("high", p.high), ("step", p.step)):
            if v is not None and v != int(v):
                raise ExpandError(f"an integer range needs a whole {what}, got {v}", f"{path}.{what}")
        step = None if p.step in (None, 1) else float(int(p.step))  # type: ignore[arg-type]
        if p.log and step is not None:
            raise ExpandError("a log-scaled range cannot have a step", f"{path}.step")
        return Dimension(name=name, kind="int", low=float(int(p.low)), high=float(int(p.high)), log=p.log, step=step, path=path)
    if p.log and p.step is not None:
        raise ExpandError("a log-scaled range cannot have a step", f"{path}.step")
    return Dimension(name=name, kind="float", low=float(p.low), high=float(p.high), log=p.log, step=p.step, path=path)


def experiment_space(spec: TaskSpec) -> SearchSpace:
    """The dimensions to search for `spec`, with quant and parallel configs expanded into engine flags."""
    dims: list[Dimension] = []
    fixed: dict[str, Scalar] = {}
    owners: dict[str, tuple[str, str]] = {}  # canonical setting -> (path, flag)

    def claim(flag: str, path: str) -> None:
        if flag.startswith("__"):
            return
        canon = canonical(flag)
        if canon in owners:
            other, other_flag = owners[canon]
            raise ExpandError(
                f"`{flag}` sets the same engine setting as {other} (`{other_flag}`); set it in one place only", path
            )
        owners[canon] = (path, flag)

    for name, p in spec.parameters.items():
        path = f"$.parameters.{name}"
        if name in ("__quant", "__parallel"):
            raise ExpandError(f"`{name}` is reserved for quant_config/parallel_config", path)
        if isinstance(p, ParameterRange):
            if p.type in ("choice", "categorical"):
                values = _dedupe(list(p.values or []))
                if not values:
                    continue
            else:
                claim(name, path)
                dims.append(_range_dimension(name, p, path))
                continue
        elif isinstance(p, list):
            values = _dedupe(p)
            if not values:
                continue  # empty lists are skipped, as in the original
        else:
            values = [p]
        claim(name, path)
        if len(values) == 1:
            fixed[name] = values[0]
        else:
            dims.append(Dimension(name=name, kind="choice", values=tuple(values), path=path))

    for bundles in (quant_bundles(spec), parallel_bundles(spec)):
        if bundles is None:
            continue
        flags = {flag: None for fl in bundles.flags for flag in fl}  # ordered union
        for flag in flags:
            claim(flag, bundles.sources.get(flag, bundles.path))
        if len(bundles.labels) == 1:
            fixed[bundles.name] = bundles.labels[0]
            fixed.update(bundles.flags[0])
        else:
            dims.append(
                Dimension(
                    name=bundles.name,
                    kind="bundle",
                    values=tuple(bundles.labels),
                    bundles=tuple(bundles.flags),
                    path=bundles.path,
                )
            )
    return SearchSpace(engine=spec.engine, dims=tuple(dims), fixed=fixed)
