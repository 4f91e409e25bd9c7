"""The MCP server through the official SDK's client, against a real stack (a real nats-server, the
projector, the scheduler, a runner with simulated GPUs and engines, gpumon): in memory, over a stdio
subprocess (`autotune mcp`), and over streamable HTTP on the API (uvicorn on a free port).

The agent's loop: validate a bad spec (the path and line come back), validate a good one, submit it,
watch it to its end, take the best configuration, read GPU history, clone it and cancel the clone
while its engines run. Set AUTOTUNE_MCP_TRANSCRIPT=<file> to write the stdio session as the README's
transcript."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx2
import pytest
import yaml
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from autotune.api.app import create_app
from autotune.gpumon.service import run as gpumon_run
from autotune.mcp import build_server, fixed_link
from autotune.projector.service import run as projector_run
from autotune.runner.runtimes.local import labelled_processes
from autotune.runner.service import run as runner_run
from autotune.runner.settings import RunnerSettings
from autotune.scheduler.service import Scheduler
from autotune.shared.net import free_port
from tests.fixtures.api_kit import answering, served
from tests.helpers import Services, small_spec, wait_for

ROOT = Path(__file__).resolve().parent.parent
SECRET = "hf_agent_secret_0123456789"
FLEET_CHANGES = {"drain_host", "remove_host", "cancel_task", "deploy_host", "undeploy_host"}


@pytest.fixture
async def stack(settings, nc, js, tmp_path):
    svc = Services()
    svc.start(lambda stop: projector_run(settings, stop=stop, db_path=str(tmp_path / "view.duckdb")), "projector")
    svc.start(lambda stop: Scheduler(settings).run(stop), "scheduler")
    svc.start(lambda stop: runner_run(settings, stop=stop, runner=RunnerSettings(host="h1", simulate="2xH100", time_scale=50)), "runner")
    svc.start(lambda stop: gpumon_run(settings, stop=stop, host="h1", simulate="2xH100", interval_s=0.5), "gpumon")
    try:
        await answering(nc)
        await wait_for(js, "autotune.host.h1.registered", lambda e: True, timeout=30)
        yield svc
    finally:
        await svc.stop_all()
    assert [p for p, lab in labelled_processes() if lab.get("AUTOTUNE_LABEL_HOST") == "h1"] == [], "an engine was left running"


class Agent:
    """The SDK client, keeping every call and its answer (the transcript) and checking each answer
    for what must never be in one: a traceback, the secret."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.calls: list[tuple[str, dict, str, bool]] = []

    async def __call__(self, tool: str, ok: bool = True, **arguments) -> dict:
        r = await self.client.call_tool(tool, arguments)
        text = "\n".join(c.text for c in r.content if c.type == "text")
        assert "Traceback" not in text and SECRET not in text and SECRET not in json.dumps(r.structured_content or {}), text
        assert r.is_error is not ok, f"{tool}({arguments}) -> {text}"
        self.calls.append((tool, arguments, r.content[0].text, bool(r.is_error)))
        return r.structured_content if ok else {"error": text}

    def transcript(self) -> str:
        out = []
        for tool, args, summary, error in self.calls:
            shown = {k: (v if not isinstance(v, str) or len(v) < 80 else v[:77] + "...") for k, v in args.items()}
            out.append(f"→ {tool}({json.dumps(shown)})\n{'✗' if error else '←'} {summary}")
        return "\n\n".join(out) + "\n"


