"""Fencing: what a runner does when it finds that its host's liveness key expired under it.

While its key was gone (the runner was paused, partitioned, or declared lost), the scheduler may have
failed its attempts and placed their GPUs elsewhere, or on this very host again. Before the runner
takes any new work or shows any GPU free (docs/fencing.md):

1. `sort_out`: each in-flight attempt is still its own only if nothing but its own writes (or a cancel
   asked of it) came after what it last saw; the others are cancelled as `fenced`: their engines are
   torn down and nothing is written for them (their outcome is the scheduler's now);
2. the runner reaps engines labelled for this host that no kept attempt owns, and `scan`s what still
   runs: engines it cannot account for keep their GPUs busy in its liveness value (`busy_gpus`);
3. it claims its key again with that truth and appends `host.returned`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from autotune.runner.experiment import AttemptRun
from autotune.runner.runtimes import Runtime
from autotune.shared.log import get_logger

log = get_logger("runner")


async def sort_out(attempts: Mapping[str, AttemptRun], tasks: Mapping[str, asyncio.Task], shutdown_reason: dict[str, str]) -> tuple[list[str], list[str]]:
    """(kept, fenced): the attempts still this runner's, and those it stopped because they are not.
    A failed read of the log raises: the runner then stays fenced and tries again."""
    kept: list[str] = []
    fenced: list[str] = []
    for key, run in list(attempts.items()):
        (kept if await run.w.still_ours() else fenced).append(key)
    for key in fenced:
        attempts[key].owned = False  # from now on its output is late: dropped
        if (t := tasks.get(key)) is not None and not t.done():
            shutdown_reason[key] = "fenced"
            t.cancel()
    stopping = [t for k in fenced if (t := tasks.get(k)) is not None]
    if stopping:
        log.warning("stopping the engines of attempts taken from this runner while it was away", attempts=",".join(fenced))
        await asyncio.gather(*stopping, return_exceptions=True)
    return sorted(kept), sorted(fenced)


async def scan(runtimes: Mapping[str, Runtime], host: str, ours: set[str]) -> dict[str, list[int] | None]:
    """Engines labelled with this host that run now and that no attempt in `ours` owns: experiment key →
    GPU indices (None: unknown, so any GPU). A runtime that cannot answer is skipped (logged)."""
    out: dict[str, list[int] | None] = {}
    for rt in {id(r): r for r in runtimes.values()}.values():
        try:
            found = await asyncio.wait_for(rt.engines(host), 3)
        except Exception as e:
            log.warning("cannot list this host's engines", runtime=rt.name, error=repr(e))
            continue
        out |= {k: v for k, v in found.items() if k not in ours}
    return out


def busy_gpus(attempt_gpus: Mapping[str, list[int]], unaccounted: Mapping[str, list[int] | None], all_gpus: list[int]) -> list[int]:
    """GPU indices in use here: the runner's own attempts', and those of engines it cannot account for
    (every GPU when it cannot tell which)."""
    busy = {g for gpus in attempt_gpus.values() for g in gpus}
    for gpus in unaccounted.values():
        busy |= set(all_gpus) if gpus is None else set(gpus)
    return sorted(busy)
