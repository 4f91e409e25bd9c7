"""shared/compat.py: on Python 3.11 asyncio.wait_for must not swallow a cancellation."""

from __future__ import annotations

import asyncio

import pytest

import autotune  # noqa: F401  # installs the compat wait_for
from autotune.shared import compat


async def test_a_cancellation_that_meets_a_completing_wait_for_is_not_swallowed():
    """The caller is cancelled in the very loop iteration its wait_for's awaitable completes: 3.11's
    own wait_for returns normally there (the task carries on); the installed one raises."""
    event = asyncio.Event()
    carried_on = 0
    for _ in range(50):
        event.clear()

        async def waiter() -> None:
            nonlocal carried_on
            await asyncio.wait_for(event.wait(), 5)
            carried_on += 1

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0)  # the waiter is inside wait_for now
        event.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert carried_on == 0


async def test_wait_for_still_times_out_and_returns_results():
    assert asyncio.wait_for is compat.wait_for or asyncio.wait_for.__module__ == "asyncio.tasks"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.sleep(1), 0.01)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.sleep(1), 0)
    assert await asyncio.wait_for(asyncio.sleep(0, result=7), 1) == 7
    assert await asyncio.wait_for(asyncio.sleep(0, result=8), None) == 8
