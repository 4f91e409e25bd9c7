"""Placement: which live host and which of its GPUs an experiment attempt gets. Pure functions.

A host is eligible when it is live (its liveness key exists), not draining, supports the task's
deployment mode and engine, has GPUs whose model contains `gpu_type`, and has enough GPUs that no
running attempt leases and no foreign process occupies. Fewest-free-GPUs-first packing (best fit)
keeps large GPU blocks free for experiments that need them.

A task with `gpu_type: cpu` asks for a real engine on a host's CPU instead: a host that offers CPU
serving for its engine (`cpu_slots`, `cpu_engines`, the local runtime) and has a slot free. Its
capacity is slots, not GPUs: a 2-core host offers one, so two CPU engines never share (and measure)
the same cores. Such an attempt leases no GPU.
"""

from __future__ import annotations

import msgspec

from autotune.schemas.liveness import LiveGpu, LiveHost
from autotune.schemas.spec import CPU, is_cpu_serving
from autotune.shared.fit import effective_mode  # one rule with the waiting reasons and `autotune submit`'s warning

__all__ = ["LiveGpu", "LiveHost", "Placement", "effective_mode", "place", "place_cpu"]


class Placement(msgspec.Struct, frozen=True):
    host: str
    instance: str
    gpu_indices: list[int]
    gpu_uuids: list[str]
    gpu_type: str
    deployment_mode: str
    simulated: bool


def place(
    *,
    gpus_needed: int,
    engine: str,
    deployment_mode: str,
    gpu_type: str | None,
    simulate: bool,
    fleet: dict[str, LiveHost],
    leased: dict[str, set[int]],
    foreign_busy: dict[str, set[int]],
    cpu_used: dict[str, int] | None = None,
) -> Placement | None:
    if is_cpu_serving(gpu_type) and not simulate:
        return place_cpu(engine=engine, deployment_mode=deployment_mode, fleet=fleet, cpu_used=cpu_used or {})
    best: tuple[int, str, Placement] | None = None
    for host_id, host in sorted(fleet.items()):
        if host.draining:
            continue
        mode = effective_mode(deployment_mode, host, simulate)
        if mode is None:
            continue
        if host.engines and engine not in host.engines and mode != "simulated":
            continue
        taken = leased.get(host_id, set()) | foreign_busy.get(host_id, set())
        # simulated GPUs imitate whatever type the task asks for (a rehearsal of an A100 task runs anywhere;
        # a CPU task rehearses on a simulated GPU)
        wanted = None if mode == "simulated" else gpu_type
        free = [g for g in host.gpus if g.index not in taken and (not wanted or wanted.lower() in g.name.lower())]
        if len(free) < gpus_needed:
            continue
        chosen = free[:gpus_needed]
        imitated = gpu_type if mode == "simulated" and gpu_type and not is_cpu_serving(gpu_type) else (chosen[0].name if chosen else "")
        p = Placement(
            host_id,
            host.instance,
            [g.index for g in chosen],
            [g.uuid for g in chosen],
            imitated,
            mode,
            mode == "simulated",
        )
        key = (len(free), host_id)
        if best is None or key < best[:2]:
            best = (len(free), host_id, p)
    return best[2] if best else None


def place_cpu(*, engine: str, deployment_mode: str, fleet: dict[str, LiveHost], cpu_used: dict[str, int]) -> Placement | None:
    """A free CPU slot for a real engine: the host with the most free slots (spreads CPU work)."""
    best: tuple[int, str] | None = None
    for host_id, host in sorted(fleet.items()):
        if host.draining or deployment_mode != "local" or "local" not in host.runtimes or engine not in host.cpu_engines:
            continue
        free = host.cpu_slots - cpu_used.get(host_id, 0)
        if free > 0 and (best is None or (-free, host_id) < (-best[0], best[1])):
            best = (free, host_id)
    if best is None:
        return None
    return Placement(best[1], fleet[best[1]].instance, [], [], CPU, "local", False)


def can_ever_fit(gpus_needed: int, gpu_type: str | None, fleet: dict[str, LiveHost]) -> bool:
    """Whether any live host has enough matching GPUs at all (to explain a queued experiment)."""
    return any(
        sum(1 for g in h.gpus if not gpu_type or gpu_type.lower() in g.name.lower()) >= gpus_needed for h in fleet.values()
    )
