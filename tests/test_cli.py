"""The real `autotune` commands, run as processes (`python -m autotune.cli ...`): against an embedded
stack (the per-test nats-server, a projector on its own thread, a fleet and task history published
as events), and `autotune up` itself with Ctrl-C and restart."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest
import yaml

from autotune.runner.runtimes.local import labelled_processes
from autotune.schemas import subjects as subj
from autotune.shared import bus
from autotune.shared.net import free_port
from tests.fixtures.api_kit import Background, alive, applied, seed_fleet
from tests.helpers import golden, small_spec

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("up", "run", "demo", "submit", "tasks", "task", "experiments", "experiment", "cancel", "clone", "best", "hosts", "host", "gpus",
            "drain", "remove", "events", "logs", "sql", "streams", "snapshot", "mcp", "bench", "projector")  # fmt: skip


# Each command is a fresh interpreter: let them share compiled bytecode (outside the work tree) even
# where the environment says PYTHONDONTWRITEBYTECODE, as a user's installation would.
BYTECODE = {"PYTHONPYCACHEPREFIX": str(Path(tempfile.gettempdir()) / f"autotune-pycache-{os.getuid()}")}


def autotune(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return subprocess.run(
        [sys.executable, "-m", "autotune.cli", *args], capture_output=True, text=True, timeout=timeout, env={**environ, **BYTECODE, **(env or {})}, cwd=ROOT
    )


class Cli:
    """`autotune` against the per-test nats-server, off the test's event loop."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def __call__(self, *args: str, code: int | None = 0) -> subprocess.CompletedProcess:
        r = await asyncio.to_thread(autotune, *args, "--nats", self.url)
        assert "Traceback" not in r.stderr, r.stderr
        if code is not None:
            assert r.returncode == code, f"autotune {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    async def json(self, *args: str) -> object:
        return json.loads((await self(*args, "--json")).stdout)


@pytest.fixture
async def cli(settings, nc, tmp_path):
    from autotune.projector.service import run as projector_run
    from tests.fixtures.api_kit import answering

    bg = Background(lambda stop: projector_run(settings, stop=stop, db_path=str(tmp_path / "view.duckdb")))
    await answering(nc)
    yield Cli(settings.nats_url)
    bg.close()


def test_help_lists_every_command_with_examples():
    out = autotune("--help").stdout
    for cmd in COMMANDS:
        assert f"    {cmd} " in out or f"    {cmd}\n" in out, cmd
    assert "Exit codes" in out
    with ThreadPoolExecutor(4) as pool:
        helps = dict(zip(COMMANDS, pool.map(lambda c: autotune(c, "--help").stdout, COMMANDS), strict=True))
    for cmd, sub in helps.items():
        assert "examples:" in sub and f"autotune {cmd}" in sub, cmd
    assert "autotune submit examples/quickstart.yaml --watch" in helps["submit"]
    # bench and projector list their own tools' options (their parsers are part of this one)
    assert "--url URL" in helps["bench"] and "--concurrency" in helps["bench"]
    assert "rebuild" in helps["projector"] and "--data-dir" in helps["projector"]


async def test_an_invalid_task_file_is_refused_and_nothing_is_published(tmp_path, settings, js):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task_name: t\nmodel: m\noptimization:\n  max_iterations: lots\n")
    r = autotune("submit", str(bad), "--nats", settings.nats_url)
    assert r.returncode == 2
    assert f"{bad}:4: $.optimization.max_iterations: Expected `int`, got `str`" in r.stderr
    assert "Traceback" not in r.stderr
    info = await js.stream_info("AUTOTUNE_EVENTS")
    assert info.state.messages == 0


def test_unreachable_nats_says_what_to_do(tmp_path):
    for args in (("tasks",), ("cancel", "x")):
        r = autotune(*args, "--nats", f"nats://127.0.0.1:{free_port()}")
        assert r.returncode == 3, args
        assert "autotune up" in r.stderr and "Traceback" not in r.stderr and "nats error" not in r.stderr


