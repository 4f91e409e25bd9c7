"""One real tiny task through the HTTP API: scheduler, runner (engine simulator processes), GPU monitor
and projector, all running; the user submits with `?simulate=true` and reads everything back."""

from __future__ import annotations

import asyncio

import yaml
from litestar.testing import AsyncTestClient

from autotune.api.app import create_app
from autotune.gpumon.service import run as gpumon_run
from autotune.projector.service import run as projector_run
from autotune.runner.runtimes.local import labelled_processes
from autotune.runner.service import run as runner_run
from autotune.runner.settings import RunnerSettings
from autotune.scheduler.service import run as scheduler_run
from tests.fixtures.api_kit import AUTH, TOKEN, Background, answering, sse_events
from tests.helpers import small_spec


async def test_a_rehearsal_runs_end_to_end_through_the_api(settings, nc, tmp_path):
    async def stack(stop: asyncio.Event) -> None:
        await asyncio.gather(
            projector_run(settings, stop=stop, db_path=str(tmp_path / "view.duckdb")),
            scheduler_run(settings, stop=stop),
            runner_run(settings, stop=stop, runner=RunnerSettings(host="e2e", simulate="2xH100", time_scale=50)),
            gpumon_run(settings, stop=stop, host="e2e", simulate="2xH100", interval_s=0.2),
        )

    services = Background(stack)
    try:
        await answering(nc)
        settings.api_token = TOKEN
        async with AsyncTestClient(app=create_app(nc=None, settings=settings), timeout=60) as client:
            # a task file meant for Docker on real GPUs, rehearsed on simulated ones
            raw = small_spec("rehearse", deployment_mode="docker", optimization={"max_iterations": 2})
            r = await client.post("/api/tasks?simulate=true", content=yaml.safe_dump(raw), headers={**AUTH, "content-type": "application/yaml"})
            assert r.status_code == 201, r.text
            # follow its events live: the stream ends with the task
            r = await client.get("/api/tasks/rehearse/events", params={"follow": True}, timeout=120)
            types = [e["event"] for e in sse_events(r.text)]
            assert types[0] == "task.submitted" and types[-1] == "task.completed", types
            assert types.count("experiment.completed") == 2

            for _ in range(100):
                task = (await client.get("/api/tasks/rehearse")).json()
                if task["status"] == "completed":
                    break
                await asyncio.sleep(0.1)
            assert task["status"] == "completed" and task["simulate"] is True and task["deployment_mode"] == "docker"
            assert task["progress"]["completed"] == 2 and task["best"]["n"] in (0, 1)
            exps = (await client.get("/api/tasks/rehearse/experiments", params={"sort": "score"})).json()
            assert [e["status"] for e in exps["items"]] == ["completed", "completed"]
            assert exps["items"][0]["n"] == task["best"]["n"]
            for _ in range(100):  # telemetry has no read-your-writes (no min_seq covers its streams): it lands within a second or so
                d = (await client.get(f"/api/tasks/rehearse/experiments/{task['best']['n']}")).json()
                if d["telemetry"]:
                    break
                await asyncio.sleep(0.1)
            assert d["runs"] and d["runs"][0]["requests"] == 12 and d["experiment"]["host"] == "e2e"
            assert d["telemetry"], "GPU samples of the experiment's own GPUs while it ran"
            logs = sse_events((await client.get(f"/api/tasks/rehearse/experiments/{task['best']['n']}/logs")).text)
            assert logs[-1]["event"] == "end" and sum(len(e["data"].get("lines", [])) for e in logs[:-1]) > 0
            docker = (await client.get("/api/tasks/rehearse/export", params={"format": "docker"})).json()
            assert docker["simulate"] is True and docker["content"].startswith("docker run") and "lmsysorg/sglang" in docker["content"]
            hosts = (await client.get("/api/hosts")).json()
            assert [h["host"] for h in hosts] == ["e2e"] and hosts[0]["status"] == "online" and hosts[0]["simulated"] is True
            assert all(g["util_gpu"] is not None for g in hosts[0]["gpus"])
    finally:
        services.close()
    assert [p for p, labels in labelled_processes() if labels.get("AUTOTUNE_LABEL_HOST") == "e2e"] == []
