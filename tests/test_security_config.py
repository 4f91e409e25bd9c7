"""NATS security without a running fleet: generated credentials, the committed example configurations,
host names as subject tokens, TLS with role credentials, and `security render`."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import stat
import subprocess
from pathlib import Path

import pytest

from autotune.schemas import subjects as subj
from autotune.shared import bus, security
from autotune.shared.natsserver import NatsServer
from autotune.shared.provision import provision
from autotune.shared.settings import Settings
from tests.helpers import golden

HOSTS = ["gpu-1", "gpu-2"]
INFRA = Path(__file__).parent.parent / "infra" / "nats"


def test_credentials_are_private_stable_and_grow_with_hosts(tmp_path):
    first = security.generate_credentials(tmp_path, ["gpu-1"])
    path = security.credentials_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(first) == {"admin", "api", "scheduler", "projector", "runner-gpu-1", "gpumon-gpu-1"}
    assert len(set(first.values())) == len(first)
    second = security.generate_credentials(tmp_path, ["gpu-1", "gpu-2"])
    assert {k: second[k] for k in first} == first  # a restart keeps the passwords running services hold
    assert {"runner-gpu-2", "gpumon-gpu-2"} <= set(second)
    assert security.nats_url("nats://a:4222, nats://b:4222", "api", "p_w-1") == "nats://api:p_w-1@a:4222,nats://api:p_w-1@b:4222"


def test_committed_configs_are_current_and_valid(tmp_path):
    from autotune.shared.natsserver import binary

    for name, text in security.examples().items():
        committed = INFRA / name
        assert committed.read_text() == text, f"{committed} is stale; run `uv run python -m autotune.shared.security examples infra/nats`"
        out = subprocess.run([binary(), "-c", str(committed), "-t"], capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr


def test_hosts_must_be_subject_tokens():
    with pytest.raises(subj.SubjectError):
        security.render_config(port=-1, store_dir="/tmp/x", hosts=["gpu.1"])
    with pytest.raises(subj.SubjectError):
        security.render_config(port=-1, store_dir="/tmp/x", hosts=["*"])


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=20,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
async def test_tls_with_role_credentials(tmp_path):
    cert, key = _self_signed(tmp_path)
    passwords = security.generate_credentials(tmp_path / "data", HOSTS)
    conf = tmp_path / "nats.conf"
    conf.write_text(security.render_config(
        port=-1, store_dir=str(tmp_path / "nats"), hosts=HOSTS, passwords=passwords, tls=security.TlsFiles(cert=str(cert), key=str(key), ca=str(cert)),
    ))
    with NatsServer(tmp_path / "nats", config=str(conf)) as server:
        ctx = ssl.create_default_context(cafile=str(cert))
        url = security.nats_url(f"tls://127.0.0.1:{server.port}", "admin", passwords["admin"])
        nc = await bus.connect(Settings(nats_url=url), "tls", tls=ctx)
        try:
            js = nc.jetstream()
            await provision(js, Settings())
            ack = await bus.append(js, subj.task("t", "submitted"), golden("task.submitted", task="t", id="t.submitted"))
            assert ack.seq == 1
        finally:
            await nc.close()
        # plain text is refused, and so is a server certificate the client does not trust
        # The server requires TLS, and a client that was not given the CA does not trust it. (Raw sockets:
        # nats-py hangs closing a connection whose TLS upgrade failed.)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            info = json.loads(sock.recv(4096).decode().removeprefix("INFO ").strip())
            assert info["tls_required"] is True and info["auth_required"] is True
            with pytest.raises(ssl.SSLCertVerificationError):
                ssl.create_default_context().wrap_socket(sock, server_hostname="127.0.0.1")


def test_cli_renders_a_config_with_generated_passwords(tmp_path, capsys):
    assert security.main(["render", "--hosts", "gpu-1", "--store-dir", "/srv/nats", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    pw = json.loads(security.credentials_path(tmp_path).read_text())
    assert f'password: "{pw["runner-gpu-1"]}"' in out and "change-me" not in out
    assert set(pw) == set(security.users(["gpu-1"]))
