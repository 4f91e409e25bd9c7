"""The projector service: the streams into DuckDB exactly once, read-only SQL out, snapshots, swaps.

Ingestion runs in three lanes (class Lane): `state` (AUTOTUNE_EVENTS into the rows of tasks,
experiments and hosts, in the main file), `log` (AUTOTUNE_EVENTS into events, experiment_runs,
request_samples and dead letters, in the log file) and `telemetry` (AUTOTUNE_TELEMETRY and
AUTOTUNE_LOGS into gpu_samples and log_lines, in the log file). One StreamFeed per stream fills the
buffers of the lanes that read it, from their lowest stored position + 1; a lane's loop takes what
is buffered (up to `batch_max`), its apply thread decodes and applies it (views.apply) and builds
Arrow tables, and its writer thread commits them and the lane's new positions in one DuckDB
transaction on the lane's own connection. With a backlog the two threads overlap (batch k+1
applied while batch k commits) and the lanes commit at once; live, each batch commits before the
next is taken, and the two lanes of the log file commit one at a time. The state lane's file is
small, so its own checkpoints are short (~100-160 ms at 64 MB of log), and what people poll stays
fresh while the log file checkpoints (0.4-1.3 s).
The telemetry lane's reading, applying and preparing runs in a sidecar process (sidecar.py):
its writer commits the batches the sidecar sends, and their positions, as it would its own.
Under load batches grow, when idle they are single events. A batch that cannot be written is
bisected until the message that breaks it is found and recorded as a dead letter; the rest is
applied. A swap, or a reopen after a lane could not write at all, parks every lane first
(Projector._maintain).

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
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import duckdb
import pyarrow as pa
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from autotune.projector import schema as sc
from autotune.projector import wire
from autotune.projector.answer import Answering
from autotune.projector.feed import StreamFeed
from autotune.projector.settings import ProjectorConfig, default_db_path
from autotune.projector.sidecar import Sidecar
from autotune.projector.store import Prepared, SchemaMismatch, Store, files, replace_files
from autotune.projector.view_state import Message, ViewState
from autotune.projector.views import apply, dead_letter
from autotune.schemas import subjects as subj
from autotune.shared import bus, diskspace
from autotune.shared.lifecycle import wait_event
from autotune.shared.log import get_logger
from autotune.shared.provision import provision
from autotune.shared.settings import Settings

log = get_logger("projector")

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
    nc = await bus.connect(settings, "projector", stop=stop)
    try:
        js = nc.jetstream()
        await provision(js, settings)
        projector = Projector(nc, js, db_path or default_db_path(settings), config or ProjectorConfig.from_env(), settings)
        await projector.run(stop, burst=burst)
    finally:
        await bus.close(nc)


def tune_gc() -> None:
    """The projector allocates millions of short-lived objects a second, most of them alive until
    their batch commits; with Python's default gen-0 threshold (700) the cyclic collector rescans
    them over and over and costs more than the projection itself (measured: 37 -> 12 us per event).
    Cycles are rare here (objects die by reference counting), so collections are made rare too;
    the service loop runs a full collection every few minutes. Process-wide, harmless elsewhere."""
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


def lane_state(
    store: Store,
    role: str,
    streams: tuple[str, ...],
    conn: duckdb.DuckDBPyConnection,
    loader: duckdb.DuckDBPyConnection,
    cfg: ProjectorConfig,
    shared: dict | None = None,
) -> ViewState:
    """A lane's state as the store leaves it: its positions, and, on a file that is not empty, the
    stored keys (state) or the finished attempts (log) up to `cache_keys` (else it asks the store
    per batch, on `loader`)."""
    positions = {s: p for s, p in store.positions(conn, sc.STATE_POSITIONS if role == "state" else sc.POSITIONS).items() if s in streams}
    complete = store.is_empty(conn, sc.STARTS_EMPTY[role])
    keys = store.keys(conn, cfg.cache_keys) if role == "state" and not complete else None
    finished = store.finished(conn, cfg.cache_keys) if role == "log" and not complete else None
    return ViewState(
        positions,
        loader=(lambda table, keys: store.load(table, keys, loader)) if role == "state" else None,
        finished_loader=(lambda keys: store.load_finished(keys, loader)) if role == "log" else None,
        complete=complete,
        stored=keys,
        max_keys=cfg.cache_keys,
        finished=finished,
        max_event_bytes=cfg.max_event_bytes,
        dead_letter_bytes=cfg.dead_letter_bytes,
        role=role,
        shared=shared,
    )


class Lane:
    """One writer of the read model: some streams' messages, in order, applied on its own thread
    and committed on its own DuckDB connection, to one file, with its own stream positions.

    Three lanes (`role`, see view_state.ViewState): `state` (AUTOTUNE_EVENTS into the rows people and
    the API poll, read back with min_seq; the main file), `log` (AUTOTUNE_EVENTS into the
    append-only events, results and dead letters) and `telemetry` (GPU samples and log lines:
    append-only, ~3 of every 4 messages); both in the log file. Their transactions touch disjoint
    rows, so they can commit side by side (with a backlog: a catch-up uses both cores), and a live
    event's state transaction carries neither the log's statements nor its checkpoints. Each lane
    is exactly-once on its own (its rows and its positions commit together), which is all a
    restart needs."""

    def __init__(self, name: str, streams: tuple[str, ...], *, role: str, db: str, delay_s: float, min_batch: int) -> None:
        self.name, self.streams, self.role, self.db = name, streams, role, db
        self.delay_s, self.min_batch = delay_s, min_batch  # a batch waits this long or for this many
        self.buffer: list[Message] = []
        self.since = 0.0  # when the first buffered message arrived
        self.wake = asyncio.Event()
        self.applier = ThreadPoolExecutor(1, thread_name_prefix=f"projector-{name}-apply")
        self.writer = ThreadPoolExecutor(1, thread_name_prefix=f"projector-{name}-write")
        self.conn: duckdb.DuckDBPyConnection | None = None
        self.loader: duckdb.DuckDBPyConnection | None = None  # reads stored rows while `conn` commits
        self.state: ViewState | None = None
        self.feeds: list[StreamFeed] = []
        self.in_flight: Any = None  # the Changes being committed
        self.parked = asyncio.Event()  # paused for a swap or a reopen
        self.wanted = 0  # queries waiting (min_seq) for this lane: it takes what is buffered at once
        self.sidecar: Sidecar | None = None  # reads, applies and prepares for this lane: its buffer holds sidecar.Batch

    def take(self, limit: int) -> list:
        if not self.buffer:
            return []
        if self.sidecar is not None:  # batches gathered and prepared already: one per commit
            self.sidecar.credit()
            return [self.buffer.pop(0)]
        if self.delay_s and not self.wanted and len(self.buffer) < self.min_batch and time.monotonic() - self.since < self.delay_s:
            return []
        batch = self.buffer[:limit]
        del self.buffer[:limit]
        self.since = time.monotonic()
        return batch

    def idle_wait(self) -> float:
        if self.delay_s and self.buffer and not self.wanted:
            return max(0.001, self.delay_s - (time.monotonic() - self.since))
        return 0.25

    def caught_up(self) -> bool:
        if self.sidecar is not None:
            return not self.buffer and self.sidecar.caught_up
        return not self.buffer and all(f.caught_up for f in self.feeds)

    def waiting(self) -> int:
        """Messages buffered."""
        return sum(b.size for b in self.buffer) if self.sidecar is not None else len(self.buffer)

    def extent(self, batch: list) -> tuple[int, int]:
        """(messages, the oldest one's store time in us) of a batch this lane took."""
        if self.sidecar is not None:
            return sum(b.size for b in batch), min(b.oldest_us for b in batch)
        return len(batch), min((m.stored_us for m in batch), default=0)

    def feed_states(self) -> dict[str, str]:
        """Where its feeds are, for the logs."""
        if self.sidecar is not None:
            return {"sidecar": self.sidecar.feeds}
        return {f.stream: f.state() for f in self.feeds}


class Projector(Answering):
    def __init__(self, nc: NATS, js: JetStreamContext, db_path: str, config: ProjectorConfig, settings: Settings | None = None) -> None:
        self.nc, self.js, self.db_path, self.cfg = nc, js, os.path.abspath(db_path), config
        self.settings = settings
        self.wire: Any = None
        self.store: Store | None = None
        self.state = Lane(
            "state", (subj.EVENTS_STREAM,), role="state", db="main", delay_s=config.state_delay_s, min_batch=config.state_batch
        )
        self.log = Lane("log", (subj.EVENTS_STREAM,), role="log", db=sc.LOG_DB, delay_s=config.log_delay_s, min_batch=config.log_batch)
        self.telemetry = Lane(
            "telemetry",
            (subj.TELEMETRY_STREAM, subj.LOGS_STREAM),
            role="telemetry",
            db=sc.LOG_DB,
            delay_s=config.slow_delay_s,
            min_batch=config.slow_batch,
        )
        self.lanes = (self.state, self.log, self.telemetry)
        if settings is not None and config.sidecar:
            self.telemetry.sidecar = Sidecar(settings, config, self.telemetry, on_exit=self._sidecar_exited)
            self.telemetry.delay_s = 0  # the sidecar gathers the batches
        self._lanes_of = {s: [lane for lane in self.lanes if s in lane.streams] for s in STREAMS}
        self.feeds: dict[str, StreamFeed] = {}
        self._decoded: dict = {}  # AUTOTUNE_EVENTS decoded by one of its lanes for the other (views._decode)
        self.applied = {"state": 0, "log": 0}  # AUTOTUNE_EVENTS sequence committed by the lanes that read it
        self.totals: Counter[str] = Counter()
        self._burst = False  # a catch-up that ends once caught up (`run --burst`, rebuild)
        self._wake = asyncio.Event()  # a swap or a reopen is wanted
        self._pause = asyncio.Event()
        self._resume = asyncio.Event()
        self._broken = False  # a lane cannot write: close and reopen the store
        self._full = False  # ... because its disk is full: reopen once there is room
        self._one_commit = threading.Lock()
        self._applied = asyncio.Condition()
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
        self._burst = burst
        waker = asyncio.create_task(self._wake_on(stop))
        stats: asyncio.Task | None = None
        try:
            self.wire = await wire.connect(self.nc, self.settings, self.cfg.lean_wire)
            await self._open_store()
            log.info("projecting", db=self.db_path, **{s: p.seq for lane in self.lanes for s, p in lane.state.positions.items()})
            if serve:
                await self._serve()
                stats = asyncio.create_task(self._publish_stats(stop))
            await self._ingest(stop, burst)
        finally:
            waker.cancel()
            if stats is not None:
                stats.cancel()
            await self._shutdown()
        return {**self.totals, "seconds": round(time.monotonic() - t0, 3), "applied_seq": self.applied_seq}

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()
        self._resume.set()  # a lane parked for a reopen that will not happen now: let it see `stop`
        for lane in self.lanes:
            lane.wake.set()

    async def _in(self, pool: ThreadPoolExecutor, fn: Callable[..., Any], *a: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *a)

    @property
    def applied_seq(self) -> int:
        """AUTOTUNE_EVENTS applied in every lane that reads it."""
        return min(self.applied.values())

    async def _open_store(self) -> None:
        self.store = await self._in(self.state.writer, self._new_store)
        for lane in self.lanes:
            lane.conn = self.store.conn if lane is self.state else self.store.writer()
            lane.loader = self.store.writer()
            await self._in(lane.writer, self._load_state, lane)
        for lane in (self.state, self.log):
            self.applied[lane.name] = self._events_seq(lane)
        for s in STREAMS:
            if all(lane.sidecar is None for lane in self._lanes_of[s]):
                await self._restart_feed(s)
        for lane in self.lanes:
            if lane.sidecar is not None:
                await self._restart_feeds(lane)
        self._open.set()

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

    def _load_state(self, lane: Lane) -> None:
        """On the lane's own thread and connection: its positions and what its loaders read."""
        lane.in_flight = None
        shared = self._decoded if lane.role != "telemetry" else None
        lane.state = lane_state(self.store, lane.role, lane.streams, lane.conn, lane.loader, self.cfg, shared)

    async def _close_store(self) -> None:
        self._open.clear()
        for cur in list(self._running_cursors):
            with contextlib.suppress(Exception):
                cur.interrupt()
        await self._readers_idle.wait()
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
                lane.conn = lane.loader = None
            await self._in(self.state.writer, store.close)

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
        for lane in self.lanes:
            if lane.sidecar is not None:
                await lane.sidecar.close()
        if self.wire is not None:
            await self.wire.close()
        for lane in self.lanes:
            lane.applier.shutdown(wait=True)
            lane.writer.shutdown(wait=True)
        self._readers.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _events_seq(lane: Lane) -> int:
        p = lane.state.positions.get(subj.EVENTS_STREAM) if lane.state else None
        return p.seq if p else 0

    def _waiting(self) -> int:
        return sum(lane.waiting() for lane in self.lanes)

    def _sidecar_exited(self) -> None:
        """Reopen, as for a lane that cannot write: the lanes park, the store closes and reopens, and
        the sidecar is started again from what is committed."""
        self._broken = True
        self._resume.clear()
        self._wake.set()

    # --- ingestion ---------------------------------------------------------------------------------
    #
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

    def _deliver(self, m: Message) -> None:
        for lane in self._lanes_of[m.stream]:
            if not lane.buffer:
                lane.since = time.monotonic()
            lane.buffer.append(m)
            lane.wake.set()

    async def _ingest(self, stop: asyncio.Event, burst: bool) -> None:
        """Run the lanes; between their commits, do the swaps and reopens they cannot do alone."""
        runners = {asyncio.create_task(self._run_lane(lane, stop, burst)) for lane in self.lanes}
        try:
            while runners:
                wanted = asyncio.create_task(self._wake.wait())
                done, _ = await asyncio.wait({*runners, wanted}, return_when=asyncio.FIRST_COMPLETED)
                wanted.cancel()
                for task in done & runners:
                    runners.discard(task)
                    task.result()  # a lane that failed stops the projector (its supervisor restarts it)
                if stop.is_set():  # the lanes settle their commits and return
                    await asyncio.gather(*runners)
                    return
                if not self._wake.is_set():
                    continue
                self._wake.clear()
                if self._reopen is not None or self._broken:
                    await self._maintain(stop)
        finally:
            for task in runners:
                task.cancel()
            for task in runners:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _maintain(self, stop: asyncio.Event) -> None:
        """Park both lanes (each settles its commit first), swap or reopen the store, resume."""
        self._resume.clear()
        self._pause.set()
        for lane in self.lanes:
            lane.wake.set()
        for lane in self.lanes:  # a lane that ended keeps `parked` set
            await lane.parked.wait()
        try:
            if self._reopen is not None:
                await self._swap()
            if self._broken:
                if self._full and not await self._wait_for_room(stop):
                    return  # stopping: the store closes as it is
                self._broken = False
                await self._close_store()
                await asyncio.sleep(1.0)
                await self._open_store()
        finally:
            self._pause.clear()
            self._resume.set()

    async def _wait_for_room(self, stop: asyncio.Event) -> bool:
        """The read model's disk is full: say so once, keep answering queries from what is stored,
        and go on once there is room. Nothing is lost: what is not applied yet waits in the streams."""
        where = os.path.dirname(self.db_path)
        log.error(
            f"the projector's data volume is full ({where}): the read model stays as it is, and queries are answered from it, "
            f"until there is room; free at least {diskspace.room_needed(where) / 2**20:.0f} MiB there and it goes on by itself "
            "(no event is lost: they wait in NATS)", free_mib=diskspace.free_mib(where),
        )  # fmt: skip
        if not await diskspace.wait_for_room(where, stop):
            return False
        log.warning("there is room on the projector's data volume again; going on", free_mib=diskspace.free_mib(where))
        self._full = False
        return True

    async def _run_lane(self, lane: Lane, stop: asyncio.Event, burst: bool) -> None:
        loop = asyncio.get_running_loop()
        pending: tuple[asyncio.Future, list[Message], dict, int | None] | None = None
        next_gc = time.monotonic() + GC_EVERY_S
        next_report = time.monotonic() + 5.0
        prunes = lane is self.telemetry and not burst and self.cfg.prune_every_s > 0
        next_prune = time.monotonic() + min(30.0, self.cfg.prune_every_s)  # soon after a start: the projector may have been down long
        try:
            while not stop.is_set():
                if lane is self.state and time.monotonic() > next_gc:  # see tune_gc: the occasional cycle still gets freed
                    gc.collect()
                    next_gc = time.monotonic() + GC_EVERY_S
                if self._pause.is_set() or self._broken:  # broken: nothing more until the store is reopened
                    if pending is not None:
                        await self._finish(lane, *pending)
                        pending = None
                    lane.parked.set()
                    await self._resume.wait()
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
                    await self._recover(lane, batch, e)
                    continue
                if pending is not None:
                    ok = await self._finish(lane, *pending)
                    pending = None
                    if not ok:  # recovery reloaded the state: read again from what is stored
                        if not self._broken and lane.sidecar is None:  # (a sidecar's recovery restarted it)
                            await self._restart_feeds(lane)
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
        assert self.store is not None
        with self._one_commit:
            return self.store.prune(lane.conn, first_seqs)

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
        live = lane is not self.state and self._waiting() < self.cfg.pipeline_min
        with self._one_commit if live else contextlib.nullcontext():
            self.store.commit(prepared, lane.conn)
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
        wal = self.store.wal_bytes(lane.db)
        small = (self.cfg.state_checkpoint_wal_mb if lane is self.state else self.cfg.checkpoint_wal_mb) * 2**20
        if wal < small:
            return
        if (self._burst or self._waiting() >= self.cfg.pipeline_min) and wal < self.cfg.checkpoint_max_mb * 2**20 // 2:
            return  # a burst (a batch job, nobody reading) checkpoints once, when it closes
        t0 = time.perf_counter()
        try:
            if self.store.checkpoint(lane.conn, db=lane.db, above_bytes=small):
                log.debug("checkpoint", lane=lane.name, wal_mb=round(wal / 2**20, 1), ms=round((time.perf_counter() - t0) * 1000, 1))
        except duckdb.Error as e:  # e.g. a long query's transaction: the next commit tries again; never fail a batch for it
            log.debug("checkpoint skipped", lane=lane.name, wal_mb=round(wal / 2**20, 1), error=str(e))

    async def _finish(self, lane: Lane, fut: asyncio.Future, batch: list[Message], summary: dict, seq: int | None) -> bool:
        """Wait for a batch's commit; False when it failed and was recovered (state reloaded)."""
        try:
            await fut
        except Exception as e:
            await self._recover(lane, batch, e)
            return False
        self._count(lane, summary)
        await self._advanced(lane, seq)
        return True

    def _count(self, lane: Lane, summary: dict[str, int]) -> None:
        """The log lanes apply every message once, so the totals count theirs; of the state lane's,
        only the events it could not apply (its own dead letters)."""
        self.totals.update(summary if lane is not self.state else {"dead_letters": summary.get("dead_letters", 0)})

    async def _advanced(self, lane: Lane, seq: int | None) -> None:
        if seq is not None and lane.name in self.applied and seq > self.applied[lane.name]:
            self.applied[lane.name] = seq
            async with self._applied:
                self._applied.notify_all()

    async def _recover(self, lane: Lane, batch: list[Message], error: Exception) -> None:
        log.warning("a batch could not be written; isolating what breaks it", lane=lane.name, size=len(batch), error=repr(error))
        try:
            summary = await self._in(lane.applier, self._isolate, lane, batch)
        except Exception as e:
            if diskspace.out_of_space(e):
                self._full = True  # said once, where the store waits for room
            else:
                log.error("cannot write to the read model; reopening it", exc=True, lane=lane.name, error=repr(e))
            self._broken = True  # the coordinator pauses both lanes, closes and reopens the store
            self._resume.clear()  # still set by the last swap or reopen: the lane must wait for this one
            self._wake.set()
            return
        self._count(lane, summary)
        await self._advanced(lane, self._events_seq(lane))
        if lane.sidecar is not None:
            # it read on from its own state, which the recovery just replaced (its batches would
            # overwrite the positions' counts with its own): again, from what is committed now
            await self._restart_feeds(lane)

    def _isolate(self, lane: Lane, batch: list[Message]) -> dict[str, int]:
        """The lane's apply thread, its writer idle: reload its state from the store and bisect the
        batch until the message that cannot be written is found; it becomes a dead letter."""
        if lane.sidecar is not None:
            batch = [m for b in batch for m in b.messages()]
        self._load_state(lane)
        return self._bisect(lane, batch)

    def _bisect(self, lane: Lane, batch: list[Message]) -> dict[str, int]:
        try:
            ch = apply(lane.state, batch)
            self.store.write(ch, lane.conn, lane.db)
            return ch.summary()
        except Exception as e:
            self._load_state(lane)
            if not _data_error(e):  # a bug or a broken store, not a bad message: never dead-letter for it
                raise
            if len(batch) > 1:
                mid = len(batch) // 2
                return dict(Counter(self._bisect(lane, batch[:mid])) + Counter(self._bisect(lane, batch[mid:])))
            m = batch[0]
            error = f"cannot write: {type(e).__name__}: {e}"
            log.error("dead letter", stream=m.stream, seq=m.seq, subject=m.subject, error=error)
            ch = dead_letter(lane.state, m, error)
            self.store.write(ch, lane.conn, lane.db)  # if even this fails the store is broken: the caller reopens it
            return ch.summary()

    async def wait_applied(self, seq: int, timeout: float, lanes: tuple[str, ...] = ("state", "log")) -> bool:
        """Until AUTOTUNE_EVENTS is applied up to `seq` in `lanes` (a query of the state tables
        only needs the state lane); False after `timeout`."""

        def done() -> bool:
            return all(self.applied[x] >= seq for x in lanes)

        if done():
            return True
        behind = [lane for lane in (self.state, self.log) if lane.name in lanes and self.applied[lane.name] < seq]
        for lane in behind:  # a lane that gathers its batches commits what it has now
            lane.wanted += 1
            lane.wake.set()
        try:
            async with asyncio.timeout(timeout), self._applied:
                await self._applied.wait_for(done)
            return True
        except TimeoutError:
            return done()
        finally:
            for lane in behind:
                lane.wanted -= 1

    # --- swapping in a rebuilt file -----------------------------------------------------------------

    async def _swap(self) -> None:
        """Both lanes parked: close, rename the rebuilt file over ours, reopen."""
        assert self._reopen is not None
        new_path, done = self._reopen
        self._reopen = None
        try:
            await self._close_store()
            replace_files(new_path, self.db_path)
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
