"""The value of a host's key in the `autotune-hosts` KV bucket: written by its runner on every
heartbeat, with a per-key TTL, so the key disappears on its own when the runner dies."""

from __future__ import annotations

import msgspec


class LiveGpu(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    uuid: str = ""
    name: str = ""
    memory_total_mib: float = 0.0


class LiveHost(msgspec.Struct, kw_only=True):
    host: str
    instance: str
    hostname: str = ""
    pid: int = 0
    gpus: list[LiveGpu] = []
    runtimes: list[str] = []
    engines: list[str] = []
    simulated: bool = False
    draining: bool = False
    running: list[str] = []  # "<task>/<n>/<attempt>" the runner is executing
    at: float = 0.0  # heartbeat time (epoch seconds)
    node: str | None = None
    engine_paths: dict[str, str] = {}  # engine → executable (host configuration)
    cpu_slots: int = 0  # real engines it serves on CPU at once; placement never exceeds it
    cpu_engines: list[str] = []
    # GPU indices in use on this host: by attempts its runner runs (whatever the log says of them), or
    # by engines labelled for this host that it cannot account for. The scheduler places nothing there.
    busy_gpus: list[int] = []
    unaccounted: list[str] = []  # experiment labels of engines running here that no attempt of this runner owns


def running_key(task: str, n: int, attempt: int) -> str:
    return f"{task}/{n}/{attempt}"
