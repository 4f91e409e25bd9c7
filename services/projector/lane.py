"""A lane of the projector (one writer of the read model: its streams, threads, connection and
state), how far the lanes are (Progress), and the gate they park at for a swap or a reopen (Gate).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import duckdb

from autotune.projector import schema as sc
from autotune.projector.feed import StreamFeed
from autotune.projector.settings import ProjectorConfig
from autotune.projector.store import Store
from autotune.projector.view_state import Message, ViewState
from autotune.schemas import subjects as subj

if TYPE_CHECKING:
    from autotune.projector.sidecar import Sidecar


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

    def __init__(
        self, name: str, streams: tuple[str, ...], *, role: str, db: str, delay_s: float, min_batch: int, shared: dict | None = None
    ) -> None:
        self.name, self.streams, self.role, self.db = name, streams, role, db
        self.delay_s, self.min_batch = delay_s, min_batch  # a batch waits this long or for this many
        self.shared = shared  # events decoded by one lane of a stream for the other (views._decode)
        self.buffer: list[Message] = []
        self.since = 0.0  # when the first buffered message arrived
        self.wake = asyncio.Event()
        self.applier = ThreadPoolExecutor(1, thread_name_prefix=f"projector-{name}-apply")
        self.writer = ThreadPoolExecutor(1, thread_name_prefix=f"projector-{name}-write")
        self.store: Store | None = None  # while open: the store it writes, on `conn`
        self.conn: duckdb.DuckDBPyConnection | None = None
        self.loader: duckdb.DuckDBPyConnection | None = None  # reads stored rows while `conn` commits
        self.state: ViewState | None = None
        self.feeds: list[StreamFeed] = []
        self.in_flight: Any = None  # the Changes being committed
        self.parked = asyncio.Event()  # paused for a swap or a reopen
        self.wanted = 0  # queries waiting (min_seq) for this lane: it takes what is buffered at once
        self.sidecar: Sidecar | None = None  # reads, applies and prepares for this lane: its buffer holds sidecar.Batch

    def reload(self, cfg: ProjectorConfig) -> None:
        """On the lane's own thread and connection: its positions and what its loaders read."""
        self.in_flight = None
        self.state = lane_state(self.store, self.role, self.streams, self.conn, self.loader, cfg, self.shared)

    def events_seq(self) -> int:
        """How far it has applied AUTOTUNE_EVENTS (0 for a lane that does not read it)."""
        p = self.state.positions.get(subj.EVENTS_STREAM) if self.state else None
        return p.seq if p else 0

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


class Progress:
    """What the lanes have committed: how far the lanes that read AUTOTUNE_EVENTS are (`applied`,
    which a query's min_seq waits for) and what they applied (`totals`)."""

    def __init__(self, lanes: tuple[Lane, ...]) -> None:
        self.lanes = lanes  # those that read AUTOTUNE_EVENTS
        self.applied = {lane.name: 0 for lane in lanes}
        self.totals: Counter[str] = Counter()
        self._changed = asyncio.Condition()

    @property
    def seq(self) -> int:
        """AUTOTUNE_EVENTS applied in every lane that reads it."""
        return min(self.applied.values())

    def of(self, lanes: tuple[str, ...]) -> int:
        """AUTOTUNE_EVENTS applied in every one of `lanes`."""
        return min(self.applied[x] for x in lanes)

    def reset(self) -> None:
        """As the lanes' states say (the store was just opened)."""
        for lane in self.lanes:
            self.applied[lane.name] = lane.events_seq()

    def count(self, lane: Lane, summary: dict[str, int]) -> None:
        """The log lanes apply every message once, so the totals count theirs; of the state lane's,
        only the events it could not apply (its own dead letters)."""
        self.totals.update(summary if lane.role != "state" else {"dead_letters": summary.get("dead_letters", 0)})

    async def advanced(self, lane: Lane, seq: int | None) -> None:
        if seq is not None and lane.name in self.applied and seq > self.applied[lane.name]:
            self.applied[lane.name] = seq
            async with self._changed:
                self._changed.notify_all()

    async def wait(self, seq: int, timeout: float, lanes: tuple[str, ...] = ("state", "log")) -> bool:
        """Until AUTOTUNE_EVENTS is applied up to `seq` in `lanes` (a query of the state tables
        only needs the state lane); False after `timeout`."""

        def done() -> bool:
            return all(self.applied[x] >= seq for x in lanes)

        if done():
            return True
        behind = [lane for lane in self.lanes if lane.name in lanes and self.applied[lane.name] < seq]
        for lane in behind:  # a lane that gathers its batches commits what it has now
            lane.wanted += 1
            lane.wake.set()
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(done)
            return True
        except TimeoutError:
            return done()
        finally:
            for lane in behind:
                lane.wanted -= 1


class Gate:
    """Where the lanes park for a swap or a reopen: one is asked for (`wake`), the coordinator
    (Projector._maintain) sets `pause`, each lane settles its commit and parks until `resume`."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()  # a swap or a reopen is wanted
        self.pause = asyncio.Event()
        self.resume = asyncio.Event()
        self.broken = False  # a lane cannot write: close and reopen the store
        self.full = False  # ... because its disk is full: reopen once there is room

    def reopen(self, *, full: bool = False) -> None:
        """A lane cannot write, or the telemetry sidecar exited: the lanes park, the store closes
        and reopens, and each lane (and sidecar) goes on from what is committed."""
        self.full = self.full or full
        self.broken = True
        self.resume.clear()  # still set by the last swap or reopen: the lane must wait for this one
        self.wake.set()
