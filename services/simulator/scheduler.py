"""Continuous batching for one engine replica: a waiting queue, sequences in prefill, a running batch.

The scheduler knows nothing about clocks or sockets. `plan_step()` composes the next iteration and says
how long it takes (simulated seconds); `finish_step()` applies it: prompt chunks advance, every decoding
sequence gets one token, finished sequences leave, and a KV overflow preempts the newest sequence
(recomputed later; failed after MAX_PREEMPTIONS). The live server sleeps for the step's duration
(scaled) between the two; `simulate_closed_loop` runs the same code in virtual time, skipping over
stretches of pure decoding, which is what `perfmodel.steady_state` reports.

Decode bookkeeping is O(1) per step: a running sequence's token count is derived from the number of
decode steps since it joined, and finishes come off a heap.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .perfmodel import MAX_PREEMPTIONS, Plan

WAITING, PREFILL, RUNNING, DONE = 0, 1, 2, 3


class Sequence:
    """One request inside the engine."""

    __slots__ = (
        "rid", "prompt", "target", "compute", "prefilled", "generated", "joined", "kv", "preemptions", "state",
        "key", "arrival", "first_token_at", "finished_at", "error", "sink",
    )

    def __init__(self, rid: int, prompt: int, target: int, compute: int, key: float = 0.0, arrival: float = 0.0, sink=None):
        self.rid = rid
        self.prompt = prompt  # prompt tokens
        self.target = target  # tokens to generate
        self.compute = compute  # prompt tokens to compute (after prefix-cache hits; all again after preemption)
        self.prefilled = 0
        self.generated = 0  # while RUNNING: tokens at the time it joined (see Scheduler.generated)
        self.joined = 0  # decode-step counter when it joined the running batch
        self.kv = 0  # KV tokens allocated outside the running batch (while in prefill)
        self.preemptions = 0
        self.state = WAITING
        self.key = key  # lpm ordering key (stands in for the prefix match length)
        self.arrival = arrival
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.error: tuple[int, str] | None = None
        self.sink = sink  # the server's stream for this request


@dataclass
class Step:
    duration: float
    decode: int  # running sequences that advance (0: prefill-only step)
    ctx: int
    chunks: list[tuple[Sequence, int]] = field(default_factory=list)


@dataclass
class StepOutcome:
    finished: list[Sequence]
    failed: list[Sequence]
    preempted: list[Sequence]


class Scheduler:
    def __init__(self, plan: Plan, rng: random.Random, jitter: float = 0.02):
        self.plan = plan
        self.rng = rng
        self.jitter = jitter
        self.waiting: deque[Sequence] = deque()
        self.prefilling: list[Sequence] = []
        self.running: dict[int, Sequence] = {}  # insertion order = join order; the last is the newest
        self.finish_heap: list[tuple[int, int, Sequence]] = []
        self.dsteps = 0  # decode steps so far
        self.kv_used = 0
        self.running_ctx = 0  # context tokens of the running batch (their KV)
        self.future = 0  # remaining output tokens of admitted sequences (SGLang's reservation)
        self.preemptions = 0
        self.steps = 0

    # ---- intake ----------------------------------------------------------------------------------

    def admissible(self, prompt: int, max_tokens: int) -> str | None:
        """Why a request can never run on this replica, or None."""
        if prompt + max_tokens > self.plan.kv_capacity:
            return (
                f"the request needs {prompt + max_tokens} KV cache tokens ({prompt} prompt + {max_tokens} completion) "
                f"but the simulated KV cache holds {self.plan.kv_capacity}; reduce max_tokens or the prompt"
            )
        return None

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running)

    def generated(self, seq: Sequence) -> int:
        if seq.state == RUNNING:
            return seq.generated + self.dsteps - seq.joined
        return seq.generated

    def _leave_running(self, seq: Sequence) -> int:
        """Take a sequence out of the running batch; returns its token count."""
        g = self.generated(seq)
        del self.running[seq.rid]
        ctx = seq.prompt + g
        self.running_ctx -= ctx
        self.kv_used -= ctx
        self.future -= seq.target - g
        seq.generated = g
        return g

    def _leave_prefill(self, seq: Sequence) -> None:
        self.prefilling.remove(seq)
        self.kv_used -= seq.kv
        seq.kv = 0
        self.future -= seq.target - seq.generated

    def cancel(self, seq: Sequence) -> None:
        """The client went away: free whatever the sequence holds."""
        if seq.state == WAITING:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        elif seq.state == PREFILL:
            self._leave_prefill(seq)
        elif seq.state == RUNNING:
            self._leave_running(seq)
        seq.state = DONE

    # ---- one iteration ---------------------------------------------------------------------------

    def _fits(self, seq: Sequence) -> bool:
        need = seq.prompt + seq.generated
        reserve = self.plan.reserve_ratio * (self.future + seq.target - seq.generated)
        return self.kv_used + need + reserve <= self.plan.kv_capacity

    def _admission_blocked(self) -> bool:
        if not self.waiting:
            return True
        if len(self.running) + len(self.prefilling) >= self.plan.max_running:
            return True
        return not self._fits(self.waiting[0]) and bool(self.running or self.prefilling)

    def _next_waiting(self) -> Sequence:
        policy = self.plan.cfg.schedule_policy
        n = len(self.waiting)
        if n > 1:
            if policy in ("lpm", "dfs-weight") and n <= 128:
                best = max(self.waiting, key=lambda s: (s.preemptions > 0, s.key))
            elif policy == "random":
                best = self.waiting[self.rng.randrange(n)]
            elif policy == "lof":
                best = max(self.waiting, key=lambda s: s.target - s.generated)
            else:
                return self.waiting.popleft()
            self.waiting.remove(best)
            return best
        return self.waiting.popleft()

    def plan_step(self) -> Step | None:
        """Compose the next iteration, or None when nothing can run."""
        p = self.plan
        decoding = len(self.running)
        budget = p.prefill_budget(decoding)
        chunked = p.cfg.chunked_prefill
        chunks: list[tuple[Sequence, int]] = []
        pos = 0.0
        for seq in self.prefilling:
            if budget <= 0:
                break
            n = min(budget, seq.compute - seq.prefilled)
            if n > 0:
                chunks.append((seq, n))
                pos += n * (seq.prefilled + n / 2.0)
                budget -= n
        while budget > 0 and not self._admission_blocked():
            head = self.waiting[0]
            if not chunked and head.compute > budget and chunks:
                break
            seq = self._next_waiting()
            need = seq.prompt + seq.generated
            seq.state = PREFILL
            seq.kv = need
            self.kv_used += need
            self.future += seq.target - seq.generated
            self.prefilling.append(seq)
            n = min(budget, seq.compute) if chunked else seq.compute
            chunks.append((seq, n))
            pos += n * n / 2.0
            budget -= n
        prefill = sum(n for _, n in chunks)
        decode = decoding if (decoding and (p.mixed or prefill == 0)) else 0
        if not decode and not prefill:
            return None
        ctx = self.running_ctx if decode else 0
        t = p.step_time(decode, ctx, prefill, pos, len(self.waiting))
        if self.jitter:
            t *= math.exp(self.rng.gauss(0.0, self.jitter))
        return Step(t, decode, ctx, chunks)

    def finish_step(self, step: Step, now: float = 0.0, emit: Callable[[Sequence], None] | None = None) -> StepOutcome:
        """Apply a planned step that ended at simulated time `now`; `emit(seq)` once per token produced."""
        self.steps += 1
        if step.decode:
            self._advance(1)
            if emit is not None:
                for seq in self.running.values():
                    emit(seq)
        for seq, n in step.chunks:
            if seq.state != PREFILL:  # cancelled or preempted meanwhile
                continue
            seq.prefilled += n
            if seq.prefilled < seq.compute:
                continue
            self.prefilling.remove(seq)
            # The prefill forward pass yields the next token.
            seq.kv = 0
            seq.generated += 1
            self.kv_used += 1
            self.future -= 1
            seq.state = RUNNING
            seq.joined = self.dsteps
            self.running[seq.rid] = seq
            self.running_ctx += seq.prompt + seq.generated
            heapq.heappush(self.finish_heap, (self.dsteps + seq.target - seq.generated, seq.rid, seq))
            if seq.first_token_at is None:
                seq.first_token_at = now
            if emit is not None:
                emit(seq)
        return self._settle(now)

    def _advance(self, k: int) -> None:
        b = len(self.running)
        self.dsteps += k
        self.kv_used += k * b
        self.running_ctx += k * b
        self.future -= k * b

    def _settle(self, now: float) -> StepOutcome:
        finished: list[Sequence] = []
        heap = self.finish_heap
        while heap and heap[0][0] <= self.dsteps:
            _, _, seq = heapq.heappop(heap)
            if seq.state != RUNNING or self.generated(seq) < seq.target:
                continue  # stale entry (preempted, cancelled, or re-joined later)
            self._leave_running(seq)
            seq.state = DONE
            seq.finished_at = now
            finished.append(seq)
        failed: list[Sequence] = []
        preempted: list[Sequence] = []
        # KV overflow: preempt the newest sequences; they recompute their prompt and output so far.
        while self.kv_used > self.plan.kv_capacity and (self.running or self.prefilling):
            if self.prefilling:
                victim = self.prefilling[-1]
                self._leave_prefill(victim)
            else:
                victim = next(reversed(self.running.values()))
                self._leave_running(victim)
            self.preemptions += 1
            victim.preemptions += 1
            victim.prefilled = 0
            if victim.preemptions > MAX_PREEMPTIONS:
                victim.state = DONE
                victim.finished_at = now
                victim.error = (
                    503,
                    "the request was preempted too many times: the KV cache cannot hold the running batch "
                    "(SIMULATED; lower the batch limit or raise the memory fraction)",
                )
                failed.append(victim)
            else:
                victim.state = WAITING
                victim.compute = victim.prompt + victim.generated
                self.waiting.appendleft(victim)
                preempted.append(victim)
        return StepOutcome(finished, failed, preempted)

    # ---- virtual time only -----------------------------------------------------------------------

    def fast_forward(self, now: float, limit: int = 1 << 30) -> tuple[float, StepOutcome] | None:
        """Apply a stretch of pure-decode steps at once, when nothing else can happen before it ends.

        Returns (duration, outcome) or None when the next step is not a plain decode step.
        """
        b = len(self.running)
        if not b or self.prefilling or not self._admission_blocked():
            return None
        k = self.finish_heap[0][0] - self.dsteps if self.finish_heap else limit
        room = self.plan.kv_capacity - self.kv_used
        k = min(k, limit, room // b + 1)
        if k < 2:
            return None
        ctx_mid = self.running_ctx + (k - 1) * b / 2.0
        t = k * self.plan.step_time(b, ctx_mid, 0, 0.0, len(self.waiting))
        if self.jitter:
            t *= math.exp(self.rng.gauss(0.0, self.jitter / math.sqrt(k)))
        self._advance(k)
        self.steps += k
        return t, self._settle(now + t)


def simulate_closed_loop(
    plan: Plan,
    input_tokens: int,
    output_tokens: int,
    concurrency: int,
    requests: int,
    *,
    seed: int = 0,
    jitter: float = 0.02,
    warmup: int = 0,
    fast: bool = True,
) -> dict:
    """One replica's scheduler in virtual time under `concurrency` closed-loop clients.

    Every client sends its next request when the previous one ends; it reaches the engine during the
    next step (as over HTTP). Returns mean TTFT/TPOT/e2e, throughputs and the error rate over the
    `requests` requests that follow `warmup` ones.
    """
    rng = random.Random(seed)
    sched = Scheduler(plan, rng, jitter)
    compute = max(1, int(round(input_tokens * (1.0 - plan.prefix_hit))))
    now = 0.0
    issued = 0
    # Extra requests keep every client busy until the last measured request ends (no drain tail).
    total = warmup + requests + concurrency
    done: list[Sequence] = []
    pending: list[Sequence] = []
    measure_from = 0.0

    def issue() -> Sequence:
        nonlocal issued
        issued += 1
        return Sequence(issued, input_tokens, output_tokens, compute, rng.random(), arrival=now)

    for _ in range(min(concurrency, total)):
        sched.add(issue())
    while (sched.has_work() or pending) and len(done) < warmup + requests:
        outcome = None
        if fast and not pending:
            ff = sched.fast_forward(now)
            if ff is not None:
                now += ff[0]
                outcome = ff[1]
        if outcome is None:
            step = sched.plan_step()
            for s in pending:  # arrived while the step was being planned
                sched.add(s)
            pending = []
            if step is None:
                step = sched.plan_step()
                if step is None:
                    break
            now += step.duration
            outcome = sched.finish_step(step, now)
        for seq in outcome.finished + outcome.failed:
            done.append(seq)
            if len(done) == warmup:
                measure_from = now
            if issued < total:
                s = issue()
                s.arrival = now
                pending.append(s)
    measured = done[warmup : warmup + requests]
    ok = [s for s in measured if s.error is None]
    end = max((s.finished_at or 0.0) for s in measured) if measured else 0.0
    span = end - (measure_from if warmup else min((s.arrival for s in measured), default=0.0))

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    return {
        "ttft_s": mean([s.first_token_at - s.arrival for s in ok]),
        "tpot_s": mean([(s.finished_at - s.first_token_at) / (s.target - 1) for s in ok if s.target > 1]),
        "e2e_s": mean([s.finished_at - s.arrival for s in ok]),
        "requests_per_s": len(ok) / span if span > 0 else 0.0,
        "output_tps": sum(s.target for s in ok) / span if span > 0 else 0.0,
        "input_tps": sum(s.prompt for s in ok) / span if span > 0 else 0.0,
        "error_rate": 1.0 - len(ok) / len(measured) if measured else 0.0,
        "preemptions": sched.preemptions,
        "requests": len(measured),
        "steps": sched.steps,
    }
