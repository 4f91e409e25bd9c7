"""Runner settings: who this host is, which GPUs and runtimes it offers."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import msgspec

from autotune.shared.settings import Settings


def default_host_id() -> str:
    """Stable across restarts: AUTOTUNE_HOST, else derived from the machine id, else the hostname."""
    if h := os.environ.get("AUTOTUNE_HOST"):
        return h
    for p in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            mid = Path(p).read_text().strip()
        except OSError:
            continue
        if mid:
            name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40]
            return f"{name}-{mid[:8]}"
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())


class RunnerSettings(msgspec.Struct, kw_only=True):
    host: str = msgspec.field(default_factory=default_host_id)
    simulate: str | None = None  # e.g. "4xH100": simulated GPUs (the default when NVML finds none)
    runtimes: list[str] = []  # default: what this host can run
    time_scale: float = 1.0  # simulated engines run this much faster than real time
    takeover: bool = False  # replace a live instance of the same host
    heartbeat_s: float = 2.0
    startup_timeout_s: float = 900.0
    engine_host: str = "127.0.0.1"
    docker_models_dir: str | None = None
    sim_seed: int = 0

    @classmethod
    def from_env(cls, **overrides: object) -> RunnerSettings:
        env = os.environ
        s = cls(
            simulate=env.get("AUTOTUNE_SIMULATE_GPUS") or None,
            time_scale=float(env.get("AUTOTUNE_SIM_TIME_SCALE", "1")),
            runtimes=[r for r in env.get("AUTOTUNE_RUNTIMES", "").split(",") if r],
        )
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s


__all__ = ["RunnerSettings", "Settings", "default_host_id"]
