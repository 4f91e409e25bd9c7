"""`autotune up`: nats-server plus every service as supervised child processes on one machine.

A crashed service is restarted (with a growing back-off) and the crash is logged with the last lines
it wrote. Ctrl-C stops the services first (the runner tears down its engines), nats-server last, and
leaves no child behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from autotune.shared.lifecycle import wait_event
from autotune.shared.log import get_logger
from autotune.shared.natsserver import NatsServer

log = get_logger("up")


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0


@dataclass
class Stack:
    data_dir: Path
    nats_url: str
    api_url: str
    api_token: str | None
    nats: NatsServer
    children: list[Child]

    secure: bool = False
    tls_ca: str | None = None  # NATS over TLS: the CA its clients verify the server against

    def info(self) -> dict:
        return {
            "nats_url": self.nats_url, "api_url": self.api_url, "api_token": self.api_token, "pid": os.getpid(),
            "data_dir": str(self.data_dir), "secure": self.secure, "tls_ca": self.tls_ca,
        }


def stack_file(data_dir: Path) -> Path:
    return data_dir / "up.json"


def read_stack_info(data_dir: Path) -> dict | None:
    try:
        info = json.loads(stack_file(data_dir).read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(int(info.get("pid", 0)), 0)
    except (OSError, ValueError):
        return None
    return info


def service_argv(service: str, nats_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "autotune.cli", "run", service, "--nats", nats_url, *extra]


def host_ids(count: int) -> list[str]:
    return ["local"] if count == 1 else [f"local-{i}" for i in range(count)]


def start_secure_nats(
    data_dir: Path, port: int, secure_hosts: list[str], *, bind: str = "127.0.0.1", tls: bool = False
) -> tuple[NatsServer, dict[str, str]]:
    """nats-server with JetStream and a user per role and host (passwords in a 0600 file); with `tls`,
    clients must speak TLS and verify the server against this controller's CA (shared/tls.py).

    The users live in `nats/auth.conf`, included by `nats/nats.conf`: `autotune deploy` adds a
    host's users there and reloads the server (its pid in `nats/nats.pid`) without a restart."""
    from autotune.shared import security

    log_file = str(data_dir / "logs" / "nats-server.log")
    nats_dir = data_dir / "nats"
    existing = json.loads(security.credentials_path(data_dir).read_text()) if security.credentials_path(data_dir).exists() else {}
    hosts = sorted(set(secure_hosts) | set(security.credential_hosts(existing)))  # deployed hosts keep their users
    passwords = security.generate_credentials(data_dir, hosts)
    security.write_private(nats_dir / AUTH_FILE, security.render_authorization(hosts, passwords))
    files = None
    if tls:
        from autotune.shared import tls as tls_files

        made = tls_files.ensure(nats_dir / "tls", [bind, "127.0.0.1", "localhost", *local_names(bind)])
        files = security.TlsFiles(cert=made.cert, key=made.key)
    conf = security.render_config(
        port=port, store_dir=str(nats_dir), host=bind, authorization_file=AUTH_FILE, pid_file=str(nats_dir / NATS_PID_FILE), tls=files,
    )
    security.write_private(nats_dir / "nats.conf", conf)
    server = NatsServer(nats_dir, port=port, host=bind, config=str(nats_dir / "nats.conf"), log_file=log_file).start()
    return server, passwords


def tls_ca(data_dir: Path) -> str | None:
    """The CA of a TLS-secured stack's NATS, when it has one."""
    from autotune.shared import tls as tls_files

    ca = data_dir / "nats" / "tls" / tls_files.CA
    return str(ca) if ca.exists() else None


def local_names(bind: str) -> list[str]:
    """What clients may dial for a server bound to `bind`: this machine's name and its addresses when
    it listens on every interface (a host deployed over another address: `autotune up --nats-bind ADDR`)."""
    import socket

    if bind not in ("0.0.0.0", "::"):
        return []
    name = socket.gethostname()
    try:
        addresses = {i[4][0] for i in socket.getaddrinfo(name, None)}
    except OSError:
        addresses = set()
    return [name, *sorted(addresses)]


AUTH_FILE = "auth.conf"
NATS_PID_FILE = "nats.pid"


def start_nats(data_dir: Path, port: int, *, bind: str = "127.0.0.1") -> NatsServer:
    return NatsServer(data_dir / "nats", port=port, host=bind, log_file=str(data_dir / "logs" / "nats-server.log")).start()


def role_url(nats_url: str, passwords: dict[str, str] | None, user: str) -> str:
    if passwords is None:
        return nats_url
    from autotune.shared import security

    return security.nats_url(nats_url, user, passwords[user])


def build_children(
    nats_url: str, data_dir: Path, *, api_port: int, hosts: int, simulate: str | None, time_scale: float, api_token: str | None,
    passwords: dict[str, str] | None = None, tls_ca: str | None = None,
) -> list[Child]:
    """Every service as a child. In secure mode each connects as its own NATS user, its credentials
    in its environment (never on a command line, which `ps` shows)."""
    env = {"AUTOTUNE_DATA_DIR": str(data_dir)}
    if tls_ca:
        env["AUTOTUNE_NATS_CA"] = tls_ca
    if api_token:
        env["AUTOTUNE_API_TOKEN"] = api_token

    def child(name: str, service: str, user: str, *extra: str) -> Child:
        if passwords is None:
            return Child(name, service_argv(service, nats_url, *extra), env)
        argv = [sys.executable, "-m", "autotune.cli", "run", service, *extra]
        return Child(name, argv, {**env, "AUTOTUNE_NATS_URL": role_url(nats_url, passwords, user)})

    children = [
        child("projector", "projector", "projector"),
        child("scheduler", "scheduler", "scheduler"),
        child("api", "api", "api", "--port", str(api_port)),
    ]
    for host in host_ids(hosts):
        extra = ["--host", host, "--time-scale", str(time_scale)]
        if simulate:
            extra += ["--simulate", simulate]
        children.append(child(f"runner-{host}", "runner", f"runner-{host}", *extra))
        gm = ["--host", host] + (["--simulate", simulate] if simulate else [])
        children.append(child(f"gpumon-{host}", "gpumon", f"gpumon-{host}", *gm))
    return children


