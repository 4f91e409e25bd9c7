"""/metrics benchmark: what one Prometheus scrape costs at 1,000 hosts x 8 GPUs.

    uv run python tests/benchmarks/metrics.py [--hosts 1000] [--gpus 8] [--samples-per-gpu 20] [--scrapes 20]

Starts its own nats-server and a projector (a child process, as in production), then builds the
state of a large fleet: every host registered (`host.registered`, 8 GPUs each) with a live liveness
key, a task with one running experiment per two hosts (each holding a GPU), and GPU telemetry from
every GPU spread over the last 30 s (inside the metrics' 60 s window), publishing excluded from the
timing. Then it serves the API (uvicorn, in this process) and times GET /metrics over HTTP. Before
each uncached scrape every GPU sends one more sample (untimed, and applied before the scrape), as a
live fleet's gpumons do every second: a scrape reports only samples from the last 60 s, and a static
fleet ages out of that window while the scrapes run (which is how an earlier version of this
benchmark measured an exposition with no GPU readings at all, and said nothing). Every uncached
scrape is checked to carry a reading of every GPU; the benchmark stops if one does not.


- scrape_p50_ms / scrape_p99_ms: uncached scrapes (the figures gathered anew every time: what a
  scrape costs when none came within the cache's 5 s);
- cached_p50_ms: scrapes within the cache's max age;
- bytes and series of one exposition; collect_p50_ms: the gathering alone (autotune_metrics_collect_seconds);
  gpus_with_readings: the fewest GPUs with a utilization reading in one uncached scrape (all of them);
  gpu_samples_in_window: the telemetry rows the latest-sample query reads (a live fleet at 1 Hz
  holds 480,000 in the 60 s window; this one fewer, so the figure is a floor for that part).

Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from autotune.api.app import create_app
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.liveness import LiveGpu, LiveHost, running_key
from autotune.shared import bus, query
from autotune.shared.log import setup_logging
from autotune.shared.natsserver import NatsServer
from autotune.shared.net import free_port
from autotune.shared.provision import provision
from autotune.shared.settings import Settings

MODEL = "NVIDIA H100 80GB HBM3"
TASK = "fleet"


async def build_fleet(nc, hosts: int, gpus: int, samples: int) -> tuple[int, int]:
    """Publish the fleet's state; returns (last AUTOTUNE_EVENTS seq, telemetry messages)."""
    js = nc.jetstream()
    names = [f"gpu-{i:04d}" for i in range(hosts)]
    now = datetime.now(UTC)
    infos = [ev.GpuInfo(index=g, uuid=f"GPU-{g}", name=MODEL, memory_total_mib=81559) for g in range(gpus)]
    acks = []
    for h in names:
        e = ev.HostRegistered(id=f"host.{h}.registered", host=h, instance=f"{h}-1", hostname=h, gpus=infos, runtimes=["local"], engines=["sglang"],
                              node=f"node-{h}", version="0.1.0")  # fmt: skip
        acks.append(js.publish(subj.host(h, "registered"), msgspec.json.encode(e)))
    await asyncio.gather(*acks)
    spec = {"task_name": TASK, "model": {"id_or_path": "m"}, "deployment_mode": "simulated", "parameters": {"max-running-requests": [8, 16]}}
    await js.publish(subj.task(TASK, "submitted"), msgspec.json.encode(ev.TaskSubmitted(id=f"{TASK}.submitted", task=TASK, name=TASK, spec=spec)))
    running: dict[str, list[str]] = {}
    for n, h in enumerate(names[::2]):
        x = ev.exp_id
        a = ev.ExperimentAssigned(id=x(TASK, n, 0, "assigned"), task=TASK, n=n, attempt=0, host=h, gpu_indices=[0], gpu_uuids=["GPU-0"],
                                  parameters={"max-running-requests": 8}, spec=spec, deployment_mode="simulated", timeout_s=600)  # fmt: skip
        await js.publish(subj.experiment(TASK, n, "planned"), msgspec.json.encode(ev.ExperimentPlanned(id=x(TASK, n, 0, "planned"), task=TASK, n=n, attempt=0, parameters={})))
        await js.publish(subj.experiment(TASK, n, "assigned", h), msgspec.json.encode(a))
        await js.publish(subj.experiment(TASK, n, "started"), msgspec.json.encode(ev.ExperimentStarted(id=x(TASK, n, 0, "started"), task=TASK, n=n, attempt=0, host=h, instance=f"{h}-1", runtime="simulated")))
        running[h] = [running_key(TASK, n, 0)]
    last = (await js.stream_info(subj.EVENTS_STREAM)).state.last_seq
    kv = await js.key_value(subj.HOSTS_BUCKET)
    live = [LiveGpu(index=g, uuid=f"GPU-{g}", name=MODEL, memory_total_mib=81559) for g in range(gpus)]
    await asyncio.gather(*(kv.put(h, msgspec.json.encode(LiveHost(host=h, instance=f"{h}-1", hostname=h, gpus=live, running=running.get(h, []),
                                                                   at=time.time(), node=f"node-{h}"))) for h in names))  # fmt: skip
    sent = 0
    for k in range(samples):  # core publishes into the stream (as fast as gpumons would, all at once)
        at = (now - timedelta(seconds=30) + timedelta(seconds=30 * k / max(samples, 1))).isoformat()
        for h in names:
            for g in range(gpus):
                s = ev.GpuSample(id=f"gpu.{h}.{g}.{k}", at=datetime.fromisoformat(at), host=h, index=g, uuid=f"GPU-{g}", name=MODEL, memory_total_mib=81559,
                                 memory_used_mib=40000 + g, util_gpu=50 + g, temperature_c=60, power_w=400, node=f"node-{h}")  # fmt: skip
                await nc.publish(subj.gpu(h, g), msgspec.json.encode(s))
                sent += 1
        await nc.flush()
    return last, sent


