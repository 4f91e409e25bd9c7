"""One dp replica: a continuous-batching scheduler and the loop that runs it in scaled real time.

The loop: plan a step, sleep until its end (simulated seconds / time scale, kept on an absolute
timeline so oversleeping is caught up), apply it, and write the tokens. When the loop falls behind
(steps shorter than the host can schedule), it applies steps back to back and writes every stream's
tokens once per tick (AUTOTUNE_SIM_TICK_MS, 1 ms): each SSE event still carries one token.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

from .scheduler import Scheduler, Sequence

if TYPE_CHECKING:
    from .completions import Stream
    from .server import SimServer


class Replica:
    """One dp rank: a scheduler and the loop that runs it in scaled real time."""

    def __init__(self, server: SimServer, index: int):
        self.server = server
        self.index = index
        self.sched = Scheduler(server.plan, random.Random(server.sim.seed * 1000 + index))
        self.wake = asyncio.Event()
        self.sim_now = 0.0  # simulated seconds since the server's epoch
        self.tokens = 0

    def lag(self) -> float:
        """How far (simulated seconds) this replica runs behind the wall clock."""
        return max(0.0, self.server.sim_clock() - self.sim_now) if self.sched.has_work() else 0.0

    def submit(self, stream: Stream, prompt: int, compute: int) -> None:
        seq = Sequence(id(stream), prompt, stream.target, compute, random.random(), self.server.sim_clock(), stream)
        stream.seq = seq
        stream.replica = self
        self.sched.add(seq)
        self.wake.set()

    def cancel(self, stream: Stream) -> None:
        if stream.seq is not None:
            self.sched.cancel(stream.seq)

    async def run(self) -> None:
        server = self.server
        loop = asyncio.get_running_loop()
        scale = server.sim.time_scale
        tick = server.sim.tick_ms / 1000.0
        emit = _emit
        last_yield = loop.time()
        while True:
            if not self.sched.has_work():
                server.flush()
                self.wake.clear()
                await self.wake.wait()
                # Requests arrive in bursts (a wave of clients): let what already reached the socket in.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                self.sim_now = max(self.sim_now, server.sim_clock())
                last_yield = loop.time()
            step = self.sched.plan_step()
            if step is None:
                server.flush()
                self.wake.clear()
                await self.wake.wait()
                continue
            end = self.sim_now + step.duration
            delay = server.wall0 + end / scale - loop.time()
            if delay > 0:
                server.flush()
                await asyncio.sleep(delay)
                last_yield = loop.time()
            elif loop.time() - last_yield >= tick:
                # Behind: let the sockets breathe, then carry on back to back.
                server.flush()
                await asyncio.sleep(0)
                last_yield = loop.time()
            self.sim_now = end
            out = self.sched.finish_step(step, end, emit)
            server.steps += 1
            if out.finished or out.failed:
                server.flush()
                clock = time.monotonic
                for seq in out.finished:
                    stream = seq.sink
                    if stream is not None and not stream.done:
                        stream.finish(clock())
                for seq in out.failed:
                    stream = seq.sink
                    if stream is not None and not stream.done:
                        code, message = seq.error or (500, "failed")
                        stream.fail(clock(), code, message)
                server.completed += len(out.finished)
                server.failed += len(out.failed)
            if out.preempted:
                server.preempted += len(out.preempted)


def _emit(seq: Sequence) -> None:
    stream = seq.sink
    if stream is not None:
        stream.token()
