"""The runner's hold on its host: the liveness key in `autotune-hosts` (claim, takeover, renew, fence).

One live instance per host, enforced by an atomic create of the host's key (per-key TTL, renewed by
the heartbeat several times per TTL). A second instance refuses to start while the first is alive,
unless told to take over, or the first is provably dead (same machine, its pid gone). Taking over,
it reports the previous instance's unfinished experiments failed (retryable), exactly once.

A key that expired under a live instance (it was paused, partitioned, or declared lost meanwhile) is
not simply claimed again: the renewal raises `KeyExpired`, and the heartbeat runs the runner's fence
(which attempts are still its own, stop the others' engines) before `rejoin` holds the key again
(docs/fencing.md). Until then `uncertain()` is true, and the runner takes no work and publishes no
output for its attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError

from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.liveness import LiveHost
from autotune.shared import bus
from autotune.shared.kv import kv_claim, kv_renew
from autotune.shared.lifecycle import wait_event
from autotune.shared.log import get_logger

log = get_logger("runner")


def _clock() -> float:
    """Seconds that keep counting while this process is paused and while its machine is suspended
    (CLOCK_BOOTTIME), so that a runner back from either knows how long it was away."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


class HostTaken(RuntimeError):
    """Another live runner instance holds this host."""


class KeyExpired(Exception):
    """This instance's liveness key expired: it must fence before it holds the host again."""