async def test_tasks_experiments_exports_and_clones(cli, js, tmp_path):
    spec = tmp_path / "t.yaml"
    spec.write_text(yaml.safe_dump(small_spec("rehearsal", deployment_mode="docker")))
    out = await cli.json("submit", str(spec), "--simulate")
    assert out["id"] == "rehearsal" and out["simulate"] is True
    dup, seeded = await asyncio.gather(cli("submit", str(spec), code=2), seed_fleet(js, "rehearsal"))
    assert "already exists" in dup.stderr
    await applied(js._nc, seeded)

    # independent reads run side by side (each command is a process of its own)
    (tasks, tasks_table, shown, detail, nope, exps, failed_table, bad_sort, one, zero, nine, cmd, docker, k8s) = await asyncio.gather(
        cli.json("tasks"), cli("tasks"), cli("task", "rehearsal"), cli.json("task", "rehearsal"), cli("task", "nope", code=2),
        cli.json("experiments", "rehearsal", "--sort", "score"), cli("experiments", "rehearsal", "--status", "failed"),
        cli("experiments", "rehearsal", "--sort", "no such", code=2), cli("experiment", "rehearsal", "2"),
        cli.json("experiment", "rehearsal", "0"), cli("experiment", "rehearsal", "9", code=2),
        cli("best", "rehearsal"), cli("best", "rehearsal", "--format", "docker"), cli("best", "rehearsal", "--format", "k8s"),
    )  # fmt: skip
    assert [t["id"] for t in tasks] == ["rehearsal"] and tasks[0]["simulate"] is True and tasks[0]["status"] == "running"
    assert "SIMULATED" in tasks_table.stdout
    assert "[SIMULATED engines and GPUs]" in shown.stdout and "2/4 done" in shown.stdout and "experiment 0" in shown.stdout
    assert "python3 -m sglang.launch_server --model-path meta-llama/Llama-3.1-8B-Instruct" in shown.stdout
    assert detail["best"]["n"] == 0 and detail["progress"]["failed"] == 1 and detail["simulate"] is True
    assert "no task `nope`" in nope.stderr
    assert [e["n"] for e in exps] == [0, 1, 2]
    assert "SIMULATED" in failed_table.stdout and "oom" in failed_table.stdout
    assert "cannot sort by" in bad_sort.stderr
    assert "failed" in one.stdout and "CUDA out of memory" in one.stdout and "allocating KV cache" in one.stdout
    assert zero["runs"][0]["scenario"] == "D(100,100)" and zero["log_excerpt"] == ["loading weights", "server ready"]
    assert "no experiment 9" in nine.stderr
    assert cmd.stdout.startswith("python3 -m sglang.launch_server")
    assert docker.stdout.startswith("docker run") and "--gpus 1" in docker.stdout and "SIMULATED" in docker.stderr
    deployment, service = yaml.safe_load_all(k8s.stdout)
    assert deployment["kind"] == "Deployment" and service["kind"] == "Service"

    cloned, bad_clone, cancelled, cancel_nope = await asyncio.gather(
        cli("clone", "rehearsal", "--name", "again", "--set", "optimization.max_iterations=20", "--set", "benchmark.num_concurrency=[1, 8]", "--json"),
        cli("clone", "rehearsal", "--set", "optimization.max_iterations=many", code=2),
        cli("cancel", "rehearsal"), cli("cancel", "nope", code=2),
    )  # fmt: skip
    out = json.loads(cloned.stdout)
    assert out == {"id": "again", "seq": out["seq"], "cloned_from": "rehearsal", "simulate": True}
    assert "$.optimization.max_iterations" in bad_clone.stderr
    assert "cancel requested" in cancelled.stdout
    again, source = await asyncio.gather(cli.json("task", "again"), cli.json("task", "rehearsal"))
    assert again["cloned_from"] == "rehearsal" and again["spec"]["optimization"]["max_iterations"] == 20
    assert again["spec"]["benchmark"]["num_concurrency"] == [1, 8] and again["simulate"] is True
    assert source["status"] == "cancelling" and source["spec"]["optimization"]["max_iterations"] == 4
    waited = await cli("cancel", "again", "--wait", "--timeout", "1", code=1)  # no scheduler runs here
    assert "task again is still stopping after 1 s; none of its experiments is running, but no scheduler has ended it" in waited.stderr


