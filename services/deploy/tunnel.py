"""`--via ssh-tunnel`: for a host that cannot reach NATS, the controller keeps an SSH connection to it
with a reverse port forward — the host's 127.0.0.1:<port> leads to NATS, and nowhere else.

The connection goes from the controller to the host, with the controller's key: the host holds no
credential for the controller and the controller's SSH client accepts no session from it, so the
host gets no shell here; what crosses the tunnel is NATS, where the node is still only its own
users. `autotune tunnel HOST` supervises a child that holds the connection (restarted if it
dies) and the child reconnects whenever the connection drops (keepalives find a dead one within
~15 s). Its configuration is `<data>/tunnels/<host>.json`; deploy starts it as a daemon (pidfile
beside it) and undeploy stops it and removes both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from autotune.deploy import ssh
from autotune.deploy.target import parse_target
from autotune.shared.log import get_logger

log = get_logger("tunnel")

PORT_OPEN = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 3).close()"


class TunnelConfig(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    target: str  # ssh://user@address:port
    identity: str | None = None
    known_hosts: str | None = None
    remote_port: int  # on the host's loopback
    nats_host: str  # where NATS listens, as the controller reaches it
    nats_port: int


def config_path(data_dir: str | os.PathLike[str], host: str) -> Path:
    return Path(data_dir) / "tunnels" / f"{host}.json"


def pid_path(data_dir: str | os.PathLike[str], host: str) -> Path:
    return Path(data_dir) / "tunnels" / f"{host}.pid"


def save(data_dir: str, cfg: TunnelConfig) -> None:
    p = config_path(data_dir, cfg.host)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = p.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(cfg))
    os.replace(tmp, p)


def load(data_dir: str, host: str) -> TunnelConfig | None:
    try:
        return msgspec.json.decode(config_path(data_dir, host).read_bytes(), type=TunnelConfig)
    except (OSError, msgspec.MsgspecError):
        return None


async def hold(cfg: TunnelConfig, stop: asyncio.Event) -> None:
    """Keep the reverse forward up until `stop`: connect, forward, wait for the drop, reconnect."""
    target = parse_target(cfg.target)
    backoff = 1.0
    while not stop.is_set():
        conn = None
        try:
            conn = await ssh.connect(target, identity=cfg.identity, known_hosts=cfg.known_hosts, keepalive_s=5)
            await conn.conn.forward_remote_port("127.0.0.1", cfg.remote_port, cfg.nats_host, cfg.nats_port)
            log.info("tunnel up", host=cfg.host, remote=f"127.0.0.1:{cfg.remote_port}", to=f"{cfg.nats_host}:{cfg.nats_port}")
            backoff = 1.0
            closed = asyncio.create_task(conn.conn.wait_closed())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([closed, stopped], return_when=asyncio.FIRST_COMPLETED)
            for t in (closed, stopped):
                t.cancel()
            if not stop.is_set():
                log.warning("tunnel dropped; reconnecting", host=cfg.host)
        except Exception as e:  # unreachable, refused, the port still held by the dying session: retry
            log.warning("tunnel not up; retrying", host=cfg.host, error=str(e)[:300], retry_in_s=backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 15.0)
        finally:
            if conn is not None:
                await conn.close()


def running_pid(data_dir: str, host: str) -> int | None:
    try:
        pid = int(pid_path(data_dir, host).read_text().strip())
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"tunnel\0" + host.encode() in cmd else None


def start_daemon(data_dir: str, host: str) -> int:
    """`autotune tunnel HOST` detached (its own session; log in <data>/logs/tunnel-<host>.log)."""
    if (pid := running_pid(data_dir, host)) is not None:
        return pid
    logs = Path(data_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"tunnel-{host}.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "autotune.cli", "tunnel", host, "--data-dir", str(data_dir)], stdin=subprocess.DEVNULL, stdout=out,
            stderr=out, start_new_session=True,
        )
    pid_path(data_dir, host).write_text(f"{proc.pid}\n")
    return proc.pid


def stop_daemon(data_dir: str, host: str, timeout: float = 10.0) -> bool:
    from autotune.deploy.node import _descendants

    pid = running_pid(data_dir, host)
    if pid is not None:
        tree = _descendants(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # the supervisor stops its connection child
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and running_pid(data_dir, host) == pid:
            time.sleep(0.1)
        for p in [pid, *tree]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
    pid_path(data_dir, host).unlink(missing_ok=True)
    return pid is not None


def forget(data_dir: str, host: str) -> None:
    stop_daemon(data_dir, host)
    config_path(data_dir, host).unlink(missing_ok=True)


def main(host: str, data_dir: str, *, connect: bool) -> int:
    """`autotune tunnel HOST`: the supervisor; `--connect`: the child that holds the connection."""
    from autotune.shared import lifecycle

    cfg = load(data_dir, host)
    if cfg is None:
        sys.stderr.write(f"autotune: no tunnel configured for host {host} ({config_path(data_dir, host)}); `autotune deploy --via ssh-tunnel` makes one\n")
        return 2
    if connect:
        lifecycle.run_until_signal(lambda stop: hold(cfg, stop))
        return 0
    from autotune.supervisor import Child, supervise

    child = Child(f"tunnel-{host}-connection", [sys.executable, "-m", "autotune.cli", "tunnel", host, "--data-dir", data_dir, "--connect"])
    lifecycle.run_until_signal(lambda stop: supervise([child], Path(data_dir) / "logs", stop))
    return 0
