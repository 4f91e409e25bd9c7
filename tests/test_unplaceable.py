"""An experiment no host can fit, end to end: `autotune submit` warns which configurations the live fleet
cannot run; while the experiment waits, `autotune task`, `autotune experiments` and the read side say
why; after the grace (AUTOTUNE_UNPLACEABLE_GRACE_S) it fails as `unplaceable` and the task finishes
with the configurations that fit. Real scheduler, runner (2 simulated GPUs), projector and CLI processes."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from autotune import reads
from autotune.runner.settings import RunnerSettings
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from tests.helpers import events_of, scheduler_and_runner, small_spec, task_finished
from tests.test_cli import cli  # noqa: F401 - the fixture: a projector on its own thread and the CLI

REASON = "needs 4 GPUs on one host; the largest matching host has 2"


async def until(check, timeout: float = 30.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        got = await check()
        if got:
            return got
        if loop.time() > end:
            raise AssertionError("timed out")
        await asyncio.sleep(0.2)


@pytest.mark.long
async def test_an_unplaceable_experiment_says_why_then_fails_and_the_task_finishes(settings, js, nc, cli, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("AUTOTUNE_UNPLACEABLE_GRACE_S", "10")
    async with scheduler_and_runner(settings, RunnerSettings(host="two", simulate="2xH100", time_scale=50)):
        await until(lambda: _host_seen(nc, js))
        spec = small_spec("too-big", parameters={"mem-fraction-static": [0.8], "max-running-requests": [8]},
                          parallel_config={"tp": [4, 2]}, optimization={"max_iterations": 2, "max_parallel": 1})  # fmt: skip
        path = tmp_path / "too-big.yaml"
        path.write_text(yaml.safe_dump(spec))
        r = await cli("submit", str(path))
        assert "cannot run 1 of 2 configurations" in r.stderr and f"4 GPUs, 1 configuration (e.g. tp=4): {REASON}" in r.stderr, r.stderr
        task = "too-big"
        waiting = await until(lambda: _waiting(nc, task))
        assert [(w.n, w.gpus, w.reason, w.fits) for w in waiting] == [(0, 4, REASON, False)]
        out = (await cli("task", task)).stdout
        assert f"experiment 0 (4 GPUs): {REASON}" in out and "fails as unplaceable" in out, out
        out = (await cli("experiments", task)).stdout
        assert "needs 4 GPUs" in out, out
        final = await task_finished(js, task, timeout=90)
    assert isinstance(final, ev.TaskCompleted) and final.best_experiment == 1, final
    history = [e for _, e in await events_of(js, subj.task_all(task))]
    (failed,) = [e for e in history if isinstance(e, ev.ExperimentFailed)]
    assert failed.n == 0 and failed.kind == "unplaceable" and REASON in failed.message and not failed.retryable
    assert not [e for e in history if isinstance(e, ev.ExperimentAssigned) and e.n == 0]  # never placed
    assert len([e for e in history if isinstance(e, ev.ExperimentWaiting)]) == 1  # said once, not every round
    page = await reads.list_experiments(nc, task, min_seq=await _last(js, task))
    row = next(r for r in page.items if r["n"] == 0)
    assert row["status"] == "failed" and row["failure_kind"] == "unplaceable" and row["waiting_reason"] == REASON


async def _host_seen(nc, js) -> bool:
    try:
        return any(h.alive for h in await reads.list_hosts(nc, js))
    except Exception:
        return False


async def _waiting(nc, task: str):
    try:
        return (await reads.task_detail(nc, task)).waiting
    except reads.NotFound:
        return []


async def _last(js, task: str) -> int:
    from autotune.shared import bus

    return await bus.last_seq(js, subj.task_all(task))