async def test_hosts_events_logs_sql_and_snapshot(cli, js, tmp_path):
    from autotune.schemas.spec import spec_from_obj
    from autotune.shared import commands

    await commands.submit_task(js, spec_from_obj(small_spec("fleet")), submitted_by="test")
    await applied(js._nc, await seed_fleet(js, "fleet"), gpu_samples=24)
    await alive(js, "h1", running=["fleet/1/0"])

    # a live tail runs meanwhile: the experiment's next lines and its end arrive while `logs --follow` waits
    follow = asyncio.create_task(cli("logs", "fleet", "1", "--follow"))
    hosts, table, h1, gpus, ghost, events, gpu, bad_subject, logs0, sql, refused = await asyncio.gather(
        cli.json("hosts"), cli("hosts"), cli.json("host", "h1", "--history", "1h", "--bucket", "60"), cli("gpus"),
        cli("host", "ghost", code=2), cli("events", "--task", "fleet", "--json"), cli("events", "autotune.gpu.h1.0", "--limit", "2"),
        cli("events", "foo.>", code=2), cli("logs", "fleet", "0"), cli.json("sql", "select id, status from tasks"),
        cli("sql", "drop table tasks", code=1),
    )  # fmt: skip
    hosts = {h["host"]: h for h in hosts}
    bad_since = await cli("host", "h1", "--history", "yesterday", code=2)  # argparse says why; it was a traceback
    assert "argument --history: `yesterday` is neither a duration" in bad_since.stderr
    assert hosts["h1"]["status"] == "busy" and hosts["h2"]["status"] == "offline" and len(hosts["h1"]["gpus"]) == 2
    assert "busy" in table.stdout and "offline" in table.stdout and "NVIDIA H100 80GB HBM3" in table.stdout
    assert h1["gpus"][1]["leased_by"] == "fleet/1/0" and sum(p["samples"] for p in h1["history"]["points"]) == 24
    assert "no host `ghost`" in ghost.stderr
    assert "NVIDIA H100 80GB HBM3" in gpus.stdout and "h1, h2" in gpus.stdout
    lines = [json.loads(x) for x in events.stdout.splitlines()]
    assert lines[0]["type"] == "task.submitted" and lines[-1]["type"] == "experiment.failed"
    assert len(gpu.stdout.splitlines()) == 2 and "util=" in gpu.stdout
    assert "not an autotune subject" in bad_subject.stderr
    assert logs0.stdout.splitlines() == ["loading weights", "server ready"]
    assert sql == [{"id": "fleet", "status": "running"}] and "refused" in refused.stderr

    await bus.append(js, subj.log("fleet", 1), golden("log.lines", id="fleet.1.log0", task="fleet", n=1, attempt=0, lines=["step 1", "step 2"]))
    await bus.append(js, subj.experiment("fleet", 1, "completed"),
                     golden("experiment.completed", id="fleet.1.0.completed", task="fleet", n=1, attempt=0, host="h1", score=2.0))  # fmt: skip
    r = await asyncio.wait_for(follow, 30)
    assert r.stdout.splitlines() == ["step 1", "step 2"] and "completed" in r.stderr

    drained, busy, removed, ghost = await asyncio.gather(
        cli("drain", "h1"), cli("remove", "h1", code=2), cli("remove", "h2"), cli("remove", "ghost", code=2)
    )
    assert "drain requested" in drained.stdout and "drain it first" in busy.stderr and "no host" in ghost.stderr
    snap = tmp_path / "snap.duckdb"
    hosts, tail, host_events, out = await asyncio.gather(
        cli.json("hosts"), cli("events", "--task", "fleet", "--since-seq", str(lines[-2]["seq"]), "--json"), cli("events", "autotune.host.>"),
        cli.json("snapshot", str(snap)),
    )  # fmt: skip
    hosts = {h["host"]: h for h in hosts}
    assert hosts["h1"]["status"] == "draining" and "h2" not in hosts
    assert [json.loads(x)["seq"] for x in tail.stdout.splitlines()][:2] == [lines[-2]["seq"], lines[-1]["seq"]]
    assert "host.drain_requested" in host_events.stdout and "host.removed" in host_events.stdout
    assert out["path"] == str(snap) and out["via"] == "projector"
    with duckdb.connect(str(snap), read_only=True) as db:
        assert db.execute("select id from tasks").fetchall() == [("fleet",)]
    await cli("snapshot", str(snap), code=1)  # it exists: refused without --overwrite


