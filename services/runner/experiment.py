"""One experiment attempt on this host: launch → ready → benchmark → score → tear down, always.

The runner is the single writer of the attempt's events once it has published `started`: every
append carries the last sequence it saw on the experiment. When the scheduler has meanwhile
re-planned the experiment (this host was presumed dead), the server refuses the append and the
runner stops the engine instead of writing over history. A cancel request is the one newer event
it accepts and acts on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from autotune.runner.runtimes import LABEL_EXPERIMENT, LABEL_HOST, LABEL_INSTANCE, Handle
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.liveness import running_key
from autotune.schemas.metrics import RunMetrics
from autotune.schemas.spec import SpecError, TaskSpec, spec_from_obj
from autotune.shared import bus
from autotune.shared import log as logging

log = logging.get("runner")

OOM_MARKERS = ("out of memory", "outofmemoryerror", "cuda error", "cublas_status_alloc_failed", "not enough memory")


class Superseded(Exception):
    """Someone else wrote to this experiment: it is no longer ours to run."""


class EngineExited(Exception):
    def __init__(self, code: int | None, stage: str) -> None:
        self.code, self.stage = code, stage


class Writer:
    """Appends an attempt's events with the expected last sequence of its experiment."""

    def __init__(self, js, a: ev.ExperimentAssigned, last_seq: int) -> None:
        self.js, self.a, self.last_seq = js, a, last_seq
        self.filter = subj.experiment_all(a.task, a.n)
        self.cancel_seen = False

    async def append(self, what: str, event: ev.Event) -> None:
        subject = subj.experiment(self.a.task, self.a.n, what)
        for _ in range(10):
            try:
                ack = await bus.append(self.js, subject, event, expect_seq=self.last_seq, expect_filter=self.filter)
                self.last_seq = ack.seq
                return
            except bus.StaleWrite:
                for seq, newer in await bus.messages_after(self.js, self.filter, self.last_seq):
                    if isinstance(newer, ev.ExperimentCancelRequested) and newer.attempt == self.a.attempt:
                        self.cancel_seen = True
                        self.last_seq = seq
                    elif newer is not None and getattr(newer, "id", None) == event.id:
                        self.last_seq = seq  # our own write landed before its ack was lost
                        return
                    else:
                        raise Superseded(f"experiment {self.a.task}/{self.a.n} moved on: {type(newer).__name__} at seq {seq}") from None
        raise Superseded("could not append after repeated conflicts")


@dataclass
class Context:
    js: object
    host: str
    instance: str
    runtimes: dict[str, object]
    time_scale: float = 1.0
    startup_timeout_s: float = 900.0
    engine_host: str = "127.0.0.1"
    sim_seed: int = 0
    gpus_busy: Callable[[list[int]], list[int]] = lambda _: []
    on_done: Callable[[str], Awaitable[None] | None] | None = None
    shutdown_reason: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def simulated_argv(argv: list[str]) -> list[str]:
    """The engine's command line with the program swapped for the simulator; the flags stay as they are."""
    if argv[:3] == ["python3", "-m", "sglang.launch_server"]:
        return [sys.executable, "-m", "autotune.simulator", "sglang", *argv[3:]]
    if argv[:2] == ["vllm", "serve"]:
        return [sys.executable, "-m", "autotune.simulator", "vllm", "serve", *argv[2:]]
    raise ValueError(f"cannot simulate engine command {argv[:3]}")


