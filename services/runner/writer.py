"""The attempt's single writer: each append carries the last sequence the runner saw on its experiment.

When the scheduler has meanwhile re-planned the experiment (this host was presumed dead), the server
refuses the append and the writer raises `Superseded`: the runner then stops the engine instead of
writing over history. A cancel request is the one newer event it accepts and acts on.
"""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors

from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared import bus
from autotune.shared.log import get_logger

log = get_logger("runner")


# the stream has no leader for a moment (a node of the cluster died) or the connection is reconnecting
TRANSIENT: tuple[type[Exception], ...] = (
    nats.errors.NoRespondersError, nats.errors.TimeoutError, nats.errors.ConnectionReconnectingError, nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError, TimeoutError,
)


class Superseded(Exception):
    """Someone else wrote to this experiment: it is no longer ours to run."""


class Writer:
    """Appends an attempt's events with the expected last sequence of its experiment."""

    def __init__(self, js, a: ev.ExperimentAssigned, last_seq: int) -> None:
        self.js, self.a, self.last_seq = js, a, last_seq
        self.filter = subj.experiment_all(a.task, a.n)
        self.cancel_seen = False
        self.sent: set[str] = set()  # ids of every event this attempt tried to append

    async def append(self, what: str, event: ev.Event, *, patience_s: float = 90.0) -> None:
        """Append `event`; through a stream leader election (no responders, timeouts) keep trying for
        `patience_s` — the msg id and the expected sequence make every retry safe."""
        subject = subj.experiment(self.a.task, self.a.n, what)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience_s
        conflicts, delay = 0, 0.2
        self.sent.add(event.id)
        while conflicts < 10:
            try:
                ack = await bus.append(self.js, subject, event, expect_seq=self.last_seq, expect_filter=self.filter, retries=3)
                self.last_seq = ack.seq
                return
            except TRANSIENT as e:
                if loop.time() >= deadline:
                    raise
                log.warning("event not stored yet; retrying", subject=subject, error=type(e).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)
                continue
            except bus.StaleWrite:
                conflicts += 1
                for seq, newer in await self.newer(deadline):
                    if isinstance(newer, ev.ExperimentCancelRequested) and newer.attempt == self.a.attempt:
                        self.cancel_seen = True
                        self.last_seq = seq
                    elif newer is not None and getattr(newer, "id", None) in self.sent:
                        # our own write landed but its ack never reached us: a lost ack, or a cancel
                        # that came while an earlier append (`ready`, a `progress`) was in flight
                        self.last_seq = seq
                        if newer.id == event.id:
                            return
                    else:
                        raise Superseded(f"experiment {self.a.task}/{self.a.n} moved on: {type(newer).__name__} at seq {seq}") from None
        raise Superseded("could not append after repeated conflicts")

    async def still_ours(self) -> bool:
        """Whether nothing but this attempt's own writes (or a cancel asked of it) came after what it
        last saw: the fence's question, after the runner's liveness key expired."""
        for seq, newer in await bus.messages_after(self.js, self.filter, self.last_seq):
            if isinstance(newer, ev.ExperimentCancelRequested) and newer.attempt == self.a.attempt:
                continue
            if newer is not None and getattr(newer, "id", None) in self.sent:
                continue
            log.warning("the experiment moved on while this runner was away", experiment=f"{self.a.task}/{self.a.n}/{self.a.attempt}",
                        newer=type(newer).__name__, seq=seq)  # fmt: skip
            return False
        return True

    async def newer(self, deadline: float) -> list[tuple[int, ev.AnyEvent | None]]:
        """The experiment's events after the last one this attempt saw; through a stream leader
        election (no responders, timeouts) it reads again until `deadline` (loop time)."""
        delay = 0.2
        while True:
            try:
                return await bus.messages_after(self.js, self.filter, self.last_seq)
            except TRANSIENT:
                if asyncio.get_running_loop().time() >= deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)