async def agent_loop(agent: Agent, js) -> None:
    """validate → submit → watch → best → GPU history → clone → cancel, as an agent would."""
    bad = await agent("validate_task", spec="task_name: t\nmodel: m\noptimization:\n  max_iterations: lots\n")
    assert bad == {"valid": False, "error": "Expected `int`, got `str`", "path": "$.optimization.max_iterations", "line": 4}
    refused = await agent("submit_task", ok=False, spec={"task_name": "t", "model": "m", "optimization": {"max_iterations": "lots"}})
    assert "invalid task spec: $.optimization.max_iterations: Expected `int`, got `str`" in refused["error"]

    raw = small_spec("agent", model={"id_or_path": "meta-llama/Llama-3.1-8B-Instruct", "hf_token": SECRET})
    text = yaml.safe_dump(raw, sort_keys=False)
    valid = await agent("validate_task", spec=text)
    assert valid["valid"] and valid["space_size"] == 4 and valid["experiments"] == 4 and valid["simulate"]
    assert {d["name"]: d["values"] for d in valid["dimensions"]} == {"mem-fraction-static": [0.8, 0.88], "max-running-requests": [8, 64]}
    assert valid["spec"]["model"]["hf_token"] == "***"

    task = (await agent("submit_task", spec=text))["id"]
    t = await agent("get_task", task=task, wait_s=120)
    assert t["status"] == "completed" and t["simulate"] and t["progress"]["completed"] == 4, t
    assert t["spec"]["model"]["hf_token"] == "***" and t["waiting"] is None
    best = await agent("best_config", task=task)
    assert best["n"] == t["best"]["n"] and best["content"] == t["best"]["command"] and best["content"].startswith("python3 -m sglang.launch_server")
    page = await agent("list_experiments", task=task, sort="score")
    assert [r["n"] for r in page["items"]][0] == t["best"]["n"] and page["total"] == 4
    assert f": #{t['best']['n']} (attempt 0) completed score" in agent.calls[-1][2], "rows are named #n (attempt a), never n.a"
    exp = await agent("get_experiment", task=task, n=t["best"]["n"])
    assert exp["status"] == "completed" and exp["runs"] and exp["telemetry_summary"]["samples"] > 0

    history = await agent("gpu_history", host="h1", since="10m", bucket_s=1)
    assert history["host"] == "h1" and {p["gpu"] for p in history["points"]} == {0, 1}
    assert max(p["util_gpu_max"] for p in history["points"]) > 0  # the simulated GPUs were busy with the engines
    hosts = await agent("list_hosts")
    assert [h["host"] for h in hosts["hosts"]] == ["h1"] and hosts["hosts"][0]["simulated"]
    masked = await agent("sql", query="select spec::VARCHAR as s from tasks")  # no field name to redact: the value is masked
    assert "***" in masked["rows"][0][0]

    clone = (await agent("clone_task", task=task, overrides={"benchmark": {"max_requests_per_iteration": 5000, "max_time_per_iteration": 30}}))["id"]
    assert clone == f"{task}-2"
    await wait_for(js, f"autotune.task.{clone}.exp.*.ready", lambda e: True, timeout=60)
    running = await agent("get_task", task=clone)
    assert running["status"] == "running" and running["progress"]["running"] >= 1
    cancelled = await agent("cancel_task", task=clone, wait=True, timeout_s=60)
    assert cancelled["status"] == "cancelled" and cancelled["stopped"] and not cancelled["timed_out"], cancelled
    assert {r["outcome"] for r in cancelled["stopped"]} == {"experiment.cancelled"}
    gone = await agent("get_task", ok=False, task="no-such-task")
    assert "no task `no-such-task`" in gone["error"]


async def test_the_agent_loop_in_memory(settings, nc, js, stack):
    server = build_server(fixed_link(lambda: nc), allow_fleet_changes=True)
    async with Client(server) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) >= FLEET_CHANGES
        for name in FLEET_CHANGES:
            assert tools[name].annotations.destructive_hint is True and tools[name].annotations.read_only_hint is False
        assert tools["submit_task"].annotations.destructive_hint is False and tools["get_task"].annotations.read_only_hint is True
        reference = (await client.read_resource("autotune://docs/task-file")).contents[0].text
        assert "task_name" in reference and "max_iterations" in reference
        await agent_loop(Agent(client), js)


@pytest.mark.long
async def test_the_agent_loop_over_stdio(settings, js, stack, tmp_path):
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "autotune.cli", "mcp", "--allow-fleet-changes", "--nats", settings.nats_url], cwd=str(ROOT),
        env={"XDG_DATA_HOME": str(tmp_path / "xdg")},
    )  # fmt: skip
    with open(tmp_path / "mcp-stderr.log", "w") as errlog:
        async with Client(stdio_client_params(params, errlog)) as client:
            agent = Agent(client)
            await agent_loop(agent, js)
    if path := os.environ.get("AUTOTUNE_MCP_TRANSCRIPT"):
        Path(path).write_text(agent.transcript())
    assert "Traceback" not in (tmp_path / "mcp-stderr.log").read_text()


def stdio_client_params(params: StdioServerParameters, errlog):
    from mcp.client.stdio import stdio_client

    return stdio_client(params, errlog=errlog)


