"""The spine, end to end through a real nats-server: submit → plan → run real engine (simulator)
processes → benchmark over HTTP → events → DuckDB projection → SQL."""

from __future__ import annotations

import asyncio
import json

import nats

from autotune.projector.service import run as projector_run
from autotune.runner.runtimes.local import labelled_processes
from autotune.runner.service import run as runner_run
from autotune.runner.settings import RunnerSettings
from autotune.scheduler.service import run as scheduler_run
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared import query as q
from tests.helpers import Services, events_of, small_spec, submit, task_finished


async def test_a_grid_task_runs_end_to_end(settings, js, tmp_path):
    seen: list[tuple[str, dict]] = []
    plain = await nats.connect(settings.nats_url)  # a plain subscriber, as any NATS client would be
    async def collect(msg) -> None:
        seen.append((msg.subject, json.loads(msg.data)))

    await plain.subscribe("autotune.>", cb=collect)
    svc = Services()
    svc.start(lambda stop: scheduler_run(settings, stop=stop), "scheduler")
    svc.start(lambda stop: projector_run(settings, stop=stop, db_path=str(tmp_path / "view.duckdb")), "projector")
    svc.start(lambda stop: runner_run(settings, stop=stop, runner=RunnerSettings(host="h1", simulate="2xH100", time_scale=50)), "runner")
    try:
        task = await submit(js, small_spec("slice"))
        final = await task_finished(js, task, timeout=150)
        assert isinstance(final, ev.TaskCompleted), final
        history = await events_of(js, f"autotune.task.{task}.>")
        completed = [e for _, e in history if isinstance(e, ev.ExperimentCompleted)]
        assert sorted(e.n for e in completed) == [0, 1, 2, 3]
        # two at a time on two GPUs of one host, never the same GPU twice at once
        assigned = [e for _, e in history if isinstance(e, ev.ExperimentAssigned)]
        assert all(len(a.gpu_indices) == 1 for a in assigned)
        best = min(completed, key=lambda e: e.score)
        assert final.best_experiment == best.n and final.best_score == best.score
        # the simulator's speed depends on the flags: not every configuration scores the same
        assert len({round(e.score, 3) for e in completed}) > 1
        for e in completed:
            assert e.metrics.requests == 12 and len(e.metrics.samples) == 12

        res = await q.sql(js._nc, "SELECT n, status, score FROM experiments WHERE task = ? ORDER BY score", [task], min_seq=None, timeout=20)
        for _ in range(50):
            if len(res.rows) == 4 and all(r[1] == "completed" for r in res.rows):
                break
            await asyncio.sleep(0.2)
            res = await q.sql(js._nc, "SELECT n, status, score FROM experiments WHERE task = ? ORDER BY score", [task])
        assert [r[0] for r in res.rows][0] == best.n
        # read-your-writes: the poll above saw the experiments finished, not yet the task.completed after them
        last = (await js.stream_info(subj.EVENTS_STREAM)).state.last_seq
        row = (await q.sql(js._nc, "SELECT status, best_n FROM tasks WHERE id = ?", [task], min_seq=last)).rows[0]
        assert tuple(row) == ("completed", best.n)

        subjects = {s for s, _ in seen}
        assert f"autotune.task.{task}.submitted" in subjects
        assert f"autotune.task.{task}.exp.0.assigned.h1" in subjects
        assert f"autotune.task.{task}.exp.0.completed" in subjects
        assert any(s.startswith(f"autotune.log.{task}.") for s in subjects)
        assert all("type" in payload and "id" in payload for s, payload in seen if not s.startswith("autotune.query."))
    finally:
        await svc.stop_all()
        await plain.close()
    assert [p for p, labels in labelled_processes() if labels.get("AUTOTUNE_LABEL_HOST") == "h1"] == []