async def fresh_round(nc, hosts: int, gpus: int, k: int) -> int:
    """One more sample from every GPU, stamped now (round `k`: ids stay unique)."""
    now = datetime.now(UTC)
    for i in range(hosts):
        h = f"gpu-{i:04d}"
        for g in range(gpus):
            s = ev.GpuSample(id=f"gpu.{h}.{g}.fresh{k}", at=now, host=h, index=g, uuid=f"GPU-{g}", name=MODEL, memory_total_mib=81559,
                             memory_used_mib=40000 + g, util_gpu=50 + g, temperature_c=60, power_w=400, node=f"node-{h}")  # fmt: skip
            await nc.publish(subj.gpu(h, g), msgspec.json.encode(s))
    await nc.flush()
    return hosts * gpus


async def main(args: argparse.Namespace) -> dict:
    setup_logging("WARNING")
    tmp = Path(tempfile.mkdtemp(prefix="autotune-bench-metrics-"))
    with NatsServer(tmp / "nats") as server:
        settings = Settings(nats_url=server.url, data_dir=str(tmp / "data"))
        nc = await bus.connect(settings, "bench")
        await provision(nc.jetstream(), settings)
        env = {**os.environ, "AUTOTUNE_NATS_URL": server.url, "AUTOTUNE_DATA_DIR": str(tmp / "data")}
        projector = subprocess.Popen([sys.executable, "-m", "autotune.cli", "run", "projector"], env=env, stdout=subprocess.DEVNULL,
                                     stderr=open(tmp / "projector.log", "wb"))  # noqa: SIM115  # fmt: skip
        try:
            t0 = time.perf_counter()
            last, sent = await build_fleet(nc, args.hosts, args.gpus, args.samples_per_gpu)
            build_s = time.perf_counter() - t0
            for _ in range(1200):  # until the projector holds every host, attempt and sample
                try:
                    got = (await query.sql(nc, "SELECT (SELECT count(*) FROM hosts), (SELECT count(*) FROM gpu_samples)", min_seq=last, timeout=30)).rows[0]
                    if got[0] >= args.hosts and got[1] >= sent:
                        break
                except query.QueryError:
                    pass
                await asyncio.sleep(0.25)
            else:
                raise SystemExit(f"the projector did not catch up; see {tmp / 'projector.log'}")
            ingest_s = time.perf_counter() - t0 - build_s
            rounds = 0

            async def fresh() -> None:  # every GPU's latest sample is recent: what a live fleet looks like
                nonlocal sent, rounds
                rounds += 1
                sent += await fresh_round(nc, args.hosts, args.gpus, rounds)
                for _ in range(1200):
                    if (await query.sql(nc, "SELECT count(*) FROM gpu_samples")).rows[0][0] >= sent:
                        return
                    await asyncio.sleep(0.25)
                raise SystemExit(f"the projector did not apply a round of fresh samples; see {tmp / 'projector.log'}")

            await fresh()
            window = (await query.sql(nc, "SELECT count(*) FROM gpu_samples WHERE \"at\" >= now() - INTERVAL 60 SECOND")).rows[0][0]
            out = {"hosts": args.hosts, "gpus": args.hosts * args.gpus, "gpu_samples": sent, "gpu_samples_in_window": window,
                   "running_experiments": (args.hosts + 1) // 2, "build_s": round(build_s, 1), "ingest_s": round(ingest_s, 1)}  # fmt: skip
            for label, max_age in (("scrape", 0.0), ("cached", 3600.0)):
                port = free_port()
                app = create_app(nc=nc, settings=settings, metrics_max_age_s=max_age)
                api = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
                serving = asyncio.create_task(api.serve())
                while not api.started:
                    await asyncio.sleep(0.05)
                times, collect, readings, body = [], [], [], b""
                async with httpx.AsyncClient(timeout=60) as http:
                    await http.get(f"http://127.0.0.1:{port}/metrics")  # warm: the first gathering fills the cache
                    for _ in range(args.scrapes):
                        if label == "scrape":
                            await fresh()
                        t = time.perf_counter()
                        r = await http.get(f"http://127.0.0.1:{port}/metrics")
                        times.append((time.perf_counter() - t) * 1000)
                        assert r.status_code == 200, r.text[:500]
                        body = r.content
                        if label == "scrape":
                            collect.append(next(s.value for f in text_string_to_metric_families(r.text) for s in f.samples
                                                if s.name == "autotune_metrics_collect_seconds") * 1000)  # fmt: skip
                            readings.append(body.count(b"autotune_gpu_utilization_percent{"))
                            if readings[-1] != args.hosts * args.gpus:
                                raise SystemExit(f"a scrape carried readings of {readings[-1]} of {args.hosts * args.gpus} GPUs, "
                                                 "though every GPU sent a sample just before it; see the exposition's autotune_gpu_* series")  # fmt: skip
                api.should_exit = True
                await serving
                times.sort()
                out[f"{label}_p50_ms"] = round(statistics.median(times), 1)
                if label == "scrape":
                    out["scrape_p99_ms"] = round(times[min(len(times) - 1, int(len(times) * 0.99))], 1)
                    out["collect_p50_ms"] = round(statistics.median(collect), 1)
                    out["bytes"] = len(body)
                    out["series"] = sum(len(f.samples) for f in text_string_to_metric_families(body.decode()))
                    out["gpus_with_readings"] = min(readings)  # of every uncached scrape
            return out
        finally:
            projector.terminate()
            projector.wait(30)
            await nc.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--gpus", type=int, default=8, help="GPUs per host")
    ap.add_argument("--samples-per-gpu", type=int, default=20, help="telemetry samples per GPU within the last 30 s")
    ap.add_argument("--scrapes", type=int, default=10, help="timed scrapes of each kind")
    print(json.dumps(asyncio.run(main(ap.parse_args()))))
