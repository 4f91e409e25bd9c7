"""Runtimes: how an engine is launched, watched and torn down on a host (local, simulated, docker, kubernetes)."""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol

LABEL_HOST = "AUTOTUNE_LABEL_HOST"
LABEL_EXPERIMENT = "AUTOTUNE_LABEL_EXPERIMENT"
LABEL_INSTANCE = "AUTOTUNE_LABEL_INSTANCE"


class Handle:
    """A launched engine: its output lines and how to stop it. Runtimes subclass it."""

    def __init__(self, ident: str, base_url: str) -> None:
        self.ident = ident  # pid, container id, deployment name
        self.base_url = base_url
        self.tail: collections.deque[str] = collections.deque(maxlen=200)
        self.lines: asyncio.Queue[str] = asyncio.Queue(maxsize=10_000)
        self.exit_code: int | None = None
        self.exited = asyncio.Event()

    def add_line(self, line: str) -> None:
        self.tail.append(line)
        if not self.lines.full():
            self.lines.put_nowait(line)

    async def stop(self, grace_s: float = 10.0) -> None:
        raise NotImplementedError


class Runtime(Protocol):
    name: str

    async def launch(self, argv: list[str], *, env: dict[str, str], labels: dict[str, str], gpu_indices: list[int], port: int) -> Handle: ...

    async def reap_orphans(self, host: str, keep: set[str]) -> list[str]:
        """Stop everything labelled with `host` whose experiment is not in `keep`; return what was stopped."""
        ...
