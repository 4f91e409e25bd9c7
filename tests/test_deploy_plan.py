"""autotune deploy's pure parts and local effects, without SSH: input checks, the preflight's verdicts,
dependencies pinned from uv.lock, wheel choice, the systemd unit (checked by systemd-analyze), the
release id, the node's supervisor, and a secured NATS learning and forgetting a host's users by reload.
The whole deploy over real SSH is tests/test_deploy_ssh.py."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from autotune.deploy import lock, node
from autotune.deploy import probe as pr
from autotune.deploy.authority import Authority
from autotune.deploy.layout import Credentials, Layout, NodeConfig, render_unit
from autotune.deploy.release import build, wheel_identity
from autotune.deploy.target import BadInput, check_host_name, check_prefix, parse_target
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared import bus, security
from autotune.shared.provision import provision
from autotune.shared.settings import Settings
from autotune.supervisor import start_secure_nats

ROOT = Path(__file__).resolve().parent.parent


# --- input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "user", "address", "port"),
    [
        ("ssh://root@10.0.0.5", "root", "10.0.0.5", 22),
        ("ssh://ubuntu@gpu-7.lab:2222", "ubuntu", "gpu-7.lab", 2222),
        ("root@10.0.0.5:18022", "root", "10.0.0.5", 18022),
        ("ssh://root@[fe80::1]:22", "root", "fe80::1", 22),
    ],
)
def test_targets_parse(text, user, address, port):
    t = parse_target(text)
    assert (t.user, t.address, t.port) == (user, address, port)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("ssh://10.0.0.5", "names no user"),
        ("http://root@10.0.0.5", "only ssh://"),
        ("ssh://root:secret@10.0.0.5", "no password"),
        ("ssh://root@10.0.0.5/opt", "no path"),
        ("ssh://ro;ot@10.0.0.5", "not a login name"),
        ("ssh://root@bad_host$(reboot)", "no valid host"),
        ("ssh://root@10.0.0.5:99999", "ssh://"),
    ],
)
def test_bad_targets_say_what_is_wrong(text, says):
    with pytest.raises(BadInput, match=None) as e:
        parse_target(text)
    assert says in str(e.value)


def test_host_names_and_prefixes_are_checked():
    assert check_host_name("gpu-7") == "gpu-7"
    with pytest.raises(BadInput, match="host name"):
        check_host_name("gpu.7")
    assert check_prefix("/srv/autotune/") == "/srv/autotune"
    for bad in ("relative/dir", "/opt", "/", "/srv/a b", "/srv/%h", "/srv/../etc"):
        with pytest.raises(BadInput):
            check_prefix(bad)


# --- the preflight ----------------------------------------------------------------------------------------

PROBE_OUT = """uid=0
user=root
home=/root
arch=x86_64
kernel=Linux 6.1.0
pid1=systemd
systemctl=yes
prefix=/opt/autotune
python=/usr/bin/python3.12 3.12.3 yes
python=/usr/bin/python3 3.9.2 yes
libc=glibc 2.36
nvidia_smi=/usr/bin/nvidia-smi
gpu=0, NVIDIA H100 80GB HBM3, 81559, GPU-aaaa
gpu=1, NVIDIA H100 80GB HBM3, 81559, GPU-bbbb
disk_path=/opt
disk_free_kb=52428800
probe=done
"""


def test_the_probe_output_becomes_facts():
    f = pr.parse(PROBE_OUT)
    assert f.root and f.systemd and f.arch == "x86_64" and f.glibc == (2, 36)
    assert f.python is not None and f.python.path == "/usr/bin/python3.12"
    assert [g.name for g in f.gpus] == ["NVIDIA H100 80GB HBM3"] * 2
    assert pr.problems(f, host="gpu-7", simulate=None, need_mb=700, offline=True) == []


def test_the_preflight_says_everything_missing_at_once():
    f = pr.parse(
        PROBE_OUT.replace("python=/usr/bin/python3.12 3.12.3 yes\n", "").replace("nvidia_smi=/usr/bin/nvidia-smi\n", "").replace("gpu=", "x=")
        .replace("disk_free_kb=52428800", "disk_free_kb=30720") + 'state={"host": "gpu-3"}\n'
    )  # fmt: skip
    got = pr.problems(f, host="gpu-7", simulate=None, need_mb=700, offline=False)
    assert len(got) == 4, got
    assert "no Python >= 3.11 (found: /usr/bin/python3 3.9.2)" in got[0] and "apt-get install" in got[0]
    assert "no NVIDIA driver" in got[1] and "--simulate" in got[1]
    assert "only 30 MB free in /opt" in got[2] and "700 MB" in got[2]
    assert "already runs autotune node `gpu-3`" in got[3]
    # a simulated host needs no driver; a Python without venv says which package brings it
    f2 = pr.parse(PROBE_OUT.replace("3.12.3 yes", "3.12.3 no").replace("python=/usr/bin/python3 3.9.2 yes\n", ""))
    assert pr.problems(f2, host="gpu-7", simulate="2xH100", need_mb=1, offline=False) == [
        "/usr/bin/python3.12 cannot make a virtualenv (no `venv`/`ensurepip`); install it, e.g. `apt-get install python3.12-venv`"
    ]
    assert pr.problems(pr.parse("uid=0\n"), host="h", simulate=None, need_mb=1, offline=False)[0].startswith("the preflight probe did not finish")


# --- dependencies from uv.lock ------------------------------------------------------------------------------

LINUX_311 = {
    "implementation_name": "cpython", "implementation_version": "3.11.2", "os_name": "posix", "platform_machine": "x86_64",
    "platform_python_implementation": "CPython", "platform_release": "6.1.0", "platform_system": "Linux", "platform_version": "#1",
    "python_full_version": "3.11.2", "python_version": "3.11", "sys_platform": "linux",
}  # fmt: skip


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not installed (compares with `uv export`)")
def test_pins_are_what_uv_exports_for_that_python_and_platform():
    """The walk over uv.lock agrees with uv's own export, once markers are evaluated for the host."""
    text = (ROOT / "uv.lock").read_text()
    out = subprocess.run(
        ["uv", "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "--no-annotate", "--no-header"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    exported = set()
    for line in out.splitlines():
        if "==" not in line:
            continue
        req, _, marker = line.partition(" ; ")
        if not marker or lock._applies(marker, LINUX_311):
            exported.add(req.strip().lower())
    mine = {f"{p.name}=={p.version}".lower() for p in lock.pins(text, LINUX_311)}
    assert mine == exported
    py312 = {p.name: p.version for p in lock.pins(text, {**LINUX_311, "python_full_version": "3.12.3", "python_version": "3.12"})}
    assert py312["numpy"] != {p.name: p.version for p in lock.pins(text, LINUX_311)}["numpy"]  # a forked resolution, chosen by marker


def test_requirements_carry_every_hash_and_wheels_fit_the_host():
    pins = lock.pins((ROOT / "uv.lock").read_text(), LINUX_311)
    req = lock.requirements(pins)
    numpy = next(p for p in pins if p.name == "numpy")
    assert f"numpy=={numpy.version}" in req and all(f"--hash=sha256:{w.sha256}" in req for w in numpy.wheels)
    tags = lock.wheel_tags((3, 11), "x86_64", (2, 36))
    w = lock.best_wheel(numpy, tags)
    assert w is not None and "cp311" in w.filename and "x86_64" in w.filename and "manylinux" in w.filename
    assert lock.best_wheel(numpy, lock.wheel_tags((3, 11), "aarch64", (2, 36))).filename.endswith("aarch64.whl")
    assert lock.best_wheel(numpy, lock.wheel_tags((3, 11), "x86_64", (2, 5))) is None  # too old a glibc: no wheel
    assert all(lock.best_wheel(p, tags) for p in pins)


# --- the release ------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv builds the wheel")
def test_the_release_id_is_the_wheels_content(tmp_path):
    a = build(tmp_path / "a")
    b = build(tmp_path / "b")
    assert a.id == b.id and a.id.startswith(f"{a.version}-")  # built twice, the same release
    with pytest.raises(Exception, match="not a wheel|cannot read"):
        wheel_identity(tmp_path / "a" / "missing.whl")


# --- the systemd unit -------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (Debian: systemd)")
@pytest.mark.parametrize("root", [True, False])
def test_the_unit_passes_systemd_analyze_verify(tmp_path, root):
    prefix = tmp_path / "autotune"
    (prefix / "current" / "venv" / "bin").mkdir(parents=True)
    os.symlink(sys.executable, prefix / "current" / "venv" / "bin" / "python")
    layout = Layout(prefix=str(prefix), root=root, home=str(tmp_path))
    unit = tmp_path / "autotune-node.service"
    unit.write_text(render_unit(layout, "gpu-7"))
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    r = subprocess.run(["systemd-analyze", *([] if root else ["--user"]), "verify", str(unit)], capture_output=True, text=True, env=env)
    assert (r.returncode, r.stdout + r.stderr) == (0, ""), r.stderr
    text = unit.read_text()
    assert "Restart=always" in text and "KillMode=mixed" in text and f"--config {layout.node_config}" in text
    assert ("WantedBy=multi-user.target" if root else "WantedBy=default.target") in text
    # and the check can fail: a unit whose interpreter is missing is refused
    (prefix / "current" / "venv" / "bin" / "python").unlink()
    r = subprocess.run(["systemd-analyze", *([] if root else ["--user"]), "verify", str(unit)], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "not executable" in r.stderr


# --- the node ---------------------------------------------------------------------------------------------


def _config(tmp_path: Path, url: str, host: str = "n1") -> tuple[str, NodeConfig, Credentials]:
    creds = Credentials(runner=url, gpumon=url)
    (tmp_path / "nats.json").write_text(json.dumps({"runner": url, "gpumon": url}))
    cfg = NodeConfig(
        host=host, simulate="2xH100", time_scale=50, data_dir=str(tmp_path / "data"), log_dir=str(tmp_path / "log"), pidfile=str(tmp_path / "node.pid"),
        credentials=str(tmp_path / "nats.json"), nats_url=security.redacted(url), env={"AUTOTUNE_HOST_TTL_S": "3"},
    )  # fmt: skip
    (tmp_path / "node.json").write_text(json.dumps(__import__("msgspec").to_builtins(cfg)))
    return str(tmp_path / "node.json"), cfg, creds


def test_the_nodes_secrets_stay_out_of_command_lines(tmp_path):
    _, cfg, _ = _config(tmp_path, "nats://x")
    kids = node.children(cfg, Credentials(runner="nats://runner-n1:s3cret@h:4222", gpumon="nats://gpumon-n1:t0ken@h:4222"), python="/py")
    assert [k.name for k in kids] == ["runner", "gpumon"]
    assert all("s3cret" not in " ".join(k.argv) and "t0ken" not in " ".join(k.argv) for k in kids)
    assert kids[0].env["AUTOTUNE_NATS_URL"].startswith("nats://runner-n1:") and kids[1].env["AUTOTUNE_NATS_URL"].startswith("nats://gpumon-n1:")
    assert kids[0].argv[-4:] == ["--simulate", "2xH100", "--time-scale", "50"]


def _pids_of(name: str, parent: int) -> list[int]:
    out = []
    for p in node._descendants(parent):
        if name in node._cmdline(p):
            out.append(p)
    return out


async def _registered_after(js, host: str, seq: int, timeout: float = 60) -> ev.HostRegistered:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await bus.messages_after(js, subj.host(host, "registered"), seq)
        if got:
            return got[-1][1]  # type: ignore[return-value]
        await asyncio.sleep(0.2)
    raise AssertionError(f"{host} did not register")


@pytest.mark.timeout(180)
async def test_the_node_daemon_restarts_a_killed_service_and_stops_on_sigterm(nats_server, tmp_path):
    """`autotune node --daemon`: runner and GPU monitor come up; a kill -9 of each brings it back
    through the node's supervisor (a new runner instance registers); SIGTERM stops them all."""
    config, cfg, _ = _config(tmp_path, nats_server.url)
    nc = await bus.connect(Settings(nats_url=nats_server.url), "test")
    js = nc.jetstream()
    await provision(js, Settings(nats_url=nats_server.url))
    try:
        r = subprocess.run([sys.executable, "-m", "autotune.cli", "node", "--config", config, "--daemon"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "does not come back after a reboot" in r.stdout
        pid = node.running_pid(cfg.pidfile)
        assert pid is not None
        first = await _registered_after(js, "n1", 0)
        assert first.simulated and len(first.gpus) == 2
        runner, gpumon = _pids_of("run runner", pid), _pids_of("run gpumon", pid)
        assert len(runner) == 1 and len(gpumon) == 1
        seq = await bus.last_seq(js, subj.host("n1", "registered"))
        for p in (*runner, *gpumon):
            os.kill(p, signal.SIGKILL)
        again = await _registered_after(js, "n1", seq)
        assert again.instance != first.instance  # the same host, a new runner instance
        deadline = time.monotonic() + 30
        while not (_pids_of("run gpumon", pid) and set(_pids_of("run gpumon", pid)) != set(gpumon)) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert _pids_of("run gpumon", pid) and set(_pids_of("run gpumon", pid)) != set(gpumon)
        tree = node._descendants(pid)
        r = subprocess.run([sys.executable, "-m", "autotune.cli", "node", "--config", config, "--stop"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "node stopped" in r.stdout, r.stderr
        assert [p for p in [pid, *tree] if node._cmdline(p)] == []  # nothing of it is left
        assert "runner exited with code -9; restarting" in (tmp_path / "log" / "node.log").read_text()
    finally:
        node.stop_daemon(cfg, timeout=5)
        await nc.close()


# --- a secured NATS learns and forgets a host's users ----------------------------------------------------


async def test_a_host_gets_its_users_by_a_reload_and_loses_them_on_revoke(tmp_path):
    """The server `autotune up --secure` runs: a deployed host's users are added without a restart,
    may do what security.py allows them and nothing else; revoked, they can no longer log in and their
    open connection is dropped."""
    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True)
    server, _ = start_secure_nats(data, -1, [])
    try:
        authority = Authority(data, server.url)
        assert authority.secured and authority.passwords("gpu-9") is None
        pw = await authority.add_host("gpu-9")
        assert set(pw) == {"runner-gpu-9", "gpumon-gpu-9"}
        assert (data / "nats" / "auth.conf").stat().st_mode & 0o777 == 0o600
        assert await authority.add_host("gpu-9") == pw  # again: the same passwords, nothing changes
        url = security.nats_url(server.url, "gpumon-gpu-9", pw["gpumon-gpu-9"])
        errors: list[Exception] = []

        async def on_error(e: Exception) -> None:
            errors.append(e)

        nc = await nats.connect(url, error_cb=on_error, max_reconnect_attempts=1, reconnect_time_wait=0.2)
        await nc.publish("autotune.gpu.gpu-9.0", b"{}")
        await nc.publish("autotune.gpu.gpu-1.0", b"{}")  # another host's subject: refused
        for _ in range(20):  # the refusal arrives with the flush's PONG, at worst a moment later
            await nc.flush(timeout=2)
            if any("permissions violation" in str(e).lower() for e in errors):
                break
            await asyncio.sleep(0.05)
        refused = [str(e).lower() for e in errors if "permissions violation" in str(e).lower()]
        assert len(refused) == 1 and "autotune.gpu.gpu-1.0" in refused[0], errors
        assert server.proc is not None and server.proc.poll() is None  # never restarted
        pid = server.proc.pid
        assert await authority.revoke_host("gpu-9") is True
        assert authority.passwords("gpu-9") is None and "gpu-9" not in (data / "nats" / "auth.conf").read_text()
        deadline = time.monotonic() + 10
        while nc.is_connected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not nc.is_connected  # its open connection was dropped
        refused = Client()
        with pytest.raises(Exception):  # noqa: B017 - any refusal: the user no longer exists
            await refused.connect(url, max_reconnect_attempts=0, allow_reconnect=False, connect_timeout=2, error_cb=on_error)
        await refused.close()
        assert server.proc.pid == pid and server.proc.poll() is None
        await nc.close()
    finally:
        server.stop()
