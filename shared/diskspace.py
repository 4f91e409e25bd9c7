"""A full disk, said plainly: what is full, how much room is needed before going on, and the wait for it."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil


def out_of_space(error: BaseException) -> bool:
    """Whether `error` (an OSError, or a library's error that carries its text) says the disk is full."""
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "no space left on device" in str(error).lower()


def room_needed(path: str | os.PathLike[str]) -> int:
    """Free bytes to wait for on the disk under `path` after it ran full: 5% of the disk, between
    8 MiB and 1 GiB (enough for the writes that were refused, not so much that a big disk waits for ever)."""
    return int(min(2**30, max(8 * 2**20, 0.05 * shutil.disk_usage(path).total)))


def free_mib(path: str | os.PathLike[str]) -> float:
    return round(shutil.disk_usage(path).free / 2**20, 1)


async def wait_for_room(path: str | os.PathLike[str], stop: asyncio.Event | None = None, every_s: float = 2.0) -> bool:
    """Until the disk under `path` has `room_needed` free; False when `stop` was set first."""
    need = room_needed(path)
    while shutil.disk_usage(path).free < need:
        if stop is not None and stop.is_set():
            return False
        await asyncio.sleep(every_s)
    return True
