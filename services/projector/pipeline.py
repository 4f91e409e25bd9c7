"""The commit pipeline: each lane's loop takes what is buffered, applies it on its apply thread and
commits it on its writer thread; and the garbage collector's tuning for that many objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Awaitable, Callable

import duckdb
from nats.js import JetStreamContext

from autotune.projector.lane import Gate, Lane, Progress
from autotune.projector.recovery import Recovery
from autotune.projector.settings import ProjectorConfig
from autotune.projector.store import Prepared, Store
from autotune.projector.view_state import Message
from autotune.projector.views import apply
from autotune.schemas import subjects as subj
from autotune.shared.lifecycle import wait_event
from autotune.shared.log import get_logger

log = get_logger("projector")

GC_EVERY_S = 300.0


def tune_gc() -> None:
    """The projector allocates millions of short-lived objects a second, most of them alive until
    their batch commits; with Python's default gen-0 threshold (700) the cyclic collector rescans
    them over and over and costs more than the projection itself (measured: 37 -> 12 us per event).
    Cycles are rare here (objects die by reference counting), so collections are made rare too;
    the state lane's loop runs a full collection every few minutes. Process-wide, harmless elsewhere."""
    if gc.get_threshold()[0] < 500_000:
        gc.set_threshold(500_000, 50, 1000)
    if _log_slow_gc not in gc.callbacks:
        gc.callbacks.append(_log_slow_gc)


_gc_started = 0.0


def _log_slow_gc(phase: str, info: dict[str, int]) -> None:
    """A collection holds the GIL, and so every lane's DuckDB work: the slow ones are logged
    (DEBUG `gc`), so that a stall of every lane at once can be told from one of the disk."""
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
        return
    ms = (time.perf_counter() - _gc_started) * 1000
    if ms > 20:
        log.debug("gc", generation=info.get("generation"), ms=round(ms, 1), collected=info.get("collected"))


# Each lane is a pipeline of two threads: its apply thread decodes batch k+1 and builds its
# Arrow tables (Python, holding the GIL) while its writer thread commits batch k (DuckDB,
# releasing it). The telemetry lane waits up to `slow_delay_s` to gather a batch: GPU samples
# once a second need no millisecond freshness, and fewer commits leave the cores to events.
# The log lane waits up to `log_delay_s`, unless a query's min_seq waits for it (Lane.wanted):
# its commits cost per statement, not per row, and committing after every small batch took
# the cores from the state lane people poll (freshness probe, 2,000 events/s: `tasks` p50 54
# -> 34 ms with the log lane idle; with it gathering 250 ms, p99 95-106 -> 80-88 ms).
# The state lane gathers too, for up to `state_delay_s` (50 ms), and commits at once for a
# query that waits: a commit costs ~8 ms of CPU whatever its size, and committing after every
# few events spent half a core on it (55 commits/s at 2,000 events/s), which the queries and
# the other lanes then waited for (freshness probe, 200k events before, six alternating runs
# each: `tasks` p50 40-49 -> 31-41 ms, p99 72-183 -> 59-91 ms). Without min_seq, a query may
# see the state up to 50 ms late.
# A swap or a reopen pauses both lanes (each settles its commit and parks), is done, and
# resumes them.


