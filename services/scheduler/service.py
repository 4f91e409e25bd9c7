"""The scheduler service: replay the log into state, hold the leader lease, decide, append.

Every instance replays AUTOTUNE_EVENTS and keeps its state hot; only the holder of the
`scheduler` key in the `autotune-leases` bucket decides. A standby takes over when the key expires
(a few seconds after the leader dies). Two schedulers can never emit conflicting events: every
decision is appended with the sequence it was based on, so the loser's append is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from nats.js.errors import KeyWrongLastSequenceError

from autotune.scheduler.datasets import DatasetFetcher
from autotune.scheduler.decide import Action, Limits, decide
from autotune.scheduler.state import State, evolve, saw
from autotune.scheduler.waiting import WaitLimits
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.liveness import LiveHost
from autotune.shared import bus
from autotune.shared.kv import kv_claim, kv_renew
from autotune.shared.lifecycle import wait_event
from autotune.shared.log import get_logger
from autotune.shared.provision import provision
from autotune.shared.settings import Settings, default_data_dir
from autotune.shared.stats import Histogram, StatsPublisher

log = get_logger("scheduler")
_gpu_decoder = msgspec.json.Decoder(ev.GpuSample)

LEASE_KEY = "scheduler"


class Scheduler:
    def __init__(self, settings: Settings, *, lease_ttl_s: float = 6.0, tick_s: float = 0.5, limits: Limits | None = None) -> None:
        self.settings = settings
        self.instance = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.state = State()
        self.fleet: dict[str, LiveHost] = {}
        self.fleet_loaded = asyncio.Event()
        self.caught_up = asyncio.Event()
        self.leader = False
        self.lease_ttl_s = lease_ttl_s
        self.tick_s = tick_s
        self.limits = limits or Limits(host_grace_s=max(2.0, settings.host_ttl_s), waiting=wait_limits_from_env())
        data_dir = Path(settings.data_dir) if settings.data_dir else default_data_dir()
        self.datasets = DatasetFetcher(data_dir / "datasets")
        self.wake = asyncio.Event()
        self.gpu_samples: dict[tuple[str, int], tuple[float, bool]] = {}  # (host, index) -> (seen at, has processes)
        self.decision_seconds = Histogram()  # how long each decide() takes, for /metrics

    async def run(self, stop: asyncio.Event, *, burst: bool = False) -> None:
        nc = await bus.connect(self.settings, "scheduler", stop=stop)
        js = nc.jetstream()
        await provision(js, self.settings)
        self.js = js
        tasks = [
            asyncio.create_task(self._follow(js, stop), name="follow"),
            asyncio.create_task(self._watch_fleet(js, stop), name="fleet"),
            asyncio.create_task(self._lease(js, stop), name="lease"),
            asyncio.create_task(self._decide_loop(js, stop, burst), name="decide"),
            asyncio.create_task(StatsPublisher("scheduler", self.instance, decision_seconds=self.decision_seconds).run(js, stop), name="stats"),
        ]
        await nc.subscribe(subj.GPU_ALL, cb=self._on_gpu_sample)
        log.info("scheduler started", instance=self.instance)
        try:
            # every task runs until stop; one that ends early (an error it could not ride out) ends the
            # service loudly, so a supervisor restarts it, instead of a scheduler that idles for ever
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception():
                    log.error("scheduler task failed; stopping", task=t.get_name(), error=repr(t.exception()))
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.datasets.close()
            if self.leader:
                with contextlib.suppress(Exception):
                    kv = await js.key_value(subj.LEASES_BUCKET)
                    await kv.delete(LEASE_KEY)
            await bus.close(nc)
            log.info("scheduler stopped", instance=self.instance)

    async def _follow(self, js, stop: asyncio.Event) -> None:
        """Apply the log, in order, for as long as the scheduler runs. A NATS node that dies while the
        follow starts or runs (no stream leader for a moment) is ridden out: the follow starts again
        right after the last event applied."""
        last = await bus.retry_transient(lambda: bus.last_seq(js, ">"))
        if last == 0:
            self.caught_up.set()

        async def undecodable(msg, error: Exception) -> None:
            seq = msg.metadata.sequence.stream
            log.warning("undecodable event skipped", subject=msg.subject, seq=seq, error=str(error))
            saw(self.state, seq, msg.subject)
            if seq >= last:
                self.caught_up.set()
            self.wake.set()

        while not stop.is_set():
            try:
                async for d in bus.replay(js, subj.ALL, start_seq=self.state.applied_seq + 1, stop=stop, on_bad=undecodable):
                    try:
                        evolve(self.state, d.seq, d.subject, d.event)
                    except Exception:
                        log.error("cannot apply event; skipped", exc=True, subject=d.subject, seq=d.seq)
                        saw(self.state, d.seq, d.subject)
                    if d.seq >= last:
                        self.caught_up.set()
                    self.wake.set()
                return
            except bus.TRANSIENT as e:
                log.warning("following the log failed; following again from the last event applied", after_seq=self.state.applied_seq, error=repr(e))
                await wait_event(stop, 1.0)

    async def _watch_fleet(self, js, stop: asyncio.Event) -> None:
        """Follow the liveness keys; a watch that fails or stalls (a NATS node restarting, a KV leader
        election) is started again, and its replay of every current key brings the fleet up to date."""
        kv = await bus.retry_transient(lambda: js.key_value(subj.HOSTS_BUCKET))
        while not stop.is_set():
            try:
                await self._follow_fleet(kv)
            except Exception as e:
                log.warning("fleet watch failed; watching again", error=repr(e))
            await wait_event(stop, 1.0)

    async def _follow_fleet(self, kv) -> None:
        watcher = await kv.watchall()
        decoder = msgspec.json.Decoder(LiveHost)
        fleet: dict[str, LiveHost] = {}  # the replay of the current keys, swapped in once complete
        quiet_s = max(30.0, 3 * self.settings.host_ttl_s)  # live runners rewrite their keys far more often
        try:
            while True:
                try:
                    entry = await watcher.updates(timeout=quiet_s if fleet is self.fleet else 10.0)
                except TimeoutError:  # nats-py's is a subclass
                    if fleet is self.fleet and not self.fleet:
                        continue  # no hosts: nothing to hear from
                    log.warning("fleet watch went quiet; watching again", replayed=fleet is self.fleet)
                    return
                if entry is None:  # the current keys are all in: from here on, changes
                    self.fleet.clear()
                    self.fleet.update(fleet)
                    fleet = self.fleet
                    self.fleet_loaded.set()
                    self.wake.set()
                    continue
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    fleet.pop(entry.key, None)
                else:
                    try:
                        fleet[entry.key] = decoder.decode(entry.value)
                    except msgspec.MsgspecError as e:
                        log.warning("bad liveness value ignored", host=entry.key, error=str(e))
                self.wake.set()
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def _lease(self, js, stop: asyncio.Event) -> None:
        kv = await js.key_value(subj.LEASES_BUCKET)
        rev: int | None = None
        value = self.instance.encode()
        while not stop.is_set():
            try:
                if rev is None:
                    rev = await kv_claim(kv, LEASE_KEY, value, ttl=self.lease_ttl_s)
                    if rev is not None:
                        log.info("became leader", instance=self.instance)
                else:
                    rev = await kv_renew(kv, LEASE_KEY, value, last=rev, ttl=self.lease_ttl_s)
            except KeyWrongLastSequenceError:
                log.warning("lost the leader lease", instance=self.instance)
                rev = None
            except Exception as e:  # NATS hiccup: keep trying; the TTL decides
                log.warning("lease renewal failed", error=repr(e))
            self.leader = rev is not None
            if self.leader:
                self.wake.set()
            await asyncio.sleep(self.lease_ttl_s / 4)

    async def _decide_loop(self, js, stop: asyncio.Event, burst: bool) -> None:
        await self.caught_up.wait()
        await self.fleet_loaded.wait()
        while not stop.is_set():
            await wait_event(self.wake, self.tick_s)
            self.wake.clear()
            if not self.leader:
                continue
            t0 = time.perf_counter()
            actions = decide(self.state, self.fleet, datetime.now(UTC), occupied=self.occupied(), limits=self.limits)
            self.decision_seconds.observe(time.perf_counter() - t0)
            self.datasets.poll(js, self.state)  # the one effect besides appends (datasets.py says why)
            if actions:
                await self._execute(js, actions)
            elif burst and self.state.tasks and all(t.finished for t in self.state.tasks.values()):
                return

    async def _on_gpu_sample(self, msg) -> None:
        try:
            sample = _gpu_decoder.decode(msg.data)
        except msgspec.MsgspecError:
            return
        self.gpu_samples[(sample.host, sample.index)] = (time.monotonic(), bool(sample.processes))

    def occupied(self, max_age_s: float = 10.0) -> dict[str, set[int]]:
        """GPUs whose latest fresh telemetry sample shows processes on them."""
        now = time.monotonic()
        out: dict[str, set[int]] = {}
        for (host, index), (seen, busy) in self.gpu_samples.items():
            if busy and now - seen <= max_age_s:
                out.setdefault(host, set()).add(index)
        return out

    async def _execute(self, js, actions: list[Action]) -> None:
        target = self.state.applied_seq
        for a in actions:
            try:
                ack = await bus.append(js, a.subject, a.event, expect_seq=a.expect_seq, expect_filter=a.expect_filter)
                target = max(target, ack.seq)
                log.info(ev_name(a), subject=a.subject)
            except bus.StaleWrite as e:
                log.info("decision was based on a stale view; deciding again", detail=str(e))
        # decide again only once our own appends have come back through the log
        for _ in range(200):
            if self.state.applied_seq >= target:
                return
            await asyncio.sleep(0.01)


def ev_name(a: Action) -> str:
    from autotune.schemas import events as ev

    return ev.tag_of(type(a.event))


def wait_limits_from_env() -> WaitLimits:
    """AUTOTUNE_UNPLACEABLE_GRACE_S: how long nothing may be able to run an experiment before it fails as unplaceable."""
    d = WaitLimits()
    grace = os.environ.get("AUTOTUNE_UNPLACEABLE_GRACE_S")
    return WaitLimits(unplaceable_grace_s=float(grace)) if grace else d


async def run(settings: Settings, *, stop: asyncio.Event, burst: bool = False) -> None:
    await Scheduler(settings).run(stop, burst=burst)