async def provision_as_admin(nats_url: str, passwords: dict[str, str] | None, data_dir: Path, tls_ca: str | None = None) -> None:
    """Create the streams and buckets before any service starts (in secure mode only admin may)."""
    from autotune.shared import bus
    from autotune.shared.provision import provision
    from autotune.shared.settings import Settings

    env = Settings.from_env()  # the streams' max ages; one local server: one replica whatever AUTOTUNE_REPLICAS says
    s = Settings(nats_url=role_url(nats_url, passwords, "admin"), data_dir=str(data_dir), telemetry_max_age_s=env.telemetry_max_age_s,
                 logs_max_age_s=env.logs_max_age_s, tls_ca=tls_ca)  # fmt: skip
    nc = await bus.connect(s, "up")
    try:
        await provision(nc.jetstream(), s)
    finally:
        await nc.close()


async def _spawn(child: Child, logs: Path) -> None:
    out = open(logs / f"{child.name}.log", "ab")  # noqa: SIM115 - handed to the child
    child.proc = await asyncio.create_subprocess_exec(
        *child.argv, env={**os.environ, **child.env}, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
    )
    out.close()
    child.started_at = time.monotonic()


def _tail(path: Path, n: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


async def supervise(children: list[Child], logs: Path, stop: asyncio.Event, *, nats: NatsServer | None = None) -> None:
    logs.mkdir(parents=True, exist_ok=True)
    for c in children:
        await _spawn(c, logs)
    waits = {asyncio.create_task(c.proc.wait()): c for c in children if c.proc}
    stop_wait = asyncio.create_task(stop.wait())
    store_watch = asyncio.create_task(watch_nats_store(nats, stop)) if nats is not None else None
    try:
        while not stop.is_set():
            done, _ = await asyncio.wait([*waits, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is stop_wait:
                    continue
                c = waits.pop(t)
                if stop.is_set():
                    continue
                c.restarts += 1
                backoff = min(30.0, 0.5 * 2 ** min(c.restarts, 6)) if time.monotonic() - c.started_at < 30 else 0.5
                log.error(f"{c.name} exited with code {t.result()}; restarting in {backoff:.1f}s", restarts=c.restarts)
                if tail := _tail(logs / f"{c.name}.log"):
                    sys.stderr.write(f"--- last lines of {c.name} ---\n{tail}\n---\n")
                if await _sleep_or_stop(stop, backoff):
                    break
                await _spawn(c, logs)
                waits[asyncio.create_task(c.proc.wait())] = c  # type: ignore[union-attr]
    finally:
        stop_wait.cancel()
        if store_watch is not None:
            store_watch.cancel()
        await stop_children(children)


async def watch_nats_store(nats: NatsServer, stop: asyncio.Event, check_s: float = 2.0) -> None:
    """A full disk under the NATS store: say so, plainly and once, and restart nats-server once there
    is room again. JetStream does not store on a stream whose write failed for lack of space until it
    restarts; meanwhile every service waits and retries (nothing acknowledged is lost: it is on disk)."""
    from autotune.shared import diskspace

    told = False
    while not await wait_event(stop, check_s):
        if not nats.store_full.is_set():
            continue
        need = diskspace.room_needed(nats.store_dir)
        if not told:
            log.error(
                f"the NATS store's disk is full ({nats.store_dir}): no new event is stored until there is room; free at least "
                f"{need / 2**20:.0f} MiB there and autotune restarts nats-server by itself", free_mib=diskspace.free_mib(nats.store_dir),
                nats=nats.store_error[-200:],
            )  # fmt: skip
            told = True
        if diskspace.free_mib(nats.store_dir) * 2**20 >= need:
            log.warning("there is room in the NATS store again; restarting nats-server (the services reconnect)", free_mib=diskspace.free_mib(nats.store_dir))
            try:
                await asyncio.to_thread(nats.restart)
            except Exception as e:  # not ready yet: try again at the next check
                log.error("nats-server did not restart; trying again", error=repr(e))
                nats.store_full.set()
                continue
            told = False


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    return await wait_event(stop, seconds)


async def stop_children(children: list[Child], grace_s: float = 20.0) -> None:
    """SIGTERM every service (runners first, so they tear their engines down), SIGKILL what lingers."""
    order = sorted(children, key=lambda c: 0 if c.name.startswith("runner") else 1)
    for c in order:
        if c.proc and c.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.proc.pid, signal.SIGTERM)
    for c in order:
        if c.proc and c.proc.returncode is None:
            try:
                await asyncio.wait_for(c.proc.wait(), grace_s)
            except TimeoutError:
                log.warning(f"{c.name} did not stop in {grace_s:.0f}s; killing it")
        if c.proc:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGKILL)  # its whole group: nothing survives
            with contextlib.suppress(ProcessLookupError):
                await c.proc.wait()


def new_token() -> str:
    return secrets.token_urlsafe(24)
