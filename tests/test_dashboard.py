# ruff: noqa: F811  (the fixtures of test_api.py are imported by name, and tests take them as arguments)
"""The dashboard's pages through Litestar's test client, against a real nats-server and a real
projector (the fixtures and the seeded fleet of test_api.py): what each page shows is read through
`autotune.reads`, like the JSON API's answers."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
import yaml

from autotune.reads import results
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared import bus
from autotune.shared.pareto import front
from tests.fixtures.api_kit import alive, applied, publish, seed_fleet, submit
from tests.helpers import golden, small_spec


def script_json(html: str, element_id: str):
    m = re.search(rf'<script type="application/json" id="{element_id}"[^>]*>(.*?)</script>', html, re.S)
    assert m, f"no JSON block #{element_id}"
    return json.loads(m.group(1).replace("<\\/", "</"))


def live_config(html: str) -> dict:
    return script_json(html, "live-config")


# --- pure parts ----------------------------------------------------------------------------------------------


def test_frontier_is_the_set_no_point_dominates():
    """The O(n log n) sweep against the brute-force dominance rule the strategies use."""
    r = random.Random(7)
    for trial in range(200):
        k = r.randrange(1, 40)
        xs = [r.choice([None, *range(8)]) if trial % 3 == 0 else r.uniform(0, 10) for _ in range(k)]
        ys = [r.choice([None, *range(8)]) if trial % 3 == 0 else r.uniform(0, 10) for _ in range(k)]
        keep = [r.random() > 0.2 for _ in range(k)]
        for xb, yb in (("max", "max"), ("min", "max"), ("max", "min"), ("min", "min")):
            sx, sy = (-1 if xb == "max" else 1), (-1 if yb == "max" else 1)
            items = [i for i in range(k) if keep[i] and xs[i] is not None and ys[i] is not None]
            brute = front(items, key=lambda i: [sx * xs[i], sy * ys[i]])
            # equal points do not dominate each other: the sweep keeps one of each, brute force all
            assert {(xs[i], ys[i]) for i in results.frontier(xs, ys, xb, yb, keep)} == {(xs[i], ys[i]) for i in brute}


def test_slo_bounds_follow_the_scoring_rules():
    spec = {"slo": {"latency": {"p90": {"threshold": 2.0}}, "ttft": {"threshold": 0.5}, "tpot": {"threshold": 0.05}}}
    assert results.slo_bound(spec, results.METRICS["p90_e2e_latency"]) == 2.0
    assert results.slo_bound(spec, results.METRICS["mean_ttft"]) == 0.5
    assert results.slo_bound(spec, results.METRICS["tps_per_user"]) == pytest.approx(20.0), "1 / mean TPOT: a TPOT limit bounds it from below"
    assert results.slo_bound(spec, results.METRICS["mean_total_tps_per_gpu"]) is None
    assert results.slo_bound({}, results.METRICS["mean_ttft"]) is None


# --- pages ---------------------------------------------------------------------------------------------------


async def earlier_samples(js, host: str, gpu: int, minutes: int) -> None:
    """One GPU sample a minute over the last `minutes` (the seeded fleet's are all from one second)."""
    now = datetime.now(UTC)
    for k in range(minutes):
        at = (now - timedelta(minutes=minutes - k)).isoformat()
        await bus.append(js, subj.gpu(host, gpu), golden("gpu.sample", id=f"{host}.{gpu}.early{k}", host=host, index=gpu, uuid=f"GPU-{gpu}",
                                                           util_gpu=10.0 * k, temperature_c=40 + k, at=at))  # fmt: skip


async def test_overview_shows_the_fleet_by_node_running_tasks_and_the_timeline(client, js, nc):
    await submit(client, "ov")
    await earlier_samples(js, "h1", 0, 6)
    await applied(nc, await seed_fleet(js, "ov"), gpu_samples=30)
    await alive(js, "h1", running=["ov/1/0"])
    r = await client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "SIMULATED" in html, "the task is a rehearsal: the page says so"
    assert 'href="/hosts/h1"' in html and 'href="/hosts/h2"' in html
    assert "Kubernetes node <b>node-b</b>" in html and "hosts outside Kubernetes" in html, "grouped by Kubernetes node"
    busy = html[html.index('data-gpu="h1/1"'):]
    assert 'href="/tasks/ov/experiments/1?attempt=0"' in busy[:4000], "which experiment holds the GPU"
    spark = re.search(r'data-gpu="h1/0".*?data-spark="util" data-values="([^"]*)"', html, re.S)
    assert spark and spark.group(1).split(",")[:3] == ["0", "10", "20"] and len(spark.group(1).split(",")) >= 6, "a sparkline from the samples"
    assert 'href="/tasks/ov"' in html, "the running task is listed"
    assert 'data-url="/timeline.json?hours=3.0"' in html, "the timeline's bars are fetched by the page"
    timeline = (await client.get("/timeline.json", params={"hours": 3})).json()
    assert sorted(zip(timeline["n"], [timeline["lanes"][i] for i in timeline["lane"]], strict=True)) == [(0, "h1/0"), (1, "h1/1"), (2, "h1/0")]
    assert timeline["end"][timeline["n"].index(1)] is None, "experiment 1 still runs"
    assert timeline["tasks"] == ["ov"] and {timeline["statuses"][s] for s in timeline["status"]} == {"completed", "running", "failed"}
    cfg = live_config(html)
    assert [s["id"] for s in cfg["streams"]] == ["events", "telemetry"]
    assert cfg["streams"][0]["url"].startswith("/api/events?subject=autotune.") and cfg["streams"][0]["since_seq"] > 1
    assert "experiment.completed" in cfg["types"] and "gpu.sample" in cfg["types"]
    for part in ("fleet", "running", "timeline"):
        p = await client.get("/", params={"part": part})
        assert p.status_code == 200 and p.text.lstrip().startswith("<section id=") and "<html" not in p.text


async def test_a_large_fleet_is_one_row_per_host_paged_and_expanded_in_the_url(client, js, nc):
    """Over COMPACT_GPUS GPUs a host is one row (its GPUs as cells with their figures), HOSTS_PER_PAGE
    hosts a page, node by node; `expand` shows a host's GPU rows with sparklines; `fleet` filters."""
    from autotune.dashboard import fleet

    gpus = [msgspec.to_builtins(ev.GpuInfo(index=i, uuid=f"GPU-{i}", name="NVIDIA H100 80GB HBM3", memory_total_mib=81920)) for i in range(8)]
    count = fleet.HOSTS_PER_PAGE + 3  # more hosts than a page; 8 GPUs each is over COMPACT_GPUS
    last = 0
    for k in range(count):
        h = f"w{k:03d}"
        last = (await bus.append(js, subj.host(h, "registered"), golden("host.registered", id=f"{h}.reg", host=h, instance=f"{h}-1", gpus=gpus,
                                                                          node=f"node-{k // 4}" if k < count - 3 else None))).seq  # fmt: skip
        if k < 10:
            await alive(js, h)
    for k in range(6):  # GPU 3 of w001: a minute of readings
        await bus.append(js, subj.gpu("w001", 3), golden("gpu.sample", id=f"w001.3.{k}", host="w001", index=3, uuid="GPU-3", util_gpu=20.0 + k,
                                                         memory_used_mib=40960.0, memory_total_mib=81920, temperature_c=50 + k,
                                                         at=(datetime.now(UTC) - timedelta(seconds=60 - 10 * k)).isoformat()))  # fmt: skip
    await applied(nc, last, gpu_samples=6)
    html = (await client.get("/")).text
    assert 'data-gpu="w001/3"' in html and "<tr data-gpu=" not in html, "no GPU rows: one row per host"
    cell = re.search(r'<i data-gpu="w001/3" data-u="25" data-m="40960" data-mt="81920" data-t="55" data-l="" style=--u:25></i>', html)
    assert cell, "the GPU's cell carries its latest figures"
    assert html.count('class="host-first host-row"') == fleet.HOSTS_PER_PAGE and "hosts page 1 / 2" in html
    assert "Kubernetes node <b>node-0</b> <small>4 hosts · 32 GPUs, 0 held" in html
    second = (await client.get("/", params={"fleet_page": 2})).text
    assert second.count('class="host-first host-row"') == 3 and "hosts outside Kubernetes" in second and 'href="/hosts/w052"' in second
    shown = (await client.get("/", params=[("expand", "w001"), ("expand", "w002")])).text
    assert shown.count("<tr data-gpu=") == 16, "two hosts' GPUs, one row each"
    spark = re.search(r'data-gpu="w001/3".*?data-spark="util" data-values="([^"]*)"', shown, re.S)
    values = [int(v) for v in spark.group(1).split(",")] if spark else []
    assert len(values) >= 2 and all(20 <= v <= 25 for v in values), "an expanded host's GPUs have their sparklines"
    assert 'href="?expand=w002"' in shown, "its collapse link keeps the other expanded host"
    online = (await client.get("/", params={"fleet": "online"})).text
    assert online.count('class="host-first host-row"') == 10 and "hosts page" not in online, "the 10 live hosts, on one page"
    part = await client.get("/", params={"fleet": "online", "part": "fleet"})
    assert part.text.lstrip().startswith('<section id="fleet"') and part.text.count('class="host-first host-row"') == 10, "a live refresh keeps the view"
    bad = await client.get("/", params={"fleet": "sleepy"})
    assert bad.status_code == 400 and "fleet status `sleepy` is not one of online, busy, draining, offline" in bad.text


async def test_tasks_page_filters_and_pages_on_the_server(client):
    for name, over in (("alpha", {}), ("beta", {"base_runtime": "vllm"}), ("gamma", {"model": {"id_or_path": "Qwen/Qwen2.5-7B"}})):
        await submit(client, name, **over)
    html = (await client.get("/tasks")).text
    assert all(f'href="/tasks/{t}"' in html for t in ("alpha", "beta", "gamma")) and "3 tasks" in html
    only = (await client.get("/tasks", params={"engine": "vllm"})).text
    assert 'href="/tasks/beta"' in only and 'href="/tasks/alpha"' not in only
    only = (await client.get("/tasks", params={"model": "qwen"})).text
    assert 'href="/tasks/gamma"' in only and 'href="/tasks/beta"' not in only
    only = (await client.get("/tasks", params={"name": "alp", "status": "submitted"})).text
    assert 'href="/tasks/alpha"' in only and 'href="/tasks/gamma"' not in only
    assert "No task matches" in (await client.get("/tasks", params={"status": "running"})).text
    bad = await client.get("/tasks", params={"status": "sleeping"})
    assert bad.status_code == 400 and "is not one of" in bad.text and bad.headers["content-type"].startswith("text/html")


async def test_task_page_best_configuration_experiments_and_charts(client, js, nc):
    await submit(client, "tp", model={"id_or_path": "meta-llama/Llama-3.1-8B-Instruct", "hf_token": "hf_topsecret"},
                 slo={"tpot": {"threshold": 0.02}})  # fmt: skip
    await applied(nc, await seed_fleet(js, "tp"))
    r = await client.get("/tasks/tp")
    assert r.status_code == 200
    html = r.text
    assert "hf_topsecret" not in html, "a spec's hf_token never appears"
    assert "SIMULATED" in html
    assert 'id="export-cmd"' in html and 'id="export-docker"' in html and 'id="export-k8s"' in html and "data-copy=\"#export-k8s\"" in html
    assert "python3 -m sglang.launch_server --model-path meta-llama/Llama-3.1-8B-Instruct" in html
    assert 'data-action="cancel"' in html and 'data-action="clone"' in html
    rows = re.findall(r'<tr data-n="(\d+)" data-attempt="0"', html)
    assert rows == ["0", "1", "2"]
    failed = html[html.index('<tr data-n="2"'):]
    assert "<b>oom</b>" in failed[: failed.index("</tr>")], "a failed row names its failure kind"
    assert 'data-url="/tasks/tp/points.json?x=tps_per_user&amp;y=mean_total_tps_per_gpu"' in html
    points = (await client.get("/tasks/tp/points.json", params={"x": "tps_per_user", "y": "mean_total_tps_per_gpu"})).json()
    assert points["n"] == [0, 2] and points["status"] == ["completed", "failed"] and points["x"] == "tps_per_user"
    assert points["frontier_keys"] == [[0, 0]] and points["y_bound"] is None and points["x_bound"] == pytest.approx(50.0)
    assert set(points["parameters"]) == {"mem-fraction-static", "max-running-requests"}
    assert live_config(html)["streams"][0]["url"] == "/api/tasks/tp/events?follow=true"

    desc = (await client.get("/tasks/tp", params={"sort": "n", "order": "desc", "part": "experiments"})).text
    assert re.findall(r'<tr data-n="(\d+)"', desc) == ["2", "1", "0"] and desc.lstrip().startswith('<section id="experiments"')
    failed_only = (await client.get("/tasks/tp", params={"status": "failed", "part": "experiments"})).text
    assert re.findall(r'<tr data-n="(\d+)"', failed_only) == ["2"]
    by_kind = (await client.get("/tasks/tp", params={"failure": "oom", "part": "experiments"})).text
    assert re.findall(r'<tr data-n="(\d+)"', by_kind) == ["2"]
    assert (await client.get("/tasks/tp", params={"part": "head"})).text.lstrip().startswith('<section id="task-head"')
    other = (await client.get("/tasks/tp", params={"x": "mean_ttft", "y": "mean_total_tps"})).text
    assert "points.json?x=mean_ttft&amp;y=mean_total_tps" in other
    assert (await client.get("/tasks/tp/points.json", params={"x": "mean_ttft"})).json()["x_label"] == "mean TTFT (s)"
    bad = await client.get("/tasks/tp", params={"x": "vibes"})
    assert bad.status_code == 400 and "cannot plot `vibes`" in bad.text

    pts = (await client.get("/tasks/tp/points.json", params={"n": [2]})).json()
    assert pts["n"] == [2] and pts["frontier_keys"] == [[0, 0]] and pts["frontier"] == []

    # the chart data is kept per version of the task's data: an experiment finishing is a new version
    again = await client.get("/tasks/tp/points.json", headers={"Accept-Encoding": "identity"})
    assert again.json()["n"] == [0, 2] and "content-encoding" not in again.headers, "the same answer, plain for a client without gzip"
    seq = await publish(js, (subj.experiment("tp", 1, "completed"), golden("experiment.completed", id=ev.exp_id("tp", 1, 0, "completed"), task="tp", n=1,
                                                                           attempt=0, host="h1", score=0.5)))  # fmt: skip
    await applied(nc, seq)
    assert (await client.get("/tasks/tp/points.json")).json()["n"] == [0, 2, 1], "the finished experiment is in the next answer"


async def test_task_page_says_why_it_waits(client, js, nc):
    await submit(client, "waits")
    html = (await client.get("/tasks/waits")).text
    assert "waiting for a scheduler to start it" in html
    # the scheduler's own reason for a planned experiment it cannot place (experiment.waiting)
    x = ev.exp_id
    reason = "needs 4 GPUs of type H100 on one host; the largest matching host has 2"
    seq = await publish(
        js,
        (subj.task("waits", "started"), golden("task.started", id="waits.started", task="waits", strategy="grid_search", budget=2, space_size=2)),
        (subj.experiment("waits", 0, "planned"), golden("experiment.planned", id=x("waits", 0, 0, "planned"), task="waits", n=0, attempt=0, retry_of=None)),
        (subj.experiment("waits", 0, "waiting"), golden("experiment.waiting", id=x("waits", 0, 0, "waiting-1"), task="waits", n=0, reason=reason, fits=False)),
    )  # fmt: skip
    await applied(nc, seq)
    html = (await client.get("/tasks/waits")).text
    assert f'<p class="waiting" id="waiting">waiting: experiment 0 waits for placement: {reason} (no live host could ever run it' in html
    row = html[html.index('<tr data-n="0"'):]
    assert f'<span class="waiting">{reason} (no live host could ever run it)</span>' in row[: row.index("</tr>")], "the row says why too"
    exp = (await client.get("/tasks/waits/experiments/0")).text
    assert f'not placed yet: <span class="waiting">{reason}</span>' in exp


async def test_experiment_page_runs_distributions_telemetry_log_and_failure(client, js, nc):
    await submit(client, "ex")
    await applied(nc, await seed_fleet(js, "ex"), gpu_samples=24)
    html = (await client.get("/tasks/ex/experiments/0")).text
    assert "SIMULATED" in html and "D(100,100)" in html and "loading weights" in html and "server ready" in html
    dist = script_json(html, "dist-data")
    assert dist["requests"] == 2 and dist["failed"] == 1, "the raw samples: one ok, one failed"
    ttft = next(i for i in dist["items"] if i["metric"] == "ttft")
    assert ttft["count"] == 1 and ttft["p50"] == pytest.approx(0.1) and ttft["cdf_v"][0] == pytest.approx(0.1)
    tele = script_json(html, "telemetry-data")
    assert {p["gpu"] for p in tele["points"]} == {0} and sum(p["samples"] for p in tele["points"]) == 12
    streams = {s["id"]: s for s in live_config(html)["streams"]}
    assert streams["logs"]["url"].startswith("/api/tasks/ex/experiments/0/logs?follow=true") and streams["logs"]["until"] == ["end"]
    assert streams["logs"]["since_seq"] > 1, "the live tail goes on after the lines shown"
    assert "telemetry" not in streams, "a finished experiment's GPUs are not followed"

    failed = (await client.get("/tasks/ex/experiments/2")).text
    assert 'id="failure"' in failed and "oom" in failed and "torch.OutOfMemoryError: CUDA out of memory" in failed
    running = (await client.get("/tasks/ex/experiments/1")).text
    assert "telemetry" in {s["id"] for s in live_config(running)["streams"]}
    missing = await client.get("/tasks/ex/experiments/9")
    assert missing.status_code == 404 and "has no experiment 9" in missing.text


async def test_a_real_engine_on_cpu_is_labelled_on_every_page_and_its_engine_telemetry_is_shown(client, js, nc):
    """Issue 21: a real engine on CPU is marked wherever its figures are shown, as simulated ones are; the
    experiment page shows the engine's own /metrics summary (what explains a slow configuration)."""
    await submit(client, "oncpu", base_runtime="vllm", deployment_mode="local", gpu_type="cpu")
    x = ev.exp_id
    engine = {"source": "vllm", "samples": 31, "scrape_failures": 2, "mean_running": 3.5, "max_running": 16.0, "mean_waiting": 7.25, "max_waiting": 12.0,
              "mean_kv_cache_usage": 0.625, "max_kv_cache_usage": 0.97, "preemptions": 4.0, "prompt_tokens": 6400.0, "generation_tokens": 3200.0,
              "steps": 3840.0}
    seq = await publish(
        js,
        (subj.task("oncpu", "started"), golden("task.started", id="oncpu.started", task="oncpu", strategy="grid_search", budget=1, space_size=1)),
        (subj.experiment("oncpu", 0, "planned"), golden("experiment.planned", id=x("oncpu", 0, 0, "planned"), task="oncpu", n=0, attempt=0)),
        (subj.experiment("oncpu", 0, "assigned", "c1"), golden("experiment.assigned", id=x("oncpu", 0, 0, "assigned"), task="oncpu", n=0, attempt=0,
                                                               host="c1", gpu_indices=[], gpu_uuids=[], gpu_type="cpu", deployment_mode="local", simulated=False)),
        (subj.experiment("oncpu", 0, "started"), golden("experiment.started", id=x("oncpu", 0, 0, "started"), task="oncpu", n=0, attempt=0, host="c1",
                                                        device="cpu", env={"VLLM_CPU_KVCACHE_SPACE": "1"})),
        (subj.experiment("oncpu", 0, "completed"), golden("experiment.completed", id=x("oncpu", 0, 0, "completed"), task="oncpu", n=0, attempt=0,
                                                          host="c1", score=1.0, engine=engine)),
    )  # fmt: skip
    await applied(nc, seq)
    banner = "<b>REAL ENGINE ON CPU</b>"
    task = (await client.get("/tasks/oncpu")).text
    assert banner in task and "SIMULATED" not in task and '<span class="cpu"' in task
    assert '<span class="cpu"' in (await client.get("/tasks", params={"q": "oncpu"})).text
    exp = (await client.get("/tasks/oncpu/experiments/0")).text
    assert banner in exp and "SIMULATED" not in exp
    section = exp[exp.index('<section id="engine">'):]
    section = section[: section.index("</section>")]
    assert "(vllm), 31 samples over the benchmark (2 scrapes failed or timed out)" in section
    assert "(vllm), 31 samples" in section and "0.97" in section and "<b>4</b>" in section and "7.25" in section
    assert "forward passes 3,840 (<b>2.5</b> tokens per pass)" in section  # (6,400 + 3,200) / 3,840: the engine's batch
    assert "VLLM_CPU_KVCACHE_SPACE" in exp and "<dt>device</dt><dd>cpu" in exp


async def test_host_page_gpus_history_and_experiments(client, js, nc):
    await submit(client, "hp")
    await applied(nc, await seed_fleet(js, "hp"), gpu_samples=24)
    await alive(js, "h1", running=["hp/1/0"])
    html = (await client.get("/hosts/h1")).text
    assert 'data-action="drain"' in html and 'data-action="remove"' in html
    assert 'href="/tasks/hp/experiments/1?attempt=0"' in html
    hist = script_json(html, "history-data")
    assert {p["gpu"] for p in hist["points"]} == {0, 1} and hist["gpus"] == [0, 1]
    missing = await client.get("/hosts/nowhere")
    assert missing.status_code == 404 and "no host `nowhere`" in missing.text


async def test_compare_shows_best_configurations_and_fronts(client, js, nc):
    await submit(client, "c1")
    await submit(client, "c2")
    await applied(nc, await seed_fleet(js, "c1"))
    html = (await client.get("/compare", params={"task": ["c1", "c2"]})).text
    assert 'href="/tasks/c1"' in html and "experiment 0</a>, score" in html
    data = script_json(html, "compare-data")
    assert [p["task"] for p in data] == ["c1", "c2"] and data[0]["frontier_keys"] == [[0, 0]] and data[1]["n"] == []


async def test_submit_check_says_line_and_path_as_the_cli_does(client):
    html = (await client.get("/submit")).text
    assert 'id="submit-form"' in html and 'name="simulate"' in html
    bad = "task_name: t\nmodel: m\noptimization:\n  max_iterations: lots\n"
    r = await client.post("/submit/check", data={"text": bad, "source": "bad.yaml"})
    assert r.status_code == 200
    assert "autotune: invalid task file bad.yaml:4: $.optimization.max_iterations: Expected `int`, got `str`" in r.text.replace("&#96;", "`")
    assert '<span class="bad">   4 |   max_iterations: lots</span>' in r.text
    ok = yaml.safe_dump(small_spec("fine", deployment_mode="docker", model={"id_or_path": "m/x", "hf_token": "hf_never"}))
    r = await client.post("/submit/check", data={"text": ok, "source": "fine.yaml", "simulate": "on"})
    assert 'data-valid="true"' in r.text and "fine" in r.text and "SIMULATED" in r.text and "hf_never" not in r.text
    r = await client.post("/submit/check", data={"text": "  "})
    assert "the task file is empty" in r.text
    assert (await client.get("/api/tasks/fine")).status_code == 404, "checking publishes nothing"


async def test_unknown_pages_and_tasks_are_pages_not_json(client):
    r = await client.get("/tasks/nope")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html") and "no task `nope`" in r.text
    assert (await client.get("/static/dashboard.css")).status_code == 200
    assert (await client.get("/api/tasks/nope")).json()["status"] == 404, "the JSON API still answers JSON"