class HostLiveness:
    """The liveness key of one host, held by one runner instance.

    `value()` is the instance's current LiveHost, encoded (what it runs, whether it drains); every
    renewal writes it. `on_taken_over` is called once, when another instance turns out to hold the key."""

    def __init__(
        self, kv: Any, *, host: str, instance: str, ttl_s: float, heartbeat_s: float, value: Callable[[], bytes],
        on_taken_over: Callable[[], None],
    ) -> None:
        self.kv, self.host, self.instance = kv, host, instance
        self.ttl_s, self.heartbeat_s = ttl_s, heartbeat_s
        self.value, self.on_taken_over = value, on_taken_over
        self.rev = 0
        self.taken_over = False
        self.expired = False  # the key expired under this instance; `rejoin` clears it after the fence
        self.confirmed_at = _clock()  # when the last renewal that landed was sent
        self.beat = asyncio.Event()  # renew now (someone needs to know whether the host is still held)
        self._lock = asyncio.Lock()

    async def claim(self, *, takeover: bool) -> LiveHost | None:
        """Hold the key, or raise HostTaken. Returns the previous instance's value when this one took
        the host over from it (its unfinished experiments are then this instance's to report)."""
        kv, ttl = self.kv, self.ttl_s
        rev = await kv_claim(kv, self.host, self.value(), ttl=ttl)
        entry = await kv.get(self.host) if rev is None else None
        for _ in range(10):  # the holder's key expired between the claim and the read: claim again
            if entry is None or entry.value:
                break
            await asyncio.sleep(0.2)
            rev = await kv_claim(kv, self.host, self.value(), ttl=ttl)
            entry = await kv.get(self.host) if rev is None else None
        if rev is not None:
            self.rev, self.confirmed_at = rev, _clock()
            return None
        if entry is None or not entry.value:
            raise HostTaken(f"host `{self.host}`: its liveness key keeps changing under this runner; start it again")
        previous = msgspec.json.decode(entry.value, type=LiveHost)
        dead_here = previous.hostname == socket.gethostname() and not pid_alive(previous.pid)
        if not (takeover or dead_here):
            raise HostTaken(
                f"host `{self.host}` is already served by runner instance {previous.instance} (pid {previous.pid} on "
                f"{previous.hostname}, last heartbeat {time.time() - previous.at:.0f}s ago); stop it first, or start this "
                f"one with --takeover to replace it"
            )
        log.warning("taking over the host from a previous instance", previous=previous.instance, alive=not dead_here)
        rev = await kv.put(self.host, self.value())  # its next heartbeat fails: it stops
        self.rev = await kv_renew(kv, self.host, self.value(), last=rev, ttl=ttl)
        self.confirmed_at = _clock()
        return previous

    async def publish(self) -> None:
        """Renew the key with the current value (running experiments, draining).

        Raises KeyWrongLastSequenceError only when another instance holds the key, and KeyExpired
        when the key expired under this instance (paused, or NATS unreachable, longer than the TTL):
        then only the fence's `rejoin` claims it again. A renewal of ours that landed while its ack was
        lost (a stream leader election) is recognized and its revision adopted — reads may come from a
        lagging replica, so that is tried a few times."""
        ttl = self.ttl_s
        async with self._lock:
            if self.expired:
                raise KeyExpired()
            last = self.rev
            for attempt in range(5):
                sent = _clock()
                try:
                    self.rev = await kv_renew(self.kv, self.host, self.value(), last=last, ttl=ttl)
                    self.confirmed_at = sent
                    return
                except KeyWrongLastSequenceError:
                    pass
                try:
                    entry = await self.kv.get(self.host)
                    holder = msgspec.json.decode(entry.value or b"", type=LiveHost).instance
                except (KeyDeletedError, KeyNotFoundError, msgspec.DecodeError):
                    holder = None
                if holder is None:
                    self.expired = True
                    log.warning("the liveness key expired under this instance; fencing before it takes any work", host=self.host,
                                unconfirmed_s=round(_clock() - self.confirmed_at, 1))  # fmt: skip
                    raise KeyExpired()
                if holder != self.instance:
                    raise KeyWrongLastSequenceError()
                last = entry.revision
                await asyncio.sleep(0.1 * (attempt + 1))
            raise RuntimeError("the liveness key keeps changing under this instance; retrying at the next heartbeat")

    async def rejoin(self) -> int:
        """Hold the key again after the fence (its value then tells the truth); returns the revision.
        Raises KeyWrongLastSequenceError (and stops this instance) when another instance holds it now."""
        async with self._lock:
            for _ in range(10):
                sent = _clock()
                rev = await kv_claim(self.kv, self.host, self.value(), ttl=self.ttl_s)
                if rev is not None:
                    self.rev, self.confirmed_at, self.expired = rev, sent, False
                    return rev
                try:
                    entry = await self.kv.get(self.host)
                    holder = msgspec.json.decode(entry.value or b"", type=LiveHost).instance if entry.value else None
                except (KeyDeletedError, KeyNotFoundError, msgspec.DecodeError):
                    holder = None
                if holder is not None and holder != self.instance:
                    self._taken()
                    raise KeyWrongLastSequenceError()
                await asyncio.sleep(0.2)
            raise RuntimeError("the liveness key keeps changing under this instance; fencing again at the next heartbeat")

    def unconfirmed_s(self) -> float:
        """Seconds since the last renewal that landed was sent."""
        return _clock() - self.confirmed_at

    def uncertain(self) -> bool:
        """Whether this instance may have lost its host without knowing yet: the key expired, or no
        renewal has landed for most of a TTL (a pause, a partition). Work and output wait meanwhile."""
        return self.expired or _clock() - self.confirmed_at > 0.75 * self.ttl_s

    async def held(self, stop: asyncio.Event) -> bool:
        """Wait until this instance surely holds its host (renewing now, fencing first if the key
        expired); False once it was taken over or is stopping."""
        while self.uncertain() and not (self.taken_over or stop.is_set()):
            self.beat.set()
            await asyncio.sleep(0.05)
        return not (self.taken_over or stop.is_set())

    async def still_ours(self) -> bool:
        """Whether this instance still holds the host (a renewal says so); False once it was taken over."""
        try:
            await self.publish()
            return True
        except KeyWrongLastSequenceError:
            self._taken()
            return False
        except Exception:
            return True

    async def heartbeat(self, stop: asyncio.Event, *, fence: Callable[[], Awaitable[None]], refresh: Callable[[], Awaitable[None]]) -> None:
        """Renew several times per TTL (a busy machine must not look dead), and at once when asked
        (`beat`). `refresh` runs after each renewal (what the next value says); `fence` when the key expired."""
        backoff = 0.0  # after a failed fence: NATS is not back, so a beat asked for sooner would fail the same way
        while not stop.is_set():
            if backoff:
                await asyncio.sleep(backoff)
            else:
                await wait_event(self.beat, min(self.heartbeat_s, self.ttl_s / 4))
            self.beat.clear()
            try:
                await self.publish()
                await refresh()
            except KeyExpired:
                try:
                    await fence()
                    backoff = 0.0
                except KeyWrongLastSequenceError:
                    return
                except Exception as e:  # NATS not back yet: still expired, so still no work; again, a little later each time
                    backoff = min(max(2 * backoff, 0.25), self.heartbeat_s)
                    log.warning("fencing failed; trying again", error=repr(e), in_s=backoff)
            except KeyWrongLastSequenceError:
                self._taken()
                return
            except Exception as e:
                log.warning("heartbeat failed; retrying", error=repr(e))

    async def release(self) -> None:
        """A clean stop: remove the key, unless another instance holds it now."""
        if not self.taken_over:
            with contextlib.suppress(Exception):
                await self.kv.delete(self.host)

    def _taken(self) -> None:
        if not self.taken_over:
            log.error("another instance took this host over; stopping", host=self.host)
        self.taken_over = True
        self.on_taken_over()


async def report_unfinished(js: Any, host: str, previous: LiveHost) -> None:
    """Report the previous instance's unfinished experiments as failed (retryable), exactly once.

    Each append expects the experiment's last sequence as read here, so a racing writer (the
    scheduler noticing the restart, the old instance itself) and this one never both land."""
    for key in previous.running:
        task, n, attempt = key.split("/")
        f = subj.experiment_all(task, int(n))
        last = await bus.last_seq(js, f)
        newest = await bus.messages_after(js, f, max(0, last - 1))
        if newest:
            e = newest[-1][1]
            if e is None or isinstance(e, ev.TERMINAL_EXPERIMENT + (ev.ExperimentPlanned,)) or getattr(e, "attempt", None) != int(attempt):
                continue
        e = ev.ExperimentFailed(
            id=ev.exp_id(task, int(n), int(attempt), "failed"), task=task, n=int(n), attempt=int(attempt), host=host,
            kind="runner_restarted", retryable=True, message=f"the runner instance {previous.instance} stopped while this experiment was running",
        )
        with contextlib.suppress(bus.StaleWrite):
            await bus.append(js, subj.experiment(task, int(n), "failed"), e, expect_seq=last, expect_filter=f)
            log.warning("reported an experiment the previous instance left unfinished", experiment=key)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed runner whose parent has not reaped it yet is a zombie: dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
