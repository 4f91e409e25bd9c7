"""Graceful shutdown: SIGTERM/SIGINT set an asyncio.Event; services end their loop and drain."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable


class Stopped(Exception):
    """Asked to stop before the service could begin (e.g. while NATS had not answered yet)."""


def install_stop(loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Event:
    stop = asyncio.Event()
    loop = loop or asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    return stop


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """asyncio.run(main(stop)) with stop set by SIGTERM/SIGINT; Ctrl-C never prints a traceback."""

    async def _runner() -> None:
        await main(install_stop())

    try:
        asyncio.run(_runner())
    except (KeyboardInterrupt, Stopped):
        pass


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True when stop was set meanwhile."""
    return await wait_event(stop, seconds)


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; True when it is set. (A cancellation always propagates:
    on Python 3.11 the autotune package installs 3.12's wait_for, see shared/compat.py.)"""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(max(seconds, 0.0)):
            await event.wait()
        return True
    except TimeoutError:
        return event.is_set()
