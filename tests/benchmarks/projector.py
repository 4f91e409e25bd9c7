"""Projector benchmark: throughput, rebuild time and freshness on this machine.

    uv run python tests/benchmarks/projector.py [--events N] [--freshness-s S]

Starts its own nats-server, publishes a realistic mix (hosts registering; tasks whose experiments go
planned -> assigned -> started -> ready -> progress x runs -> completed with metrics and ~50 raw
samples, some failing; log lines; GPU telemetry), publishing excluded from the timing, then:

- events_per_s: a projector catching up on all N events into an empty file (apply + commit);
- rebuild_s: `rebuild()` of the same N events (fresh file + swap);
- freshness: with the projector live and a steady background load (2,000 events/s by default),
  probes are published and queried with min_seq = their sequence; the time from publish to the
  answer that sees them, p50/p99: `freshness_*` for a query of `tasks` (the state lane: what the
  API and people poll), `freshness_log_*` for the same probe in `events` (the log lane), asked at
  the same time.

Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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

from autotune.projector import service
from autotune.projector.rebuild import rebuild
from autotune.projector.settings import ProjectorConfig
from autotune.projector.store import files
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.metrics import ExperimentMetrics, RequestSample, RunMetrics, Stats
from autotune.shared import bus, query
from autotune.shared.log import setup_logging
from autotune.shared.natsserver import NatsServer
from autotune.shared.provision import provision
from autotune.shared.settings import Settings

RUNS = 4
SAMPLES = 50
GPU_PER_EXPERIMENT = 30  # 30 s of 1 Hz telemetry from the experiment's GPU: far fewer than a real fleet sends
HOSTS = 16
GPUS = 8


def _stats(r: random.Random, scale: float) -> Stats:
    v = sorted(r.uniform(0.5, 2.0) * scale for _ in range(7))
    return Stats(
        count=SAMPLES // RUNS, min=v[0], p25=v[1], p50=v[2], mean=v[3], p75=v[3], p90=v[4], p95=v[5], p99=v[6], max=v[6], stddev=scale / 4
    )


def _run(r: random.Random, i: int) -> RunMetrics:
    return RunMetrics(
        scenario="D(100,100)", concurrency=2**i, requests=12, completed=12, duration_s=r.uniform(5, 20),
        requests_per_s=r.uniform(1, 20), input_tps=r.uniform(100, 2000), output_tps=r.uniform(100, 2000),
        total_tps=r.uniform(200, 4000), ttft=_stats(r, 0.05), tpot=_stats(r, 0.01), e2e_latency=_stats(r, 1.0),
        output_latency=_stats(r, 0.9), output_speed=_stats(r, 80), input_tokens=_stats(r, 100), output_tokens=_stats(r, 100),
    )  # fmt: skip


def _metrics(r: random.Random) -> ExperimentMetrics:
    samples = [
        RequestSample(
            run=k % RUNS,
            ok=True,
            start=k * 0.1,
            e2e=r.uniform(0.5, 2),
            ttft=r.uniform(0.01, 0.2),
            tpot=r.uniform(0.005, 0.02),
            input_tokens=100,
            output_tokens=100,
        )
        for k in range(SAMPLES)
    ]
    return ExperimentMetrics(
        gpus=1, mean_e2e_latency=1.0, p50_e2e_latency=0.9, p90_e2e_latency=1.5, p99_e2e_latency=1.9, mean_ttft=0.05,
        p50_ttft=0.04, p90_ttft=0.09, p99_ttft=0.15, mean_tpot=0.01, p50_tpot=0.01, p90_tpot=0.015, p99_tpot=0.02,
        mean_output_tps=900, max_output_tps=1800, requests_per_s=10, success_rate=1.0, requests=SAMPLES, completed=SAMPLES,
        runs=[_run(r, i) for i in range(RUNS)], samples=samples,
    )  # fmt: skip


class Mix:
    """Realistic event traffic, in the order the services would produce it."""

    def __init__(self, seed: int = 1, prefix: str = "t", gpu_per_experiment: int = GPU_PER_EXPERIMENT) -> None:
        self.gpu_per_experiment = gpu_per_experiment
        self.r = random.Random(seed)
        self.t = datetime(2025, 1, 1, tzinfo=UTC)
        self.prefix = prefix
        self.metrics = [_metrics(self.r) for _ in range(8)]  # reused: encoding, not generating, is the cost

    def _at(self) -> datetime:
        self.t += timedelta(milliseconds=10)
        return self.t

    def hosts(self):
        for h in range(HOSTS):
            host = f"h{h}"
            gpus = [ev.GpuInfo(index=i, uuid=f"GPU-{h}-{i}", name="NVIDIA H100 80GB HBM3", memory_total_mib=81559) for i in range(GPUS)]
            yield subj.host(host, "registered"), ev.HostRegistered(
                id=f"{host}.registered", at=self._at(), host=host, instance=f"i{h}", hostname=host, gpus=gpus,
                runtimes=["local", "docker"], engines=["sglang", "vllm"], simulated=True,
            )  # fmt: skip

    def task(self, k: int, experiments: int):
        r, task = self.r, f"{self.prefix}{k}"
        spec = {"task_name": task, "model": "meta-llama/Llama-3.1-8B-Instruct", "base_runtime": "sglang", "deployment_mode": "simulated",
                "parameters": {"mem-fraction-static": [0.8, 0.85, 0.9], "max-running-requests": [64, 128, 256]},
                "optimization": {"strategy": "bayesian", "objective": "maximize_throughput", "max_iterations": experiments}}  # fmt: skip
        yield (
            subj.task(task, "submitted"),
            ev.TaskSubmitted(id=f"{task}.submitted", at=self._at(), task=task, name=task, spec=spec, simulate=True),
        )
        yield (
            subj.task(task, "started"),
            ev.TaskStarted(id=f"{task}.started", at=self._at(), task=task, strategy="bayesian", budget=experiments),
        )
        for n in range(experiments):
            host, gpu = f"h{r.randrange(HOSTS)}", r.randrange(GPUS)
            params = {"mem-fraction-static": r.choice([0.8, 0.85, 0.9]), "max-running-requests": r.choice([64, 128, 256])}
            x = ev.exp_id
            yield (
                subj.experiment(task, n, "planned"),
                ev.ExperimentPlanned(id=x(task, n, 0, "planned"), at=self._at(), task=task, n=n, parameters=params),
            )
            yield subj.experiment(task, n, "assigned", host), ev.ExperimentAssigned(
                id=x(task, n, 0, "assigned"), at=self._at(), task=task, n=n, host=host, gpu_indices=[gpu], gpu_uuids=[f"GPU-{host}-{gpu}"],
                parameters=params, spec=spec, simulated=True,
            )  # fmt: skip
            yield (
                subj.experiment(task, n, "started"),
                ev.ExperimentStarted(
                    id=x(task, n, 0, "started"), at=self._at(), task=task, n=n, host=host, instance="i", runtime="local", handle="1234"
                ),
            )
            yield from self._gpu(host, gpu, self.gpu_per_experiment // 2)
            yield (
                subj.experiment(task, n, "ready"),
                ev.ExperimentReady(id=x(task, n, 0, "ready"), at=self._at(), task=task, n=n, host=host, startup_s=r.uniform(5, 60)),
            )
            yield (
                subj.log(task, n),
                ev.LogLines(
                    id=f"{task}.{n}.0.log.0", at=self._at(), task=task, n=n, host=host, lines=[f"INFO engine line {i}" for i in range(10)]
                ),
            )
            m = self.metrics[r.randrange(len(self.metrics))]
            for i in range(RUNS):
                yield (
                    subj.experiment(task, n, "progress"),
                    ev.ExperimentProgress(
                        id=x(task, n, 0, f"progress.{i}"),
                        at=self._at(),
                        task=task,
                        n=n,
                        host=host,
                        run_index=i,
                        runs_total=RUNS,
                        run=m.runs[i],
                    ),
                )
                yield from self._gpu(host, gpu, self.gpu_per_experiment // 2 // RUNS)
            if r.random() < 0.1:
                yield subj.experiment(task, n, "failed"), ev.ExperimentFailed(
                    id=x(task, n, 0, "failed"), at=self._at(), task=task, n=n, host=host, kind="oom", stage="startup",
                    message="CUDA out of memory", log_tail=["torch.OutOfMemoryError: CUDA out of memory"] * 5,
                )  # fmt: skip
            else:
                yield subj.experiment(task, n, "completed"), ev.ExperimentCompleted(
                    id=x(task, n, 0, "completed"), at=self._at(), task=task, n=n, host=host, metrics=m, score=r.uniform(-2000, -100),
                    objective_value=r.uniform(100, 2000), startup_s=10.0, duration_s=120.0,
                    telemetry=ev.TelemetrySummary(samples=100, mean_util_gpu=80, max_util_gpu=99, max_memory_used_mib=70000),
                )  # fmt: skip
        yield (
            subj.task(task, "completed"),
            ev.TaskCompleted(
                id=f"{task}.completed",
                at=self._at(),
                task=task,
                reason="budget",
                experiments=experiments,
                best_experiment=0,
                best_score=-1000.0,
            ),
        )

    def _gpu(self, host: str, gpu: int, k: int):
        for _ in range(k):
            yield subj.gpu(host, gpu), ev.GpuSample(
                id=f"{host}.{gpu}.{self.t.timestamp()}", at=self._at(), host=host, index=gpu, uuid=f"GPU-{host}-{gpu}",
                name="NVIDIA H100 80GB HBM3", memory_total_mib=81559, memory_used_mib=self.r.uniform(0, 80000),
                util_gpu=self.r.uniform(0, 100), temperature_c=self.r.uniform(30, 80), power_w=self.r.uniform(100, 700),
                power_limit_w=700, sm_clock_mhz=1980, mem_clock_mhz=2619, simulated=True,
            )  # fmt: skip

    def stream(self, total: int):
        """At least `total` messages: hosts, then tasks of 20 experiments."""
        count = 0
        for item in self.hosts():
            count += 1
            yield item
        k = 0
        while count < total:
            for item in self.task(k, 20):
                count += 1
                yield item
            k += 1


async def publish(nc, items, *, rate: float | None = None, seconds: float | None = None) -> int:
    """Core publishes with the Nats-Msg-Id header bus.append sends (the stream stores them; acks
    are not what is measured here). With `rate`, paced; with `seconds`, stops after that long.
    `items`: (subject, event) or (subject, encoded event, id)."""
    n = 0
    t0 = time.perf_counter()
    for item in items:
        if len(item) == 2:
            subject, event = item
            data, msg_id = ev.encode(event), event.id
        else:
            subject, data, msg_id = item
        await nc.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
        n += 1
        if rate is not None:
            elapsed = time.perf_counter() - t0
            if seconds is not None and elapsed > seconds:
                break
            ahead = n / rate - elapsed
            if ahead > 0.002:
                await asyncio.sleep(ahead)
        elif n % 2000 == 0:
            await nc.flush()
    await nc.flush()
    return n


async def stored(js) -> int:
    total = 0
    for s in service.STREAMS:
        total += (await js.stream_info(s)).state.messages
    return total


async def main(events: int, freshness_s: float, rate: float) -> dict:
    tmp = tempfile.mkdtemp(prefix="autotune-bench-")
    try:
        with NatsServer(os.path.join(tmp, "nats")) as server:
            settings = Settings(nats_url=server.url, data_dir=os.path.join(tmp, "data"))
            nc = await bus.connect(settings, "bench")
            js = nc.jetstream()
            await provision(js, settings)
            cfg = ProjectorConfig()

            t0 = time.perf_counter()
            sent = await publish(nc, Mix(seed=1, gpu_per_experiment=GPU_PER_EXPERIMENT).stream(events))
            while await stored(js) < sent:
                await asyncio.sleep(0.2)
            publish_s = time.perf_counter() - t0
            size = sum([(await js.stream_info(s)).state.bytes for s in service.STREAMS])

            db = os.path.join(tmp, "data", "autotune.duckdb")
            t0 = time.perf_counter()
            await service.run(settings, stop=asyncio.Event(), db_path=db, burst=True, config=cfg)
            catchup_s = time.perf_counter() - t0

            rb = await rebuild(settings, db, config=cfg)

            fresh = await freshness(settings, nc, js, db, freshness_s, rate)
            await nc.close()
            return {
                "benchmark": "projector",
                "cores": os.cpu_count(),
                "loadavg_1m_at_end": os.getloadavg()[0],  # others' work on a shared machine shows here
                "mix": f"per experiment: 10 lifecycle events (completed: 4 runs, {SAMPLES} samples), 1 log batch, "
                f"{GPU_PER_EXPERIMENT} GPU samples",
                "events": sent,
                "stream_mb": round(size / 2**20, 1),
                "publish_s": round(publish_s, 2),
                "events_per_s": round(sent / catchup_s),
                "catchup_s": round(catchup_s, 2),
                "rebuild_events": sent,
                "rebuild_s": rb["seconds"],
                "rebuild_1m_s_extrapolated": round(rb["seconds"] * 1_000_000 / sent, 1),
                "db_mb": round(sum(os.path.getsize(f) for f in files(db) if os.path.exists(f)) / 2**20, 1),
                **fresh,
                "targets": {"events_per_s": 30000, "rebuild_1m_s": 45, "freshness_p99_ms": 100},
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def freshness(settings, nc, js, db, seconds: float, rate: float) -> dict:
    """The projector and the background load run as their own processes, as they would deployed;
    this process only publishes probes and asks for them back with min_seq."""
    env = {**os.environ, "AUTOTUNE_LOG_LEVEL": "WARNING"}
    projector = subprocess.Popen([sys.executable, "-m", "autotune.projector", "--nats-url", settings.nats_url, "run", "--db", db], env=env)
    load = subprocess.Popen(
        [sys.executable, __file__, "--load", settings.nats_url, "--rate", str(rate), "--seconds", str(seconds + 5)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(200):  # wait until it answers
            try:
                await query.sql(nc, "SELECT 1", timeout=1)
                break
            except query.QueryError:
                await asyncio.sleep(0.05)
        assert await asyncio.to_thread(load.stdout.readline) == "publishing\n"
        await asyncio.sleep(2.0)  # the projector is in its steady state
        latencies: dict[str, list[float]] = {"tasks": [], "events": []}

        async def seen(sql: str, key: str, seq: int, t0: float) -> None:
            res = await query.sql(nc, sql, [key], min_seq=seq)
            assert res.rows[0][0] == 1, res
            latencies["events" if "events" in sql else "tasks"].append((time.perf_counter() - t0) * 1000)

        end = time.perf_counter() + seconds
        k = 0
        while time.perf_counter() < end:
            k += 1
            t0 = time.perf_counter()
            probe = ev.TaskSubmitted(id=f"probe{k}", task=f"probe{k}", name="p", spec={})
            ack = await js.publish(subj.task(f"probe{k}", "submitted"), ev.encode(probe))
            await asyncio.gather(
                seen("SELECT count(*) FROM tasks WHERE id = ?", probe.task, ack.seq, t0),
                seen("SELECT count(*) FROM events WHERE id = ?", probe.id, ack.seq, t0),
            )
            await asyncio.sleep(0.05)
    finally:
        load.terminate()
        load.wait(10)
        projector.terminate()
        projector.wait(30)
    q = statistics.quantiles(latencies["tasks"], n=100)
    q_log = statistics.quantiles(latencies["events"], n=100)
    return {
        "freshness_rate_per_s": rate,
        "freshness_probes": len(latencies["tasks"]),
        "freshness_p50_ms": round(q[49], 1),
        "freshness_p99_ms": round(q[98], 1),
        "freshness_log_p50_ms": round(q_log[49], 1),
        "freshness_log_p99_ms": round(q_log[98], 1),
    }


async def load(url: str, rate: float, seconds: float) -> None:
    import nats

    # encoded before the clock starts: the services that publish run elsewhere, and encoding here
    # would take CPU from the projector being measured on the same cores
    items = [(s, ev.encode(e), e.id) for s, e in itertools.islice(Mix(seed=2, prefix="live").stream(10**9), int(rate * seconds) + 1)]
    nc = await nats.connect(url)
    print("publishing", flush=True)
    await publish(nc, items, rate=rate, seconds=seconds)
    await nc.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--freshness-s", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=2000.0)
    p.add_argument("--load", metavar="NATS_URL", help=argparse.SUPPRESS)  # the background load process
    p.add_argument("--seconds", type=float, default=20.0, help=argparse.SUPPRESS)
    a = p.parse_args()
    setup_logging(os.environ.get("AUTOTUNE_LOG_LEVEL", "WARNING"))
    if a.load:
        asyncio.run(load(a.load, a.rate, a.seconds))
        sys.exit(0)
    print(json.dumps(asyncio.run(main(a.events, a.freshness_s, a.rate))))
    sys.exit(0)
