"""The HTTP API through Litestar's test client, against a real nats-server and a real projector.

A fleet and a task's history are published as events (the golden-sample shapes) instead of running
engines: what the API shows is a function of the log, whoever wrote it."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from litestar.testing import AsyncTestClient

from autotune.api.app import create_app
from autotune.projector.service import run as projector_run
from autotune.schemas import subjects as subj
from autotune.shared import bus
from autotune.shared import query as q
from tests.fixtures.api_kit import (
    AUTH,
    TOKEN,
    Background,
    alive,
    answering,
    applied,
    publish_later,
    seed_fleet,
    sse_events,
    submit,
)
from tests.helpers import golden, small_spec

# --- tasks ----------------------------------------------------------------------------------------------------


async def test_submit_yaml_or_json_then_read_your_writes(client):
    created = await submit(client, "first")
    assert created["id"] == "first" and created["url"] == "/api/tasks/first" and created["simulate"] is True  # deployment_mode: simulated
    r = await client.get("/api/tasks/first")  # right after the POST: the projector has applied it
    assert r.status_code == 200
    t = r.json()
    assert t["status"] == "submitted" and t["simulate"] is True and t["spec"]["task_name"] == "first"
    assert t["progress"]["completed"] == 0 and t["links"]["export"].startswith("/api/tasks/first/export")

    raw = small_spec("second", deployment_mode="docker", model={"id_or_path": "m/x", "hf_token": "hf_secret"})
    r = await client.post("/api/tasks?simulate=true", content=json.dumps(raw), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 201 and r.json()["simulate"] is True
    t = (await client.get("/api/tasks/second")).json()
    assert t["simulate"] is True and t["deployment_mode"] == "docker"
    assert t["spec"]["model"]["hf_token"] == "***", "secrets never leave through the API"

    page = (await client.get("/api/tasks")).json()
    assert page["total"] == 2 and [i["id"] for i in page["items"]] == ["second", "first"]
    assert (await client.get("/api/tasks", params={"name": "sec"})).json()["total"] == 1
    assert (await client.get("/api/tasks", params={"status": "running"})).json()["total"] == 0
    assert [i["id"] for i in (await client.get("/api/tasks", params={"limit": 1, "offset": 1})).json()["items"]] == ["first"]


async def test_submit_errors_name_the_field_and_line(client):
    r = await client.post("/api/tasks", content="task_name: t\nmodel: m\noptimization:\n  max_iterations: lots\n", headers=AUTH)
    assert r.status_code == 400
    assert r.json() == {"error": "Expected `int`, got `str`", "status": 400, "path": "$.optimization.max_iterations", "line": 4}
    r = await client.post("/api/tasks", content='{"task_name": "t", "model": "m", "optimisation": {}}', headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["path"] == "$.optimisation" and r.json()["line"] == 1
    r = await client.post("/api/tasks", content="{not json", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400 and "invalid JSON" in r.json()["error"]
    await submit(client, "dup")
    r = await client.post("/api/tasks", content=yaml.safe_dump(small_spec("dup")), headers=AUTH)
    assert r.status_code == 409 and "already exists" in r.json()["error"]


async def test_mutating_calls_need_the_token(client):
    body = yaml.safe_dump(small_spec("guarded"))
    assert (await client.post("/api/tasks", content=body)).status_code == 401
    r = await client.post("/api/tasks", content=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "Bearer" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
    for method, url in (("POST", "/api/tasks/x/cancel"), ("POST", "/api/tasks/x/clone"), ("POST", "/api/hosts/h/drain"), ("DELETE", "/api/hosts/h"),
                        ("POST", "/api/sql")):  # fmt: skip
        assert (await client.request(method, url)).status_code == 401, url
    assert (await client.get("/api/tasks")).status_code == 200  # reading needs no token


async def test_task_progress_best_experiments_and_exports(client, js):
    await submit(client, "tuned", parameters={"mem-fraction-static": [0.8, 0.88], "max-running-requests": [8, 64]})
    await seed_fleet(js, "tuned")
    await alive(js, "h1", running=["tuned/1/0"])
    await client.post("/api/tasks/tuned/cancel", headers=AUTH)  # a write: what follows reads after it
    t = (await client.get("/api/tasks/tuned")).json()
    assert t["status"] == "cancelling"
    p = t["progress"]
    assert (p["budget"], p["planned"], p["completed"], p["failed"], p["running"], p["done"], p["percent"]) == (4, 3, 1, 1, 1, 2, 50.0)
    best = t["best"]
    assert best["n"] == 0 and best["score"] == 1.25 and best["parameters"]["mem-fraction-static"] == 0.8
    assert best["command"].startswith("python3 -m sglang.launch_server --model-path meta-llama/Llama-3.1-8B-Instruct") and "--max-running-requests 8" in best["command"]
    assert best["metrics"]["mean_e2e_latency"] == 1.2

    exps = (await client.get("/api/tasks/tuned/experiments", params={"sort": "score"})).json()
    assert exps["simulate"] is True and exps["total"] == 3
    assert [e["n"] for e in exps["items"]] == [0, 1, 2] and exps["items"][0]["score"] == 1.25
    assert [e["n"] for e in (await client.get("/api/tasks/tuned/experiments", params={"status": "failed"})).json()["items"]] == [2]
    by_metric = (await client.get("/api/tasks/tuned/experiments", params={"sort": "mean_total_tps", "order": "desc", "latest": True})).json()
    assert by_metric["items"][0]["n"] == 0
    r = await client.get("/api/tasks/tuned/experiments", params={"sort": "score; drop table tasks"})
    assert r.status_code == 400 and "cannot sort by" in r.json()["error"]

    cmd = (await client.get("/api/tasks/tuned/export")).json()
    assert cmd["format"] == "cmd" and cmd["n"] == 0 and cmd["content"] == best["command"] and cmd["simulate"] is True and "SIMULATED" in cmd["note"]
    docker = (await client.get("/api/tasks/tuned/export", params={"format": "docker", "port": 31000})).json()["content"]
    assert docker.startswith("docker run --rm -d --name autotune-tuned --gpus 1 --shm-size 16g --ipc=host -p 31000:31000")
    assert "lmsysorg/sglang:latest python3 -m sglang.launch_server" in docker and "--port 31000" in docker
    k8s = (await client.get("/api/tasks/tuned/export", params={"format": "k8s"})).json()["content"]
    deployment, service = list(yaml.safe_load_all(k8s))
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    assert deployment["kind"] == "Deployment" and service["kind"] == "Service"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and c["command"] == ["python3", "-m", "sglang.launch_server"]
    assert c["args"][:2] == ["--model-path", "meta-llama/Llama-3.1-8B-Instruct"] and "--mem-fraction-static" in c["args"]
    assert service["spec"]["ports"][0]["port"] == 30000
    other = (await client.get("/api/tasks/tuned/export", params={"n": 1})).json()
    assert other["n"] == 1 and "--mem-fraction-static 0.88" in other["content"]
    assert (await client.get("/api/tasks/tuned/export", params={"format": "helm"})).status_code == 400
    assert (await client.get("/api/tasks/tuned/export", params={"n": 9})).status_code == 404


async def test_experiment_detail_runs_telemetry_failure_and_logs(client, js):
    await submit(client, "exp")
    await applied(js._nc, await seed_fleet(js, "exp"), gpu_samples=24)
    d = (await client.get("/api/tasks/exp/experiments/0")).json()
    assert d["status"] == "completed" and d["simulate"] is True and d["parameters"]["max-running-requests"] == 8
    assert d["experiment"]["score"] == 1.25 and d["experiment"]["host"] == "h1" and d["experiment"]["gpu_indices"] == [0]
    assert len(d["runs"]) == 1 and d["runs"][0]["scenario"] == "D(100,100)" and d["runs"][0]["ttft_p50"] == 0.15
    assert d["telemetry"] and {p["gpu"] for p in d["telemetry"]} == {0}, "only the experiment's own GPU"
    assert sum(p["samples"] for p in d["telemetry"]) == 12 and d["telemetry"][0]["util_gpu"] >= 50
    assert d["log_excerpt"] == ["loading weights", "server ready"] and d["failure"] is None
    assert d["command"].startswith("python3 -m sglang.launch_server")

    f = (await client.get("/api/tasks/exp/experiments/2")).json()
    assert f["status"] == "failed" and f["failure"]["kind"] == "oom" and f["failure"]["log_tail"] == ["torch.OutOfMemoryError: CUDA out of memory"]
    assert f["log_excerpt"] == ["allocating KV cache"] and [a["attempt"] for a in f["attempts"]] == [0]
    assert (await client.get("/api/tasks/exp/experiments/7")).status_code == 404
    assert (await client.get("/api/tasks/exp/experiments/0", params={"attempt": 3})).status_code == 404
    assert (await client.get("/api/tasks/nope/experiments/0")).status_code == 404

    r = await client.get("/api/tasks/exp/experiments/0/logs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert [e["event"] for e in events] == ["log", "end"]
    assert events[0]["data"]["lines"] == ["loading weights", "server ready"] and events[1]["data"]["status"] == "completed"


async def test_live_log_tail_follows_until_the_experiment_ends(client, js, settings):
    await submit(client, "tail")
    await seed_fleet(js, "tail")
    writer = publish_later(
        settings, 0.5,
        (subj.log("tail", 1), golden("log.lines", id="tail.1.log0", task="tail", n=1, attempt=0, lines=["step 1"])),
        (subj.experiment("tail", 1, "cancelled"), golden("experiment.cancelled", id="tail.1.0.cancelled", task="tail", n=1, attempt=0, host="h1")),
    )  # fmt: skip
    r = await client.get("/api/tasks/tail/experiments/1/logs", params={"follow": True})
    writer.close()
    events = sse_events(r.text)
    assert [e["event"] for e in events] == ["log", "end"] and events[0]["data"]["lines"] == ["step 1"]
    assert events[1]["data"] == {"attempt": 0, "status": "cancelled"}


# --- cancel and clone ------------------------------------------------------------------------------------------


async def test_cancel_and_clone_never_edit_the_source(client, js):
    await submit(client, "src", optimization={"max_iterations": 4})
    r = await client.post("/api/tasks/src/cancel", json={"reason": "wrong model"}, headers=AUTH)
    assert r.status_code == 202 and r.json()["status"] == "cancel_requested"
    t = (await client.get("/api/tasks/src")).json()
    assert t["status"] == "cancelling" and t["reason"] == "wrong model"
    assert (await client.post("/api/tasks/ghost/cancel", headers=AUTH)).status_code == 404

    r = await client.post("/api/tasks/src/clone", json={"task_name": "src-big", "overrides": {"optimization": {"max_iterations": 20}}}, headers=AUTH)
    assert r.status_code == 201, r.text
    created = {k: v for k, v in r.json().items() if k != "unfit"}  # unfit: the fleet-fit warning (no live host here)
    assert created == {"id": "src-big", "seq": r.json()["seq"], "url": "/api/tasks/src-big", "simulate": True, "cloned_from": "src"}
    clone = (await client.get("/api/tasks/src-big")).json()
    assert clone["cloned_from"] == "src" and clone["spec"]["optimization"]["max_iterations"] == 20
    assert clone["spec"]["optimization"]["max_parallel"] == 2, "overrides merge into the recorded spec"
    assert (await client.get("/api/tasks/src")).json()["spec"]["optimization"]["max_iterations"] == 4

    r = await client.post("/api/tasks/src/clone", headers=AUTH)  # no body: the next free name
    assert r.status_code == 201 and r.json()["id"] == "src-2"
    r = await client.post("/api/tasks/src/clone", json={"task_name": "src-big"}, headers=AUTH)
    assert r.status_code == 409
    r = await client.post("/api/tasks/src/clone", json={"overrides": {"optimization": {"max_iterations": "many"}}}, headers=AUTH)
    assert r.status_code == 400 and r.json()["path"] == "$.optimization.max_iterations"
    r = await client.post("/api/tasks/src/clone", json={"overrides": {"optimization": {"max_iterations": 10**30}}}, headers=AUTH)
    assert r.status_code == 400 and r.json()["path"] == "$.optimization.max_iterations"
    r = await client.post("/api/tasks/src/clone", json={"overrides": {"optimization": {"strategy": "annealing"}}}, headers=AUTH)
    assert r.status_code == 400 and r.json()["path"] == "$.optimization.strategy"
    r = await client.post("/api/tasks/src/clone", json={"task_nme": "typo"}, headers=AUTH)
    assert r.status_code == 400
    assert (await client.post("/api/tasks/ghost/clone", headers=AUTH)).status_code == 404
    r = await client.post("/api/tasks/src/clone", json={"task_name": "src-real", "simulate": False}, headers=AUTH)
    assert r.status_code == 201 and r.json()["simulate"] is True, "deployment_mode simulated stays simulated"


# --- hosts ------------------------------------------------------------------------------------------------------


async def test_hosts_status_gpus_history_drain_and_remove(client, js):
    await submit(client, "fleet")
    await applied(js._nc, await seed_fleet(js, "fleet"), gpu_samples=24)
    await alive(js, "h1", running=["fleet/1/0"])
    r = await client.get("/api/hosts")
    assert r.status_code == 200, r.text
    hosts = {h["host"]: h for h in r.json()}
    assert hosts["h1"]["status"] == "busy" and hosts["h1"]["alive"] is True and hosts["h1"]["running"] == ["fleet/1/0"]
    assert hosts["h2"]["status"] == "offline" and hosts["h2"]["alive"] is False and hosts["h2"]["node"] == "node-b"
    g0, g1 = hosts["h1"]["gpus"]
    assert g0["name"] == "NVIDIA H100 80GB HBM3" and g0["memory_total_mib"] == 81559 and g0["memory_used_mib"] == 70000
    assert g1["util_gpu"] == 71 and g0["temperature_c"] == 71 and g1["leased_by"] == "fleet/1/0" and g0["leased_by"] is None
    assert hosts["h2"]["gpus"][0]["util_gpu"] is None, "a dead host's last reading is not its state"
    assert [h["host"] for h in (await client.get("/api/hosts", params={"status": "offline"})).json()] == ["h2"]

    d = (await client.get("/api/hosts/h1")).json()
    assert d["status"] == "busy" and {(e["task"], e["n"]) for e in d["experiments"]} == {("fleet", 0), ("fleet", 1), ("fleet", 2)}
    assert (await client.get("/api/hosts/nope")).status_code == 404

    hist = (await client.get("/api/hosts/h1/gpus/history", params={"bucket_s": 60})).json()
    assert hist["bucket_s"] == 60 and {p["gpu"] for p in hist["points"]} == {0, 1}
    assert sum(p["samples"] for p in hist["points"]) == 24 and len(hist["points"]) <= 4, "downsampled into minute buckets"
    one = (await client.get("/api/hosts/h1/gpus/history", params={"gpu": 1, "since": (datetime.now(UTC) - timedelta(minutes=5)).isoformat()})).json()
    assert {p["gpu"] for p in one["points"]} == {1} and max(p["util_gpu_max"] for p in one["points"]) == 71
    r = await client.get("/api/hosts/h1/gpus/history", params={"since": "2030-01-01T00:00:00Z", "until": "2029-01-01T00:00:00Z"})
    assert r.status_code == 400

    gpus = (await client.get("/api/gpus", params={"kubernetes": False})).json()
    assert gpus == {"fleet": [{"name": "NVIDIA H100 80GB HBM3", "total": 2, "busy": 1, "free": 1, "offline": 1, "hosts": ["h1", "h2"]}],
                    "kubernetes": None, "kubernetes_error": None}  # fmt: skip

    r = await client.post("/api/hosts/h1/drain", headers=AUTH)
    assert r.status_code == 202 and r.json()["status"] == "drain_requested"
    assert (await client.get("/api/hosts/h1")).json()["status"] == "draining"
    assert (await client.post("/api/hosts/ghost/drain", headers=AUTH)).status_code == 404
    r = await client.delete("/api/hosts/h1", headers=AUTH)
    assert r.status_code == 409 and "drain it first" in r.json()["error"]
    assert (await client.delete("/api/hosts/h2", headers=AUTH)).status_code == 202
    assert "h2" not in [h["host"] for h in (await client.get("/api/hosts")).json()]
    assert (await client.get("/api/hosts", params={"include_removed": True})).json()[-1]["status"] == "removed"
    assert (await client.delete("/api/hosts/h1", params={"force": True}, headers=AUTH)).status_code == 202


# --- events --------------------------------------------------------------------------------------------------


async def test_event_streams_from_a_sequence_or_a_time_then_live(client, js, settings):
    await submit(client, "ev")
    await applied(js._nc, await seed_fleet(js, "ev"), gpu_samples=24)
    r = await client.get("/api/tasks/ev/events")
    events = sse_events(r.text)
    assert events[0]["event"] == "task.submitted" and events[-1]["event"] == "experiment.failed"
    seqs = [int(e["id"]) for e in events]
    assert seqs == sorted(seqs) and all(e["data"]["subject"].startswith("autotune.task.ev.") for e in events)
    assert events[0]["data"]["event"]["spec"]["task_name"] == "ev"

    later = sse_events((await client.get("/api/tasks/ev/events", params={"since_seq": seqs[-2]})).text)
    assert [int(e["id"]) for e in later] == seqs[-2:]
    resumed = sse_events((await client.get("/api/tasks/ev/events", headers={"Last-Event-ID": str(seqs[-2])})).text)
    assert [int(e["id"]) for e in resumed] == seqs[-1:], "a reconnecting EventSource goes on after the last id it saw"
    hosts = sse_events((await client.get("/api/events", params={"subject": "autotune.host.>"})).text)
    assert [e["event"] for e in hosts] == ["host.registered", "host.registered"]
    gpu = sse_events((await client.get("/api/events", params={"subject": "autotune.gpu.h1.1", "limit": 3})).text)
    assert len(gpu) == 3 and gpu[0]["data"]["stream"] == "AUTOTUNE_TELEMETRY" and gpu[0]["data"]["event"]["index"] == 1
    everything = sse_events((await client.get("/api/events")).text)
    assert len(everything) == len(events) + 2

    cut = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await bus.append(js, subj.task("ev", "cancel_requested"), golden("task.cancel_requested", id="ev.cancel_requested", task="ev"))
    since = sse_events((await client.get("/api/tasks/ev/events", params={"since_time": cut.isoformat()})).text)
    assert [e["event"] for e in since] == ["task.cancel_requested"]

    writer = publish_later(settings, 0.5, (subj.task("ev", "cancelled"), golden("task.cancelled", id="ev.cancelled", task="ev")))
    live = await client.get("/api/tasks/ev/events", params={"since_time": datetime.now(UTC).isoformat(), "follow": True, "limit": 1})
    writer.close()
    assert [e["event"] for e in sse_events(live.text)] == ["task.cancelled"]

    for bad in ("nats.>", "autotune.task.a b.>", "autotune.>.x", "autotune.query.sql"):
        r = await client.get("/api/events", params={"subject": bad})
        assert r.status_code == 400 and r.json()["status"] == 400, bad
    assert (await client.get("/api/tasks/ghost/events")).status_code == 404


# --- SQL, health, readiness, version, errors --------------------------------------------------------------------


async def test_sql_health_ready_version(client, js):
    await submit(client, "sq")
    r = await client.post("/api/sql", json={"sql": "SELECT id, status FROM tasks WHERE id = ?", "params": ["sq"]}, headers=AUTH)
    assert r.status_code == 200 and r.json()["rows"] == [["sq", "submitted"]] and r.json()["columns"] == ["id", "status"]
    r = await client.post("/api/sql", json={"sql": "DELETE FROM tasks"}, headers=AUTH)
    assert r.status_code == 400 and "refused" in r.json()["error"]
    assert (await client.post("/api/sql", json={"sql": "SELECT 1", "bogus": 1}, headers=AUTH)).status_code == 400
    assert (await client.get("/api/health")).json() == {"status": "ok", "nats_connected": True, "version": "0.1.0"}
    ready = (await client.get("/api/ready")).json()
    assert ready["ready"] is True and ready["projector"] is True and ready["lag"] == 0 and ready["last_seq"] == ready["applied_seq"]
    assert (await client.get("/api/version")).json()["api"] == "1"
    schema = (await client.get("/schema/openapi.json")).json()
    ops = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert {"submitTask", "listTasks", "getTask", "cancelTask", "cloneTask", "exportTask", "listExperiments", "getExperiment",
            "streamExperimentLogs", "listHosts", "getHost", "getGpuHistory", "drainHost", "removeHost", "streamEvents",
            "streamTaskEvents", "querySql", "health", "ready", "version"} <= ops  # fmt: skip


async def test_ready_says_so_when_no_projector_answers(settings, nc):
    async with AsyncTestClient(app=create_app(nc=None, settings=settings)) as c:
        r = await c.get("/api/ready")
        assert r.status_code == 503 and r.json()["projector"] is False and "no projector" in r.json()["reason"]
        r = await c.get("/api/tasks")
        assert r.status_code == 503 and "no projector" in r.json()["error"]


@pytest.mark.parametrize(
    "method,url,kw",
    [
        ("GET", "/api/tasks/..%2F..", {}),
        ("GET", "/api/tasks/a.b.>", {}),
        ("GET", "/api/tasks", {"params": {"limit": "lots"}}),
        ("GET", "/api/tasks", {"params": {"status": "exploded"}}),
        ("GET", "/api/tasks/x/experiments/-1", {}),
        ("GET", "/api/tasks/x/experiments/99999999999999999999999", {}),
        ("GET", "/api/hosts/h/gpus/history", {"params": {"since": "yesterday"}}),
        ("GET", "/api/events", {"params": {"since_seq": "0"}}),
        ("POST", "/api/tasks", {"content": b"\xff\xfe\x00"}),
        ("POST", "/api/tasks", {"content": b"- just\n- a list\n"}),
        ("POST", "/api/tasks", {"content": b"task_name: \x00\nmodel: m\n"}),
        ("POST", "/api/tasks", {"content": b"task_name: t\nmodel: m\noptimization: {strategy: random}\nparameters: {a: {type: integer, low: 0, high: .inf}}\n"}),
        ("POST", "/api/tasks", {"content": b"task_name: t\nmodel: m\noptimization: {max_iterations: 99999999999999999999999}\n"}),
        ("POST", "/api/tasks", {"content": b"task_name: t\nmodel: m\nslo: {ttft: {threshold: .nan}}\n"}),
        ("POST", "/api/tasks/x/clone", {"json": {"overrides": {"optimization": {"max_iterations": 10**30}}}}),
        ("POST", "/api/tasks/x/clone", {"content": b"[]", "headers": {"content-type": "application/json"}}),
        ("POST", "/api/sql", {"json": {"sql": "SELECT ?, ?", "params": [1]}}),
        ("POST", "/api/sql", {"json": {"sql": "SELECT * FROM read_csv('/etc/passwd')"}}),
        ("PUT", "/api/tasks", {}),
    ],
)
async def test_bad_input_is_a_json_4xx_never_a_500(client, method, url, kw):
    kw.setdefault("headers", {}).update(AUTH)
    r = await client.request(method, url, **kw)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    body = r.json()
    assert body["status"] == r.status_code and body["error"]


async def test_cluster_gpu_summary_from_the_kubernetes_api(client, monkeypatch):
    from tests.fixtures.k8s_standin import KubeStandin, gpu_node, gpu_pod

    ready = threading.Event()
    url: list[str] = []

    async def standin(stop: asyncio.Event) -> None:  # on its own loop: the test's waits on the request
        async with KubeStandin(nodes=[gpu_node("node-a", "NVIDIA-H100-80GB-HBM3", 8), gpu_node("node-b", "NVIDIA-A100-SXM4-40GB", 4)],
                               extra_pods=[gpu_pod("train", "node-a", 6)]) as k:  # fmt: skip
            url.append(k.url)
            ready.set()
            await stop.wait()

    bg = Background(standin)
    try:
        assert ready.wait(10)
        monkeypatch.setenv("AUTOTUNE_K8S_API_URL", url[0])
        out = (await client.get("/api/gpus", params={"kubernetes": True})).json()
        assert out["kubernetes_error"] is None, out
        nodes = {n["node"]: n for n in out["kubernetes"]}
        assert (nodes["node-a"]["allocatable"], nodes["node-a"]["requested"], nodes["node-a"]["free"]) == (8, 6, 2)
        assert nodes["node-b"]["product"] == "NVIDIA-A100-SXM4-40GB" and nodes["node-b"]["free"] == 4
    finally:
        bg.close()
    monkeypatch.setenv("AUTOTUNE_K8S_API_URL", "http://127.0.0.1:9")  # nothing there: said, not a 5xx
    r = await client.get("/api/gpus", params={"kubernetes": True})
    assert r.status_code == 200 and "cannot read the Kubernetes API" in r.json()["kubernetes_error"]


async def test_an_experiments_runs_are_shown_with_it_though_the_log_lane_gathers(settings, nc, js, tmp_path):
    """The runs come from the log lane, which gathers its batches (here for 60 s): the detail reads
    them as of the experiment row's own last event, so the lane commits at once for it."""
    from autotune.projector.settings import ProjectorConfig

    cfg = ProjectorConfig(log_delay_s=60.0, log_batch=1_000_000)
    bg = Background(lambda stop: projector_run(settings, stop=stop, db_path=str(tmp_path / "slow-log.duckdb"), config=cfg))
    try:
        await answering(nc)
        settings.api_token = TOKEN
        async with AsyncTestClient(app=create_app(nc=None, settings=settings), timeout=30) as client:
            await submit(client, "exp")
            seq = await seed_fleet(js, "exp")
            await q.sql(nc, "SELECT count(*) FROM experiments", min_seq=seq)  # the state lane only
            d = (await client.get("/api/tasks/exp/experiments/0")).json()
            assert d["status"] == "completed" and len(d["runs"]) == 1 and d["runs"][0]["scenario"] == "D(100,100)"
    finally:
        bg.close()
