"""The projector service: the streams into DuckDB exactly once, read-only SQL out, snapshots, swaps.

One loop owns ingestion. Three StreamFeeds (events, telemetry, logs) fill buffers from their stored
positions + 1; the loop takes what is buffered (up to `batch_max`), the apply thread decodes and
applies it (views.apply) and builds Arrow tables, and the writer thread commits the rows and the
new positions in one DuckDB transaction. With a backlog the two threads overlap (batch k+1 applied
while batch k commits); live, each batch commits before the next is taken. Under load batches
grow, when idle they are single events. A batch that cannot be written is bisected until the
message that breaks it is found and recorded as a dead letter; the rest is applied.

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
import gc
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import duckdb
import pyarrow as pa
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from autotune.projector.answer import Answering
from autotune.projector.feed import StreamFeed
from autotune.projector.settings import ProjectorConfig, default_db_path
from autotune.projector.store import Prepared, SchemaMismatch, Store
from autotune.projector.views import Message, ViewState, apply, dead_letter
from autotune.projector.wire import LeanWire, NatsPyWire
from autotune.schemas import subjects as subj
from autotune.shared import bus
from autotune.shared import log as logging
from autotune.shared.lifecycle import wait_event
from autotune.shared.settings import Settings

log = logging.get("projector")

STREAMS = (subj.EVENTS_STREAM, subj.TELEMETRY_STREAM, subj.LOGS_STREAM)
GC_EVERY_S = 300.0


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
    nc = await bus.connect(settings, "projector")
    try:
        js = nc.jetstream()
        await bus.provision(js, settings)
        projector = Projector(nc, js, db_path or default_db_path(settings), config or ProjectorConfig.from_env(), settings)
        await projector.run(stop, burst=burst)
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()


def tune_gc() -> None:
    """The projector allocates millions of short-lived objects a second, most of them alive until
    their batch commits; with Python's default gen-0 threshold (700) the cyclic collector rescans
    them over and over and costs more than the projection itself (measured: 37 -> 12 us per event).
    Cycles are rare here (objects die by reference counting), so collections are made rare too;
    the service loop runs a full collection every few minutes. Process-wide, harmless elsewhere."""
    if gc.get_threshold()[0] < 500_000:
        gc.set_threshold(500_000, 50, 1000)


class Projector(Answering):
    def __init__(self, nc: NATS, js: JetStreamContext, db_path: str, config: ProjectorConfig, settings: Settings | None = None) -> None:
        self.nc, self.js, self.db_path, self.cfg = nc, js, os.path.abspath(db_path), config
        self.settings = settings
        self.wire: Any = None
        self.store: Store | None = None
        self.state: ViewState | None = None
        self.feeds: list[StreamFeed] = []
        self.applied_seq = 0  # AUTOTUNE_EVENTS sequence committed
        self.totals: Counter[str] = Counter()
        self._fast: list[Message] = []  # AUTOTUNE_EVENTS
        self._slow: list[Message] = []  # telemetry and logs
        self._slow_since = 0.0
        self._in_flight: Any = None  # the Changes being committed
        self._wake = asyncio.Event()
        self._applied = asyncio.Condition()
        self._applier = ThreadPoolExecutor(1, thread_name_prefix="projector-apply")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="projector-writer")
        self._readers = ThreadPoolExecutor(config.cursors, thread_name_prefix="projector-query")
        self._slots = asyncio.Semaphore(config.cursors)
        self._open = asyncio.Event()  # set while the store may be queried
        self._busy_readers = 0
        self._readers_idle = asyncio.Event()
        self._readers_idle.set()
        self._running_cursors: set[duckdb.DuckDBPyConnection] = set()
        self._reopen: tuple[str, asyncio.Future] | None = None
        self._subs: list[Any] = []
        self._tasks: set[asyncio.Task] = set()

    # --- lifecycle ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, burst: bool = False, serve: bool = True) -> dict[str, Any]:
        """Project until `stop` (or caught up, with `burst`). Returns what was applied."""
        t0 = time.monotonic()
        waker = asyncio.create_task(self._wake_on(stop))
        try:
            self.wire = await self._connect_wire()
            await self._open_store()
            log.info("projecting", db=self.db_path, **{s: p.seq for s, p in self.state.positions.items()})
            if serve:
                await self._serve()
            await self._ingest(stop, burst)
        finally:
            waker.cancel()
            await self._shutdown()
        return {**self.totals, "seconds": round(time.monotonic() - t0, 3), "applied_seq": self.applied_seq}

    async def _connect_wire(self) -> Any:
        s = self.settings
        if s is not None and self.cfg.lean_wire and LeanWire.usable(s.nats_url, s.creds):
            try:
                return await LeanWire([u.strip() for u in s.nats_url.split(",")]).connect()
            except (ConnectionError, TimeoutError) as e:
                log.warning("lean feed connection failed; reading through nats-py", error=str(e))
        return NatsPyWire(self.nc)

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _in_writer(self, fn: Callable[..., Any], *a: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *a)

    async def _open_store(self) -> None:
        self.store = await self._in_writer(self._new_store)
        await self._in_writer(self._load_state)
        self.applied_seq = self._events_seq()
        self._in_flight = None
        await self._restart_feeds()
        self._open.set()

    async def _restart_feeds(self) -> None:
        for feed in self.feeds:
            await feed.close()
        self._fast, self._slow = [], []
        self.feeds = [StreamFeed(self.wire, self.js, s, self._deliver, self._has_room, batch=self.cfg.pull_batch) for s in STREAMS]
        for feed in self.feeds:
            await feed.start(self.state.position(feed.stream).seq + 1)

    def _new_store(self) -> Store:
        def store() -> Store:
            return Store(self.db_path, cursors=self.cfg.cursors, checkpoint_max_mb=self.cfg.checkpoint_max_mb, threads=self.cfg.duckdb_threads)

        try:
            return store()
        except SchemaMismatch as e:
            # the file is only a cache of the log: set it aside and project from the first event
            aside = f"{self.db_path}.old-{int(time.time())}"
            log.warning("the read model has another schema; rebuilding it from the log", error=str(e), old=aside)
            os.replace(self.db_path, aside)
            if os.path.exists(self.db_path + ".wal"):
                os.replace(self.db_path + ".wal", aside + ".wal")
            return store()

    def _load_state(self) -> None:
        store = self.store
        self._in_flight = None
        self.state = ViewState(
            store.positions(),
            loader=store.load,
            complete=store.is_empty(),
            max_event_bytes=self.cfg.max_event_bytes,
            dead_letter_bytes=self.cfg.dead_letter_bytes,
        )

    async def _close_store(self) -> None:
        self._open.clear()
        for cur in list(self._running_cursors):
            with contextlib.suppress(Exception):
                cur.interrupt()
        await self._readers_idle.wait()
        for feed in self.feeds:
            await feed.close()
        self.feeds = []
        self._fast, self._slow = [], []
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._applier, lambda: None)  # an apply cancelled mid-way has finished
        if self.store is not None:
            store, self.store = self.store, None
            await self._in_writer(store.close)

    async def _shutdown(self) -> None:
        if self._reopen is not None:
            self._reopen[1].set_exception(RuntimeError("the projector is stopping"))
            self._reopen = None
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        await self._close_store()
        if self.wire is not None:
            await self.wire.close()
        self._applier.shutdown(wait=True)
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=False, cancel_futures=True)

    def _events_seq(self) -> int:
        p = self.state.positions.get(subj.EVENTS_STREAM) if self.state else None
        return p.seq if p else 0

    # --- ingestion ---------------------------------------------------------------------------------
    #
    # Two threads form a pipeline: the apply thread decodes batch k+1 and builds its Arrow tables
    # (Python, holding the GIL) while the writer thread commits batch k (DuckDB, releasing it).
    # Telemetry and logs wait up to `slow_delay_s` to join a batch, so the events stream (what
    # the API reads back with min_seq) never pays for their statements on every commit.

    def _deliver(self, m: Message) -> None:
        if m.stream == subj.EVENTS_STREAM:
            self._fast.append(m)
        else:
            if not self._slow:
                self._slow_since = time.monotonic()
            self._slow.append(m)
        self._wake.set()

    def _has_room(self) -> bool:
        return len(self._fast) + len(self._slow) < self.cfg.buffer_max

    def _take(self) -> list[Message]:
        limit = self.cfg.batch_max
        batch = self._fast[:limit]
        del self._fast[:limit]
        if self._slow and (len(self._slow) >= self.cfg.slow_batch or time.monotonic() - self._slow_since >= self.cfg.slow_delay_s):
            room = max(limit - len(batch), limit // 2)
            batch += self._slow[:room]
            del self._slow[:room]
            self._slow_since = time.monotonic()
        return batch

    def _idle_wait(self) -> float:
        if self._slow:
            return max(0.001, self.cfg.slow_delay_s - (time.monotonic() - self._slow_since))
        return 0.25

    async def _ingest(self, stop: asyncio.Event, burst: bool) -> None:
        loop = asyncio.get_running_loop()
        pending: tuple[asyncio.Future, list[Message], dict, int | None] | None = None
        next_gc = time.monotonic() + GC_EVERY_S
        next_report = time.monotonic() + 5.0
        try:
            while not stop.is_set():
                if time.monotonic() > next_gc:  # see tune_gc: the occasional cycle still gets freed
                    gc.collect()
                    next_gc = time.monotonic() + GC_EVERY_S
                if self._reopen is not None:
                    if pending is not None:
                        await self._finish(*pending)
                        pending = None
                    await self._swap()
                    continue
                if pending is not None and len(self._fast) + len(self._slow) < self.cfg.pipeline_min:
                    # little is waiting: finish the commit before taking more. Pipelining would keep
                    # a fresh event waiting for two commits instead of one; it pays only for backlogs
                    await self._finish(*pending)
                    pending = None
                batch = self._take()
                if not batch:
                    if pending is not None:  # idle: make the last batch visible now
                        await self._finish(*pending)
                        pending = None
                        continue
                    if burst and not self._fast and not self._slow and all(f.caught_up for f in self.feeds):
                        log.info("caught up", **{f.stream: f.last_seq for f in self.feeds})
                        return
                    if burst and time.monotonic() > next_report:
                        log.info("catching up", **{f.stream: f.state() for f in self.feeds})
                        next_report = time.monotonic() + 5.0
                    self._wake.clear()
                    await wait_event(self._wake, self._idle_wait())
                    continue
                try:
                    prepared, summary, seq = await loop.run_in_executor(self._applier, self._apply, batch)
                except Exception as e:  # the store could not be read: settle the pipeline, then isolate
                    if pending is not None:
                        await self._finish(*pending)
                        pending = None
                    await self._recover(batch, e)
                    continue
                if pending is not None:
                    ok = await self._finish(*pending)
                    pending = None
                    if not ok:  # recovery reloaded the state: read again from what is stored
                        await self._restart_feeds()
                        continue
                fut = loop.run_in_executor(self._writer, self._commit, prepared, batch)
                pending = (fut, batch, summary, seq)
                for feed in self.feeds:
                    feed.poke()
            if pending is not None:
                await self._finish(*pending)
                pending = None
        finally:
            if pending is not None:
                with contextlib.suppress(Exception):
                    await pending[0]

    def _apply(self, batch: list[Message]) -> tuple[Prepared, dict[str, int], int | None]:
        """Apply thread: evolve the state and build the Arrow tables for the writer."""
        t0 = time.perf_counter()
        self.state.trim(self.cfg.cache_rows, pinned=self._in_flight)
        ch = apply(self.state, batch)
        self._in_flight = ch
        pos = ch.positions.get(subj.EVENTS_STREAM)
        prepared = Store.prepare(ch)
        prepared.apply_ms = (time.perf_counter() - t0) * 1000
        return prepared, ch.summary(), pos.seq if pos else None

    def _commit(self, prepared: Prepared, batch: list[Message]) -> None:
        """Writer thread."""
        self._checkpoint()  # here, not after the commit: the batch before is visible already
        t0 = time.perf_counter()
        self.store.commit(prepared)
        t1 = time.perf_counter()
        oldest = min((m.stored_us for m in batch if m.stream == subj.EVENTS_STREAM), default=0)
        log.debug(
            "batch", size=len(batch), apply_ms=round(prepared.apply_ms, 1), commit_ms=round((t1 - t0) * 1000, 1),
            statements=len(prepared.sql), oldest_age_ms=round(time.time() * 1000 - oldest / 1000) if oldest else None,
        )  # fmt: skip

    def _checkpoint(self) -> None:
        """Writer thread, between commits. DuckDB would checkpoint inside whichever commit pushes
        its log past 16 MB: a stall of up to a second in the middle of live traffic, and during a
        catch-up the same rows written twice over. The writer instead checkpoints when the log is
        big and little is waiting, and (DuckDB's threshold raised to checkpoint_max_mb) only a log
        that outgrew that forces it. A restart replays at most that much log."""
        wal = self.store.wal_bytes()
        if wal < self.cfg.checkpoint_wal_mb * 2**20:
            return
        if len(self._fast) + len(self._slow) >= self.cfg.pipeline_min and wal < self.cfg.checkpoint_max_mb * 2**20 // 2:
            return
        t0 = time.perf_counter()
        self.store.checkpoint()
        log.debug("checkpoint", wal_mb=round(wal / 2**20, 1), ms=round((time.perf_counter() - t0) * 1000, 1))

    async def _finish(self, fut: asyncio.Future, batch: list[Message], summary: dict, seq: int | None) -> bool:
        """Wait for a batch's commit; False when it failed and was recovered (state reloaded)."""
        try:
            await fut
        except Exception as e:
            await self._recover(batch, e)
            return False
        self.totals.update(summary)
        if seq is not None and seq > self.applied_seq:
            self.applied_seq = seq
            async with self._applied:
                self._applied.notify_all()
        return True

    async def _recover(self, batch: list[Message], error: Exception) -> None:
        log.warning("a batch could not be written; isolating what breaks it", size=len(batch), error=repr(error))
        try:
            summary = await asyncio.get_running_loop().run_in_executor(self._applier, self._isolate, batch)
        except Exception as e:
            log.error("cannot write to the read model; reopening it", exc=True, error=repr(e))
            await self._close_store()
            await asyncio.sleep(1.0)
            await self._open_store()
            return
        self.totals.update(summary)
        seq = self._events_seq()
        if seq > self.applied_seq:
            self.applied_seq = seq
            async with self._applied:
                self._applied.notify_all()

    def _isolate(self, batch: list[Message]) -> dict[str, int]:
        """Apply thread, writer idle: reload the state from the store and bisect the batch until
        the message that cannot be written is found; it becomes a dead letter."""
        self._load_state()
        return self._bisect(batch)

    def _bisect(self, batch: list[Message]) -> dict[str, int]:
        try:
            ch = apply(self.state, batch)
            self.store.write(ch)
            return ch.summary()
        except Exception as e:
            self._load_state()
            if not _data_error(e):  # a bug or a broken store, not a bad message: never dead-letter for it
                raise
            if len(batch) > 1:
                mid = len(batch) // 2
                return dict(Counter(self._bisect(batch[:mid])) + Counter(self._bisect(batch[mid:])))
            m = batch[0]
            error = f"cannot write: {type(e).__name__}: {e}"
            log.error("dead letter", stream=m.stream, seq=m.seq, subject=m.subject, error=error)
            ch = dead_letter(self.state, m, error)
            self.store.write(ch)  # if even this fails the store is broken: the caller reopens it
            return ch.summary()

    async def wait_applied(self, seq: int, timeout: float) -> bool:
        if self.applied_seq >= seq:
            return True
        try:
            async with asyncio.timeout(timeout), self._applied:
                await self._applied.wait_for(lambda: self.applied_seq >= seq)
            return True
        except TimeoutError:
            return self.applied_seq >= seq

    # --- swapping in a rebuilt file -----------------------------------------------------------------

    async def _swap(self) -> None:
        assert self._reopen is not None
        new_path, done = self._reopen
        self._reopen = None
        try:
            await self._close_store()
            os.replace(new_path, self.db_path)
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.db_path + ".wal")  # a clean close leaves none; never replay the old file's
            await self._open_store()
            log.info("swapped in a rebuilt read model", db=self.db_path, applied_seq=self.applied_seq)
            done.set_result({"path": self.db_path, "applied_seq": self.applied_seq})
        except Exception as e:
            done.set_exception(e)
            raise


def _data_error(e: Exception) -> bool:
    """Errors a message's content can cause (bad values, overflows); anything else (a parser or
    binder error, I/O, an internal error) is the projector's own fault and must not cost data."""
    data = (duckdb.ConversionException, duckdb.OutOfRangeException, duckdb.InvalidInputException, duckdb.ConstraintException)
    return isinstance(e, (*data, pa.ArrowException, OverflowError, ValueError, TypeError)) and not isinstance(
        e, (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException)
    )
