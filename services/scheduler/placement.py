"""Placement: which live host and which of its GPUs an experiment attempt gets. Pure functions.

A host is eligible when it is live (its liveness key exists), not draining, supports the task's
deployment mode and engine, has GPUs whose model contains `gpu_type`, and has enough GPUs that no
running attempt leases and no foreign process occupies. Fewest-free-GPUs-first packing (best fit)
keeps large GPU blocks free for experiments that need them.
"""

from __future__ import annotations

import msgspec

from autotune.schemas.liveness import LiveGpu, LiveHost
from autotune.shared.fit import effective_mode  # one rule with the waiting reasons and `autotune submit`'s warning

__all__ = ["LiveGpu", "LiveHost", "Placement", "effective_mode", "place"]


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
) -> Placement | None:
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
        # simulated GPUs imitate whatever type the task asks for (a rehearsal of an A100 task runs anywhere)
        wanted = None if mode == "simulated" else gpu_type
        free = [g for g in host.gpus if g.index not in taken and (not wanted or wanted.lower() in g.name.lower())]
        if len(free) < gpus_needed:
            continue
        chosen = free[:gpus_needed]
        imitated = gpu_type if mode == "simulated" and gpu_type else (chosen[0].name if chosen else "")
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


def can_ever_fit(gpus_needed: int, gpu_type: str | None, fleet: dict[str, LiveHost]) -> bool:
    """Whether any live host has enough matching GPUs at all (to explain a queued experiment)."""
    return any(
        sum(1 for g in h.gpus if not gpu_type or gpu_type.lower() in g.name.lower()) >= gpus_needed for h in fleet.values()
    )
