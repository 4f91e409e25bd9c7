"""The real `autotune` commands, run as processes: bad input, and `autotune up` with Ctrl-C and restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotune.runner.runtimes.local import labelled_processes
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def autotune(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autotune.cli", *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=ROOT
    )


def test_help_lists_every_command_with_examples():
    out = autotune("--help").stdout
    for cmd in ("up", "run", "submit", "tasks", "task", "experiments", "cancel", "sql", "demo", "bench"):
        assert cmd in out
    sub = autotune("submit", "--help").stdout
    assert "examples:" in sub and "autotune submit examples/quickstart.yaml --watch" in sub


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
    r = autotune("tasks", "--nats", f"nats://127.0.0.1:{free_port()}")
    assert r.returncode == 3
    assert "autotune up" in r.stderr and "Traceback" not in r.stderr


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
    )


def _wait_ready(proc: subprocess.Popen, data: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (data / "up.json").exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "autotune up did not come up"
        time.sleep(0.2)


@pytest.mark.slow
def test_up_runs_a_task_stops_cleanly_and_remembers(tmp_path):
    data = tmp_path / "data"
    nats_port, api_port = free_port(), free_port()
    env = {"AUTOTUNE_DATA_DIR": str(data)}
    spec = tmp_path / "t.json"
    from tests.helpers import small_spec

    spec.write_text(json.dumps(small_spec("uptask", optimization={"max_iterations": 2, "max_parallel": 2})))
    up = _start_up(data, nats_port, api_port)
    try:
        _wait_ready(up, data)
        r = autotune("submit", str(spec), "--watch", "--json", env=env, timeout=150)
        assert r.returncode == 0, r.stdout + r.stderr
        result = json.loads(r.stdout.strip().splitlines()[-1])
        assert result["status"] == "completed" and "--model-path" in result["command"]
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=60)
    assert up.returncode == 0, out
    assert _our_processes(str(data)) == [], "a child of `autotune up` survived Ctrl-C"
    assert [p for p, lab in labelled_processes() if lab.get("AUTOTUNE_LABEL_HOST", "").startswith("local")] == []

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
