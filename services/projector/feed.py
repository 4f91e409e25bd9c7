"""Read one stream in order, from a sequence on, with back-pressure: an ephemeral pull consumer.

Why not bus.replay (an ordered push consumer)? Three reasons measured here: nats-py answers push
flow control as soon as a message is *received*, so a fast stream floods a slower projector (no
back-pressure during a rebuild of a million events); its per-message `next_msg` costs a task per
message (~15k msg/s); and the projector needs the raw bytes of every message, decodable or not.

So each stream gets an ephemeral pull consumer (no acks, memory storage, deleted by the server
when idle) whose position lives in DuckDB, not in the server: the projector restarts it at the
stored position + 1. Pull requests of `batch` messages are sent only while the projector's buffer
has room; a request long-polls (`expires`) with idle heartbeats, so live events arrive at once and
a lost consumer (server restart, leader change) is noticed and re-created where delivery stopped.
Deliveries arrive on a private inbox through a wire (wire.py: a lean NATS connection, or nats-py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js import api as jsapi

from autotune.projector.view_state import Message
from autotune.shared import bus
from autotune.shared.log import get_logger

log = get_logger("projector")


def parse_ack_reply(reply: str) -> tuple[int, int, int, int]:
    """(stream seq, consumer seq, store time ns, pending) from a JetStream delivery's reply subject
    (v1 `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`, or v2 with domain
    and account hash after `ACK`)."""
    t = reply.split(".")
    if len(t) == 9:
        b = 2
    elif len(t) >= 11:
        b = 4
    else:
        raise ValueError(f"not a JetStream delivery: {reply!r}")
    return int(t[b + 3]), int(t[b + 4]), int(t[b + 5]), int(t[b + 6])


class StreamFeed:
    """Deliver `stream`'s messages in order to `deliver`, pulling only while `has_room()`."""

    def __init__(
        self,
        wire: Any,
        js: JetStreamContext,
        stream: str,
        deliver: Callable[[Message], None],
        has_room: Callable[[], bool],
        *,
        batch: int = 5000,
        expires: float = 5.0,
        heartbeat: float = 1.0,
    ) -> None:
        self.wire, self.js, self.stream = wire, js, stream
        self._deliver = deliver
        self._has_room = has_room
        self.batch, self.expires, self.heartbeat = batch, expires, heartbeat
        self.last_seq = 0  # last stream sequence delivered
        self.pending: int | None = None  # messages left in the stream after the last delivery
        self._consumer: str | None = None
        self._next_subject = ""
        self._inbox = ""
        self._sid: int | None = None
        self._cseq = 0
        self._left = 0  # messages still due on the outstanding pull request
        self._outstanding = False
        self._last_activity = 0.0
        self._recreating = False
        self._closed = False
        self._watchdog: asyncio.Task | None = None
        self._recreate_task: asyncio.Task | None = None

    @property
    def caught_up(self) -> bool:
        return self.pending == 0

    def state(self) -> str:
        """One line for the logs: where the feed is and what it waits for."""
        idle = time.monotonic() - self._last_activity
        return (
            f"last_seq={self.last_seq} pending={self.pending} consumer={self._consumer or '-'} outstanding={self._outstanding} "
            f"recreating={self._recreating} idle_s={idle:.1f}"
        )

    async def start(self, start_seq: int) -> None:
        self.last_seq = start_seq - 1
        await self._create()
        self._watchdog = asyncio.create_task(self._watch(), name=f"feed-{self.stream}")

    async def close(self) -> None:
        self._closed = True
        for task in (self._watchdog, self._recreate_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._drop_consumer()

    def poke(self) -> None:
        """Ask for more if nothing is outstanding and the projector has room (after each batch)."""
        if not self._outstanding and not self._recreating and not self._closed and self._has_room():
            self._request()

    # --- consumer lifecycle ----------------------------------------------------------------------

    async def _create(self) -> None:
        start = self.last_seq + 1
        cfg = jsapi.ConsumerConfig(
            deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE if start > 1 else jsapi.DeliverPolicy.ALL,
            opt_start_seq=start if start > 1 else None,
            ack_policy=jsapi.AckPolicy.NONE,
            inactive_threshold=max(30.0, self.expires * 4),
            mem_storage=True,
            num_replicas=1,
            description="autotune projector (position kept in DuckDB)",
        )
        info = await bus.retry_transient(lambda: self.js.add_consumer(self.stream, cfg))
        self._inbox = self.wire.new_inbox()
        self._sid = await self.wire.subscribe(self._inbox, self._on_msg)
        self._consumer = info.name
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{info.name}"
        self._cseq = 0
        self._outstanding = False
        self.pending = info.num_pending
        self._last_activity = time.monotonic()
        self.poke()

    async def _drop_consumer(self) -> None:
        sid, name = self._sid, self._consumer
        self._sid = self._consumer = None
        self._outstanding = False
        if sid is not None:
            await self.wire.unsubscribe(sid)
        if name is not None:
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(self.stream, name)

    async def _recreate(self, why: str) -> None:
        if self._recreating or self._closed:
            return
        self._recreating = True
        try:
            log.warning("re-creating stream consumer", stream=self.stream, after_seq=self.last_seq, why=why)
            await self._drop_consumer()
            while not self._closed:
                try:
                    await self._create()
                    return
                except Exception as e:  # server restarting, no JetStream leader yet
                    log.warning("cannot create stream consumer yet", stream=self.stream, error=repr(e))
                    await asyncio.sleep(1.0)
        finally:
            self._recreating = False

    def _schedule_recreate(self, why: str) -> None:
        # not awaited here: this runs inside the delivery path
        if self._recreate_task is None or self._recreate_task.done():
            self._recreate_task = asyncio.create_task(self._recreate(why))

    def _request(self) -> None:
        if self._consumer is None:
            return
        self._outstanding = True
        self._left = self.batch
        self._last_activity = time.monotonic()
        req = {"batch": self.batch, "expires": int(self.expires * 1e9), "idle_heartbeat": int(self.heartbeat * 1e9)}
        try:
            self.wire.publish(self._next_subject, msgspec.json.encode(req), self._inbox)
        except Exception as e:  # disconnected: the watchdog retries
            self._outstanding = False
            log.warning("pull request failed", stream=self.stream, error=repr(e))

    async def _watch(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.heartbeat)
            if self._recreating:
                continue
            if self._consumer is None:
                await self._recreate("no consumer")
            elif self._outstanding and time.monotonic() - self._last_activity > 3 * self.heartbeat + 1:
                await self._recreate("no heartbeat")
            else:
                self.poke()

    # --- deliveries ------------------------------------------------------------------------------

    def _on_msg(self, subject: str, reply: str | None, status: str, description: str, data: bytes) -> None:
        self._last_activity = time.monotonic()
        if status or not reply:
            self._on_status(status, description)
            return
        sseq, cseq, ts, pending = parse_ack_reply(reply)
        if cseq != self._cseq + 1:  # a gap: the server lost or reset the consumer
            self._schedule_recreate(f"consumer sequence {cseq} after {self._cseq}")
            return
        self._cseq = cseq
        self.last_seq = sseq
        self.pending = pending
        self._deliver(Message(self.stream, sseq, subject, data, ts // 1000))
        self._left -= 1
        if self._left <= 0:
            self._outstanding = False
            self.poke()

    def _on_status(self, status: str, description: str) -> None:
        if status == "100":  # idle heartbeat: the request is alive
            return
        self._outstanding = False
        if status in ("404", "408"):  # nothing more for now / the long poll expired
            self.poke()
        elif status == "409" and "Leadership" not in description and "Deleted" not in description:
            pass  # e.g. MaxWaiting exceeded: the watchdog asks again within a heartbeat
        else:  # 409 consumer deleted / leadership change, 503 no responders: start again
            self._schedule_recreate(f"status {status} {description}".strip())
