"""One experiment attempt on this host: launch → ready → benchmark → score → tear down, always.

The runner is the single writer of the attempt's events once it has been assigned (writer.py): when
the scheduler has meanwhile re-planned the experiment, the server refuses the append and the runner
stops the engine instead of writing over history.

The terminal event (completed / failed / cancelled) is appended only after the engine is stopped and
its last log lines are flushed: when the scheduler reads it, the GPUs are free again.

Output is fenced too: log lines are published only while the attempt is this runner's (`Context.holds`
waits while the runner is unsure of its host, after a pause); once the attempt was taken from it, the
engine's remaining lines are dropped, never shown as the attempt's live output.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import nats.errors

from autotune.runner.engine_metrics import EngineScraper
from autotune.runner.failures import EngineExited, Failure, classify_exit, error_tail, lost_connections
from autotune.runner.runtimes import Handle, Launch, Runtime, simulated_argv
from autotune.runner.telemetry import TelemetryWindow
from autotune.runner.writer import Superseded, Writer
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.liveness import running_key
from autotune.schemas.metrics import ExperimentMetrics, RunMetrics
from autotune.schemas.spec import SpecError, TaskSpec, is_cpu_serving, spec_from_obj
from autotune.shared.log import get_logger
from autotune.shared.net import free_port

log = get_logger("runner")


@dataclass
class Context:
    js: object
    host: str
    instance: str
    runtimes: dict[str, Runtime]
    time_scale: float = 1.0
    startup_timeout_s: float = 900.0
    engine_host: str = "127.0.0.1"
    sim_seed: int = 0
    # GPU indices of the lease that something else is using (NVML); may be sync or async
    gpus_busy: Callable[[list[int]], Awaitable[list[int]] | list[int]] = lambda _: []
    on_done: Callable[[str], Awaitable[None] | None] | None = None
    shutdown_reason: dict[str, str] = field(default_factory=dict)
    real_gpus: bool = False  # NVML saw this host's GPUs (device requests, busy checks)
    nc: object | None = None  # core NATS for the telemetry window (default: the JetStream context's)
    health_interval_s: float = 5.0  # during the benchmark: how often to probe /health
    health_timeout_s: float = 10.0
    health_failures: int = 3  # consecutive failed probes, engine still alive → `unhealthy`
    stop_grace_s: float = 10.0
    engine_metrics_interval_s: float = 1.0  # during the benchmark: how often to scrape the engine's /metrics
    # whether this runner may still speak for the attempt (key): waits while it is unsure of its host
    holds: Callable[[str], Awaitable[bool]] | None = None


async def run_attempt(ctx: Context, a: ev.ExperimentAssigned, assigned_seq: int) -> None:
    await AttemptRun(ctx, a, assigned_seq).run()


class AttemptRun:
    """One attempt as this runner executes it: launch, health, benchmark, score, teardown, and the
    events it writes as the attempt's only writer."""

    def __init__(self, ctx: Context, a: ev.ExperimentAssigned, assigned_seq: int) -> None:
        self.ctx, self.a = ctx, a
        self.key = running_key(a.task, a.n, a.attempt)
        self.w = Writer(ctx.js, a, assigned_seq)
        self.ids = (a.task, a.n, a.attempt)
        self.base = dict(task=a.task, n=a.n, attempt=a.attempt, host=ctx.host)
        self.t0 = time.monotonic()
        self.handle: Handle | None = None
        self.pump: asyncio.Task | None = None
        self.log_seq = 0
        self.runner_lines: list[str] = []
        self.startup_s: float | None = None
        self.stage = "launch"
        self.prompts: list[str] | None = None
        self.scraper: EngineScraper | None = None
        self.owned = True  # False once the attempt was taken from this runner: its output is then late
        self.late_lines = 0

    def note(self, line: str) -> None:
        self.runner_lines.append(f"{ev.now().isoformat(timespec='milliseconds')} {line}")

    async def run(self) -> None:
        outcome: tuple[str, Callable[[], ev.Event]] | None = None
        cancelled: BaseException | None = None
        try:
            outcome = await self._execute()
        except Superseded as e:
            self.owned = False
            log.warning("experiment taken from this runner; stopping its engine", experiment=self.key, detail=str(e))
        except asyncio.CancelledError as e:
            cancelled = e
            reason = self.ctx.shutdown_reason.pop(self.key, "cancel")
            if reason == "fenced":  # not ours any more (the runner's fence): stop the engine, write nothing
                self.owned = False
            elif reason == "cancel":
                self.note("cancel requested: stopping the engine")
                outcome = ("cancelled", lambda: ev.ExperimentCancelled(id=ev.exp_id(*self.ids, "cancelled"), **self.base, reason="cancel requested"))
            else:
                self.note("the runner is stopping: stopping the engine")
                outcome = self._failed(Failure("runner_restarted", "the runner was stopped while this experiment was running"))
        except nats.errors.TimeoutError as e:  # NATS did not answer (no stream leader for longer than we waited): not the engine's fault
            outcome = self._failed(Failure("launch_error" if self.stage == "launch" else "benchmark_error", f"NATS did not answer: {e!r}", retryable=True))
        except TimeoutError:
            kind = "startup_timeout" if self.stage in ("launch", "startup") else "timeout"
            outcome = self._failed(Failure(kind, f"no result within {self.a.timeout_s:.0f}s ({self.stage})"))
        except Failure as f:
            outcome = self._failed(f)
        except EngineExited as e:
            outcome = self._failed(self._classify_exit(e))
        except Exception as e:  # our own code or a runtime API failed: record it, never leave it "running"
            log.error("experiment failed", exc=True, experiment=self.key)
            kind = "benchmark_error" if self.stage == "benchmark" else "launch_error"
            # a runtime that could not start the engine (daemon or API down) is infrastructure: retry elsewhere
            outcome = self._failed(Failure(kind, f"{type(e).__name__}: {e}", retryable=self.stage == "launch"))
        try:
            await _uncancellable(self._finish(outcome))
        except asyncio.CancelledError as e:
            cancelled = cancelled or e
        if cancelled is not None:
            raise cancelled

    async def _execute(self) -> tuple[str, Callable[[], ev.Event]]:
        ctx, a = self.ctx, self.a
        try:
            spec = spec_from_obj(a.spec)
        except SpecError as e:
            raise Failure("launch_error", f"this runner cannot read the task spec: {e}", retryable=False) from None
        # a redelivered or stale assignment: the experiment moved on (or was cancelled) before we began
        # through a stream leader election (a NATS node died): the read is retried, not taken for the engine's slowness
        for seq, newer in await self.w.newer(asyncio.get_running_loop().time() + 60.0):
            if isinstance(newer, ev.ExperimentCancelRequested) and newer.attempt == a.attempt:
                self.w.last_seq = seq
                raise asyncio.CancelledError
            raise Superseded(f"experiment {a.task}/{a.n} moved on before it started: {type(newer).__name__} at seq {seq}")
        runtime = ctx.runtimes.get(a.deployment_mode)
        if runtime is None:
            raise Failure("launch_error", f"runtime `{a.deployment_mode}` is not available on {ctx.host} (it offers {', '.join(sorted(ctx.runtimes))})", retryable=True)
        real = ctx.real_gpus and not a.simulated
        # Kubernetes' device plugin picks the GPUs and keeps them exclusive: NVML indices say nothing there
        if real and not runtime.leases_gpus_itself and (busy := await _maybe_await(ctx.gpus_busy(list(a.gpu_indices)))):
            raise Failure("gpus_busy", f"GPUs {busy} are in use by processes autotune did not start", retryable=True)
        from autotune.runner.launch import cluster_launch, replay_prompts
        from autotune.shared.expand import engine_command, image_for

        self.prompts = await replay_prompts(ctx.js, a, spec, ctx.host, note=self.note)  # before any engine starts
        port = free_port()
        bind = runtime.bind_host or ctx.engine_host
        cluster = cluster_launch(spec)  # storage claim, OME model and runtime; the model path they imply
        argv = engine_command(spec, {**cluster.served_name, **dict(a.parameters)}, port=port, host=bind, model_path=cluster.model_path)
        env: dict[str, str] = dict(spec.engine_env)
        device = "cpu" if is_cpu_serving(spec.gpu_type) and not a.simulated else ""
        if a.simulated or runtime.always_simulate:
            env.update(
                AUTOTUNE_SIM_GPU_TYPE=a.gpu_type.removeprefix("Simulated ").removeprefix("NVIDIA ") or "H100",
                AUTOTUNE_SIM_GPU_COUNT=str(max(1, len(a.gpu_indices))),
                AUTOTUNE_SIM_TIME_SCALE=str(ctx.time_scale),
                AUTOTUNE_SIM_SEED=str(ctx.sim_seed + a.n),
            )
        launch = Launch(
            key=self.key, task=a.task, n=a.n, attempt=a.attempt, host=ctx.host, instance=ctx.instance, argv=argv, engine=spec.engine,
            image=image_for(spec), model=spec.model_id, hf_token=getattr(spec.model, "hf_token", None), port=port,
            gpu_indices=list(a.gpu_indices), gpu_uuids=list(a.gpu_uuids), real_gpus=real, simulated=a.simulated, env=env,
            ome=spec.deployment_mode == "ome", image_pinned=spec.runtime_image_tag is not None, storage=cluster.storage,
            ome_model=cluster.ome_model, ome_runtime=cluster.ome_runtime, ome_resources=cluster.ome_resources,
            device=device,
        )
        async with asyncio.timeout(a.timeout_s):
            self.note(f"launching on {runtime.name}: GPUs {list(a.gpu_indices)}, port {port}")
            launching = asyncio.ensure_future(runtime.launch(launch))
            try:
                self.handle = await asyncio.shield(launching)
            except asyncio.CancelledError:  # cancelled or timed out mid-launch: let it finish, so teardown removes it
                with contextlib.suppress(Exception):
                    self.handle = await _settled(launching)
                raise
            self.pump = asyncio.create_task(self._pump_logs())
            command = getattr(self.handle, "command", None) or (simulated_argv(argv) if a.simulated else argv)
            await self.w.append(
                "started",
                ev.ExperimentStarted(
                    id=ev.exp_id(*self.ids, "started"), **self.base, instance=ctx.instance, runtime=runtime.name, command=command,
                    handle=self.handle.ident, device=device, env=dict(getattr(self.handle, "env", None) or env),
                ),
            )
            self.stage = "startup"
            self.startup_s = await _wait_ready(self.handle, min(ctx.startup_timeout_s, a.timeout_s))
            await self.w.append("ready", ev.ExperimentReady(id=ev.exp_id(*self.ids, "ready"), **self.base, startup_s=self.startup_s))
            self.stage = "benchmark"
            self.scraper = EngineScraper(self.handle.base_url, interval_s=ctx.engine_metrics_interval_s)
            async with TelemetryWindow(ctx.nc or getattr(ctx.js, "_nc", None), ctx.host, list(a.gpu_indices)) as window, self.scraper:
                metrics = await self._benchmark(spec)
            telemetry = window.summary()
            engine = self.scraper.summary()
        from autotune.shared.scoring import score_experiment

        s = score_experiment(spec, metrics)
        duration = time.monotonic() - self.t0
        return "completed", lambda: ev.ExperimentCompleted(
            id=ev.exp_id(*self.ids, "completed"), **self.base, metrics=metrics, score=s.value, objective_value=s.objective_value,
            objectives=list(s.objectives), slo_met=s.slo_met, slo_violations=dict(s.violations), hard_fail=s.hard_fail,
            startup_s=self.startup_s or 0.0, duration_s=duration, telemetry=telemetry, engine=engine,
        )

    def _classify_exit(self, e: EngineExited) -> Failure:
        h = self.handle
        return classify_exit(list(h.tail) if h else [], h.exit_reason if h else "", e)

    def _failed(self, f: Failure) -> tuple[str, Callable[[], ev.Event]]:
        stage = self.stage
        self.note(f"experiment failed: {f.kind}: {f.message}")

        def build() -> ev.Event:  # after teardown: the tail then holds the engine's last lines
            return ev.ExperimentFailed(
                id=ev.exp_id(*self.ids, "failed"), **self.base, kind=f.kind, stage=stage, retryable=f.retryable, message=f.message,
                log_tail=error_tail(list(self.handle.tail)) if self.handle else [], startup_s=self.startup_s,
                duration_s=time.monotonic() - self.t0, metrics=f.metrics,
                engine=self.scraper.summary() if self.scraper is not None else ev.EngineMetricsSummary(),
            )

        return "failed", build

    async def _finish(self, outcome: tuple[str, Callable[[], ev.Event]] | None) -> None:
        try:
            await self._teardown()
            if outcome is not None:
                what, build = outcome
                try:
                    await self.w.append(what, build())
                except Superseded as e:
                    self.owned = False
                    log.warning("the experiment moved on; its outcome is not recorded", experiment=self.key, outcome=what, detail=str(e))
        except Exception:
            log.error("could not finish the experiment cleanly", exc=True, experiment=self.key)
        finally:
            if self.late_lines:
                log.warning("late output dropped: the attempt was no longer this runner's", experiment=self.key, lines=self.late_lines)
            if self.ctx.on_done:
                r = self.ctx.on_done(self.key)
                if r is not None:
                    await r

    async def _teardown(self) -> None:
        if self.handle is not None:
            try:
                await self.handle.stop(self.ctx.stop_grace_s)
            except Exception:
                log.error("engine teardown failed; the reaper removes what is left", exc=True, experiment=self.key)
        if self.pump is not None and self.handle is not None:
            try:
                await asyncio.wait_for(self.handle.lines.put(None), 5)  # type: ignore[arg-type]  # end marker
                await asyncio.wait_for(self.pump, 15)
            except (TimeoutError, Exception):
                self.pump.cancel()
        if self.runner_lines:
            await self._publish_lines(self.runner_lines, stream="runner")

    async def _benchmark(self, spec: TaskSpec) -> ExperimentMetrics:
        from autotune.bench import BenchmarkStopped, run_benchmark

        a, ctx, handle = self.a, self.ctx, self.handle
        assert handle is not None
        runs_total = len(spec.benchmark.traffic_scenarios) * len(spec.benchmark.num_concurrency)
        done = 0

        async def on_run(run: RunMetrics) -> None:
            nonlocal done
            await self.w.append("progress", ev.ExperimentProgress(id=ev.exp_id(*self.ids, f"progress-{done}"), **self.base, run_index=done, runs_total=runs_total, run=run))
            done += 1

        stop = asyncio.Event()
        model, gpus, time_scale = spec.benchmark.model_name or spec.model_id, max(1, len(a.gpu_indices)), ctx.time_scale if a.simulated else 1.0
        if spec.benchmark.driver == "genai-bench":  # the external tool measures; its files become the same metrics
            from autotune.bench.genai_bench import run_genai_bench

            if self.prompts:
                self.note("benchmark.driver genai-bench replays its own traffic scenarios: the task's dataset prompts are not sent")
            workdir = tempfile.TemporaryDirectory(prefix=f"autotune-genai-{a.task}-{a.n}-")
            measuring = run_genai_bench(
                handle.base_url, model=model, bench=spec.benchmark, workdir=workdir.name, engine=spec.engine, slo=spec.slo, gpus=gpus,
                gpu_type=a.gpu_type or None, time_scale=time_scale, on_run=on_run, on_log=self.note, stop=stop,
            )
        else:
            workdir = None
            measuring = run_benchmark(
                handle.base_url, model=model, bench=spec.benchmark, slo=spec.slo, gpus=gpus, time_scale=time_scale, on_run=on_run, seed=a.n,
                stop=stop, prompts=self.prompts,
            )
        bench = asyncio.create_task(measuring)
        exited = asyncio.create_task(handle.exited.wait())
        unhealthy = asyncio.create_task(_watch_health(handle, ctx))
        try:
            await asyncio.wait([bench, exited, unhealthy], return_when=asyncio.FIRST_COMPLETED)
            if bench.done() and not bench.exception():
                result = bench.result()
                if lost_connections(result):  # requests failed fast because the server went away: did it?
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(handle.exited.wait(), 3)
                if handle.exited.is_set():  # an engine that died mid-benchmark crashed, whatever the client counted
                    raise EngineExited(handle.exit_code, "benchmark", result)
                return result
            if bench.done():
                return bench.result()  # raises the client's own error
            stop.set()  # the engine is gone or not answering: keep what finished
            partial = None
            try:
                await asyncio.wait_for(asyncio.shield(bench), 5)
            except BenchmarkStopped as s:
                partial = s.partial
            except Exception:
                pass
            if exited.done():
                with contextlib.suppress(TimeoutError):  # its last lines, for the classification
                    await asyncio.wait_for(handle.exited.wait(), 2)
                raise EngineExited(handle.exit_code, "benchmark", partial)
            raise Failure("unhealthy", f"the engine stopped answering /health for {ctx.health_failures} probes in a row while it was running", retryable=False, metrics=partial)
        finally:
            for t in (bench, exited, unhealthy):
                t.cancel()
            await asyncio.gather(bench, exited, unhealthy, return_exceptions=True)
            if workdir is not None:
                workdir.cleanup()

    async def _pump_logs(self) -> None:
        """Engine output → autotune.log.<task>.<n>, in batches of up to 200 lines or every 0.5 s.

        Teardown queues an end marker after the engine's last line, so everything is flushed."""
        handle = self.handle
        assert handle is not None
        ended = False
        while not ended:
            first = await handle.lines.get()
            if first is None:
                return
            lines = [first]
            deadline = time.monotonic() + 0.5
            while len(lines) < 200:
                try:
                    line = handle.lines.get_nowait() if not handle.lines.empty() else await asyncio.wait_for(handle.lines.get(), max(0.001, deadline - time.monotonic()))
                except TimeoutError:
                    break
                if line is None:
                    ended = True
                    break
                lines.append(line)
            await self._publish_lines(lines)

    async def _publish_lines(self, lines: list[str], stream: str = "engine") -> None:
        a = self.a
        if not (self.owned and (self.ctx.holds is None or await self.ctx.holds(self.key))):
            self.late_lines += len(lines)
            return
        e = ev.LogLines(id=ev.exp_id(a.task, a.n, a.attempt, f"log-{self.log_seq}"), task=a.task, n=a.n, attempt=a.attempt, host=self.ctx.host, stream=stream, seq=self.log_seq, lines=lines)
        self.log_seq += 1
        for attempt in range(3):  # logs are best effort, but the last lines matter: retry a little
            try:
                await self.ctx.js.publish(subj.log(a.task, a.n), ev.encode(e), headers={"Nats-Msg-Id": e.id})  # type: ignore[attr-defined]
                return
            except Exception as err:
                if attempt == 2:
                    log.warning("log lines not published", experiment=self.key, error=repr(err))
                await asyncio.sleep(0.2)