class Pipeline:
    """Runs the lanes' loops. A batch that cannot be written goes to `recovery`; a lane whose state
    recovery reloaded reads again from what is stored (`restart_feeds`)."""

    def __init__(
        self,
        cfg: ProjectorConfig,
        lanes: tuple[Lane, ...],
        *,
        progress: Progress,
        gate: Gate,
        recovery: Recovery,
        js: JetStreamContext,
        restart_feeds: Callable[[Lane], Awaitable[None]],
    ) -> None:
        self.cfg, self.lanes, self.progress, self.gate, self.recovery, self.js = cfg, lanes, progress, gate, recovery, js
        self.restart_feeds = restart_feeds
        self.burst = False  # a catch-up that ends once caught up (`run --burst`, rebuild)
        self._one_commit = threading.Lock()

    def waiting(self) -> int:
        return sum(lane.waiting() for lane in self.lanes)

    async def run_lane(self, lane: Lane, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        burst, gate = self.burst, self.gate
        pending: tuple[asyncio.Future, list[Message], dict, int | None] | None = None
        next_gc = time.monotonic() + GC_EVERY_S
        next_report = time.monotonic() + 5.0
        prunes = lane.role == "telemetry" and not burst and self.cfg.prune_every_s > 0
        next_prune = time.monotonic() + min(30.0, self.cfg.prune_every_s)  # soon after a start: the projector may have been down long
        try:
            while not stop.is_set():
                if lane.role == "state" and time.monotonic() > next_gc:  # see tune_gc: the occasional cycle still gets freed
                    gc.collect()
                    next_gc = time.monotonic() + GC_EVERY_S
                if gate.pause.is_set() or gate.broken:  # broken: nothing more until the store is reopened
                    if pending is not None:
                        await self._finish(lane, *pending)
                        pending = None
                    lane.parked.set()
                    await gate.resume.wait()
                    lane.parked.clear()
                    continue
                if prunes and time.monotonic() > next_prune:
                    if pending is not None:
                        await self._finish(lane, *pending)
                        pending = None
                    await self._prune(lane)
                    next_prune = time.monotonic() + self.cfg.prune_every_s
                    continue
                if pending is not None and lane.waiting() < self.cfg.pipeline_min:
                    # little is waiting: finish the commit before taking more. Pipelining would keep
                    # a fresh event waiting for two commits instead of one; it pays only for backlogs
                    await self._finish(lane, *pending)
                    pending = None
                    continue
                batch = lane.take(self.cfg.batch_max)
                if not batch:
                    if burst and lane.caught_up():
                        log.info("caught up", lane=lane.name, **{s: p.seq for s, p in lane.state.positions.items()})
                        return
                    if burst and time.monotonic() > next_report:
                        log.info("catching up", lane=lane.name, **lane.feed_states())
                        next_report = time.monotonic() + 5.0
                    lane.wake.clear()
                    await wait_event(lane.wake, lane.idle_wait())
                    continue
                try:
                    prepared, summary, seq = await loop.run_in_executor(lane.applier, self._apply, lane, batch)
                except Exception as e:  # the store could not be read: settle the pipeline, then isolate
                    if pending is not None:
                        await self._finish(lane, *pending)
                        pending = None
                    await self.recovery.recover(lane, batch, e)
                    continue
                if pending is not None:
                    ok = await self._finish(lane, *pending)
                    pending = None
                    if not ok:  # recovery reloaded the state: read again from what is stored
                        if not gate.broken and lane.sidecar is None:  # (a sidecar's recovery restarted it)
                            await self.restart_feeds(lane)
                        continue
                fut = loop.run_in_executor(lane.writer, self._commit, lane, prepared, batch)
                pending = (fut, batch, summary, seq)
                for feed in lane.feeds:
                    feed.poke()
            if pending is not None:
                await self._finish(lane, *pending)
                pending = None
        finally:
            lane.parked.set()  # ended: never waited for
            if pending is not None:
                with contextlib.suppress(Exception):
                    await pending[0]

    async def _prune(self, lane: Lane) -> None:
        """Between the telemetry lane's commits: drop the rows whose messages their streams no
        longer hold (AUTOTUNE_TELEMETRY's and AUTOTUNE_LOGS's max age, 7 days by default), so the
        file stays bounded and holds what a rebuild would."""
        try:
            first_seqs = {s: (await self.js.stream_info(s)).state.first_seq for s in lane.streams}
            if max(first_seqs.values()) <= 1:  # nothing dropped yet
                return
            pruned = await asyncio.get_running_loop().run_in_executor(lane.writer, self._delete_expired, lane, first_seqs)
        except Exception as e:  # NATS away, the store being reopened: the next round tries again
            log.warning("pruning skipped; trying again later", error=repr(e))
            return
        if any(pruned.values()):
            log.info("pruned what the streams no longer hold", **pruned)

    def _delete_expired(self, lane: Lane, first_seqs: dict[str, int]) -> dict[str, int]:
        assert lane.store is not None
        with self._one_commit:
            return lane.store.prune(lane.conn, first_seqs)

    def _apply(self, lane: Lane, batch: list) -> tuple[Prepared, dict[str, int], int | None]:
        """A lane's apply thread: evolve its state and build the Arrow tables for its writer (or,
        from a sidecar, take them as they came)."""
        if lane.sidecar is not None:
            (b,) = batch
            lane.state.positions.update(b.positions)
            return b.prepared, b.summary, None
        t0 = time.perf_counter()
        lane.state.trim(self.cfg.cache_rows, pinned=lane.in_flight)
        ch = apply(lane.state, batch)
        lane.in_flight = ch
        pos = ch.positions.get(subj.EVENTS_STREAM)
        prepared = Store.prepare(ch, lane.db)
        prepared.apply_ms = (time.perf_counter() - t0) * 1000
        return prepared, ch.summary(), pos.seq if pos else None

    def _commit(self, lane: Lane, prepared: Prepared, batch: list[Message]) -> None:
        """A lane's writer thread. With a backlog the lanes commit side by side (a catch-up uses
        both cores); live, one at a time: two DuckDB commits at once slowed each other's tail
        (one A/B at idle: events-lane commit p99 67 ms serialized, 127 ms side by side), and live
        batches are small. The state lane never waits for the log file's lanes: its file is
        another, and its commits are what a query with min_seq waits for."""
        self._checkpoint(lane)  # here, not after the commit: the batch before is visible already
        t0 = time.perf_counter()
        live = lane.role != "state" and self.waiting() < self.cfg.pipeline_min
        with self._one_commit if live else contextlib.nullcontext():
            lane.store.commit(prepared, lane.conn)
        t1 = time.perf_counter()
        size, oldest = lane.extent(batch)
        log.debug(
            "batch", lane=lane.name, size=size, apply_ms=round(prepared.apply_ms, 1), commit_ms=round((t1 - t0) * 1000, 1),
            statements=len(prepared.sql), oldest_age_ms=round(time.time() * 1000 - oldest / 1000) if oldest else None,
        )  # fmt: skip

    def _checkpoint(self, lane: Lane) -> None:
        """A writer thread, between its commits. DuckDB would checkpoint inside whichever commit
        pushes its log past 16 MB: a stall of up to a second in the middle of live traffic, and
        during a catch-up the same rows written twice over. The writers instead checkpoint when the
        log is big and little is waiting, and (DuckDB's threshold raised to checkpoint_max_mb) only
        a log that outgrew that forces it. A restart replays at most that much log."""
        wal = lane.store.wal_bytes(lane.db)
        small = (self.cfg.state_checkpoint_wal_mb if lane.role == "state" else self.cfg.checkpoint_wal_mb) * 2**20
        if wal < small:
            return
        if (self.burst or self.waiting() >= self.cfg.pipeline_min) and wal < self.cfg.checkpoint_max_mb * 2**20 // 2:
            return  # a burst (a batch job, nobody reading) checkpoints once, when it closes
        t0 = time.perf_counter()
        try:
            if lane.store.checkpoint(lane.conn, db=lane.db, above_bytes=small):
                log.debug("checkpoint", lane=lane.name, wal_mb=round(wal / 2**20, 1), ms=round((time.perf_counter() - t0) * 1000, 1))
        except duckdb.Error as e:  # e.g. a long query's transaction: the next commit tries again; never fail a batch for it
            log.debug("checkpoint skipped", lane=lane.name, wal_mb=round(wal / 2**20, 1), error=str(e))

    async def _finish(self, lane: Lane, fut: asyncio.Future, batch: list[Message], summary: dict, seq: int | None) -> bool:
        """Wait for a batch's commit; False when it failed and was recovered (state reloaded)."""
        try:
            await fut
        except Exception as e:
            await self.recovery.recover(lane, batch, e)
            return False
        self.progress.count(lane, summary)
        await self.progress.advanced(lane, seq)
        return True