async def run_attempt(ctx: Context, a: ev.ExperimentAssigned, assigned_seq: int) -> None:
    key = running_key(a.task, a.n, a.attempt)
    w = Writer(ctx.js, a, assigned_seq)
    ids = (a.task, a.n, a.attempt)
    base = dict(task=a.task, n=a.n, attempt=a.attempt, host=ctx.host)
    t0 = time.monotonic()
    handle: Handle | None = None
    pump: asyncio.Task | None = None
    startup_s: float | None = None
    stage = "launch"
    try:
        try:
            spec = spec_from_obj(a.spec)
        except SpecError as e:
            await w.append("failed", ev.ExperimentFailed(id=ev.exp_id(*ids, "failed"), **base, kind="launch_error", stage=stage, message=f"this runner cannot read the task spec: {e}"))
            return
        from autotune.shared.expand import engine_command

        port = free_port()
        argv = engine_command(spec, dict(a.parameters), port=port, host=ctx.engine_host)
        env: dict[str, str] = {}
        if a.simulated:
            argv = simulated_argv(argv)
            env.update(
                AUTOTUNE_SIM_GPU_TYPE=a.gpu_type.removeprefix("Simulated ").removeprefix("NVIDIA ") or "H100",
                AUTOTUNE_SIM_GPU_COUNT=str(max(1, len(a.gpu_indices))),
                AUTOTUNE_SIM_TIME_SCALE=str(ctx.time_scale),
                AUTOTUNE_SIM_SEED=str(ctx.sim_seed + a.n),
            )
        runtime = ctx.runtimes.get(a.deployment_mode)
        if runtime is None:
            await w.append("failed", ev.ExperimentFailed(id=ev.exp_id(*ids, "failed"), **base, kind="launch_error", stage=stage, retryable=True, message=f"runtime `{a.deployment_mode}` is not available on {ctx.host}"))
            return
        if busy := ctx.gpus_busy(a.gpu_indices):
            await w.append("failed", ev.ExperimentFailed(id=ev.exp_id(*ids, "failed"), **base, kind="gpus_busy", stage=stage, retryable=True, message=f"GPUs {busy} are in use by processes autotune did not start"))
            return
        await w.append("started", ev.ExperimentStarted(id=ev.exp_id(*ids, "started"), **base, instance=ctx.instance, runtime=runtime.name, command=argv))
        labels = {LABEL_HOST: ctx.host, LABEL_EXPERIMENT: key, LABEL_INSTANCE: ctx.instance}
        handle = await runtime.launch(argv, env=env, labels=labels, gpu_indices=a.gpu_indices, port=port)
        pump = asyncio.create_task(_pump_logs(ctx, a, handle))
        stage = "startup"
        async with asyncio.timeout(a.timeout_s):
            startup_s = await _wait_ready(handle, min(ctx.startup_timeout_s, a.timeout_s))
            await w.append("ready", ev.ExperimentReady(id=ev.exp_id(*ids, "ready"), **base, startup_s=startup_s))
            stage = "benchmark"
            metrics = await _benchmark(ctx, a, spec, handle, w, base)
        from autotune.shared.scoring import score_experiment

        s = score_experiment(spec, metrics)
        await w.append(
            "completed",
            ev.ExperimentCompleted(
                id=ev.exp_id(*ids, "completed"), **base, metrics=metrics, score=s.value, objective_value=s.objective_value,
                objectives=list(s.objectives), slo_met=s.slo_met, slo_violations=dict(s.violations), hard_fail=s.hard_fail,
                startup_s=startup_s or 0.0, duration_s=time.monotonic() - t0,
            ),
        )
    except Superseded as e:
        log.warning("experiment taken from this runner; stopping its engine", experiment=key, detail=str(e))
    except asyncio.CancelledError:
        reason = ctx.shutdown_reason.pop(key, "cancel")
        with contextlib.suppress(Superseded, Exception):
            if reason == "cancel":
                await w.append("cancelled", ev.ExperimentCancelled(id=ev.exp_id(*ids, "cancelled"), **base, reason="cancel requested"))
            else:
                await w.append("failed", ev.ExperimentFailed(id=ev.exp_id(*ids, "failed"), **base, kind="runner_restarted", stage=stage, retryable=True, message="the runner was stopped"))
        raise
    except TimeoutError:
        kind = "startup_timeout" if stage == "startup" else "timeout"
        await _fail(w, ids, base, kind, stage, f"no result within {a.timeout_s:.0f}s ({stage})", handle, startup_s, t0)
    except EngineExited as e:
        tail = "\n".join(handle.tail if handle else []).lower()
        kind = "oom" if any(m in tail for m in OOM_MARKERS) else "crashed"
        await _fail(w, ids, base, kind, e.stage, f"the engine exited with code {e.code} during {e.stage}", handle, startup_s, t0)
    except Exception as e:  # the benchmark or our own code failed: record it, never leave it "running"
        log.error("experiment failed", exc=True, experiment=key)
        await _fail(w, ids, base, "benchmark_error" if stage == "benchmark" else "launch_error", stage, f"{type(e).__name__}: {e}", handle, startup_s, t0)
    finally:
        if handle is not None:
            await handle.stop()
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if ctx.on_done:
            r = ctx.on_done(key)
            if r is not None:
                await r


