"""The projector service's wiring: the streams into DuckDB exactly once, read-only SQL out,
snapshots, swaps; `run(settings, *, stop)`.

Ingestion runs in three lanes (lane.py): `state` (AUTOTUNE_EVENTS into the rows of tasks,
experiments and hosts, in the main file), `log` (AUTOTUNE_EVENTS into events, experiment_runs,
request_samples and dead letters, in the log file) and `telemetry` (AUTOTUNE_TELEMETRY and
AUTOTUNE_LOGS into gpu_samples and log_lines, in the log file). One StreamFeed per stream fills the
buffers of the lanes that read it, from their lowest stored position + 1; a lane's loop
(pipeline.py) takes what is buffered (up to `batch_max`), its apply thread decodes and applies it
(views.apply) and builds Arrow tables, and its writer thread commits them and the lane's new
positions in one DuckDB transaction on the lane's own connection. With a backlog the two threads
overlap (batch k+1 applied while batch k commits) and the lanes commit at once; live, each batch
commits before the next is taken, and the two lanes of the log file commit one at a time. The
state lane's file is small, so its own checkpoints are short (~100-160 ms at 64 MB of log), and
what people poll stays fresh while the log file checkpoints (0.4-1.3 s).
The telemetry lane's reading, applying and preparing runs in a sidecar process (sidecar.py):
its writer commits the batches the sidecar sends, and their positions, as it would its own.
Under load batches grow, when idle they are single events. A batch that cannot be written is
bisected until the message that breaks it is found and recorded as a dead letter (recovery.py);
the rest is applied. A swap, or a reopen after a lane could not write at all, parks every lane
first (Projector._maintain).

Answers (answer.py): queries on `autotune.query.sql` (queue group `projector`) run on pooled
cursors in worker threads, each in its own read transaction, a consistent snapshot that never
blocks ingestion; snapshots; and swaps: a rebuild (`autotune projector rebuild`) builds a fresh
file and asks the projector that owns the database (over `autotune.query.reopen.<key of host and
path>`) to swap it in: the owner pauses, closes, renames the new file over its own and reopens,
so no other process ever touches an open file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from autotune.projector import schema as sc
from autotune.projector import wire
from autotune.projector.answer import Answerer, SwapInProgress
from autotune.projector.feed import StreamFeed
from autotune.projector.lane import Gate, Lane, Progress
from autotune.projector.pipeline import Pipeline, tune_gc
from autotune.projector.recovery import Recovery, wait_for_room
from autotune.projector.settings import ProjectorConfig, default_db_path
from autotune.projector.sidecar import Sidecar
from autotune.projector.store import SchemaMismatch, Store, files, replace_files
from autotune.projector.view_state import Message
from autotune.schemas import subjects as subj
from autotune.shared import bus
from autotune.shared.log import get_logger
from autotune.shared.provision import provision
from autotune.shared.settings import Settings

log = get_logger("projector")

STREAMS = (subj.EVENTS_STREAM, subj.TELEMETRY_STREAM, subj.LOGS_STREAM)


async def run(
    settings: Settings,
    *,
    stop: asyncio.Event,
    db_path: str | None = None,
    burst: bool = False,
    config: ProjectorConfig | None = None,
) -> None:
    """Connect, provision, project the streams and answer queries until `stop` (or, with `burst`,
    until caught up); then drain."""
    tune_gc()
    nc = await bus.connect(settings, "projector", stop=stop)
    try:
        js = nc.jetstream()
        await provision(js, settings)
        projector = Projector(nc, js, db_path or default_db_path(settings), config or ProjectorConfig.from_env(), settings)
        await projector.run(stop, burst=burst)
    finally:
        await bus.close(nc)


class Projector:
    """The lanes, their feeds and the store they share; the pipeline that runs the lanes, the
    answerer that reads the store, and the swaps and reopens between them (_maintain)."""

    def __init__(self, nc: NATS, js: JetStreamContext, db_path: str, config: ProjectorConfig, settings: Settings | None = None) -> None:
        self.nc, self.js, self.db_path, self.cfg = nc, js, os.path.abspath(db_path), config
        self.settings = settings
        self.wire: Any = None
        self.store: Store | None = None
        decoded: dict = {}  # AUTOTUNE_EVENTS decoded by one of its lanes for the other (views._decode)
        self.state = Lane(
            "state", (subj.EVENTS_STREAM,), role="state", db="main", delay_s=config.state_delay_s, min_batch=config.state_batch, shared=decoded
        )
        self.log = Lane(
            "log", (subj.EVENTS_STREAM,), role="log", db=sc.LOG_DB, delay_s=config.log_delay_s, min_batch=config.log_batch, shared=decoded
        )
        self.telemetry = Lane(
            "telemetry",
            (subj.TELEMETRY_STREAM, subj.LOGS_STREAM),
            role="telemetry",
            db=sc.LOG_DB,
            delay_s=config.slow_delay_s,
            min_batch=config.slow_batch,
        )
        self.lanes = (self.state, self.log, self.telemetry)
        self.gate = Gate()
        if settings is not None and config.sidecar:
            # a sidecar that exits is handled as a lane that cannot write: the lanes park, the store
            # closes and reopens, and another sidecar starts from what is committed
            self.telemetry.sidecar = Sidecar(settings, config, self.telemetry, on_exit=self.gate.reopen)
            self.telemetry.delay_s = 0  # the sidecar gathers the batches
        self._lanes_of = {s: [lane for lane in self.lanes if s in lane.streams] for s in STREAMS}
        self.feeds: dict[str, StreamFeed] = {}
        self.progress = Progress((self.state, self.log))
        recovery = Recovery(config, progress=self.progress, gate=self.gate, restart_feeds=self._restart_feeds)
        self.pipeline = Pipeline(
            config, self.lanes, progress=self.progress, gate=self.gate, recovery=recovery, js=js, restart_feeds=self._restart_feeds
        )
        self.answerer = Answerer(nc, config, self.db_path, self.progress, swap=self.swap_in)
        self._reopen: tuple[str, asyncio.Future] | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, burst: bool = False, serve: bool = True) -> dict[str, Any]:
        """Project until `stop` (or caught up, with `burst`). Returns what was applied."""
        t0 = time.monotonic()
        self.pipeline.burst = burst
        waker = asyncio.create_task(self._wake_on(stop))
        stats: asyncio.Task | None = None
        try:
            self.wire = await wire.connect(self.nc, self.settings, self.cfg.lean_wire)
            await self._open_store()
            log.info("projecting", db=self.db_path, **{s: p.seq for lane in self.lanes for s, p in lane.state.positions.items()})
            if serve:
                await self.answerer.serve()
                stats = asyncio.create_task(self.answerer.publish_stats(stop))
            await self._ingest(stop)
        finally:
            waker.cancel()
            if stats is not None:
                stats.cancel()
            await self._shutdown()
        return {**self.progress.totals, "seconds": round(time.monotonic() - t0, 3), "applied_seq": self.progress.seq}

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.gate.wake.set()
        self.gate.resume.set()  # a lane parked for a reopen that will not happen now: let it see `stop`
        for lane in self.lanes:
            lane.wake.set()

    async def _in(self, pool: ThreadPoolExecutor, fn: Callable[..., Any], *a: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *a)

    async def _open_store(self) -> None:
        self.store = await self._in(self.state.writer, self._new_store)
        for lane in self.lanes:
            lane.store = self.store
            lane.conn = self.store.conn if lane is self.state else self.store.writer()
            lane.loader = self.store.writer()
            await self._in(lane.writer, lane.reload, self.cfg)
        self.progress.reset()
        for s in STREAMS:
            if all(lane.sidecar is None for lane in self._lanes_of[s]):
                await self._restart_feed(s)
        for lane in self.lanes:
            if lane.sidecar is not None:
                await self._restart_feeds(lane)
        self.answerer.open(self.store)

    async def _restart_feeds(self, lane: Lane) -> None:
        if lane.sidecar is not None:
            lane.buffer = []
            await lane.sidecar.start({s: lane.state.position(s) for s in lane.streams})
            return
        for s in lane.streams:
            await self._restart_feed(s)

    async def _restart_feed(self, stream: str) -> None:
        """(Re)start `stream`'s feed from the lowest position of the lanes that read it: each lane
        passes over what it has applied already (views.apply)."""
        old = self.feeds.pop(stream, None)
        if old is not None:
            await old.close()
        lanes = self._lanes_of[stream]
        for lane in lanes:
            lane.buffer = [m for m in lane.buffer if m.stream != stream]
        feed = StreamFeed(
            self.wire,
            self.js,
            stream,
            self._deliver,
            lambda: all(len(lane.buffer) < self.cfg.buffer_max for lane in lanes),
            batch=self.cfg.pull_batch,
        )
        self.feeds[stream] = feed
        for lane in lanes:
            lane.feeds = [self.feeds[x] for x in lane.streams if x in self.feeds]
        await feed.start(min(lane.state.position(stream).seq for lane in lanes) + 1)

    def _new_store(self) -> Store:
        def store() -> Store:
            return Store(self.db_path, cursors=self.cfg.cursors, checkpoint_max_mb=self.cfg.checkpoint_max_mb, threads=self.cfg.duckdb_threads)

        try:
            return store()
        except SchemaMismatch as e:
            # the files are only a cache of the log: set them aside and project from the first event
            stamp = f".old-{int(time.time())}"
            log.warning("the read model has another schema; rebuilding it from the log", error=str(e), old=self.db_path + stamp)
            for f in files(self.db_path):
                if os.path.exists(f):
                    os.replace(f, f + stamp)
            return store()

    async def _close_store(self) -> None:
        await self.answerer.close()
        for feed in self.feeds.values():
            await feed.close()
        self.feeds = {}
        for lane in self.lanes:
            if lane.sidecar is not None:
                lane.sidecar.pause()
        for lane in self.lanes:
            lane.feeds, lane.buffer = [], []
            await self._in(lane.applier, lambda: None)  # an apply cancelled mid-way has finished
            await self._in(lane.writer, lambda: None)
        if self.store is not None:
            store, self.store = self.store, None
            for lane in self.lanes:
                lane.store = lane.conn = lane.loader = None
            await self._in(self.state.writer, store.close)

    async def _shutdown(self) -> None:
        if self._reopen is not None:
            self._reopen[1].set_exception(RuntimeError("the projector is stopping"))
            self._reopen = None
        await self.answerer.stop()
        await self._close_store()
        for lane in self.lanes:
            if lane.sidecar is not None:
                await lane.sidecar.close()
        if self.wire is not None:
            await self.wire.close()
        for lane in self.lanes:
            lane.applier.shutdown(wait=True)
            lane.writer.shutdown(wait=True)
        self.answerer.shutdown()

    # --- between the lanes' commits -----------------------------------------------------------------

    def _deliver(self, m: Message) -> None:
        for lane in self._lanes_of[m.stream]:
            if not lane.buffer:
                lane.since = time.monotonic()
            lane.buffer.append(m)
            lane.wake.set()

    async def _ingest(self, stop: asyncio.Event) -> None:
        """Run the lanes; between their commits, do the swaps and reopens they cannot do alone."""
        wake = self.gate.wake
        runners = {asyncio.create_task(self.pipeline.run_lane(lane, stop)) for lane in self.lanes}
        try:
            while runners:
                wanted = asyncio.create_task(wake.wait())
                done, _ = await asyncio.wait({*runners, wanted}, return_when=asyncio.FIRST_COMPLETED)
                wanted.cancel()
                for task in done & runners:
                    runners.discard(task)
                    task.result()  # a lane that failed stops the projector (its supervisor restarts it)
                if stop.is_set():  # the lanes settle their commits and return
                    await asyncio.gather(*runners)
                    return
                if not wake.is_set():
                    continue
                wake.clear()
                if self._reopen is not None or self.gate.broken:
                    await self._maintain(stop)
        finally:
            for task in runners:
                task.cancel()
            for task in runners:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _maintain(self, stop: asyncio.Event) -> None:
        """Park both lanes (each settles its commit first), swap or reopen the store, resume."""
        gate = self.gate
        gate.resume.clear()
        gate.pause.set()
        for lane in self.lanes:
            lane.wake.set()
        for lane in self.lanes:  # a lane that ended keeps `parked` set
            await lane.parked.wait()
        try:
            if self._reopen is not None:
                await self._swap()
            if gate.broken:
                if gate.full:
                    if not await wait_for_room(self.db_path, stop):
                        return  # stopping: the store closes as it is
                    gate.full = False
                gate.broken = False
                await self._close_store()
                await asyncio.sleep(1.0)
                await self._open_store()
        finally:
            gate.pause.clear()
            gate.resume.set()

    async def swap_in(self, new_path: str) -> dict:
        """Swap the rebuilt file at `new_path` in, between the lanes' commits (the answerer's
        request); returns the path and how far the swapped-in file is."""
        if self._reopen is not None:
            raise SwapInProgress(new_path)
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        self._reopen = (new_path, done)
        self.gate.wake.set()
        return await done

    async def _swap(self) -> None:
        """Both lanes parked: close, rename the rebuilt file over ours, reopen."""
        assert self._reopen is not None
        new_path, done = self._reopen
        self._reopen = None
        try:
            await self._close_store()
            replace_files(new_path, self.db_path)
            await self._open_store()
            log.info("swapped in a rebuilt read model", db=self.db_path, applied_seq=self.progress.seq)
            done.set_result({"path": self.db_path, "applied_seq": self.progress.seq})
        except Exception as e:
            done.set_exception(e)
            raise
