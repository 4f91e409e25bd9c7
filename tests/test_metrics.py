"""`GET /metrics` against a known state: a real nats-server and projector, a fleet and a task history
published as events (tests/test_api.py's seed_fleet), a liveness key, a scheduler's published
figures; the exposition parsed with prometheus-client's own parser. And the Grafana dashboard in
infra/ names only series that exist."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import msgspec
import pytest
import uvicorn
import yaml
from prometheus_client.parser import text_string_to_metric_families

from autotune.api.app import create_app
from autotune.metrics import METRICS, Metrics
from autotune.metrics.collect import service_stats
from autotune.projector.service import run as projector_run
from autotune.schemas import subjects as subj
from autotune.schemas.spec import spec_from_obj
from autotune.shared import commands
from autotune.shared.stats import Histogram, StatsPublisher
from tests.conftest import free_port
from tests.helpers import Services, small_spec
from tests.test_api import alive, answering, applied, golden, publish, seed_fleet

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


async def test_metrics_carry_the_fleet_tasks_and_pipeline(settings, nc, js, projector):
    last = await known_state(js)
    await applied(nc, last, gpu_samples=24)
    for _ in range(100):  # the projector publishes its figures every few seconds: wait for one after its first queries
        if any(st.service == "projector" and st.histograms["query_seconds"].counts[-1] for st in await service_stats(js)):
            break
        await asyncio.sleep(0.1)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(nc=nc, settings=settings), host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient() as http:
            r = await http.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.should_exit = True
        await serving
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
    assert value(s, "autotune_stream_messages_total", stream=subj.TELEMETRY_STREAM) == 24
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
