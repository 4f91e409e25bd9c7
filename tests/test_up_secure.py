"""`autotune up --secure`: every service connects as its own NATS user and a task still runs end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotune.shared.net import free_port
from tests.helpers import small_spec

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.long
@pytest.mark.slow
def test_up_secure_runs_a_task_with_a_user_per_role(tmp_path):
    data = tmp_path / "data"
    env = {**os.environ, "AUTOTUNE_DATA_DIR": str(data)}
    env.pop("AUTOTUNE_NATS_URL", None)
    spec = tmp_path / "t.json"
    spec.write_text(json.dumps(small_spec("securetask", optimization={"max_iterations": 2})))
    up = subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", "up", "--secure", "--nats-port", str(free_port()), "--api-port", str(free_port()),
         "--simulate", "2xH100", "--no-auth"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env, start_new_session=True,
    )
    try:
        for _ in range(120):
            if (data / "up.json").exists():
                break
            assert up.poll() is None
            time.sleep(0.25)
        creds = data / "secrets" / "nats-credentials.json"
        assert creds.stat().st_mode & 0o077 == 0, "the credentials file must be private"
        r = subprocess.run([sys.executable, "-m", "autotune.cli", "submit", str(spec), "--watch", "--json"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=150)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout.strip().splitlines()[-1])["status"] == "completed"
        # no service was refused anything it needed, and every one of them spoke TLS to it
        server_log = (data / "logs" / "nats-server.log").read_text()
        assert "Violation" not in server_log and "TLS required for client connections" in server_log
        assert json.loads((data / "up.json").read_text())["tls_ca"] == str(data / "nats" / "tls" / "ca.pem")
        # and the services' command lines carry no password
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert not any(pw in ps for pw in json.loads(creds.read_text()).values())
    finally:
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=60)
    assert up.returncode == 0
