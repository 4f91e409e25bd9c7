"""`autotune deploy` for real: Debian's sshd in network namespaces as separate hosts (tests/fixtures/sshlab.py),
against this test's own `autotune up --secure` stack (nats-server with a user per role, scheduler,
projector, API), through the command line and the HTTP API as a person would use them.

The tests share one fleet and run in order (each states what it starts from): two hosts deployed
at once register once each and run a task together; a deploy again changes nothing; killed node
processes come back; an upgrade moves the release and keeps the host; a broken release rolls back;
`--rollback`; bad input is refused in one line with nothing half done; the API undeploys a host, and
nothing of it stays (process, file, NATS user); a host with no route to NATS joins through
`--via ssh-tunnel` and survives its tunnel being killed.

Marker `ssh` (not in `just test`, which it would lengthen by minutes: `just test-ssh`, and CI after the suite).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared import bus, security
from autotune.shared.net import free_port
from autotune.shared.settings import Settings
from tests.fixtures import sshlab
from tests.helpers import small_spec

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "admin-token-for-the-ssh-tests"
GPUS = "1xH100"  # one simulated GPU per host: a task with two experiments at a time needs both hosts


class Fleet:
    def __init__(self, base: Path, lab: sshlab.Lab) -> None:
        self.base, self.lab = base, lab
        self.data = base / "xdg" / "autotune"
        self.env = {
            **os.environ, "XDG_DATA_HOME": str(base / "xdg"), "AUTOTUNE_API_ADMIN_TOKEN": ADMIN_TOKEN, "AUTOTUNE_HOST_TTL_S": "6",
            "PYTHONUNBUFFERED": "1", "AUTOTUNE_SSH_IDENTITY": str(lab.client_key), "AUTOTUNE_SSH_KNOWN_HOSTS": str(lab.known_hosts),
        }  # fmt: skip
        self.env.pop("AUTOTUNE_NATS_URL", None)
        self.up: subprocess.Popen | None = None
        self.info: dict = {}
        self.releases: dict[str, str] = {}  # what the tests built: name → wheel

    def start(self) -> None:
        nats_port, self.api_port = free_port(), free_port()
        argv = [sys.executable, "-m", "autotune.cli", "up", "--secure", "--hosts", "0", "--nats-port", str(nats_port), "--api-port", str(self.api_port),
                "--nats-bind", self.lab.controller_address]  # fmt: skip
        with open(self.base / "up.log", "w") as log:
            self.up = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (self.data / "up.json").exists():
                self.info = json.loads((self.data / "up.json").read_text())
                try:
                    if httpx.get(f"http://127.0.0.1:{self.api_port}/api/ready", timeout=2).json().get("ready"):
                        return
                except (httpx.HTTPError, ValueError):
                    pass
            assert self.up.poll() is None, (self.base / "up.log").read_text()
            time.sleep(0.3)
        raise AssertionError("autotune up did not become ready:\n" + (self.base / "up.log").read_text()[-3000:])

    def stop(self) -> None:
        for pidfile in (self.data / "tunnels").glob("*.pid") if (self.data / "tunnels").exists() else []:
            from autotune.deploy import tunnel

            tunnel.stop_daemon(str(self.data), pidfile.stem, timeout=5)
        if self.up is not None and self.up.poll() is None:
            os.killpg(self.up.pid, signal.SIGTERM)
            try:
                self.up.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.up.pid, signal.SIGKILL)
        self.lab.stop()

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "autotune.cli", *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def submit(self, spec: dict) -> str:
        """`autotune submit` of a task file made from `spec`: the task's id."""
        path = self.base / f"{spec['task_name']}.json"
        path.write_text(json.dumps(spec))
        r = self.cli("submit", str(path), "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["id"]

    def deploy(self, h: sshlab.Host, name: str, *extra: str, user: str = "root", timeout: float = 600) -> subprocess.CompletedProcess:
        return self.cli(
            "deploy", h.url(user), "--host", name, "--identity", str(self.lab.client_key), "--known-hosts", str(self.lab.known_hosts),
            "--simulate", GPUS, "--time-scale", "50", "--offline", "--env", "AUTOTUNE_HOST_TTL_S=6", *extra, timeout=timeout,
        )  # fmt: skip

    @property
    def passwords(self) -> dict[str, str]:
        return json.loads(security.credentials_path(self.data).read_text())

    async def admin(self):
        url = security.nats_url(self.info["nats_url"], "admin", self.passwords["admin"])
        nc = await bus.connect(Settings(nats_url=url, tls_ca=self.info.get("tls_ca")), "ssh-test")  # NATS over TLS
        return nc, nc.jetstream()

    def hosts(self, *extra: str) -> dict[str, dict]:
        r = self.cli("hosts", "--json", *extra)
        assert r.returncode == 0, r.stderr
        return {h["host"]: h for h in json.loads(r.stdout)}

    def api(self, method: str, path: str, token: str | None = ADMIN_TOKEN, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, f"http://127.0.0.1:{self.api_port}{path}", headers=headers, timeout=120, **kw)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    if reason := sshlab.available():
        pytest.skip(reason)
    if shutil.which("uv") is None:
        pytest.skip("uv builds the wheel autotune deploy installs")
    base = tmp_path_factory.mktemp("fleet")
    lab = sshlab.Lab(base / "lab").start()
    f = Fleet(base, lab)
    try:
        lab.add_host("a")
        lab.add_host("b")
        lab.add_host("c", routed=False)  # cannot reach NATS: --via ssh-tunnel
        lab.add_host("d", disk_mb=30)  # no disk space
        lab.add_host("e", no_python=True)
        for name in ("a", "b", "c"):
            lab.trust(lab.hosts[name])
        f.start()
        yield f
    finally:
        f.stop()


def one_line_refusal(r: subprocess.CompletedProcess, says: str) -> None:
    """Bad input: exit 2 and one line on stderr that says what was wrong."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("autotune: ") and says in lines[0], (r.returncode, r.stdout, r.stderr)


async def events_of(js, subject: str) -> list[ev.Event]:
    return [e for _, e in await bus.messages_after(js, subject, 0) if e is not None]


def build_wheel(tmp: Path, version: str, *, broken: bool = False) -> Path:
    """A new build of this checkout at `version` (broken: its runner exits at start)."""
    src = tmp / f"src-{version}"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "*.egg-info", ".pytest_cache", ".hypothesis"))
    for f, pat in (("pyproject.toml", r'^version = "[^"]+"'), ("services/__init__.py", r'^__version__ = "[^"]+"')):
        p = src / f
        p.write_text(re.sub(pat, pat.split(" = ")[0].lstrip("^") + f' = "{version}"', p.read_text(), count=1, flags=re.M))
    if broken:
        p = src / "services" / "runner" / "service.py"
        p.write_text(p.read_text().replace("    async def run(self, stop: asyncio.Event) -> None:\n", "    async def run(self, stop: asyncio.Event) -> None:\n        raise SystemExit('this build is broken on purpose')\n", 1))
    out = tmp / f"wheel-{version}"
    subprocess.run(["uv", "build", "--wheel", "--out-dir", str(out), str(src)], check=True, capture_output=True, timeout=300)
    return next(out.glob("autotune-*.whl"))


def current_release(h: sshlab.Host) -> str:
    return os.readlink(h.opt / "autotune" / "current").rsplit("/", 1)[-1]


def node_processes(h: sshlab.Host, what: str) -> list[int]:
    return [int(line.split()[0]) for line in h.processes() if what in line]


# --- deploy -----------------------------------------------------------------------------------------------


async def test_two_hosts_deploy_at_once_and_register_once(fleet):
    a, b = fleet.lab.hosts["a"], fleet.lab.hosts["b"]
    argv = lambda h, name, *x: [sys.executable, "-m", "autotune.cli", "deploy", h.url(), "--host", name, "--identity", str(fleet.lab.client_key),  # noqa: E731
                                "--known-hosts", str(fleet.lab.known_hosts), "--simulate", GPUS, "--time-scale", "50", "--offline",
                                "--env", "AUTOTUNE_HOST_TTL_S=6", *x]  # fmt: skip
    pa = subprocess.Popen(argv(a, "ha", "--json"), env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pb = subprocess.Popen(argv(b, "hb"), env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_a, err_a = pa.communicate(timeout=800)
    out_b, err_b = pb.communicate(timeout=800)
    got = json.loads(out_a)
    assert pa.returncode == 0, (got["message"], got["steps"], got["log_tail"], err_a)
    assert pb.returncode == 0, (out_b, err_b)
    print("\ntimeline of ha:", " | ".join(f"{s['step']} {s['seconds']:.1f}s" for s in got["steps"]), f"= {got['seconds']:.1f}s")
    print("hb:\n" + out_b)
    assert got["outcome"] == "succeeded" and got["action"] == "deploy" and got["mode"] == "daemon"
    assert [s["step"] for s in got["steps"]] == ["preflight", "upload", "install", "credentials", "switch", "start", "registered"]
    assert "hb: succeeded" in out_b and "registered as instance" in out_b and "SIMULATED" in out_b

    nc, js = await fleet.admin()
    try:
        for name in ("ha", "hb"):
            regs = await events_of(js, subj.host(name, "registered"))
            assert len(regs) == 1 and regs[0].simulated and [g.name for g in regs[0].gpus] == ["Simulated NVIDIA H100"]
            done = [e for e in await events_of(js, subj.host(name, "deploy_finished"))]
            assert [(e.outcome, e.release) for e in done] == [("succeeded", got["release"])]
            assert done[0].requested_by.endswith("(cli)") and done[0].machine.startswith("SHA256:")
    finally:
        await nc.close()
    hosts = fleet.hosts()
    assert sorted(hosts) == ["ha", "hb"]
    assert all(h["release"] == got["release"] and h["version"] == got["version"] and h["status"] == "online" for h in hosts.values())
    # the node's files: its NATS password only in a 0600 file, never in a command line
    etc = a.opt / "autotune" / "etc"
    assert (etc / "nats.json").stat().st_mode & 0o777 == 0o600
    password = fleet.passwords["runner-ha"]
    assert password in (etc / "nats.json").read_text() and password not in (etc / "node.json").read_text()
    assert not any(password in p for p in a.processes())
    assert password not in (a.opt / "autotune" / "log" / "node.log").read_text()
    assert current_release(a) == got["release"]
    auth = (fleet.data / "nats" / "auth.conf").read_text()
    assert '"runner-ha"' in auth and '"gpumon-hb"' in auth
    # NATS over TLS: the node verifies the server against the controller's CA, copied beside its configuration
    assert fleet.info["tls_ca"] and (etc / "nats-ca.pem").read_bytes() == Path(fleet.info["tls_ca"]).read_bytes()
    assert json.loads((etc / "node.json").read_text())["nats_ca"] == "/opt/autotune/etc/nats-ca.pem"
    assert "NATS over TLS" in next(s["detail"] for s in got["steps"] if s["step"] == "credentials")
    assert "TLS required for client connections" in (fleet.data / "logs" / "nats-server.log").read_text()


async def test_a_task_runs_on_both_hosts(fleet):
    task = fleet.submit(small_spec("on-two-hosts", optimization={"max_iterations": 4, "max_parallel": 2}))
    nc, js = await fleet.admin()
    try:
        deadline = time.monotonic() + 240
        final = None
        while final is None and time.monotonic() < deadline:
            final = next((e for e in await events_of(js, subj.task_all(task)) if isinstance(e, ev.TERMINAL_TASK)), None)
            await asyncio.sleep(1)
        assert isinstance(final, ev.TaskCompleted), final
        hosts = {e.host for e in await events_of(js, subj.task_all(task)) if isinstance(e, ev.ExperimentCompleted)}
        assert hosts == {"ha", "hb"}
    finally:
        await nc.close()


async def test_deploying_again_changes_nothing(fleet):
    a = fleet.lab.hosts["a"]
    pid = (a.opt / "autotune" / "run" / "node.pid").read_text().strip()
    releases = sorted(os.listdir(a.opt / "autotune" / "releases"))
    nc, js = await fleet.admin()
    try:
        before = await bus.last_seq(js, subj.host("ha", "registered"))
        r = fleet.deploy(a, "ha")
        assert r.returncode == 0, r.stderr
        assert "deploy ha: unchanged" in r.stdout and "nothing to do" in r.stdout
        print("\nre-deploy:\n" + r.stdout)
        assert await bus.last_seq(js, subj.host("ha", "registered")) == before  # no new registration, no restart
        assert [e.outcome for e in await events_of(js, subj.host("ha", "deploy_finished"))][-1] == "unchanged"
    finally:
        await nc.close()
    assert (a.opt / "autotune" / "run" / "node.pid").read_text().strip() == pid
    assert sorted(os.listdir(a.opt / "autotune" / "releases")) == releases
    assert sorted(fleet.hosts()) == ["ha", "hb"]  # no duplicate host


async def test_killed_node_processes_come_back(fleet):
    a = fleet.lab.hosts["a"]
    runner, gpumon = node_processes(a, "run runner --host ha"), node_processes(a, "run gpumon --host ha")
    assert len(runner) == 1 and len(gpumon) == 1
    nc, js = await fleet.admin()
    try:
        before = await bus.last_seq(js, subj.host("ha", "registered"))
        for p in (*runner, *gpumon):
            os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and await bus.last_seq(js, subj.host("ha", "registered")) == before:
            await asyncio.sleep(0.3)
        assert await bus.last_seq(js, subj.host("ha", "registered")) > before  # the supervisor started a new runner
        while time.monotonic() < deadline and not (set(node_processes(a, "run gpumon --host ha")) - set(gpumon)):
            await asyncio.sleep(0.3)
        assert set(node_processes(a, "run gpumon --host ha")) - set(gpumon)
    finally:
        await nc.close()
    assert "runner exited with code -9; restarting" in (a.opt / "autotune" / "log" / "node.log").read_text()


# --- upgrade, rollback --------------------------------------------------------------------------------------


async def test_an_upgrade_moves_the_release_and_keeps_the_host(fleet, tmp_path):
    a = fleet.lab.hosts["a"]
    first = current_release(a)
    wheel = build_wheel(tmp_path, "0.1.0+upgrade1")
    r = fleet.deploy(a, "ha", "--wheel", str(wheel), "--json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    got = json.loads(r.stdout)
    print("\nupgrade:", " | ".join(f"{s['step']} {s['seconds']:.1f}s {s['detail']}" for s in got["steps"]))
    assert (got["action"], got["outcome"], got["version"], got["previous_release"]) == ("upgrade", "succeeded", "0.1.0+upgrade1", first)
    steps = {s["step"]: s for s in got["steps"]}
    assert "dependencies shared with release" in steps["install"]["detail"]  # the same lock: nothing installed twice
    assert {"drain", "stop", "switch", "start", "registered"} <= set(steps)
    assert current_release(a) == got["release"] != first
    assert sorted(os.listdir(a.opt / "autotune" / "releases")) == sorted([first, got["release"]])  # the previous one is kept
    hosts = fleet.hosts()
    assert sorted(hosts) == ["ha", "hb"] and hosts["ha"]["version"] == "0.1.0+upgrade1" and hosts["ha"]["release"] == got["release"]
    fleet.releases["upgrade1"] = got["release"]
    fleet.releases["first"] = first


async def test_a_release_that_does_not_come_up_is_rolled_back(fleet, tmp_path):
    a = fleet.lab.hosts["a"]
    good = current_release(a)
    wheel = build_wheel(tmp_path, "0.1.0+broken", broken=True)
    r = fleet.deploy(a, "ha", "--wheel", str(wheel), "--timeout", "25")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "upgrade ha: rolled_back" in r.stdout and f"rolled back to {good}" in r.stdout, r.stdout
    assert "broken on purpose" in r.stderr, r.stderr[-5000:]  # the node's log, shown
    assert current_release(a) == good
    assert sorted(os.listdir(a.opt / "autotune" / "releases")) == sorted([fleet.releases["first"], good])  # the broken one is gone
    nc, js = await fleet.admin()
    try:
        last = (await events_of(js, subj.host("ha", "registered")))[-1]
        assert last.version == "0.1.0+upgrade1"  # the good release registered again
        done = (await events_of(js, subj.host("ha", "deploy_finished")))[-1]
        assert (done.outcome, done.release) == ("rolled_back", good)
    finally:
        await nc.close()
    assert fleet.hosts()["ha"]["status"] == "online"


async def test_rollback_by_hand_waits_for_the_experiment_running_on_the_host(fleet):
    """A rollback (like an upgrade or an undeploy) drains the host first: the experiment running there
    finishes on it, by the same attempt, before the node stops; nothing is failed or moved."""
    a = fleet.lab.hosts["a"]
    # two experiments at once on two 1-GPU hosts: one runs on ha. One run of 12 simulated minutes: ~14 s at time scale 50
    spec = small_spec("during-rollback", optimization={"max_iterations": 2, "max_parallel": 2, "timeout_per_iteration": 300},
                      benchmark={"num_concurrency": [1], "max_requests_per_iteration": 1_000_000, "max_time_per_iteration": 12, "warmup_requests": 0})  # fmt: skip
    task = fleet.submit(spec)
    nc, js = await fleet.admin()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # its engine on ha answers: the benchmark runs
            if any(isinstance(e, ev.ExperimentReady) and e.host == "ha" for e in await events_of(js, subj.task_all(task))):
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError("no experiment started on ha")
        r = fleet.deploy(a, "ha", "--rollback", "--json")
        assert r.returncode == 0, (r.stdout, r.stderr)
        got = json.loads(r.stdout)
        steps = {s["step"]: s for s in got["steps"]}
        assert (got["action"], got["outcome"]) == ("rollback", "succeeded")
        assert steps["drain"]["detail"] == "1 experiment(s) finished", steps["drain"]
        history = await events_of(js, subj.task_all(task))
        on_ha = [e for e in history if isinstance(e, ev.ExperimentCompleted | ev.ExperimentFailed) and e.host == "ha"]
        assert [(type(e).__name__, e.attempt) for e in on_ha] == [("ExperimentCompleted", 0)], on_ha  # finished there, not moved
        assert await events_of(js, subj.host("ha", "drained")), "the host said it was drained before it stopped"
    finally:
        await nc.close()
    assert current_release(a) == fleet.releases["first"]
    assert fleet.hosts()["ha"]["version"] == "0.1.0"


# --- bad input ----------------------------------------------------------------------------------------------


async def test_bad_input_is_refused_in_one_line_with_nothing_done(fleet):
    lab = fleet.lab
    a, b, d, e = (lab.hosts[n] for n in "abde")
    known = lab.known_hosts.read_text()
    nc, js = await fleet.admin()
    try:
        seq = await bus.last_seq(js, f"{subj.PREFIX}.host.>")
        one_line_refusal(fleet.deploy(d, "hd"), "its host key is not known")
        assert lab.known_hosts.read_text() == known  # not trusted behind the operator's back
        one_line_refusal(fleet.deploy(a, "ha", user="nobody"), "permission denied for user `nobody`")
        one_line_refusal(fleet.cli("deploy", a.url(), "--host", "ha", "--identity", str(lab.other_key), "--known-hosts", str(lab.known_hosts)), "permission denied")
        one_line_refusal(fleet.deploy(e, "he", "--accept-new-host-key"), "no Python >= 3.11")
        one_line_refusal(fleet.deploy(d, "hd", "--accept-new-host-key"), "MB free in /opt")
        r = fleet.deploy(b, "ha")
        one_line_refusal(r, "host name `ha` is already taken by another machine")
        assert "already runs autotune node `hb`" in r.stderr
        one_line_refusal(fleet.cli("deploy", "ssh://root@" + a.address, "--host", "bad.name"), "--host")
        one_line_refusal(fleet.cli("deploy", "http://" + a.address, "--host", "x"), "only ssh://")
        assert await bus.last_seq(js, f"{subj.PREFIX}.host.>") == seq  # nothing recorded, nothing registered
    finally:
        await nc.close()
    assert d.files() == [] and e.files() == []
    assert sorted(fleet.hosts()) == ["ha", "hb"] and current_release(b) == fleet.releases["first"]


# --- the API, undeploy ------------------------------------------------------------------------------------


async def test_the_api_deploys_and_undeploys_with_the_admin_token(fleet):
    a, b = fleet.lab.hosts["a"], fleet.lab.hosts["b"]
    body = {"target": a.url(), "host": "ha", "identity": str(fleet.lab.client_key), "known_hosts": str(fleet.lab.known_hosts),
            "simulate": GPUS, "time_scale": 50, "offline": True, "dry_run": True}  # fmt: skip
    assert fleet.api("POST", "/api/hosts/deploy", token=None, json=body).status_code == 401
    assert fleet.api("POST", "/api/hosts/deploy", token=fleet.info["api_token"], json=body).status_code == 401  # the API token is not enough
    r = fleet.api("POST", "/api/hosts/deploy", json={**body, "host": "h.x"})
    assert r.status_code == 400 and "host name" in r.json()["error"]
    r = fleet.api("POST", "/api/hosts/deploy", json=body)
    assert r.status_code == 202 and r.json()["status"] == "planned" and any("switch" in line for line in r.json()["plan"]), r.text

    nc, js = await fleet.admin()
    try:
        r = fleet.api("DELETE", "/api/hosts/hb?undeploy=true")
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 240
        done = []
        while not done and time.monotonic() < deadline:
            done = [e for e in await events_of(js, subj.host("hb", "deploy_finished")) if e.action == "undeploy"]
            await asyncio.sleep(0.5)
        assert [(x.outcome, x.requested_by.endswith("(api)")) for x in done] == [("succeeded", True)], done
        steps = [x.step for x in await events_of(js, subj.host("hb", "deploy_step")) if x.deploy == done[0].deploy]
        assert steps == ["preflight", "drain", "remove", "revoke"]
    finally:
        await nc.close()
    # nothing of autotune is left: no process, no file, no NATS user
    assert b.processes() == []
    assert b.files() == []
    assert "runner-hb" not in fleet.passwords and '"runner-hb"' not in (fleet.data / "nats" / "auth.conf").read_text()
    assert "hb" not in fleet.hosts() and fleet.hosts("--all")["hb"]["status"] == "removed"


# --- a host that cannot reach NATS ---------------------------------------------------------------------------


async def test_a_host_without_a_route_joins_through_the_tunnel_and_survives_its_loss(fleet):
    from autotune.deploy import tunnel
    from autotune.reads.hosts import live_hosts

    c = fleet.lab.hosts["c"]
    nats_port = int(fleet.info["nats_url"].rsplit(":", 1)[1])
    probe = c.exec("/usr/bin/python3", "-c", f"import socket; socket.create_connection(('{fleet.lab.controller_address}', {nats_port}), 2)")
    assert probe.returncode != 0 and "unreachable" in probe.stderr.lower()  # it really cannot reach NATS

    r = fleet.deploy(c, "hc", "--via", "ssh-tunnel")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "tunnel" in r.stdout and "deploy hc: succeeded" in r.stdout
    pid = tunnel.running_pid(str(fleet.data), "hc")
    assert pid is not None

    async def heartbeat_after(t: float, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = (await live_hosts(js, ["hc"])).get("hc")
            if live is not None and live.at > t:
                return
            await asyncio.sleep(0.5)
        raise AssertionError(f"hc sent no heartbeat after the tunnel was killed; tunnel log:\n{(fleet.data / 'logs' / 'tunnel-hc-connection.log').read_text()[-2000:]}")

    nc, js = await fleet.admin()
    try:
        # 1. the connection drops (its sshd session on the host is killed): the tunnel reconnects
        sessions = [p for p in c.pids() if p != c.sshd.pid and "sshd" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]
        assert sessions, c.processes()
        killed_at = time.time()
        for p in sessions:
            os.kill(p, signal.SIGKILL)
        await asyncio.sleep(8)  # longer than a heartbeat: the node noticed
        await heartbeat_after(killed_at + 6)
        # 2. the process holding it dies: its supervisor starts another
        from autotune.deploy.node import _descendants

        holder = [p for p in _descendants(pid) if b"--connect" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(holder) == 1
        killed_at = time.time()
        os.kill(holder[0], signal.SIGKILL)
        await asyncio.sleep(8)
        await heartbeat_after(killed_at + 6)
        assert [p for p in _descendants(pid) if b"--connect" in Path(f"/proc/{p}/cmdline").read_bytes()] != holder
    finally:
        await nc.close()
    log = (fleet.data / "logs" / "tunnel-hc-connection.log").read_text()  # the connection's (the supervisor's own is tunnel-hc.log)
    assert log.count("tunnel up") >= 3 and "tunnel dropped; reconnecting" in log

    r = fleet.cli("undeploy", "hc")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert tunnel.running_pid(str(fleet.data), "hc") is None and not (fleet.data / "tunnels" / "hc.json").exists()
    assert c.processes() == [] and c.files() == []


async def test_undeploy_leaves_nothing_behind(fleet):
    a = fleet.lab.hosts["a"]
    old_password = fleet.passwords["gpumon-ha"]
    r = fleet.cli("undeploy", "ha")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "undeploy ha: succeeded" in r.stdout
    assert a.processes() == [] and a.files() == []
    assert "gpumon-ha" not in fleet.passwords
    from nats.aio.client import Client

    refused = Client()
    trusted = ssl.create_default_context(cafile=fleet.info["tls_ca"])  # over TLS, so that what refuses it is the login
    with pytest.raises(Exception) as gone:  # noqa: B017 - the user is gone
        url = security.nats_url(fleet.info["nats_url"], "gpumon-ha", old_password)
        await asyncio.wait_for(refused.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2, tls=trusted), 30)
    assert "authorization" in str(gone.value).lower(), repr(gone.value)
    await refused.close()
    assert fleet.hosts() == {}