async def test_fleet_changes_are_offered_only_when_allowed_and_http_needs_the_token(settings, nc, js, tmp_path):
    async with Client(build_server(fixed_link(lambda: nc))) as client:
        names = {t.name for t in (await client.list_tools()).tools}
    assert not names & FLEET_CHANGES and {"list_hosts", "submit_task", "get_task", "sql"} <= names

    settings.api_token, settings.mcp_allow_fleet_changes = "s3cret", True
    async with served(create_app(nc=nc, settings=settings)) as base:
        url = f"{base}/mcp"
        async with httpx2.AsyncClient() as http:  # no token: refused before any tool runs
            r = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "drain_host", "arguments": {"host": "h1"}}},
                                headers={"Accept": "application/json, text/event-stream"})  # fmt: skip
            assert r.status_code == 401 and "bearer token" in r.json()["error"]
        with pytest.raises((ExceptionGroup, MCPError)):  # the SDK's client, without the token: it cannot even start a session
            async with Client(url) as client:
                await client.call_tool("drain_host", {"host": "h1"})
        async with httpx2.AsyncClient(headers={"Authorization": "Bearer s3cret"}) as http, Client(streamable_http_client(url, http_client=http)) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert tools["drain_host"].annotations.destructive_hint is True
            r = await client.call_tool("drain_host", {"host": "nowhere"})  # reaches the tool: the CLI's message for an unknown host
            assert r.is_error and "no host `nowhere`; `autotune hosts` lists them" in r.content[0].text


async def test_get_task_says_why_its_experiments_wait(settings, nc, js, tmp_path):
    """A planned experiment with no placement: get_task names the free GPUs it is waiting for."""
    from tests.fixtures.api_kit import applied
    from tests.test_metrics import known_state

    svc = Services()
    svc.start(lambda stop: projector_run(settings, stop=stop, db_path=str(tmp_path / "view.duckdb")), "projector")
    try:
        await answering(nc)
        await applied(nc, await known_state(js))
        async with Client(build_server(fixed_link(lambda: nc))) as client:
            r = await client.call_tool("get_task", {"task": "m"})
            # what `autotune submit` warns about, the agent is told too: configurations no live host could run
            big = small_spec("too-big", parallel_config={"tp": [4, 2]})
            submitted = await client.call_tool("submit_task", {"spec": yaml.safe_dump(big)})
        t = r.structured_content
        assert t["status"] == "running" and t["waiting"] == "1 experiment(s) planned and not placed, waiting for free GPUs of type H100 (1 free of 2 NVIDIA H100 80GB HBM3)", t["waiting"]
        assert "; waiting: 1 experiment(s) planned" in r.content[0].text
        unfit = submitted.structured_content["unfit"]
        assert [g["gpus"] for g in unfit] == [4] and "needs 4 GPUs" in unfit[0]["reason"], unfit
        assert "warning: the live fleet" in submitted.content[0].text and "fail as unplaceable" in submitted.content[0].text
    finally:
        await svc.stop_all()


async def test_deploy_tools_refuse_with_the_clis_messages_before_touching_a_machine(settings, nc):
    """deploy_host and undeploy_host run autotune.deploy as `autotune deploy` does (tests/test_deploy_ssh.py
    deploys for real over SSH); here what is refused before any machine changes: a target that is not
    one, a machine whose host key nobody trusted (a port where nothing answers SSH), a host the log
    never deployed."""
    closed = free_port()  # nothing listens there
    async with Client(build_server(fixed_link(lambda: nc, settings), allow_fleet_changes=True)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["deploy_host"].annotations.open_world_hint is True and tools["undeploy_host"].annotations.destructive_hint is True
        cases = [
            ("deploy_host", {"target": "gpu-7.lab", "host": "gpu-7"}, "`gpu-7.lab` names no user; write ssh://user@host[:port]"),
            ("deploy_host", {"target": f"ssh://root@127.0.0.1:{closed}", "host": "gpu-7", "dry_run": True}, "its host key is not known"),
            ("undeploy_host", {"host": "nowhere", "dry_run": True}, "the log has no deploy of host `nowhere`"),
        ]
        for name, arguments, message in cases:
            r = await client.call_tool(name, arguments)
            text = r.content[0].text
            assert r.is_error and message in text and "Traceback" not in text, text
