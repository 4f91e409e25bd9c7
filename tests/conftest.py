"""Shared fixtures: a fresh real nats-server per test (random port, temp store, readiness from its log)."""

from __future__ import annotations

import os
import shutil

import pytest

from autotune.shared import bus
from autotune.shared.natsserver import NatsServer
from autotune.shared.provision import provision
from autotune.shared.settings import Settings

pytest_plugins = (
    "tests.fixtures.api_kit",  # the API's `projector` and `client` fixtures
    "tests.fixtures.secure_nats",  # `secure`: a nats-server with a user per role
)


@pytest.fixture
def nats_server(tmp_path):
    with NatsServer(tmp_path / "nats", log_file=str(tmp_path / "nats-server.log")) as server:  # kept for a failing test
        yield server


@pytest.fixture
def settings(nats_server, tmp_path) -> Settings:
    return Settings(nats_url=nats_server.url, data_dir=str(tmp_path / "data"), host_ttl_s=5.0)


@pytest.fixture
async def nc(settings):
    conn = await bus.connect(settings, "test")
    await provision(conn.jetstream(), settings)
    yield conn
    await conn.close()


@pytest.fixture
def js(nc):
    return nc.jetstream()


def docker_available() -> bool:
    return shutil.which("docker") is not None and os.path.exists("/var/run/docker.sock")
