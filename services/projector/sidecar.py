"""The telemetry lane's sidecar: its streams read, decoded and prepared in a process of their own.

GPU samples and log lines are about three of every four messages. Reading them (the wire),
decoding them and building their Arrow tables held the projector's one GIL for ~8 of the ~25
GIL-seconds of a 1M-event catch-up, while the events lanes waited for it. So a child process
runs the telemetry streams' feeds, applies each batch to a telemetry ViewState and prepares it
(views.apply, Store.prepare, as the lane did in its apply thread); the projector's telemetry lane
only commits what the sidecar sends, with the positions that come with it, in one transaction as
before: exactly-once stays where the rows are written.

The sidecar keeps nothing. It reads from the positions the projector gives it, and every start
opens a new epoch: the projector takes the batches of the current epoch only, so a restart (a
failed batch, a swap, a reopen) never commits what was read before it.

One duplex pipe, pickled tuples:

    projector -> sidecar  ("start", epoch, positions)  read on from these positions
                          ("pause",)                   stop reading (a swap or a reopen)
                          ("credit", epoch)            one more batch may be sent
                          ("stop",)
    sidecar -> projector  ("batch", epoch, Batch)
                          ("idle", epoch, caught_up, feeds)   nothing buffered: when it changes, and every second

A batch is sent against a credit only (WINDOW at a start, one more for each the lane takes), so
the projector holds a few at most. The sidecar ends when the pipe closes: the projector stopped it,
or exited however it did. Its process comes from a forkserver that has imported this module
already, so a projector's start does not wait for a Python start-up (~1 s of imports here).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import msgspec

from autotune.projector import schema as sc
from autotune.projector import wire
from autotune.projector.feed import StreamFeed
from autotune.projector.settings import ProjectorConfig
from autotune.projector.store import Prepared, Store
from autotune.projector.view_state import Message, Position, ViewState
from autotune.projector.views import apply
from autotune.shared import bus
from autotune.shared.lifecycle import wait_event
from autotune.shared.log import get_logger, setup_logging
from autotune.shared.settings import Settings

if TYPE_CHECKING:
    from autotune.projector.lane import Lane

log = get_logger("projector")

WINDOW = 3  # batches sent and not yet taken by the lane
IDLE_REPORT_S = 1.0
_messages = msgspec.msgpack.Encoder()
_unpack = msgspec.msgpack.Decoder(list[Message])


class Batch:
    """A telemetry batch ready to commit, and the messages it was made of (packed): should its
    commit fail, the projector bisects them itself to find the one that breaks it."""

    __slots__ = ("prepared", "summary", "positions", "packed", "size", "oldest_us")

    def __init__(self, prepared: Prepared, summary: dict[str, int], positions: dict[str, Position], messages: list[Message]) -> None:
        self.prepared, self.summary, self.positions = prepared, summary, positions
        self.packed = _messages.encode(messages)
        self.size = len(messages)
        self.oldest_us = min((m.stored_us for m in messages), default=0)

    def messages(self) -> list[Message]:
        return _unpack.decode(self.packed)


# --- the projector's end ---------------------------------------------------------------------------


class Sidecar:
    """Starts the child, sends it commands, and puts what it sends in `lane`'s buffer."""

    def __init__(self, settings: Settings, cfg: ProjectorConfig, lane: Lane, on_exit: Callable[[], None]) -> None:
        self.settings, self.cfg, self.lane, self.on_exit = settings, cfg, lane, on_exit
        self.epoch = 0
        self.caught_up = False  # as the child last said, for this epoch: nothing buffered, its feeds at their streams' ends
        self.feeds = ""  # the child's feeds, as it last said (for the logs)
        self.proc: Any = None
        self.conn: Connection | None = None
        self._closing = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    async def start(self, positions: dict[str, Position]) -> None:
        """(Re)start reading from `positions`, in a new epoch; spawns the child if it is not running."""
        if not self.alive:
            await asyncio.to_thread(self._spawn, asyncio.get_running_loop())
        self.epoch += 1
        self.caught_up = False
        self._send(("start", self.epoch, positions))

    def pause(self) -> None:
        self.epoch += 1  # whatever is still on its way is of an old epoch
        self.caught_up = False
        self._send(("pause",))

    def credit(self) -> None:
        self._send(("credit", self.epoch))

    async def close(self) -> None:
        self._closing = True
        proc, conn = self.proc, self.conn
        if proc is None:
            return
        self._send(("stop",))
        await asyncio.to_thread(proc.join, 10)
        if proc.is_alive():
            log.warning("the telemetry sidecar did not stop; killing it", pid=proc.pid)
            proc.kill()
            await asyncio.to_thread(proc.join, 5)
        if conn is not None:
            conn.close()
        self.proc = self.conn = None

    def _send(self, command: tuple) -> None:
        if self.conn is None:
            return
        try:
            self.conn.send(command)
        except OSError as e:  # it exited: its reader thread reports that
            log.debug("cannot reach the telemetry sidecar", command=command[0], error=repr(e))

    def _spawn(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.conn is not None:  # of one that exited
            self.conn.close()
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__, "autotune.projector.service"])
        mine, theirs = ctx.Pipe(duplex=True)
        level = logging.getLevelName(logging.getLogger().level)
        proc = ctx.Process(
            target=_main, args=(theirs, self.settings, self.cfg, self.lane.streams, level), name="projector-sidecar", daemon=True
        )
        proc.start()
        theirs.close()
        self.proc, self.conn = proc, mine
        threading.Thread(target=self._read, args=(mine, loop), name="projector-sidecar-read", daemon=True).start()
        log.debug("telemetry sidecar started", pid=proc.pid)

    def _read(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        """A thread: receive (unpickling, mostly Arrow buffers, off the event loop) and hand over."""
        try:
            while True:
                message = conn.recv()
                loop.call_soon_threadsafe(self._received, message)
        except (EOFError, OSError):
            with contextlib.suppress(RuntimeError):  # the loop is closed: the projector is gone
                loop.call_soon_threadsafe(self._exited, conn)

    def _received(self, message: tuple) -> None:
        kind, epoch = message[0], message[1]
        if epoch != self.epoch:
            return
        lane = self.lane
        if kind == "batch":
            if not lane.buffer:
                lane.since = time.monotonic()
            lane.buffer.append(message[2])
        else:
            self.caught_up, self.feeds = message[2], message[3]
        lane.wake.set()

    def _exited(self, conn: Connection) -> None:
        if conn is not self.conn or self._closing:
            return
        log.error("the telemetry sidecar exited; restarting it", code=self.proc.exitcode if self.proc else None)
        self.on_exit()


# --- the child -------------------------------------------------------------------------------------


def _main(conn: Connection, settings: Settings, cfg: ProjectorConfig, streams: tuple[str, ...], level: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C stops the projector, which stops this
    setup_logging(level)
    from autotune.projector.pipeline import tune_gc

    tune_gc()
    asyncio.run(_Child(conn, settings, cfg, streams).run())


class _Child:
    """The sidecar's loop: commands first, then a gathered batch if a credit allows (applied,
    prepared and sent on the lane's apply thread, while the event loop keeps reading), else an
    idle report and a wait for deliveries or commands."""

    def __init__(self, conn: Connection, settings: Settings, cfg: ProjectorConfig, streams: tuple[str, ...]) -> None:
        from autotune.projector.lane import Lane  # the same gathering as the lane had in the projector

        self.conn, self.settings, self.cfg, self.streams = conn, settings, cfg, streams
        self.lane = Lane("telemetry", streams, role="telemetry", db=sc.LOG_DB, delay_s=cfg.slow_delay_s, min_batch=cfg.slow_batch)
        self.commands: collections.deque[tuple] = collections.deque()
        self.state: ViewState | None = None  # None while paused
        self.epoch = 0
        self.credit = 0
        self.reported: tuple[bool, float] | None = None  # (caught up, when) as last said
        self._sending = threading.Lock()
        self.js: Any = None
        self.wire: Any = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        nc = await bus.connect(self.settings, "projector-sidecar")
        self.js = nc.jetstream()
        self.wire = await wire.connect(nc, self.settings, self.cfg.lean_wire)
        loop.add_reader(self.conn.fileno(), self._on_command)
        lane = self.lane
        try:
            while True:
                while self.commands:
                    command = self.commands.popleft()
                    if command[0] == "stop":
                        return
                    await self._do(command)
                batch = lane.take(self.cfg.batch_max) if self.credit > 0 and self.state is not None else []
                if batch:
                    self.credit -= 1
                    if not await loop.run_in_executor(lane.applier, self._send_batch, self.epoch, batch):
                        return
                    for feed in lane.feeds:
                        feed.poke()
                    continue
                if not lane.buffer and self.state is not None and not self._report_idle():
                    return
                lane.wake.clear()
                await wait_event(lane.wake, min(lane.idle_wait(), IDLE_REPORT_S))
        finally:
            loop.remove_reader(self.conn.fileno())
            await self._close_feeds()
            await self.wire.close()
            self.conn.close()
            await bus.close(nc)
            lane.applier.shutdown(wait=False)
            lane.writer.shutdown(wait=False)

    def _on_command(self) -> None:
        try:
            while self.conn.poll():
                self.commands.append(self.conn.recv())
        except (EOFError, OSError):  # the projector is gone
            self.commands.append(("stop",))
        self.lane.wake.set()

    async def _do(self, command: tuple) -> None:
        kind = command[0]
        if kind == "credit":
            if command[1] == self.epoch:
                self.credit += 1
        elif kind == "pause":
            await self._close_feeds()
            self.state = None
        elif kind == "start":
            await self._close_feeds()
            self.epoch, positions = command[1], command[2]
            cfg = self.cfg
            self.state = ViewState(
                {s: p for s, p in positions.items() if s in self.streams},
                role="telemetry",
                max_event_bytes=cfg.max_event_bytes,
                dead_letter_bytes=cfg.dead_letter_bytes,
            )
            self.credit = WINDOW
            self.reported = None
            lane = self.lane
            for stream in self.streams:
                feed = StreamFeed(
                    self.wire, self.js, stream, self._deliver, lambda: len(lane.buffer) < cfg.buffer_max, batch=cfg.pull_batch
                )
                lane.feeds.append(feed)
                await feed.start(self.state.position(stream).seq + 1)

    async def _close_feeds(self) -> None:
        feeds, self.lane.feeds = self.lane.feeds, []
        for feed in feeds:
            await feed.close()
        self.lane.buffer = []

    def _deliver(self, m: Message) -> None:
        lane = self.lane
        if not lane.buffer:
            lane.since = time.monotonic()
        lane.buffer.append(m)
        lane.wake.set()

    def _send_batch(self, epoch: int, batch: list[Message]) -> bool:
        """The apply thread: what the lane's apply did in the projector, then send it."""
        t0 = time.perf_counter()
        ch = apply(self.state, batch)
        prepared = Store.prepare(ch, sc.LOG_DB)
        prepared.apply_ms = (time.perf_counter() - t0) * 1000
        return self._send(("batch", epoch, Batch(prepared, ch.summary(), ch.positions, batch)))

    def _report_idle(self) -> bool:
        caught_up, now = self.lane.caught_up(), time.monotonic()
        if self.reported is not None and self.reported[0] == caught_up and now - self.reported[1] < IDLE_REPORT_S:
            return True
        self.reported = (caught_up, now)
        return self._send(("idle", self.epoch, caught_up, " ".join(f"{f.stream}: {f.state()}" for f in self.lane.feeds)))

    def _send(self, message: tuple) -> bool:
        try:
            with self._sending:
                self.conn.send(message)
            return True
        except OSError:  # the projector is gone
            return False
