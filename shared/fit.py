"""Whether the fleet could ever run an experiment, and if not, what is missing. Pure.

One rule for the scheduler (an experiment that waits says why; one that no host could run fails as
`unplaceable`) and for `autotune submit` (which warns up front about the configurations of a search
space the live fleet cannot run). "Could run" ignores what is busy: a host fits when it offers the
task's deployment mode and engine and has enough GPUs of its type, free or not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from autotune.schemas.liveness import LiveHost
from autotune.schemas.spec import is_cpu_serving


def effective_mode(deployment_mode: str, host: LiveHost, simulate: bool) -> str | None:
    """The runtime the host would use for a task's deployment mode, or None if it cannot."""
    if simulate or host.simulated:
        return "simulated" if "simulated" in host.runtimes else None
    mode = "kubernetes" if deployment_mode == "ome" else deployment_mode
    return mode if mode in host.runtimes else None


def capacity(host: LiveHost, *, engine: str, deployment_mode: str, gpu_type: str | None, simulate: bool) -> int | None:
    """How many GPUs of the task's type the host has for its mode and engine (None: it cannot run the task);
    for a real engine on CPU (`gpu_type: cpu`), its CPU slots."""
    if is_cpu_serving(gpu_type) and not simulate:
        ok = deployment_mode == "local" and "local" in host.runtimes and engine in host.cpu_engines and host.cpu_slots > 0
        return host.cpu_slots if ok else None
    mode = effective_mode(deployment_mode, host, simulate)
    if mode is None or (host.engines and engine not in host.engines and mode != "simulated"):
        return None
    wanted = None if mode == "simulated" else gpu_type  # simulated GPUs imitate any type
    return sum(1 for g in host.gpus if not wanted or wanted.lower() in g.name.lower())


@dataclass(frozen=True)
class Fit:
    fits: bool
    reason: str  # what is missing (empty when it fits)
    able: tuple[str, ...] = ()  # the hosts that could run it


def _gpus(n: int, gpu_type: str | None) -> str:
    what = "GPU" if n == 1 else "GPUs"
    return f"{n} {what} of type {gpu_type}" if gpu_type else f"{n} {what}"


def fit(need: int, hosts: dict[str, LiveHost], *, engine: str, deployment_mode: str, gpu_type: str | None, simulate: bool) -> Fit:
    """Whether any of `hosts` (those that take work) could run an experiment needing `need` GPUs."""
    simulated = simulate or deployment_mode == "simulated"
    if not hosts:
        return Fit(False, "no live host takes work (start one: autotune up, or autotune deploy)")
    kw: dict[str, Any] = dict(engine=engine, deployment_mode=deployment_mode, gpu_type=gpu_type, simulate=simulate)
    caps = {h: c for h, v in hosts.items() if (c := capacity(v, **kw)) is not None}
    if is_cpu_serving(gpu_type) and not simulated:  # one CPU slot per engine, whatever its flags say about GPUs
        if not caps:
            return Fit(False, f"no live host serves {engine} on its CPU (a runner without GPUs started with --engine {engine}=PATH)")
        return Fit(True, "", tuple(sorted(caps)))
    if not caps:
        if simulated:
            return Fit(False, "no live host runs simulated engines")
        offered = sorted({r for v in hosts.values() for r in v.runtimes})
        mode = "kubernetes (OME)" if deployment_mode == "ome" else deployment_mode
        return Fit(False, f"no live host runs {engine} in {mode} mode (the live hosts offer: {', '.join(offered) or 'nothing'})")
    shown = None if simulated else gpu_type
    largest = max(caps.values())
    if largest >= need:
        return Fit(True, "", tuple(sorted(h for h, c in caps.items() if c >= need)))
    if largest == 0 and shown:
        names = sorted({g.name for h in caps for g in hosts[h].gpus})
        return Fit(False, f"needs {_gpus(need, shown)} on one host; no live host has that type (they have: {', '.join(names) or 'no GPUs'})")
    return Fit(False, f"needs {_gpus(need, shown)} on one host; the largest matching host has {largest}")


# --- a search space against the fleet -----------------------------------------------------------------


@dataclass(frozen=True)
class Unfit:
    gpus: int
    configurations: int | None  # how many configurations need that many (None: a continuous range is involved)
    examples: tuple[str, ...]  # a few of their GPU-relevant settings, e.g. "tp=4,dp=2"
    reason: str


def _relevant(space) -> list:
    """The dimensions that change how many GPUs an experiment needs (enumerable ones only)."""
    from autotune.shared.expand import gpus_for

    out = []
    for d in space.dims:
        n = d.size
        if n is None or n > 256:
            continue
        counts = {gpus_for({**space.fixed, **d.flags_of(d.value_at(i)), d.name: d.value_at(i)}) for i in range(n)}
        if len(counts) > 1:
            out.append(d)
    return out


def _label(d, value: Any) -> str:
    return str(value) if d.kind == "bundle" else f"{d.name}={value}"


def unfit_configurations(space, hosts: dict[str, LiveHost], *, engine: str, deployment_mode: str, gpu_type: str | None,
                         simulate: bool, limit: int = 4096) -> tuple[int | None, list[Unfit]]:  # fmt: skip
    """(size of the space, the GPU counts of configurations no live host could run), by GPU count."""
    import itertools

    from autotune.shared.expand import gpus_for

    dims = _relevant(space)
    rest = 1
    for d in space.dims:
        if d not in dims:
            rest = rest * d.size if rest is not None and d.size is not None else None
    groups: dict[int, list[tuple[str, ...]]] = {}
    combos: Iterable = itertools.product(*[range(d.size or 0) for d in dims])
    for idx in itertools.islice(combos, limit):
        params: dict[str, Any] = dict(space.fixed)
        for d, i in zip(dims, idx, strict=True):
            v = d.value_at(i)
            params.update(d.flags_of(v))
            params[d.name] = v
        groups.setdefault(gpus_for(params), []).append(tuple(_label(d, d.value_at(i)) for d, i in zip(dims, idx, strict=True)))
    out = []
    for need in sorted(groups):
        f = fit(need, hosts, engine=engine, deployment_mode=deployment_mode, gpu_type=gpu_type, simulate=simulate)
        if f.fits:
            continue
        labels = groups[need]
        n = len(labels) * rest if rest is not None else None
        out.append(Unfit(need, n, tuple(",".join(x) or "every configuration" for x in labels[:3]), f.reason))
    return space.size, out
