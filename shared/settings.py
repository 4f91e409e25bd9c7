"""Settings every service shares, read from the environment (AUTOTUNE_*) and overridable by flags."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "autotune"


class Settings(msgspec.Struct, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    creds: str | None = None  # NATS credentials file for this role
    tls_ca: str | None = None  # CA file: connect with TLS and verify the server against it
    data_dir: str = ""
    replicas: int = 1  # stream and KV replicas (3 in a cluster)
    telemetry_max_age_s: float = 7 * 24 * 3600
    logs_max_age_s: float = 7 * 24 * 3600
    host_ttl_s: float = 10.0  # a host's liveness key expires this long after its last heartbeat
    api_token: str | None = None
    mcp_allow_fleet_changes: bool = False  # the API's /mcp offers drain_host, remove_host and cancel_task
    api_admin_token: str | None = None  # deploying and undeploying hosts through the API (off without it)

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = os.environ
        d = cls()  # the defaults (a Struct's class attributes are its field descriptors, not them)
        s = cls(
            nats_url=env.get("AUTOTUNE_NATS_URL") or d.nats_url,
            creds=env.get("AUTOTUNE_NATS_CREDS") or None,
            tls_ca=env.get("AUTOTUNE_NATS_CA") or None,
            data_dir=env.get("AUTOTUNE_DATA_DIR", "") or str(default_data_dir()),
            replicas=int(env.get("AUTOTUNE_REPLICAS", "1")),
            host_ttl_s=float(env.get("AUTOTUNE_HOST_TTL_S", "10")),
            telemetry_max_age_s=float(env.get("AUTOTUNE_TELEMETRY_MAX_AGE_S") or d.telemetry_max_age_s),
            logs_max_age_s=float(env.get("AUTOTUNE_LOGS_MAX_AGE_S") or d.logs_max_age_s),
            api_token=env.get("AUTOTUNE_API_TOKEN") or None,
            mcp_allow_fleet_changes=env.get("AUTOTUNE_MCP_ALLOW_FLEET_CHANGES", "").lower() in ("1", "true", "yes"),
            api_admin_token=env.get("AUTOTUNE_API_ADMIN_TOKEN") or None,
        )
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s
