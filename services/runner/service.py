"""The host runner: hold the host (liveness.py), register, run what is addressed to this host.

It offers the runtimes that answer here, claims the host's liveness key, reports and removes what a
previous instance left, registers, then consumes the assignments, cancels and host commands addressed
to its host and runs each attempt (experiment.py) until it is stopped or replaced. When its key
expired under it, it fences (fencing.py) before it takes work again. A clean stop is `host.stopped`,
written once its attempts are accounted for and before its key is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid

import msgspec

from autotune import __version__
from autotune.runner import fencing
from autotune.runner.experiment import AttemptRun, Context
from autotune.runner.gpus import nvml_gpus, parse_simulated, wait_gpus_free
from autotune.runner.liveness import HostLiveness, HostTaken, report_unfinished
from autotune.runner.runtimes import Runtime
from autotune.runner.runtimes.local import LocalRuntime, SimulatedRuntime
from autotune.runner.settings import CPU_ENGINES, RunnerSettings
from autotune.runner.writer import Writer
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.liveness import LiveGpu, LiveHost, running_key
from autotune.shared import bus
from autotune.shared.lifecycle import wait_event
from autotune.shared.log import get_logger
from autotune.shared.provision import provision
from autotune.shared.settings import Settings

log = get_logger("runner")

__all__ = ["HandedOver", "HostTaken", "Runner", "RunnerSettings", "run"]  # HostTaken: the CLI maps it to a clear error


class HandedOver(Exception):
    """This instance was replaced: the message is left for the instance that holds the host now."""


class Runner:
    def __init__(self, settings: Settings, rs: RunnerSettings) -> None:
        self.settings = settings
        self.rs = rs
        self.host = subj.token(rs.host, "host")
        self.instance = f"{socket.gethostname()[:20]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.running: dict[str, asyncio.Task] = {}
        self.attempts: dict[str, AttemptRun] = {}
        self.unaccounted: dict[str, list[int] | None] = {}  # engines labelled for this host that no attempt of ours owns
        self.returning: asyncio.Task | None = None  # writes host.returned until the log takes it
        self.draining = False
        self.drained_sent = False
        self.nvml_missing = False
        self.gpus, self.simulated = self._discover_gpus()
        self.cpu_slots, self.cpu_engines = self._cpu_serving()
        self.runtimes: dict[str, Runtime] = {}
        self.js = None

    def _discover_gpus(self) -> tuple[list[LiveGpu], bool]:
        if self.rs.simulate:
            return parse_simulated(self.rs.simulate), True
        real = nvml_gpus()
        if real:
            return real, False
        self.nvml_missing = True
        return parse_simulated("4xH100"), True

    def _cpu_serving(self) -> tuple[int, list[str]]:
        """How many real engines this host serves on its CPU at once, and which (RunnerSettings.cpu_slots)."""
        engines = sorted(e for e in self.rs.engines if e in CPU_ENGINES)
        slots = self.rs.cpu_slots if self.rs.cpu_slots is not None else (1 if engines and self.simulated else 0)
        return (slots, engines) if engines else (0, [])

    async def _node_gpus(self) -> None:
        """No NVML in this pod, but a Kubernetes node: its allocatable GPUs (the device plugin hands them out)."""
        from autotune.runner.runtimes.kubernetes import node_gpus

        rt = self._kubernetes()
        try:
            count, product, memory = await node_gpus(await rt.api(), self.rs.k8s_node or "")
        except Exception as e:
            log.warning("cannot read this node's GPUs from the Kubernetes API", node=self.rs.k8s_node, error=repr(e))
            return
        finally:
            await rt.close()
        if count:
            name = product.replace("-", " ") if product else "NVIDIA GPU"
            self.gpus = [LiveGpu(index=i, uuid=f"{self.rs.k8s_node}/gpu-{i}", name=name, memory_total_mib=memory) for i in range(count)]
            self.simulated = False
            log.info("GPUs from the Kubernetes node (NVML is not visible in this pod)", node=self.rs.k8s_node, gpus=count, product=product)

    async def _setup_runtimes(self) -> None:
        """Which runtimes this host offers: asked for (`runtimes`), else what answers here."""
        rs = self.rs
        wanted = set(rs.runtimes) if rs.runtimes else None
        rts: dict[str, Runtime] = {}
        if wanted is None or "simulated" in wanted or self.simulated:
            rts["simulated"] = await self._simulated_runtime()
        if not self.simulated:
            if wanted is None or "local" in wanted:
                rts["local"] = LocalRuntime(models_dir=rs.models_dir, engines=rs.engines, engine_env=rs.engine_env)
            want_docker = wanted is None or "docker" in wanted
            if want_docker and (d := await self._probe(self._docker(), "docker", required=wanted is not None)):
                rts["docker"] = d
            in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST") or rs.k8s_api_url)
            want_k8s = "kubernetes" in wanted if wanted is not None else in_cluster
            if want_k8s and (k := await self._probe(self._kubernetes(), "kubernetes", required=wanted is not None)):
                rts["kubernetes"] = k
        elif self.cpu_slots:  # no GPU, but real engines on the CPU: as local processes
            rts["local"] = LocalRuntime(models_dir=rs.models_dir, engines=rs.engines, engine_env=rs.engine_env)
            log.info("this host serves real engines on its CPU", engines=",".join(self.cpu_engines), slots=self.cpu_slots)
        elif wanted and wanted - {"simulated"}:
            log.warning("this host's GPUs are simulated: it runs simulated engines only", asked=sorted(wanted))
        if not rts:
            raise RuntimeError(f"no runtime is available on this host (asked for {sorted(wanted or [])}); see the lines above")
        self.runtimes = rts

    async def _simulated_runtime(self) -> Runtime:
        where, rt = self.rs.simulated_runtime, None
        if where == "docker":
            rt = await self._probe(self._docker(always_simulate=True), "docker (simulated engines)", required=True)
        elif where == "kubernetes":
            rt = await self._probe(self._kubernetes(always_simulate=True), "kubernetes (simulated engines)", required=True)
        if rt is None and where != "process":
            log.warning("simulated engines run as local processes instead", asked=where)
        return rt or SimulatedRuntime()

    def _docker(self, always_simulate: bool = False):
        from autotune.runner.runtimes.docker import DockerRuntime

        rs = self.rs
        return DockerRuntime(
            url=rs.docker_url, image=rs.docker_image, always_simulate=always_simulate, models_dir=rs.docker_models_dir or rs.models_dir,
            hf_cache=rs.docker_hf_cache, shm_size=rs.docker_shm_size, binds=rs.docker_binds,
        )

    def _kubernetes(self, always_simulate: bool = False):
        from autotune.runner.runtimes.kubernetes import KubernetesRuntime

        rs = self.rs
        return KubernetesRuntime(
            namespace=rs.k8s_namespace, node=rs.k8s_node, api_url=rs.k8s_api_url, kubeconfig=rs.k8s_kubeconfig, image=rs.k8s_image,
            service_url=rs.k8s_service_url, ome_runtime=rs.k8s_ome_runtime, models_pvc=rs.k8s_models_pvc, poll_s=rs.k8s_poll_s,
            always_simulate=always_simulate,
        )

    async def _probe(self, rt: Runtime, what: str, *, required: bool) -> Runtime | None:
        why = await rt.available()
        if why is None:
            return rt
        (log.error if required else log.info)(f"the {what} runtime is not available here; not offering it", reason=why)
        return None

    def live_value(self) -> bytes:
        return msgspec.json.encode(
            LiveHost(
                host=self.host, instance=self.instance, hostname=socket.gethostname(), pid=os.getpid(), gpus=self.gpus,
                runtimes=sorted(self.runtimes), engines=["sglang", "vllm"], simulated=self.simulated,
                draining=self.draining, running=sorted(self.running), at=time.time(), node=self.rs.k8s_node,
                engine_paths=dict(self.rs.engines), cpu_slots=self.cpu_slots, cpu_engines=self.cpu_engines,
                busy_gpus=fencing.busy_gpus({k: r.a.gpu_indices for k, r in self.attempts.items()}, self.unaccounted, [g.index for g in self.gpus]),
                unaccounted=sorted(self.unaccounted),
            )
        )

    async def run(self, stop: asyncio.Event) -> None:
        self.stop = stop
        nc = await bus.connect(self.settings, f"runner-{self.host}", stop=stop)
        js = nc.jetstream()
        self.js = js
        try:
            await provision(js, self.settings)
            if self.nvml_missing and self.rs.k8s_node and (not self.rs.runtimes or "kubernetes" in self.rs.runtimes):
                await self._node_gpus()
            if self.simulated and self.nvml_missing:
                log.info("no NVIDIA GPU found through NVML; this host offers simulated GPUs (4xH100)")
            await self._setup_runtimes()
            self.liveness = HostLiveness(
                await js.key_value(subj.HOSTS_BUCKET), host=self.host, instance=self.instance, ttl_s=self.settings.host_ttl_s,
                heartbeat_s=self.rs.heartbeat_s, value=self.live_value, on_taken_over=stop.set,
            )
            previous = await self.liveness.claim(takeover=self.rs.takeover)
            if previous is not None:
                await report_unfinished(js, self.host, previous)
            await self._reap()
            self.unaccounted = await fencing.scan(self.runtimes, self.host, set())
            log.info("runner started", host=self.host, instance=self.instance, gpus=len(self.gpus), simulated=self.simulated, runtimes=",".join(sorted(self.runtimes)))
            self.ctx = Context(
                js=js, host=self.host, instance=self.instance, runtimes=self.runtimes, time_scale=self.rs.time_scale,
                startup_timeout_s=self.rs.startup_timeout_s, engine_host=self.rs.engine_host, sim_seed=self.rs.sim_seed,
                on_done=self._done, real_gpus=not self.simulated, nc=nc, stop_grace_s=self.rs.stop_grace_s,
                gpus_busy=(lambda idx: wait_gpus_free(idx, self.rs.gpu_busy_wait_s)) if not self.simulated else (lambda _: []),
                holds=self._holds,
            )
            await self._register(js)
            hb = asyncio.create_task(self.liveness.heartbeat(stop, fence=self._fence, refresh=self._refresh))
            try:
                await bus.durable_consume(
                    js, stream=subj.EVENTS_STREAM, durable=f"runner-{self.host}", subjects=subj.addressed_to(self.host),
                    handler=lambda d: self._handle(js, d), stop=stop, ack_wait=30,
                )
            finally:
                await self._shutdown()
                for t in (hb, self.returning):
                    if t is not None:
                        t.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await t
                await self._stopped(js)
                await self.liveness.release()
        finally:
            for rt in {id(r): r for r in self.runtimes.values()}.values():
                with contextlib.suppress(Exception):
                    await rt.close()
            await bus.close(nc)
            log.info("runner stopped", host=self.host, instance=self.instance)

    async def _reap(self) -> None:
        for rt in {id(r): r for r in self.runtimes.values()}.values():
            try:
                await rt.reap_orphans(self.host, keep=set(self.running))
            except Exception as e:
                log.error("could not reap orphans", runtime=rt.name, error=repr(e))

    async def _register(self, js) -> None:
        e = ev.HostRegistered(
            id=f"host.{self.host}.{self.instance}.registered", host=self.host, instance=self.instance, hostname=socket.gethostname(),
            gpus=[ev.GpuInfo(index=g.index, uuid=g.uuid, name=g.name, memory_total_mib=g.memory_total_mib) for g in self.gpus],
            runtimes=sorted(self.runtimes), engines=["sglang", "vllm"], simulated=self.simulated, version=__version__, node=self.rs.k8s_node,
            engine_paths=dict(self.rs.engines), cpu_slots=self.cpu_slots, cpu_engines=self.cpu_engines,
        )
        await bus.append(js, subj.host(self.host, "registered"), e)

    async def _handle(self, js, d: bus.Delivery) -> None:
        match d.event:
            case ev.ExperimentAssigned() as a:
                key = running_key(a.task, a.n, a.attempt)
                if not await self.liveness.held(self.stop):  # fenced first, if the key expired; nak: redelivered to whoever holds the host
                    raise HandedOver(f"{key}: this instance no longer holds host {self.host}")
                if a.instance and a.instance != self.instance:
                    if not await self.liveness.still_ours():  # nak: the durable consumer redelivers it to the new instance
                        raise HandedOver(f"{key} is for instance {a.instance}, which took this host over")
                    log.info("assignment was for a previous instance; the scheduler re-plans it", experiment=key)
                    return
                if key in self.running:
                    return
                if self.draining:
                    await self._refuse(js, a, d.seq, "this host is draining: it takes no new experiments")
                    return
                self.attempts[key] = attempt = AttemptRun(self.ctx, a, d.seq)
                t = asyncio.create_task(attempt.run(), name=key)
                self.running[key] = t
                t.add_done_callback(lambda t, key=key: self._task_gone(key, t))
                with contextlib.suppress(Exception):  # a restart now finds it in the liveness value
                    await self.liveness.publish()
                log.info("experiment assigned", experiment=key, gpus=a.gpu_indices, runtime=a.deployment_mode)
            case ev.ExperimentCancelRequested() as c:
                key = running_key(c.task, c.n, c.attempt)
                if t := self.running.get(key):
                    log.info("cancelling experiment", experiment=key, reason=c.reason)
                    await asyncio.sleep(0)  # a task cancelled before it ever ran would not report anything
                    t.cancel()
            case ev.HostDrainRequested() | ev.HostRemoved():
                if not self.draining:
                    why = "host removed from the fleet" if isinstance(d.event, ev.HostRemoved) else "drain requested"
                    log.info(f"{why}: taking no new experiments", host=self.host, running=len(self.running))
                self.draining = True
                with contextlib.suppress(Exception):
                    await self.liveness.publish()
                await self._maybe_drained()
            case _:
                pass

    async def _refuse(self, js, a: ev.ExperimentAssigned, seq: int, why: str) -> None:
        e = ev.ExperimentFailed(
            id=ev.exp_id(a.task, a.n, a.attempt, "failed"), task=a.task, n=a.n, attempt=a.attempt, host=self.host,
            kind="launch_error", stage="launch", retryable=True, message=why,
        )
        with contextlib.suppress(Exception):
            await Writer(js, a, seq).append("failed", e)

    async def _maybe_drained(self) -> None:
        if self.draining and not self.running and not self.drained_sent:
            e = ev.HostDrained(id=f"host.{self.host}.{self.instance}.drained", host=self.host, instance=self.instance)
            await bus.append(self.js, subj.host(self.host, "drained"), e)
            self.drained_sent = True
            log.info("host drained", host=self.host)

    async def _done(self, key: str) -> None:
        self.running.pop(key, None)
        self.attempts.pop(key, None)
        with contextlib.suppress(Exception):
            await self.liveness.publish()
        with contextlib.suppress(Exception):
            await self._maybe_drained()

    def _task_gone(self, key: str, t: asyncio.Task) -> None:
        """Safety net: an attempt task that ended without its own bookkeeping (it never ran) frees its slot."""
        if self.running.get(key) is t:
            self.running.pop(key, None)
            self.attempts.pop(key, None)
            log.warning("experiment task ended without finishing its attempt", experiment=key)

    # --- fencing (docs/fencing.md) -----------------------------------------------------------------

    async def _holds(self, key: str) -> bool:
        """Whether this runner may still speak for attempt `key` (publish its output): waits while it
        is unsure of its host (after a pause), and says no once the attempt was taken from it."""
        while self.liveness.uncertain() and not self.stop.is_set():
            if not self._owns(key):
                return False
            self.liveness.beat.set()
            await asyncio.sleep(0.05)
        return self._owns(key) and not self.liveness.uncertain()

    def _owns(self, key: str) -> bool:
        run = self.attempts.get(key)
        return run is not None and run.owned and not self.liveness.taken_over

    async def _fence(self) -> None:
        """The key expired under this instance: settle which attempts are still ours (stopping the
        others' engines), remove engines nobody owns, then hold the host again with that truth."""
        kept, fenced_keys = await fencing.sort_out(self.attempts, self.running, self.ctx.shutdown_reason)
        await self._reap()
        self.unaccounted = await fencing.scan(self.runtimes, self.host, set(self.running))
        away = self.liveness.unconfirmed_s()
        rev = await self.liveness.rejoin()
        returned = ev.HostReturned(
            id=f"host.{self.host}.{self.instance}.returned.{rev}", host=self.host, instance=self.instance, kept=kept, fenced=fenced_keys,
            unaccounted=sorted(self.unaccounted), draining=self.draining, away_s=round(away, 3),
        )
        log.warning("holding the host again after its liveness key expired", host=self.host, kept=len(kept), fenced=len(fenced_keys),
                    unaccounted=len(self.unaccounted), away_s=round(away, 1))  # fmt: skip
        if self.returning is not None:
            self.returning.cancel()
        self.returning = asyncio.create_task(self._write_returned(returned))

    async def _write_returned(self, e: ev.HostReturned) -> None:
        """host.returned, however long NATS takes to take it (its id makes every retry safe), beside the heartbeat."""
        delay = 0.5
        while not self.stop.is_set():
            try:
                await bus.append(self.js, subj.host(self.host, "returned"), e, retries=2)
                return
            except Exception as err:
                log.warning("host.returned not written yet; trying again", error=repr(err))
                await wait_event(self.stop, delay)
                delay = min(delay * 2, 10.0)

    async def _refresh(self) -> None:
        """After each renewal: what runs here that no attempt of ours owns (the next renewal says it)."""
        if not self.liveness.expired:
            self.unaccounted = await fencing.scan(self.runtimes, self.host, set(self.running))

    async def _stopped(self, js) -> None:
        """A clean stop, once the attempts are accounted for: `host.stopped`, so the scheduler does not take it for a loss."""
        if self.liveness.taken_over:
            return
        e = ev.HostStopped(id=f"host.{self.host}.{self.instance}.stopped", host=self.host, instance=self.instance, reason="asked to stop")
        try:
            await bus.append(js, subj.host(self.host, "stopped"), e, retries=1)
            log.info("host stopped", host=self.host)
        except Exception as err:
            log.warning("host.stopped not written; the scheduler will see the host lost", error=repr(err))

    async def _shutdown(self) -> None:
        for key, t in list(self.running.items()):
            self.ctx.shutdown_reason[key] = "shutdown"
            t.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)


async def run(settings: Settings, *, stop: asyncio.Event, runner: RunnerSettings | None = None) -> None:
    await Runner(settings, runner or RunnerSettings.from_env()).run(stop)
