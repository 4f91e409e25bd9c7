"""Python 3.11: asyncio.wait_for as Python 3.12 has it.

3.11's wait_for runs its awaitable in a task of its own and, when the caller is cancelled in the
same loop iteration as that awaitable completes, returns the result instead of raising
CancelledError (CPython gh-86296; 3.12 rebuilt wait_for on asyncio.timeout). nats-py awaits every
request and flush with wait_for, so a service task cancelled during a JetStream API call could
carry on as if nothing had happened: seen as a projector that outlived its cancellation in
tests/test_projector_service.py, and the same would make a runner's experiment ignore a cancel.

`install()` (run when the autotune package is imported) puts the 3.12 implementation in place on
3.11; on 3.12 and later it does nothing.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any


async def wait_for(fut: Any, timeout: float | None) -> Any:
    """asyncio.wait_for of CPython 3.12 (Lib/asyncio/tasks.py), on asyncio.timeout."""
    if timeout is not None and timeout <= 0:
        fut = asyncio.ensure_future(fut)
        if fut.done():
            return fut.result()
        fut.cancel()
        await asyncio.wait([fut])  # let it settle, as 3.12's _cancel_and_wait does
        try:
            return fut.result()
        except asyncio.CancelledError as exc:
            raise TimeoutError from exc
    async with asyncio.timeout(timeout):
        return await fut


def install() -> None:
    if sys.version_info < (3, 12) and asyncio.wait_for is not wait_for:
        asyncio.wait_for = wait_for  # type: ignore[assignment]
        asyncio.tasks.wait_for = wait_for  # type: ignore[attr-defined]
