"""The host runner: claim the host, register, heartbeat, run what is addressed to this host.

One live instance per host, enforced by an atomic create of the host's liveness key (per-key TTL,
renewed by the heartbeat). A second instance refuses to start while the first is alive, unless told
to take over — or the first is provably dead (same machine, its pid gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid

import msgspec
from nats.js.errors import KeyWrongLastSequenceError

from autotune import __version__
from autotune.runner.experiment import Context, run_attempt
from autotune.runner.gpus import nvml_gpus, parse_simulated
from autotune.runner.runtimes.local import LocalRuntime, SimulatedRuntime
from autotune.runner.settings import RunnerSettings
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.liveness import LiveGpu, LiveHost, running_key
from autotune.shared import bus
from autotune.shared import log as logging
from autotune.shared.settings import Settings

log = logging.get("runner")


class HostTaken(RuntimeError):
    """Another live runner instance holds this host."""


class Runner:
    def __init__(self, settings: Settings, rs: RunnerSettings) -> None:
        self.settings = settings
        self.rs = rs
        self.host = subj.token(rs.host, "host")
        self.instance = f"{socket.gethostname()[:20]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.running: dict[str, asyncio.Task] = {}
        self.draining = False
        self.gpus, self.simulated = self._discover_gpus()
        self.runtimes: dict[str, object] = {}
        if self.simulated:
            self.runtimes["simulated"] = SimulatedRuntime()
        else:
            self.runtimes["local"] = LocalRuntime()
            self.runtimes["simulated"] = SimulatedRuntime()
        if rs.runtimes:
            self.runtimes = {k: v for k, v in self.runtimes.items() if k in rs.runtimes}

    def _discover_gpus(self) -> tuple[list[LiveGpu], bool]:
        if self.rs.simulate:
            return parse_simulated(self.rs.simulate), True
        real = nvml_gpus()
        if real:
            return real, False
        log.info("no NVIDIA GPU found through NVML; this host offers simulated GPUs (4xH100)")
        return parse_simulated("4xH100"), True

    def live_value(self) -> bytes:
        return msgspec.json.encode(
            LiveHost(
                host=self.host, instance=self.instance, hostname=socket.gethostname(), pid=os.getpid(), gpus=self.gpus,
                runtimes=sorted(self.runtimes), engines=["sglang", "vllm"], simulated=self.simulated,
                draining=self.draining, running=sorted(self.running), at=time.time(),
            )
        )

    async def run(self, stop: asyncio.Event) -> None:
        nc = await bus.connect(self.settings, f"runner-{self.host}")
        js = nc.jetstream()
        try:
            await bus.provision(js, self.settings)
            kv = await js.key_value(subj.HOSTS_BUCKET)
            rev = await self._claim(kv, js)
            ctx = Context(
                js=js, host=self.host, instance=self.instance, runtimes=self.runtimes, time_scale=self.rs.time_scale,
                startup_timeout_s=self.rs.startup_timeout_s, engine_host=self.rs.engine_host, sim_seed=self.rs.sim_seed,
                on_done=self._done,
            )
            self.ctx = ctx
            await self._register(js)
            hb = asyncio.create_task(self._heartbeat(kv, rev, stop))
            try:
                await bus.durable_consume(
                    js, stream=subj.EVENTS_STREAM, durable=f"runner-{self.host}", subjects=subj.addressed_to(self.host),
                    handler=lambda d: self._handle(js, d), stop=stop, ack_wait=30,
                )
            finally:
                await self._shutdown()
                hb.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await hb
                with contextlib.suppress(Exception):
                    await kv.delete(self.host)
        finally:
            await nc.drain()
            log.info("runner stopped", host=self.host, instance=self.instance)

    async def _claim(self, kv, js) -> int:
        ttl = self.settings.host_ttl_s
        rev = await bus.kv_claim(kv, self.host, self.live_value(), ttl=ttl)
        if rev is None:
            previous = msgspec.json.decode((await kv.get(self.host)).value, type=LiveHost)
            dead_here = previous.hostname == socket.gethostname() and not _pid_alive(previous.pid)
            if not (self.rs.takeover or dead_here):
                raise HostTaken(
                    f"host `{self.host}` is already served by runner instance {previous.instance} (pid {previous.pid} on "
                    f"{previous.hostname}); stop it first, or start this one with --takeover"
                )
            log.warning("taking over the host from a previous instance", previous=previous.instance)
            await self._reconcile(js, previous)
            rev = await kv.put(self.host, self.live_value())
            rev = await bus.kv_renew(kv, self.host, self.live_value(), last=rev, ttl=ttl)
        await self._reap()
        log.info("runner started", host=self.host, instance=self.instance, gpus=len(self.gpus), simulated=self.simulated)
        return rev

    async def _reconcile(self, js, previous: LiveHost) -> None:
        """Report the previous instance's unfinished experiments as failed (retryable), exactly once."""
        for key in previous.running:
            task, n, attempt = key.split("/")
            f = subj.experiment_all(task, int(n))
            last = await bus.last_seq(js, f)
            newest = await bus.messages_after(js, f, max(0, last - 1))
            if newest and isinstance(newest[-1][1], ev.TERMINAL_EXPERIMENT + (ev.ExperimentPlanned,)):
                continue
            e = ev.ExperimentFailed(
                id=ev.exp_id(task, int(n), int(attempt), "failed"), task=task, n=int(n), attempt=int(attempt), host=self.host,
                kind="runner_restarted", retryable=True, message="the runner restarted while this experiment was running",
            )
            with contextlib.suppress(bus.StaleWrite):
                await bus.append(js, subj.experiment(task, int(n), "failed"), e, expect_seq=last, expect_filter=f)

    async def _reap(self) -> None:
        for rt in {id(r): r for r in self.runtimes.values()}.values():
            await rt.reap_orphans(self.host, keep=set(self.running))  # type: ignore[attr-defined]

    async def _register(self, js) -> None:
        e = ev.HostRegistered(
            id=f"host.{self.host}.{self.instance}.registered", host=self.host, instance=self.instance, hostname=socket.gethostname(),
            gpus=[ev.GpuInfo(index=g.index, uuid=g.uuid, name=g.name, memory_total_mib=g.memory_total_mib) for g in self.gpus],
            runtimes=sorted(self.runtimes), engines=["sglang", "vllm"], simulated=self.simulated, version=__version__,
        )
        await bus.append(js, subj.host(self.host, "registered"), e)

    async def _heartbeat(self, kv, rev: int, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.rs.heartbeat_s)
            try:
                rev = await bus.kv_renew(kv, self.host, self.live_value(), last=rev, ttl=self.settings.host_ttl_s)
            except KeyWrongLastSequenceError:
                log.error("another instance took this host over; stopping", host=self.host)
                stop.set()
                return
            except Exception as e:
                log.warning("heartbeat failed; retrying", error=repr(e))

    async def _handle(self, js, d: bus.Delivery) -> None:
        match d.event:
            case ev.ExperimentAssigned() as a:
                key = running_key(a.task, a.n, a.attempt)
                if a.instance and a.instance != self.instance:
                    log.info("assignment was for a previous instance; the scheduler re-plans it", experiment=key)
                    return
                if key in self.running:
                    return
                self.running[key] = asyncio.create_task(run_attempt(self.ctx, a, d.seq), name=key)
                log.info("experiment assigned", experiment=key, gpus=a.gpu_indices)
            case ev.ExperimentCancelRequested() as c:
                key = running_key(c.task, c.n, c.attempt)
                if t := self.running.get(key):
                    log.info("cancelling experiment", experiment=key, reason=c.reason)
                    t.cancel()
            case ev.HostDrainRequested():
                self.draining = True
            case _:
                pass

    def _done(self, key: str) -> None:
        self.running.pop(key, None)

    async def _shutdown(self) -> None:
        for key, t in list(self.running.items()):
            self.ctx.shutdown_reason[key] = "shutdown"
            t.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def run(settings: Settings, *, stop: asyncio.Event, runner: RunnerSettings | None = None) -> None:
    await Runner(settings, runner or RunnerSettings.from_env()).run(stop)
