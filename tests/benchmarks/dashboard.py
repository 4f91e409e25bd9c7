"""Dashboard benchmark: server time of the overview, task and experiment pages on a large projection.

    uv run python tests/benchmarks/dashboard.py [--experiments 10000] [--hosts 200] [--requests 40]

Starts its own nats-server and fills the log with what the services would publish: a fleet of
`--hosts` hosts × 8 GPUs (registered, heartbeating in the liveness bucket, a GPU sample every
`--gpu-interval-s` over the last 10 minutes) and one task whose `--experiments` experiments ran on
them over the last 2.5 hours (planned → assigned → started → ready → 4 progress → completed with
metrics and 50 raw samples, some failing; the last 400 still running). The real projector applies
them (catch-up, not timed), then runs as its own process, and the real API process
(`autotune run api`) serves the pages. Each page is fetched `--requests` times after 3 warm-ups,
one at a time over HTTP: the time to the whole body is the server's (localhost, no browser).

Prints ONE JSON line: p50/p99 ms, bytes and bytes on the wire (gzip) per page, and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta

import httpx
import msgspec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from projector import _metrics, publish, stored  # noqa: E402  (the projector benchmark's realistic results)

from autotune.projector import service  # noqa: E402
from autotune.reads.results import METRICS  # noqa: E402
from autotune.schemas import events as ev  # noqa: E402
from autotune.schemas import subjects as subj  # noqa: E402
from autotune.schemas.liveness import LiveGpu, LiveHost  # noqa: E402
from autotune.shared import bus, query  # noqa: E402
from autotune.shared.log import setup_logging  # noqa: E402
from autotune.shared.natsserver import NatsServer  # noqa: E402
from autotune.shared.net import free_port  # noqa: E402
from autotune.shared.provision import provision
from autotune.shared.settings import Settings  # noqa: E402

GPUS = 8
TASK = "big"
RUNNING = 400
GPU_NAME = "NVIDIA H100 80GB HBM3"


def host_events(hosts: int, now: datetime):
    for h in range(hosts):
        gpus = [ev.GpuInfo(index=i, uuid=f"GPU-{h}-{i}", name=GPU_NAME, memory_total_mib=81559) for i in range(GPUS)]
        yield subj.host(f"h{h}", "registered"), ev.HostRegistered(
            id=f"h{h}.registered", at=now - timedelta(hours=3), host=f"h{h}", instance=f"i{h}", hostname=f"gpu-{h}", gpus=gpus,
            runtimes=["local", "docker"], engines=["sglang", "vllm"], simulated=True, node=f"node-{h // 4}",
        )  # fmt: skip


def gpu_samples(hosts: int, now: datetime, interval_s: float, r: random.Random):
    steps = int(600 / interval_s)
    for k in range(steps):
        at = now - timedelta(seconds=600 - k * interval_s)
        for h in range(hosts):
            for i in range(GPUS):
                yield subj.gpu(f"h{h}", i), ev.GpuSample(
                    id=f"h{h}.{i}.{k}", at=at, host=f"h{h}", index=i, uuid=f"GPU-{h}-{i}", name=GPU_NAME, memory_total_mib=81559,
                    memory_used_mib=r.uniform(0, 80000), util_gpu=r.uniform(0, 100), temperature_c=r.uniform(30, 80), power_w=r.uniform(100, 700),
                    power_limit_w=700, sm_clock_mhz=1980, mem_clock_mhz=2619, simulated=True,
                )  # fmt: skip


def task_events(experiments: int, hosts: int, now: datetime, r: random.Random):
    spec = {"task_name": TASK, "model": "meta-llama/Llama-3.1-8B-Instruct", "base_runtime": "sglang", "deployment_mode": "simulated",
            "parameters": {"mem-fraction-static": [0.8, 0.85, 0.9], "max-running-requests": [64, 128, 256], "chunked-prefill-size": [2048, 4096, 8192]},
            "optimization": {"strategy": "random", "objective": "maximize_throughput", "max_iterations": experiments},
            "slo": {"tpot": {"threshold": 0.012}}}  # fmt: skip
    start = now - timedelta(hours=2.5)
    yield subj.task(TASK, "submitted"), ev.TaskSubmitted(id=f"{TASK}.submitted", at=start, task=TASK, name=TASK, spec=spec, simulate=True)
    yield subj.task(TASK, "started"), ev.TaskStarted(id=f"{TASK}.started", at=start, task=TASK, strategy="random", budget=experiments)
    metrics = [_metrics(r) for _ in range(8)]
    step = 2.5 * 3600 / experiments * (hosts * GPUS / 50)  # ~50 experiments at once over 2.5 hours
    running: dict[str, list[str]] = {}
    x = ev.exp_id
    for n in range(experiments):
        slot = n % (hosts * GPUS)
        host, gpu = f"h{slot // GPUS}", slot % GPUS
        t = start + timedelta(seconds=(n // 50) * step + r.uniform(0, step / 4))
        params = {k: r.choice(v) for k, v in spec["parameters"].items()}
        yield subj.experiment(TASK, n, "planned"), ev.ExperimentPlanned(id=x(TASK, n, 0, "planned"), at=t, task=TASK, n=n, parameters=params)
        yield subj.experiment(TASK, n, "assigned", host), ev.ExperimentAssigned(
            id=x(TASK, n, 0, "assigned"), at=t, task=TASK, n=n, host=host, gpu_indices=[gpu], gpu_uuids=[f"GPU-{host}-{gpu}"], parameters=params,
            spec=spec, simulated=True,
        )  # fmt: skip
        yield subj.experiment(TASK, n, "started"), ev.ExperimentStarted(
            id=x(TASK, n, 0, "started"), at=t, task=TASK, n=n, host=host, instance="i", runtime="local", handle="1"
        )
        if n >= experiments - RUNNING:
            running.setdefault(host, []).append(f"{TASK}/{n}/0")
            continue
        m = metrics[r.randrange(len(metrics))]
        yield subj.experiment(TASK, n, "ready"), ev.ExperimentReady(id=x(TASK, n, 0, "ready"), at=t + timedelta(seconds=20), task=TASK, n=n, host=host, startup_s=20)
        for i, run in enumerate(m.runs):
            yield subj.experiment(TASK, n, "progress"), ev.ExperimentProgress(
                id=x(TASK, n, 0, f"progress.{i}"), at=t + timedelta(seconds=30 + 10 * i), task=TASK, n=n, host=host, run_index=i,
                runs_total=len(m.runs), run=run,
            )  # fmt: skip
        end = t + timedelta(seconds=step * 0.9)
        if r.random() < 0.08:
            yield subj.experiment(TASK, n, "failed"), ev.ExperimentFailed(
                id=x(TASK, n, 0, "failed"), at=end, task=TASK, n=n, host=host, kind="oom", stage="startup", message="CUDA out of memory",
                log_tail=["torch.OutOfMemoryError: CUDA out of memory"],
            )  # fmt: skip
        else:
            tps = r.uniform(1000, 8000)
            m = msgspec.structs.replace(m, mean_total_tps_per_gpu=tps, mean_tpot=r.uniform(0.005, 0.02))
            yield subj.experiment(TASK, n, "completed"), ev.ExperimentCompleted(
                id=x(TASK, n, 0, "completed"), at=end, task=TASK, n=n, host=host, metrics=m, score=-tps, objective_value=-tps, startup_s=20.0,
                duration_s=step * 0.9, slo_met=r.random() < 0.7,
                telemetry=ev.TelemetrySummary(samples=100, mean_util_gpu=80, max_util_gpu=99, max_memory_used_mib=70000),
            )  # fmt: skip
    yield subj.log(TASK, experiments - RUNNING - 1), ev.LogLines(
        id=f"{TASK}.last.log", at=now, task=TASK, n=experiments - RUNNING - 1, host="h0", lines=[f"INFO line {i}" for i in range(200)]
    )
    return running


async def heartbeat(js, hosts: int, running: dict[str, list[str]], stop: asyncio.Event) -> None:
    kv = await js.key_value(subj.HOSTS_BUCKET)
    gpus = [LiveGpu(index=i, uuid="", name=GPU_NAME, memory_total_mib=81559) for i in range(GPUS)]
    while not stop.is_set():
        for h in range(hosts):
            live = LiveHost(host=f"h{h}", instance=f"i{h}", hostname=f"gpu-{h}", gpus=[msgspec.structs.replace(g, uuid=f"GPU-{h}-{g.index}") for g in gpus],
                            runtimes=["local"], engines=["sglang"], running=running.get(f"h{h}", []), simulated=True, node=f"node-{h // 4}",
                            at=time.time())  # fmt: skip
            await kv.put(f"h{h}", msgspec.json.encode(live))
        try:
            await asyncio.wait_for(stop.wait(), 2.0)
        except TimeoutError:
            pass


def measure(base: str, path: str | list[str], requests: int) -> dict:
    """As a browser asks (gzip accepted): `bytes` the body, `wire_bytes` what crossed the connection.
    A list of paths is asked in turn."""
    times, size, wire = [], 0, 0
    paths = [path] if isinstance(path, str) else path
    with httpx.Client(base_url=base, timeout=60, headers={"Accept-Encoding": "gzip"}) as c:
        for k in range(requests + 3):
            path = paths[k % len(paths)]
            t0 = time.perf_counter()
            r = c.get(path)
            dt = (time.perf_counter() - t0) * 1000
            assert r.status_code == 200, (path, r.status_code, r.text[:500])
            if k >= 3:
                times.append(dt)
            size, wire = len(r.content), r.num_bytes_downloaded
    q = statistics.quantiles(times, n=100)
    return {"p50_ms": round(q[49], 1), "p99_ms": round(q[98], 1), "bytes": size, "wire_bytes": wire}


async def main(a) -> dict:
    tmp = tempfile.mkdtemp(prefix="autotune-dash-bench-")
    procs: list[subprocess.Popen] = []
    try:
        with NatsServer(os.path.join(tmp, "nats")) as server:
            settings = Settings(nats_url=server.url, data_dir=os.path.join(tmp, "data"), host_ttl_s=30.0)
            nc = await bus.connect(settings, "bench")
            js = nc.jetstream()
            await provision(js, settings)
            r = random.Random(1)
            now = datetime.now(UTC)
            t0 = time.perf_counter()
            gen = task_events(a.experiments, a.hosts, now, r)
            items: list = list(host_events(a.hosts, now))
            while True:
                try:
                    items.append(next(gen))
                except StopIteration as done:
                    running = done.value
                    break
            items += gpu_samples(a.hosts, now, a.gpu_interval_s, r)
            sent = await publish(nc, items)
            while await stored(js) < sent:
                await asyncio.sleep(0.2)
            stop = asyncio.Event()
            beat = asyncio.create_task(heartbeat(js, a.hosts, running, stop))
            db = os.path.join(tmp, "data", "autotune.duckdb")
            await service.run(settings, stop=asyncio.Event(), db_path=db, burst=True)
            fill_s = time.perf_counter() - t0
            env = {**os.environ, "AUTOTUNE_LOG_LEVEL": "WARNING", "AUTOTUNE_NATS_URL": server.url, "AUTOTUNE_DATA_DIR": settings.data_dir}
            procs.append(subprocess.Popen([sys.executable, "-m", "autotune.projector", "--nats-url", server.url, "run", "--db", db], env=env))
            port = a.port or free_port()
            procs.append(subprocess.Popen([sys.executable, "-m", "autotune.cli", "run", "api", "--port", str(port)], env=env))
            base = f"http://127.0.0.1:{port}"
            for _ in range(400):
                try:
                    if httpx.get(base + "/api/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            counts = (await query.sql(nc, "SELECT (SELECT count(*) FROM experiments) AS e, (SELECT count(*) FROM gpu_samples) AS g, "
                                          "(SELECT count(*) FROM hosts) AS h, (SELECT count(*) FROM request_samples) AS s")).rows_as_dicts()[0]  # fmt: skip
            if a.hold:  # for profiling by hand: the stack stays up until Ctrl-C
                print(json.dumps({"nats": server.url, "api": base, "db": db}), file=sys.stderr, flush=True)
                await asyncio.Event().wait()
            exp = a.experiments - RUNNING - 2
            # the task page's charts fetch their data (every finished experiment) as points.json, and the
            # overview its timeline (every attempt of the last 3 hours) as timeline.json: measured on their own
            # points.json is kept per version of the task's data (its last_seq): `task_points` asks the same
            # again (a reload: read, encoded and compressed once); `task_points_cold` a new y axis each time,
            # more of them than are kept, so that every answer is read and encoded afresh
            cold = [f"/tasks/{TASK}/points.json?y={m}" for m in METRICS if m != "tps_per_user"]
            pages = {"overview": "/", "overview_timeline": "/timeline.json?hours=3", "task": f"/tasks/{TASK}",
                     "task_points": f"/tasks/{TASK}/points.json", "task_points_cold": cold, "experiment": f"/tasks/{TASK}/experiments/{exp}"}  # fmt: skip
            load_at_start = os.getloadavg()[0]
            out = {name: await asyncio.to_thread(measure, base, path, a.requests) for name, path in pages.items()}
            stop.set()
            await beat
            await nc.close()
            _stop(procs)
            return {
                "benchmark": "dashboard",
                "cores": os.cpu_count(),
                "loadavg_1m_at_start": load_at_start,
                "loadavg_1m_at_end": os.getloadavg()[0],
                "projection": {"hosts": counts["h"], "gpus": a.hosts * GPUS, "experiments": counts["e"], "running": RUNNING,
                               "gpu_samples": counts["g"], "request_samples": counts["s"], "events": sent, "fill_s": round(fill_s, 1)},  # fmt: skip
                "requests_per_page": a.requests,
                **{f"{k}_{m}": v[m] for k, v in out.items() for m in ("p50_ms", "p99_ms", "bytes", "wire_bytes")},
                "target_p99_ms": 300,
            }
    finally:
        _stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    """The API and the projector go before their nats-server does (no reconnect noise)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--experiments", type=int, default=10_000)
    p.add_argument("--hosts", type=int, default=200)
    p.add_argument("--gpu-interval-s", type=float, default=10.0, help="one GPU sample per GPU this often over the last 10 minutes")
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    setup_logging(os.environ.get("AUTOTUNE_LOG_LEVEL", "WARNING"))
    print(json.dumps(asyncio.run(main(a))))
