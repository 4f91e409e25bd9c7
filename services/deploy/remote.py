"""What deploy does on the host, over one SSH connection: probe it, upload and install a release,
write the node's files, start, stop and switch the node, read its log, remove everything.

Every command is an argv list (see ssh.py); every file with a secret is written over SFTP, 0600.
A release is installed beside the running one and marked complete (release.json) only at the end,
so a deploy that stops half-way leaves the previous release running and nothing that looks done.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from autotune.deploy import probe as pr
from autotune.deploy.layout import MARKER, SERVICE, Credentials, Layout, NodeConfig, State
from autotune.deploy.release import Release
from autotune.deploy.ssh import Connection, RemoteFailed

# --no-compile: byte-compiling every package takes most of an install (57 s vs 17 s here); Python
# compiles what the node imports the first time it runs, into the release's own directory.
PIP = ["-m", "pip", "install", "--no-input", "--disable-pip-version-check", "--no-cache-dir", "--no-compile"]


async def facts(conn: Connection, prefix: str | None) -> pr.Facts:
    r = await conn.run(["sh", "-c", pr.PROBE, "autotune-probe", prefix or ""], timeout=60)
    return pr.parse(r.stdout)


async def marker_env(conn: Connection, python: str) -> dict[str, str]:
    r = await conn.check([python, "-c", pr.PY_ENV], timeout=60, what=f"{python} (reading its platform)")
    try:
        env = json.loads(r.stdout)
    except ValueError:
        raise RemoteFailed(f"{python} printed no platform description: {r.stdout[-300:]}") from None
    return {k: str(v) for k, v in env.items()}


async def prepare(conn: Connection, layout: Layout) -> None:
    sftp = await conn.sftp()
    import asyncssh

    for d in layout.dirs:
        await sftp.makedirs(d, exist_ok=True, attrs=asyncssh.SFTPAttrs(permissions=0o700 if d == layout.etc else 0o755))
    await sftp.chmod(layout.etc, 0o700)
    if not await conn.exists(layout.marker):
        await conn.write_file(layout.marker, b"autotune node: `autotune undeploy` removes this directory\n")


async def upload(conn: Connection, layout: Layout, release: Release, requirements: str, wheels: list[Path]) -> tuple[int, int]:
    """The release's wheel and requirements into releases/<id>; for --offline the wheels the host
    lacks into the shared wheelhouse. Returns (files, bytes) sent."""
    rdir = layout.release(release.id)
    if await conn.exists(rdir):  # a release that never completed (no release.json): start it over
        await conn.check(["rm", "-rf", "--", rdir], what=f"removing the incomplete release {rdir}")
    sftp = await conn.sftp()
    await sftp.makedirs(rdir, exist_ok=True)
    await conn.put([release.wheel], rdir)
    await conn.write_file(f"{rdir}/requirements.txt", requirements.encode())
    sent = [Path(release.wheel)]
    if wheels:
        have = set(await conn.listdir(layout.wheels))
        missing = [w for w in wheels if w.name not in have]
        if missing:
            await conn.put([str(w) for w in missing], layout.wheels)
        sent += missing
    return len(sent), sum(p.stat().st_size for p in sent)


async def clone_source(conn: Connection, layout: Layout, releases: list[str], requirements: str, python: str) -> str | None:
    """An installed release with exactly these pinned dependencies on this interpreter, if any: its
    virtualenv can be cloned (hard links) instead of installed again."""
    for rid in releases:
        info = await read_json(conn, f"{layout.release(rid)}/release.json")
        have = await conn.read_file(f"{layout.release(rid)}/requirements.txt")
        if info and info.get("python") == python and have is not None and have.decode() == requirements:
            return rid
    return None


async def install(conn: Connection, layout: Layout, release: Release, python: str, *, offline: bool, clone_from: str | None = None) -> str:
    """A virtualenv of the release's own: its pinned dependencies (or, when an installed release pins
    the same ones, that release's virtualenv cloned with hard links — pip replaces files, never edits
    them, so the two stay independent), then autotune itself; checked by running it; marked complete
    last. On failure the half-made release is removed and nothing else changes."""
    rdir = layout.release(release.id)
    py = layout.python(release.id)
    try:
        if clone_from:
            await conn.check(["cp", "-a", "-l", "--", f"{layout.release(clone_from)}/venv", f"{rdir}/venv"], timeout=300, what="cloning the virtualenv")
        else:
            await conn.check([python, "-m", "venv", f"{rdir}/venv"], timeout=300, what=f"{python} -m venv")
            deps = [py, *PIP, "--require-hashes", "--only-binary", ":all:", "-r", f"{rdir}/requirements.txt"]
            if offline:
                deps += ["--no-index", "--find-links", layout.wheels]
            await conn.check(deps, timeout=1800, what="pip install (the pinned dependencies)")
        own = [py, *PIP, "--no-deps", "--no-index", "--force-reinstall", f"{rdir}/{release.wheel_name}"]
        await conn.check(own, timeout=600, what="pip install autotune")
        r = await conn.check([py, "-m", "autotune.cli", "--version"], timeout=120, what="the installed autotune")
        if release.version not in r.stdout:
            raise RemoteFailed(f"the installed autotune says `{r.stdout.strip()}`, not {release.version}")
        info = {"id": release.id, "version": release.version, "python": python, "installed_at": datetime.now(UTC).isoformat(), "offline": offline,
                "dependencies_from": clone_from or release.id}  # fmt: skip
        await conn.write_file(f"{rdir}/release.json", json.dumps(info).encode())
    except BaseException:
        await conn.run(["rm", "-rf", "--", rdir], timeout=120)
        raise
    return r.stdout.strip()


async def read_json(conn: Connection, path: str) -> dict | None:
    data = await conn.read_file(path)
    if data is None:
        return None
    try:
        got = json.loads(data)
    except ValueError:
        return None
    return got if isinstance(got, dict) else None


async def write_config(conn: Connection, layout: Layout, cfg: NodeConfig, creds: Credentials, ca: bytes | None = None) -> None:
    if cfg.nats_ca and ca is not None:
        await conn.write_file(cfg.nats_ca, ca, mode=0o644)
    await conn.write_file(layout.credentials, msgspec.json.encode(creds), mode=0o600)
    await conn.write_file(layout.node_config, msgspec.json.format(msgspec.json.encode(cfg)), mode=0o644)


async def write_state(conn: Connection, layout: Layout, state: State) -> None:
    await conn.write_file(layout.state, msgspec.json.encode(state))


async def switch(conn: Connection, layout: Layout, rid: str) -> None:
    await conn.symlink_atomic(f"releases/{rid}", layout.current)


def _systemctl(layout: Layout, *args: str) -> list[str]:
    return ["systemctl", *([] if layout.root else ["--user"]), *args]


async def running(conn: Connection, layout: Layout, mode: str) -> bool:
    if mode == "systemd":
        r = await conn.run(_systemctl(layout, "is-active", "--quiet", SERVICE), timeout=30)
        return r.code == 0
    data = await conn.read_file(layout.pidfile)
    pid = data.decode().strip() if data else ""
    if not pid.isdigit():
        return False
    cmd = await conn.read_file(f"/proc/{pid}/cmdline")
    return bool(cmd) and b"autotune.cli\0node" in cmd  # type: ignore[operator]


async def node_pid(conn: Connection, layout: Layout, mode: str) -> int | None:
    if mode == "systemd":
        r = await conn.run(_systemctl(layout, "show", "-p", "MainPID", "--value", SERVICE), timeout=30)
        return int(r.stdout.strip()) if r.stdout.strip().isdigit() and int(r.stdout.strip()) > 0 else None
    data = await conn.read_file(layout.pidfile)
    return int(data) if data and data.strip().isdigit() and await running(conn, layout, mode) else None


async def start(conn: Connection, layout: Layout, mode: str, unit: str, state: State) -> str:
    """Start (or restart) the node; returns how it runs, in words."""
    if mode == "systemd":
        await conn.write_file(layout.unit, unit.encode())
        await conn.check(_systemctl(layout, "daemon-reload"), what="systemctl daemon-reload")
        await conn.check(_systemctl(layout, "enable", SERVICE), what=f"systemctl enable {SERVICE}")
        await conn.check(_systemctl(layout, "restart", SERVICE), timeout=180, what=f"systemctl restart {SERVICE}")
        if not layout.root and not state.linger_enabled:
            r = await conn.run(["loginctl", "enable-linger"], timeout=30)
            state.linger_enabled = r.code == 0
            if r.code != 0:
                return f"a systemd user unit ({layout.unit}); lingering could not be enabled, so it stops when {conn.target.user} logs out: ask root for `loginctl enable-linger {conn.target.user}`"
        return f"a systemd {'system' if layout.root else 'user'} unit ({SERVICE}, Restart=always)"
    await conn.check([layout.python(), "-m", "autotune.cli", "node", "--config", layout.node_config, "--daemon"], timeout=60, what="starting the node")
    return f"a daemon (pidfile {layout.pidfile}): systemd is not PID 1 on this machine, so it does not come back after a reboot"


async def stop(conn: Connection, layout: Layout, mode: str) -> None:
    if mode == "systemd":
        await conn.run(_systemctl(layout, "stop", SERVICE), timeout=180)
        return
    if await running(conn, layout, mode):
        await conn.check([layout.python(), "-m", "autotune.cli", "node", "--config", layout.node_config, "--stop"], timeout=150, what="stopping the node")


async def log_tail(conn: Connection, layout: Layout, lines: int = 25) -> list[str]:
    out: list[str] = []
    for name in ("node.log", "runner.log", "gpumon.log"):
        data = await conn.read_file(f"{layout.log_dir}/{name}", limit=64 * 1024)
        if data:
            tail = data.decode(errors="replace").splitlines()[-lines:]
            out += [f"--- {layout.log_dir}/{name} ---", *tail]
    return out


async def prune(conn: Connection, layout: Layout, keep: set[str]) -> list[str]:
    """Remove releases other than `keep` (the current and the previous one)."""
    gone = []
    for rid in await conn.listdir(layout.releases):
        if rid not in keep:
            await conn.run(["rm", "-rf", "--", layout.release(rid)], timeout=300)
            gone.append(rid)
    return gone


async def remove(conn: Connection, layout: Layout, mode: str, state: State | None) -> None:
    """Stop the node and remove its unit and its prefix: nothing of autotune stays on the machine."""
    await stop(conn, layout, mode)
    if await conn.exists(layout.unit):
        await conn.run(_systemctl(layout, "disable", SERVICE), timeout=60)
        await (await conn.sftp()).remove(layout.unit)
        await conn.run(_systemctl(layout, "daemon-reload"), timeout=60)
        await conn.run(_systemctl(layout, "reset-failed", SERVICE), timeout=60)
    if state is not None and state.linger_enabled and not layout.root:
        await conn.run(["loginctl", "disable-linger"], timeout=30)
    if await conn.exists(f"{layout.prefix}/{MARKER}"):  # only a directory autotune made
        await conn.check(["rm", "-rf", "--", layout.prefix], timeout=600, what=f"removing {layout.prefix}")