# --- `autotune up` ------------------------------------------------------------------------------------------


def _our_processes(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes() or marker.encode() in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return [p for p in pids if p != os.getpid()]


def _start_up(data: Path, nats_port: int, api_port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", "up", "--data-dir", str(data), "--nats-port", str(nats_port), "--api-port", str(api_port),
         "--simulate", "2xH100", "--time-scale", "50", "--no-auth"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, start_new_session=True,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, **BYTECODE},
    )


def _wait_ready(proc: subprocess.Popen, data: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (data / "up.json").exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "autotune up did not come up"
        time.sleep(0.2)


@pytest.mark.long
@pytest.mark.slow
def test_up_runs_a_task_stops_cleanly_and_remembers(tmp_path):
    data = tmp_path / "data"
    nats_port, api_port = free_port(), free_port()
    env = {"AUTOTUNE_DATA_DIR": str(data)}
    spec = tmp_path / "t.json"
    spec.write_text(json.dumps(small_spec("uptask", optimization={"max_iterations": 2, "max_parallel": 2})))
    up = _start_up(data, nats_port, api_port)
    try:
        _wait_ready(up, data)
        r = autotune("submit", str(spec), "--watch", "--json", env=env, timeout=150)
        assert r.returncode == 0, r.stdout + r.stderr
        result = json.loads(r.stdout.strip().splitlines()[-1])
        assert result["status"] == "completed" and "--model-path" in result["command"] and result["simulate"] is True
        r = autotune("best", "uptask", "--format", "docker", env=env)
        assert r.returncode == 0 and r.stdout.startswith("docker run"), r.stderr
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=60)
    assert up.returncode == 0, out
    assert f"  dashboard http://127.0.0.1:{api_port}/   (the fleet, tasks and results, live)" in out, "up says where the dashboard is"
    assert _our_processes(str(data)) == [], "a child of `autotune up` survived Ctrl-C"
    # this stack's engines only (task uptask): the machine may run other stacks' engines on a host named local
    assert [p for p, lab in labelled_processes() if lab.get("AUTOTUNE_LABEL_TASK") == "uptask"] == []

    up = _start_up(data, nats_port, api_port)
    try:
        _wait_ready(up, data)
        for _ in range(100):
            r = autotune("tasks", "--json", env=env)
            if r.returncode == 0 and any(t["id"] == "uptask" for t in json.loads(r.stdout)):
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"the earlier task is not shown after a restart: {r.stdout} {r.stderr}")
    finally:
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=60)
    assert _our_processes(str(data)) == []


