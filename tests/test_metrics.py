"""`GET /metrics` against a known state: a real nats-server and projector, a fleet and a task history
published as events (tests/test_api.py's seed_fleet), a liveness key, a scheduler's published
figures; the exposition parsed with prometheus-client's own parser. And the Grafana dashboard in
infra/ names only series that exist."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from autotune.api.app import create_app
from autotune.metrics import METRICS, Metrics, Snapshot, render
from autotune.metrics.collect import StreamPosition, service_stats
from autotune.metrics.exposition import families
from autotune.projector.service import run as projector_run
from autotune.reads import models as rm
from autotune.schemas import subjects as subj
from autotune.schemas.spec import spec_from_obj
from autotune.schemas.stats import ServiceStats
from autotune.shared import bus, commands
from autotune.shared.stats import Histogram, StatsPublisher
from tests.fixtures.api_kit import alive, answering, applied, publish, seed_fleet, served
from tests.helpers import Services, golden, small_spec

ROOT = Path(__file__).resolve().parent.parent
H100 = "NVIDIA H100 80GB HBM3"


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} for every sample of the exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
async def projector(settings, nc, tmp_path):
    svc = Services()
    svc.start(lambda stop: projector_run(settings, stop=stop, db_path=str(tmp_path / "view.duckdb")), "projector")
    await answering(nc)
    yield
    await svc.stop_all()


async def known_state(js) -> int:
    """seed_fleet's task `m` (experiment 0 completed, 1 running on h1's GPU 1, 2 failed oom) plus one
    planned and not placed; h1 alive, h2 dead; a scheduler that decided twice in 3 ms each."""
    await commands.submit_task(js, spec_from_obj(small_spec("m")))
    await seed_fleet(js, "m")
    last = await publish(js, (subj.experiment("m", 3, "planned"), golden("experiment.planned", id="m.3.0.planned", task="m", n=3, attempt=0)))
    await alive(js, "h1", running=["m/1/0"])
    h = Histogram()
    h.observe(0.003)
    h.observe(0.003)
    kv = await js.key_value(subj.STATS_BUCKET)
    await kv.put("scheduler.s1", msgspec.json.encode(StatsPublisher("scheduler", "s1", decision_seconds=h).record()))
    return last


async def silent_gpumon(js) -> int:
    """h3: online, but its only GPU sample is 5 minutes old."""
    last = await publish(js, (subj.host("h3", "registered"), golden("host.registered", id="h3.reg", host="h3", instance="h3-1", node="node-c")))
    old = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    await bus.append(js, subj.gpu("h3", 0), golden("gpu.sample", id="h3.0.old", host="h3", index=0, uuid="GPU-0", util_gpu=99, at=old))
    await alive(js, "h3")
    return last


async def test_metrics_carry_the_fleet_tasks_and_pipeline(settings, nc, js, projector):
    await known_state(js)
    last = await silent_gpumon(js)
    await applied(nc, last, gpu_samples=25)
    for _ in range(100):  # the projector publishes its figures every few seconds: wait for one after its first queries
        if any(st.service == "projector" and st.histograms["query_seconds"].counts[-1] for st in await service_stats(js)):
            break
        await asyncio.sleep(0.1)
    async with served(create_app(nc=nc, settings=settings)) as url, httpx.AsyncClient() as http:
        r = await http.get(f"{url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=")
    s = parse(r.text)
    gpu1 = {"host": "h1", "gpu": "1", "model": H100, "node": ""}
    # per GPU: the latest of the 12 samples (util 50 + 10 * gpu + 11), the experiment holding it
    assert value(s, "autotune_gpu_utilization_percent", **gpu1) == 71
    assert value(s, "autotune_gpu_memory_total_bytes", **gpu1) == 81559 * 1024 * 1024
    assert value(s, "autotune_gpu_temperature_celsius", **gpu1) == 71
    assert value(s, "autotune_gpu_busy", **gpu1) == 1 and value(s, "autotune_gpu_busy", **{**gpu1, "gpu": "0"}) == 0
    assert value(s, "autotune_gpu_experiment", **gpu1, task="m", experiment="1", attempt="0") == 1
    assert value(s, "autotune_host_online", host="h1", node="") == 1 and value(s, "autotune_host_online", host="h2", node="node-b") == 0
    assert value(s, "autotune_host_status", host="h1", status="busy") == 1 and value(s, "autotune_host_status", host="h2", status="offline") == 1
    assert not any(n == "autotune_gpu_utilization_percent" and dict(lab)["host"] == "h2" for n, lab in s), "a dead host's last reading is not its state"
    # h3 is online, but no GPU of it has sampled in the last 60 s: no readings, and that is said
    assert value(s, "autotune_host_gpus_reporting", host="h1", node="") == 2
    assert value(s, "autotune_host_gpus_reporting", host="h3", node="node-c") == 0
    assert value(s, "autotune_host_gpus_reporting", host="h2", node="node-b") == 0
    assert value(s, "autotune_gpu_memory_total_bytes", host="h3", gpu="0", model=H100, node="node-c") > 0
    assert not any(n == "autotune_gpu_utilization_percent" and dict(lab)["host"] == "h3" for n, lab in s), "a 5-minute-old reading is not now"
    # tasks and experiments
    assert value(s, "autotune_tasks", status="running") == 1
    assert value(s, "autotune_experiments", status="completed", failure_kind="") == 1
    assert value(s, "autotune_experiments", status="failed", failure_kind="oom") == 1
    assert value(s, "autotune_experiments", status="running", failure_kind="") == 1
    assert value(s, "autotune_queue_depth") == 1
    assert value(s, "autotune_task_best_score", task="m", simulated="true") == 1.25
    # durations: the completed attempt took 30 s, the failed one 0 s
    assert value(s, "autotune_experiment_duration_seconds_bucket", status="completed", le="15.0") == 0
    assert value(s, "autotune_experiment_duration_seconds_bucket", status="completed", le="30.0") == 1
    assert value(s, "autotune_experiment_duration_seconds_sum", status="completed") == 30
    assert value(s, "autotune_experiment_duration_seconds_count", status="failed") == 1
    # the pipeline
    events = (await js.stream_info(subj.EVENTS_STREAM)).state.last_seq
    assert value(s, "autotune_stream_messages_total", stream=subj.EVENTS_STREAM) == events
    assert value(s, "autotune_stream_messages_total", stream=subj.TELEMETRY_STREAM) == 25
    assert value(s, "autotune_projector_lag_messages", stream=subj.EVENTS_STREAM) == 0
    assert value(s, "autotune_projector_lag_seconds", stream=subj.EVENTS_STREAM) == 0
    assert value(s, "autotune_projector_dead_letters", stream=subj.EVENTS_STREAM) == 0
    assert value(s, "autotune_scheduler_decision_seconds_bucket", instance="s1", le="0.0025") == 0
    assert value(s, "autotune_scheduler_decision_seconds_bucket", instance="s1", le="0.005") == 2
    assert value(s, "autotune_scheduler_decision_seconds_count", instance="s1") == 2
    queries = [v for (n, _), v in s.items() if n == "autotune_projector_query_seconds_count"]
    assert len(queries) == 1 and queries[0] > 0, "the projector publishes its query latency"
    assert {n for n, _ in s} <= {f"{n}{suffix}" for n in METRICS for suffix in ("", "_total", "_bucket", "_sum", "_count", "_created")}


async def test_a_scrape_is_cached_yet_reads_its_writes(settings, nc, js, projector):
    metrics = Metrics(max_age_s=60)
    seq = (await commands.submit_task(js, spec_from_obj(small_spec("first")))).seq
    first = await metrics.scrape(nc, js, min_seq=seq)
    assert value(parse(first.decode()), "autotune_tasks", status="submitted") == 1
    seq = (await commands.submit_task(js, spec_from_obj(small_spec("second")))).seq
    assert await metrics.scrape(nc, js) is first, "within max_age_s a scrape is served from the cache"
    fresh = await metrics.scrape(nc, js, min_seq=seq)  # a write newer than the cache: gathered again, and including it
    assert value(parse(fresh.decode()), "autotune_tasks", status="submitted") == 2


class _Families:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self):
        return families(self.snapshot)


def test_the_exposition_is_byte_for_byte_what_prometheus_client_writes():
    """render() writes the bulk of the series itself (the library's generate_latest took 1.1 to 1.6 s
    at 1,000 hosts x 8 GPUs): it must be exactly what generate_latest makes of the same families,
    odd label values and odd numbers included."""
    odd = 'gpu "7" \\ left\nright é'
    gpus = [rm.HostGpu(index=0, name=odd, memory_total_mib=81559, memory_used_mib=0.5, util_gpu=math.nan, temperature_c=math.inf, power_w=-math.inf,
                       sampled_at="2026-01-01T00:00:00Z", leased_by='t"x/3/1'),
            rm.HostGpu(index=1, name=None, memory_total_mib=None, util_gpu=1e-7, temperature_c=123456789.0, power_w=0, sampled_at="x")]  # fmt: skip
    hosts = [rm.Host(host="h-1", status="busy", alive=True, node=odd, simulated=True, gpus=gpus),
             rm.Host(host="h-2", status="offline", alive=False, gpus=gpus[:1])]  # fmt: skip
    stats = ServiceStats(service="scheduler", instance='s\\1', at=time.time(),
                         histograms={"decision_seconds": StatsPublisher("scheduler", "s", decision_seconds=Histogram()).record().histograms["decision_seconds"]})  # fmt: skip
    snapshot = Snapshot(
        hosts=hosts, tasks={"running": 2, "failed": 1}, experiments=[("failed", "oom", 3), ("planned", "", 4)],
        durations={"completed": ([0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2], 123.5, 2)}, best=[("t1", -1379.4784687583408, True), ("t2", 1e300, False)],
        streams=[StreamPosition(stream="S", last_seq=10**12, applied_seq=5, lag_messages=3, lag_seconds=0.25, dead_letters=1),
                 StreamPosition(stream="T", last_seq=0, applied_seq=None, lag_messages=None, lag_seconds=None)],
        stats=[stats], collected_at=time.time(), collect_seconds=0.0123,
    )  # fmt: skip
    body = render(snapshot)
    assert body == generate_latest(_Families(snapshot))
    assert 'model="gpu \\"7\\" \\\\ left\\nright é"' in body.decode(), "the odd label value is in, escaped"
    empty = Snapshot(hosts=[], tasks={}, experiments=[], durations={}, best=[], streams=[], stats=[], collected_at=0.0)
    assert render(empty) == generate_latest(_Families(empty))


def dashboard_metrics(expr: str) -> set[str]:
    names = set(re.findall(r"\bautotune_[a-z_]+", expr))
    return {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in names}


def test_the_grafana_dashboard_loads_and_names_only_series_that_exist():
    board = json.loads((ROOT / "infra" / "grafana" / "autotune-fleet.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10 and board["title"]
    used = set().union(*(dashboard_metrics(e) for e in exprs))
    assert used and used <= set(METRICS), f"the dashboard names series /metrics does not export: {used - set(METRICS)}"
    assert {"autotune_gpu_utilization_percent", "autotune_projector_lag_seconds", "autotune_scheduler_decision_seconds"} <= used
    scrape = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["metrics_path"] == "/metrics"
