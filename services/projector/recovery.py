"""What a lane does when a batch cannot be written: bisect it down to the message that breaks it (a
dead letter), or, when the store itself fails, have it reopened (and wait for room on a full disk).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Awaitable, Callable

import duckdb
import pyarrow as pa

from autotune.projector.lane import Gate, Lane, Progress
from autotune.projector.settings import ProjectorConfig
from autotune.projector.view_state import Message
from autotune.projector.views import apply, dead_letter
from autotune.shared import diskspace
from autotune.shared.log import get_logger

log = get_logger("projector")


class Recovery:
    """Recovers a lane from a batch it could not write. A sidecar's lane reads again from what is
    committed (`restart_feeds`); a store that cannot be written at all goes to `gate`."""

    def __init__(self, cfg: ProjectorConfig, *, progress: Progress, gate: Gate, restart_feeds: Callable[[Lane], Awaitable[None]]) -> None:
        self.cfg, self.progress, self.gate, self.restart_feeds = cfg, progress, gate, restart_feeds

    async def recover(self, lane: Lane, batch: list[Message], error: Exception) -> None:
        log.warning("a batch could not be written; isolating what breaks it", lane=lane.name, size=len(batch), error=repr(error))
        try:
            summary = await asyncio.get_running_loop().run_in_executor(lane.applier, self._isolate, lane, batch)
        except Exception as e:
            full = diskspace.out_of_space(e)  # if so, said once, where the store waits for room
            if not full:
                log.error("cannot write to the read model; reopening it", exc=True, lane=lane.name, error=repr(e))
            self.gate.reopen(full=full)  # the coordinator pauses the lanes, closes and reopens the store
            return
        self.progress.count(lane, summary)
        await self.progress.advanced(lane, lane.events_seq())
        if lane.sidecar is not None:
            # it read on from its own state, which the recovery just replaced (its batches would
            # overwrite the positions' counts with its own): again, from what is committed now
            await self.restart_feeds(lane)

    def _isolate(self, lane: Lane, batch: list[Message]) -> dict[str, int]:
        """The lane's apply thread, its writer idle: reload its state from the store and bisect the
        batch until the message that cannot be written is found; it becomes a dead letter."""
        if lane.sidecar is not None:
            batch = [m for b in batch for m in b.messages()]
        lane.reload(self.cfg)
        return self._bisect(lane, batch)

    def _bisect(self, lane: Lane, batch: list[Message]) -> dict[str, int]:
        try:
            ch = apply(lane.state, batch)
            lane.store.write(ch, lane.conn, lane.db)
            return ch.summary()
        except Exception as e:
            lane.reload(self.cfg)
            if not data_error(e):  # a bug or a broken store, not a bad message: never dead-letter for it
                raise
            if len(batch) > 1:
                mid = len(batch) // 2
                return dict(Counter(self._bisect(lane, batch[:mid])) + Counter(self._bisect(lane, batch[mid:])))
            m = batch[0]
            error = f"cannot write: {type(e).__name__}: {e}"
            log.error("dead letter", stream=m.stream, seq=m.seq, subject=m.subject, error=error)
            ch = dead_letter(lane.state, m, error)
            lane.store.write(ch, lane.conn, lane.db)  # if even this fails the store is broken: the caller reopens it
            return ch.summary()


def data_error(e: Exception) -> bool:
    """Errors a message's content can cause (bad values, overflows); anything else (a parser or
    binder error, I/O, an internal error) is the projector's own fault and must not cost data."""
    data = (duckdb.ConversionException, duckdb.OutOfRangeException, duckdb.InvalidInputException, duckdb.ConstraintException)
    return isinstance(e, (*data, pa.ArrowException, OverflowError, ValueError, TypeError)) and not isinstance(
        e, (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException)
    )


async def wait_for_room(db_path: str, stop: asyncio.Event) -> bool:
    """The read model's disk is full: say so once, keep answering queries from what is stored,
    and go on once there is room (False: stopped first). Nothing is lost: what is not applied yet
    waits in the streams."""
    where = os.path.dirname(db_path)
    log.error(
        f"the projector's data volume is full ({where}): the read model stays as it is, and queries are answered from it, "
        f"until there is room; free at least {diskspace.room_needed(where) / 2**20:.0f} MiB there and it goes on by itself "
        "(no event is lost: they wait in NATS)", free_mib=diskspace.free_mib(where),
    )  # fmt: skip
    if not await diskspace.wait_for_room(where, stop):
        return False
    log.warning("there is room on the projector's data volume again; going on", free_mib=diskspace.free_mib(where))
    return True