async def _maybe_await(v):
    return await v if asyncio.iscoroutine(v) or isinstance(v, asyncio.Future) else v


async def _settled(t: asyncio.Future):
    """t's result once it is done, however often we are cancelled meanwhile (the caller re-raises its cancel)."""
    while not t.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(t)
    return t.result()


async def _uncancellable(coro) -> None:
    """Run teardown to its end even if the attempt is cancelled again meanwhile; re-raise the cancel afterwards."""
    t = asyncio.ensure_future(coro)
    cancelled = False
    while not t.done():
        try:
            await asyncio.shield(t)
        except asyncio.CancelledError:
            if t.done():
                break
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    t.result()


async def _wait_ready(handle: Handle, timeout_s: float) -> float:
    """Until the runtime calls it ready and /health (or /v1/models) answers 200; the engine exiting first is a failure."""
    import httpx

    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            if handle.exited.is_set():
                raise EngineExited(handle.exit_code, "startup")
            if await handle.ready():
                for path in ("/health", "/v1/models"):
                    with contextlib.suppress(httpx.HTTPError):
                        r = await client.get(handle.base_url + path)
                        if r.status_code == 200:
                            return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                raise Failure("startup_timeout", f"the engine did not answer /health within {timeout_s:.0f}s", retryable=False)
            await asyncio.sleep(0.2)


async def _watch_health(handle: Handle, ctx: Context) -> None:
    """Returns when the engine, still running, failed `health_failures` probes in a row."""
    import httpx

    misses = 0
    async with httpx.AsyncClient(timeout=ctx.health_timeout_s) as client:
        while True:
            await asyncio.sleep(ctx.health_interval_s)
            try:
                r = await client.get(handle.base_url + "/health")
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            misses = 0 if ok else misses + 1
            if misses >= ctx.health_failures and not handle.exited.is_set():
                return


__all__ = ["AttemptRun", "Context", "Failure", "run_attempt", "simulated_argv"]