async def _fail(w: Writer, ids, base, kind, stage, message, handle, startup_s, t0) -> None:
    with contextlib.suppress(Superseded):
        await w.append(
            "failed",
            ev.ExperimentFailed(
                id=ev.exp_id(*ids, "failed"), **base, kind=kind, stage=stage, retryable=kind in ev.RETRYABLE, message=message,
                log_tail=list(handle.tail)[-30:] if handle else [], startup_s=startup_s, duration_s=time.monotonic() - t0,
            ),
        )


async def _wait_ready(handle: Handle, timeout_s: float) -> float:
    """Poll /health (then /v1/models) until 200; the engine exiting first is a failure."""
    import httpx

    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            if handle.exited.is_set():
                raise EngineExited(handle.exit_code, "startup")
            for path in ("/health", "/v1/models"):
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(handle.base_url + path)
                    if r.status_code == 200:
                        return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError
            await asyncio.sleep(0.2)


async def _benchmark(ctx: Context, a: ev.ExperimentAssigned, spec: TaskSpec, handle: Handle, w: Writer, base: dict):
    from autotune.bench import run_benchmark

    runs_total = len(spec.benchmark.traffic_scenarios) * len(spec.benchmark.num_concurrency)
    done = 0

    async def on_run(run: RunMetrics) -> None:
        nonlocal done
        await w.append("progress", ev.ExperimentProgress(id=ev.exp_id(a.task, a.n, a.attempt, f"progress-{done}"), **base, run_index=done, runs_total=runs_total, run=run))
        done += 1

    bench = asyncio.create_task(
        run_benchmark(
            handle.base_url, model=spec.benchmark.model_name or spec.model_id, bench=spec.benchmark, slo=spec.slo,
            gpus=max(1, len(a.gpu_indices)), time_scale=ctx.time_scale if a.simulated else 1.0, on_run=on_run, seed=a.n,
        )
    )
    exited = asyncio.create_task(handle.exited.wait())
    try:
        await asyncio.wait([bench, exited], return_when=asyncio.FIRST_COMPLETED)
        if bench.done():
            return bench.result()
        raise EngineExited(handle.exit_code, "benchmark")
    finally:
        for t in (bench, exited):
            t.cancel()
        await asyncio.gather(bench, exited, return_exceptions=True)


async def _pump_logs(ctx: Context, a: ev.ExperimentAssigned, handle: Handle) -> None:
    """Engine output → autotune.log.<task>.<n>, in batches of up to 200 lines or every 0.5 s."""
    seq = 0
    subject = subj.log(a.task, a.n)
    while True:
        lines = [await handle.lines.get()]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                while len(lines) < 200:
                    lines.append(await handle.lines.get())
        e = ev.LogLines(id=ev.exp_id(a.task, a.n, a.attempt, f"log-{seq}"), task=a.task, n=a.n, attempt=a.attempt, host=ctx.host, seq=seq, lines=lines)
        with contextlib.suppress(Exception):
            await ctx.js.publish(subject, ev.encode(e), headers={"Nats-Msg-Id": e.id})  # type: ignore[attr-defined]
        seq += 1


__all__ = ["Context", "run_attempt", "simulated_argv", "os"]