@pytest.mark.long
async def test_every_service_stops_quietly_on_sigterm_while_nats_is_away(settings, js, nats_server, tmp_path):
    """NATS goes away, then each service is asked to stop: each ends with code 0, without a traceback
    (nats-py cannot drain a connection that is reconnecting)."""
    from tests.fixtures.runner_kit import Proc

    port = free_port()
    sample = asyncio.get_running_loop().create_future()

    async def on_sample(m) -> None:
        if not sample.done():
            sample.set_result(m)

    await js._nc.subscribe("autotune.gpu.q1.>", cb=on_sample)
    procs = {
        "runner": Proc(settings, "runner", "--host", "q1", "--simulate", "1xH100", log=tmp_path / "runner.log"),
        "scheduler": Proc(settings, "scheduler", log=tmp_path / "scheduler.log"),
        "projector": Proc(settings, "projector", log=tmp_path / "projector.log"),
        "gpumon": Proc(settings, "gpumon", "--host", "q1", "--simulate", "1xH100", log=tmp_path / "gpumon.log"),
        "api": Proc(settings, "api", "--port", str(port), log=tmp_path / "api.log"),
    }
    try:
        await asyncio.wait_for(sample, 30)  # gpumon is connected
        for name, marker in (("runner", "runner started"), ("scheduler", "scheduler started"), ("projector", "projecting"), ("api", "api listening")):
            for _ in range(300):  # each says so once it is connected
                if marker in procs[name].text():
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{name} did not start:\n{procs[name].text()}")
        nats_server.stop()
        await asyncio.sleep(1.5)  # every client is reconnecting now
        for p in procs.values():
            os.killpg(p.p.pid, signal.SIGTERM)
        codes = {name: await asyncio.to_thread(p.p.wait, 60) for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.stop()
    texts = {name: p.text() for name, p in procs.items()}
    assert codes == dict.fromkeys(procs, 0), (codes, texts)
    assert [name for name, t in texts.items() if "Traceback" in t] == [], texts
    assert re.search(r"^\d\d:\d\d:\d\d\.\d{3} INFO  api +api listening", texts["api"], re.M), texts["api"]  # autotune's format, not Litestar's


def test_every_service_waiting_for_nats_stops_on_sigterm(tmp_path):
    """Started before NATS is up, a service keeps trying to connect; a SIGTERM meanwhile ends it (exit 0,
    no traceback) instead of going unheard until NATS answers."""
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens here
    env = {**os.environ, **BYTECODE, "AUTOTUNE_DATA_DIR": str(tmp_path / "data")}
    services = {
        "runner": ["--host", "w1", "--simulate", "1xH100"], "scheduler": [], "projector": [],
        "gpumon": ["--host", "w1", "--simulate", "1xH100"], "api": ["--port", str(free_port())],
    }  # fmt: skip
    procs = {
        name: subprocess.Popen([sys.executable, "-m", "autotune.cli", "run", name, *args, "--nats", url], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, start_new_session=True)  # fmt: skip
        for name, args in services.items()
    }
    try:
        deadline = time.monotonic() + 60
        for name, p in procs.items():  # each has tried at least once: it is in its connect loop
            line = ""
            while "nats error" not in line and time.monotonic() < deadline and p.poll() is None:
                line = p.stdout.readline()
            assert "nats error" in line, f"{name} did not try to connect (exit {p.poll()})"
        for p in procs.values():
            os.killpg(p.pid, signal.SIGTERM)
        outs = {name: p.communicate(timeout=30)[0] for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert {name: p.returncode for name, p in procs.items()} == dict.fromkeys(services, 0), outs
    assert [name for name, out in outs.items() if "Traceback" in out] == [], outs


async def test_streams_shows_retention_and_apply_changes_it(settings, js):
    day = {"AUTOTUNE_TELEMETRY_MAX_AGE_S": "86400"}
    shown, pending, applied, again = [
        await asyncio.to_thread(autotune, "streams", *args, "--nats", settings.nats_url, env=env)
        for args, env in ((["--json"], {}), ([], day), (["--apply", "--json"], day), (["--json"], day))
    ]
    assert [r.returncode for r in (shown, pending, applied, again)] == [0, 0, 0, 0], [r.stderr for r in (shown, pending, applied, again)]
    before = {o["stream"]: o for o in json.loads(shown.stdout)["streams"]}
    assert before[subj.TELEMETRY_STREAM]["max_age_s"] == 7 * 86400 and before[subj.EVENTS_STREAM]["max_age_s"] == 0
    assert all(o["differs_from_settings"] == [] for o in before.values())
    assert "AUTOTUNE_TELEMETRY: max_age 604800.0 -> 86400.0 in this environment's settings; apply with autotune streams --apply" in pending.stdout
    assert json.loads(applied.stdout)["changed"] == [{"stream": subj.TELEMETRY_STREAM, "field": "max_age", "was": 604800.0, "now": 86400.0}]
    assert (await js.stream_info(subj.TELEMETRY_STREAM)).config.max_age == 86400
    assert all(o["differs_from_settings"] == [] for o in json.loads(again.stdout)["streams"])
