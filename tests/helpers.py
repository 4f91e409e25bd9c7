"""Test helpers: run services in-process against the per-test nats-server, wait for events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.spec import TaskSpec, spec_from_obj
from autotune.shared import bus, commands

GOLDEN = Path(__file__).parent / "golden"


def golden(tag: str, **over) -> ev.Event:
    """The golden sample of event type `tag` (tests/golden/<tag>.json), stamped now, with `over` replacing fields."""
    raw = {**json.loads((GOLDEN / f"{tag}.json").read_text()), "at": datetime.now(UTC).isoformat(), **over}
    return ev.decode(json.dumps(raw).encode())


def spec_of(**fields) -> TaskSpec:
    """A parsed spec with only the fields a test is about (task `t`, a Llama model, the rest defaults)."""
    return spec_from_obj({"task_name": "t", "model": "meta-llama/Llama-3.1-8B", **fields})


def small_spec(name: str = "slice", **over) -> dict:
    spec = {
        "task_name": name,
        "model": {"id_or_path": "meta-llama/Llama-3.1-8B-Instruct"},
        "base_runtime": "sglang",
        "deployment_mode": "simulated",
        "gpu_type": "H100",
        "parameters": {"mem-fraction-static": [0.8, 0.88], "max-running-requests": [8, 64]},
        "optimization": {"strategy": "grid_search", "objective": "maximize_throughput", "max_iterations": 4, "timeout_per_iteration": 120, "max_parallel": 2},
        "benchmark": {"traffic_scenarios": ["D(128,32)"], "num_concurrency": [4], "max_requests_per_iteration": 12, "max_time_per_iteration": 1, "warmup_requests": 1},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(spec.get(k), dict):
            spec[k] = {**spec[k], **v}
        else:
            spec[k] = v
    return spec


async def submit(js, raw: dict, **kw) -> str:
    task = (await commands.submit_task(js, spec_from_obj(raw), **kw)).task
    return task


async def wait_for(js, subject: str, pred: Callable[[ev.Event], bool], timeout: float = 90.0) -> ev.Event:
    """The first event on `subject` (from the start of the log) that satisfies `pred`."""

    async def scan() -> ev.Event:
        async for d in bus.replay(js, subject):
            if pred(d.event):
                return d.event
        raise AssertionError("unreachable")

    return await asyncio.wait_for(scan(), timeout)


async def task_finished(js, task: str, timeout: float = 120.0, logs: tuple[Path, ...] = ()) -> ev.Event:
    """The task's terminal event. If it does not come, fail with the task's events and the tails of
    `logs` (the services' output files), so that a run that cannot be repeated still says what happened."""
    try:
        return await wait_for(js, subj.task_all(task), lambda e: isinstance(e, ev.TERMINAL_TASK), timeout)
    except TimeoutError:
        lines = [f"{e.at:%H:%M:%S.%f} {s} {ev.tag_of(type(e))}" for s, e in await events_of(js, subj.task_all(task))]
        for p in logs:
            tail = p.read_text(errors="replace").splitlines()[-40:] if p.exists() else ["(no file)"]
            lines += [f"--- {p.name}, last lines:", *tail]
        raise AssertionError(f"task {task} did not end within {timeout} s. Its events:\n" + "\n".join(lines)) from None


async def events_of(js, subject: str) -> list[tuple[str, ev.Event]]:
    return [(d.subject, d.event) async for d in bus.replay(js, subject, follow=False)]


class Services:
    """Start service coroutines as tasks; stop them all at the end (each with its own stop event)."""

    def __init__(self) -> None:
        self.items: list[tuple[asyncio.Event, asyncio.Task]] = []

    def start(self, factory: Callable[[asyncio.Event], object], name: str = "") -> asyncio.Event:
        stop = asyncio.Event()
        self.items.append((stop, asyncio.create_task(factory(stop), name=name)))  # type: ignore[arg-type]
        return stop

    async def stop_all(self, timeout: float = 30.0) -> None:
        for stop, _ in self.items:
            stop.set()
        tasks = [t for _, t in self.items]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            if not t.cancelled() and t.exception() and not isinstance(t.exception(), asyncio.CancelledError):
                raise t.exception()  # type: ignore[misc]


@contextlib.asynccontextmanager
async def scheduler_and_runner(settings, runner) -> AsyncIterator[Services]:
    """A scheduler and one runner (RunnerSettings `runner`) run in-process for the block, stopped at its end."""
    from autotune.runner.service import run as runner_run
    from autotune.scheduler.service import run as scheduler_run

    svc = Services()
    svc.start(lambda stop: scheduler_run(settings, stop=stop), "scheduler")
    svc.start(lambda stop: runner_run(settings, stop=stop, runner=runner), "runner")
    try:
        yield svc
    finally:
        await svc.stop_all()


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group `proc` leads (started with start_new_session), SIGKILL it after `grace_s`, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
