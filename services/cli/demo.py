"""`autotune demo`: a small tuning task end to end on this machine, with live progress.

Uses the running stack when `autotune up` is up; otherwise starts one (nats-server + every service,
two simulated hosts) for the length of the demo. The event log stays in the data directory, so a
later `autotune up` still shows the demo task.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from autotune.schemas.spec import SpecError, load_spec_file, spec_from_obj
from autotune.shared.commands import spec_to_dict
from autotune.shared.net import free_port

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from autotune.schemas.spec import TaskSpec
    from autotune.shared.settings import Settings


def _example(name: str) -> Path:
    here = Path(__file__).resolve().parents[2] / "examples" / name  # the repository's, beside services/
    return here if here.exists() else Path("examples") / name


def demo_spec(task_file: str | None, example: str) -> tuple[TaskSpec, dict] | None:
    """The task a demo submits (`task_file`, else the repository's examples/`example`) and its spec as a
    dict, named afresh for this run so a second demo is a new task; None once the error is on stderr."""
    try:
        spec = load_spec_file(str(Path(task_file) if task_file else _example(example)))
    except SpecError as e:
        sys.stderr.write(f"autotune: invalid task file {e}\n")
        return None
    raw = spec_to_dict(spec)
    raw["task_name"] = f"{spec.task_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return spec_from_obj(raw), raw


async def submit_demo(settings: Settings, url: str, spec: TaskSpec, who: str) -> tuple[Client, JetStreamContext, str]:
    """Connect to the demo's stack at `url` as `who`, create its streams and buckets where missing, and submit `spec`."""
    from autotune.shared import bus, commands
    from autotune.shared.provision import provision

    settings.nats_url = url
    nc = await bus.connect(settings, who)
    js = nc.jetstream()
    await provision(js, settings)
    return nc, js, (await commands.submit_task(js, spec, submitted_by=who)).task


def run_demo(args) -> int:
    from autotune import supervisor as sv
    from autotune.cli.connection import EXIT_INPUT, stack_settings
    from autotune.shared import lifecycle
    from autotune.shared.log import setup_logging

    setup_logging("WARNING")
    if (loaded := demo_spec(args.task_file, "demo.yaml")) is None:
        return EXIT_INPUT
    spec, raw = loaded
    settings = stack_settings(args)
    data = Path(settings.data_dir)
    result = {"code": 1}

    async def main(stop: asyncio.Event) -> None:
        from autotune.cli.watch import watch_and_report

        info = sv.read_stack_info(data)
        nats = None
        children: list[sv.Child] = []
        sup = None
        print("autotune demo: the engines and GPUs here are SIMULATED (this machine has no GPU);")
        print("the runner launches the engine simulator with SGLang's real command line and benchmarks it over HTTP.\n")
        try:
            if info:
                url = info["nats_url"]
                api_url = info.get("api_url")
                print(f"using the running stack at {url}")
            else:
                (data / "logs").mkdir(parents=True, exist_ok=True)
                nats = sv.start_nats(data, -1)
                url = nats.url
                api_port = free_port()
                api_url = f"http://127.0.0.1:{api_port}"
                children = sv.build_children(url, data, api_port=api_port, hosts=2, simulate="2xH100", time_scale=args.time_scale, api_token=None)
                sup = asyncio.create_task(sv.supervise(children, data / "logs", stop))
                print(f"started NATS at {url}, a scheduler, a projector, an API and two simulated hosts (2xH100 each)")
            nc, js, task = await submit_demo(settings, url, spec, "demo")
            print(f"submitted task {task}: {spec.description}")
            if api_url:
                print(f"follow it live in the dashboard: {api_url}/tasks/{task}   (open while the demo runs)")
            print()
            result["code"] = await watch_and_report(js, task, spec_dict=raw, simulated=True)
            await _show_sql(nc, task)
            print("\nlook further:")
            print("  autotune up                       # keep the stack running (the log is on disk: this task is still there)")
            print(f"  autotune experiments {task} --sort score")
            print(f'  autotune sql "select n, parameters, score from experiments where task = \'{task}\' order by score"')
            print("  nats sub 'autotune.>'             # every event, as JSON (any NATS client can read them)")
            print("  http://127.0.0.1:8080/             # the dashboard (and the HTTP API at /api, /schema), once `autotune up` runs")
            await nc.close()
        finally:
            if sup is not None:
                stop.set()
                await sup
            if nats is not None:
                nats.stop()

    lifecycle.run_until_signal(main)
    return result["code"]


async def _show_sql(nc, task: str) -> None:
    from autotune.schemas import subjects as subj
    from autotune.shared import bus
    from autotune.shared import query as q

    # read-your-writes: the projection answers once it has applied the task's last event
    last = await bus.last_seq(nc.jetstream(), subj.task_all(task))
    try:
        res = await q.sql(
            nc,
            "SELECT count(*) FILTER (WHERE status = 'completed') AS completed, count(*) FILTER (WHERE status = 'failed') AS failed, "
            "round(min(score), 4) AS best_score FROM experiments WHERE task = ?",
            [task],
            min_seq=last,
            timeout=15,
        )
        row = res.rows_as_dicts()[0] if res.rows else {}
        print(f"\nfrom the DuckDB projection (autotune sql): {row}")
    except q.QueryError as e:
        print(f"\n(the projection did not answer: {e})")


