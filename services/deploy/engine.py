"""Deploy, upgrade and roll back a node: the steps, in order, with their effects.

    preflight   connect (host key checked), probe the machine, build the release, check it all fits
    upload      the release's wheel and pinned requirements (and for --offline the wheels) over SFTP
    install     a virtualenv of the release's own; pip from the lock, hashes required
    credentials the host's NATS users (secured NATS: reloaded, not restarted), its 0600 file, its config
    tunnel      (--via ssh-tunnel) the supervised reverse tunnel from this controller
    drain       (an upgrade) running experiments finish first
    stop        the old node
    switch      `current` → the new release, in one rename
    start       the systemd unit, or a daemon with a pidfile where systemd is not PID 1
    registered  this host's `registered` event from the new instance, with the expected GPUs and version

Nothing is done twice: a release already installed is not uploaded again, and a deploy of what
already runs, configured the same, changes nothing. The old release keeps running until `switch`;
a new one that does not register is switched back (`rolled_back`).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec

from autotune.deploy import lock, remote, tunnel, verify
from autotune.deploy import probe as pr
from autotune.deploy import release as rel
from autotune.deploy import ssh as sshmod
from autotune.deploy.authority import Authority, AuthorityError, node_ca, node_credentials, strip_credentials
from autotune.deploy.layout import Layout, NodeConfig, State, layout_for, render_unit
from autotune.deploy.record import DeployRequest, Outcome, Recorder, Refused, new_id, with_ssh_defaults
from autotune.deploy.target import BadInput, Target, check_host_name, check_prefix, check_via, parse_target
from autotune.deploy.verify import drain
from autotune.runner.gpus import GpuSpecError, parse_simulated
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared.log import get_logger

log = get_logger("deploy")

LOOPBACK = {"127.0.0.1", "localhost", "0.0.0.0", "::", "::1", ""}
INSTALLED_FACTOR = 4.5  # a virtualenv takes about this many times its wheels' size (measured: 542 MB from 123 MB of wheels)


class Controller(msgspec.Struct, kw_only=True):
    """What the operation needs from the side that runs it (the CLI or the API process)."""

    js: object | None  # JetStream: reads the log, records the operation (None: a dry run without NATS)
    nats_url: str  # how this controller reaches NATS (credentials in it are never shown or passed on)
    data_dir: str  # the NATS users (secured NATS) and the tunnels live here
    on_step: object | None = None
    tls_ca: str | None = None  # NATS over TLS (`autotune up --secure`): its CA, copied to each host

    @classmethod
    def of(cls, js: object, settings, on_step: object | None = None) -> Controller:
        """The controller of a connected adapter (the CLI, the API, the MCP server): its settings' NATS, data and CA."""
        return cls(js=js, nats_url=settings.nats_url, data_dir=settings.data_dir, on_step=on_step, tls_ca=settings.tls_ca)

    def authority(self) -> Authority:
        """The NATS server's users, checked through this controller's NATS (over TLS where it is)."""
        return Authority(self.data_dir, self.nats_url, self.tls_ca)


def check_request(req: DeployRequest) -> tuple[Target, str]:
    t = parse_target(req.target)
    host = check_host_name(req.host)
    check_via(req.via)
    if req.prefix:
        check_prefix(req.prefix)
    if req.simulate:
        try:
            parse_simulated(req.simulate)
        except GpuSpecError as e:
            raise BadInput(f"--simulate: {e}") from None
    if not 1 <= req.tunnel_port <= 65535:
        raise BadInput(f"--tunnel-port {req.tunnel_port} is out of range")
    for k in req.env:
        if not k.startswith("AUTOTUNE_") or not k.replace("_", "").isalnum():
            raise BadInput(f"--env {k}: only AUTOTUNE_* settings")
    return t, host


def node_nats_url(req: DeployRequest, ctl_url: str, local_address: str) -> str:
    """The URL(s) the node connects to, without credentials."""
    if req.via == "ssh-tunnel":
        return f"nats://127.0.0.1:{req.tunnel_port}"
    if req.node_nats:
        return strip_credentials(req.node_nats)
    out = []
    for u in strip_credentials(ctl_url).split(","):
        parts = urlsplit(u)
        host, port = parts.hostname or "", parts.port or 4222
        if host in LOOPBACK:  # the controller's own loopback: the host reaches it where it reached SSH from
            host = local_address
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        out.append(urlunsplit((parts.scheme or "nats", netloc, "", "", "")))
    return ",".join(out)


def nats_endpoint(ctl_url: str) -> tuple[str, int]:
    parts = urlsplit(strip_credentials(ctl_url).split(",")[0])
    host = parts.hostname or "127.0.0.1"
    return ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host), parts.port or 4222


async def name_taken(js, host: str, machine: str) -> str | None:
    """Why `host` may not be used for this machine, or None."""
    from nats.js.errors import NotFoundError

    from autotune.reads.hosts import live_hosts

    last: ev.HostDeployFinished | None = None
    try:
        msg = await js.get_last_msg(subj.EVENTS_STREAM, subj.host(host, "deploy_finished"))
        e = ev.decode(msg.data or b"")
        last = e if isinstance(e, ev.HostDeployFinished) else None
    except NotFoundError:
        pass
    if last is not None and last.release and last.machine and last.machine != machine:
        return (
            f"host name `{host}` is already taken by another machine ({last.target}, host key {last.machine}); "
            f"choose another --host, or `autotune undeploy {host}` first"
        )
    live = (await live_hosts(js, [host])).get(host)
    if live is not None and (last is None or not last.release):
        return (
            f"host name `{host}` is in use by a runner not deployed here (instance {live.instance} on {live.hostname or '?'}); "
            "stop it or choose another --host"
        )
    return None


class Plan(msgspec.Struct, kw_only=True):
    facts: pr.Facts
    layout: Layout
    release: rel.Release
    pins: list[lock.Pin]
    wheels: list[lock.Artifact]  # --offline: what the host installs from
    action: str  # deploy | upgrade | rollback | reconfigure
    target_release: str
    mode: str  # systemd | daemon
    config: NodeConfig
    passwords: dict[str, str] | None  # existing NATS users of this host (secured NATS), if any
    secured: bool
    need_mb: int
    requirements: str = ""
    clone_from: str | None = None  # an installed release with the same dependencies: its virtualenv is cloned
    ca: bytes | None = None  # NATS over TLS: the CA certificate the node gets


async def _preflight(req: DeployRequest, t: Target, host: str, ctl: Controller, conn: sshmod.Connection, build_dir: Path) -> Plan:
    facts = await remote.facts(conn, req.prefix)
    release = await asyncio.to_thread(rel.build, build_dir, wheel=req.wheel, lock_file=req.lock)
    python = facts.python
    pins: list[lock.Pin] = []
    wheels: list[lock.Artifact] = []
    if python is not None and python.venv and facts.arch in pr.SUPPORTED_ARCH:
        env = await remote.marker_env(conn, python.path)
        env.pop("libc", None)
        try:
            pins = lock.pins(release.lock_text, env)
        except lock.LockError as e:
            raise Refused(str(e)) from None
        if facts.glibc is not None:
            tags = lock.wheel_tags(python.version[:2], facts.arch, facts.glibc)
            for p in pins:
                w = lock.best_wheel(p, tags)
                if w is None and req.offline:
                    raise Refused(f"{p.name} {p.version} has no wheel for {facts.arch} / Python {'.'.join(map(str, python.version[:2]))} / {facts.libc} in uv.lock")
                if w is not None:
                    wheels.append(w)
    installed = release.id in facts.releases
    requirements = lock.requirements(pins) if pins else ""
    clone_from = None
    if not installed and python is not None and pins:
        order = [r for r in (facts.current_release, str(facts.state.get("previous") or "")) if r] + facts.releases
        clone_from = await remote.clone_source(conn, layout_for(facts), list(dict.fromkeys(order)), requirements, python.path)
    size_mb = sum(w.size for w in wheels) / 1e6 if wheels else 150.0
    need_mb = 0 if installed else 32 if clone_from else int(size_mb * INSTALLED_FACTOR + (size_mb if req.offline else 0) + 64)
    problems = pr.problems(facts, host=host, simulate=req.simulate, need_mb=need_mb, offline=req.offline)
    if ctl.js is not None and (why := await name_taken(ctl.js, host, conn.machine)):
        problems.append(why)
    if problems:
        raise Refused(f"{t}: " + "; ".join(problems))
    layout = layout_for(facts)
    current = facts.current_release
    if req.rollback:
        previous = str(facts.state.get("previous") or "")
        if not current:
            raise Refused(f"{t}: nothing is deployed there, so there is nothing to roll back")
        if not previous or previous not in facts.releases:
            raise Refused(f"{t}: no previous release to roll back to (releases there: {', '.join(facts.releases) or 'none'})")
        action, target_release = "rollback", previous
    else:
        action = "deploy" if not current else ("upgrade" if current != release.id else "reconfigure")
        target_release = release.id
    authority = ctl.authority()
    url = node_nats_url(req, ctl.nats_url, conn.local_address)
    ca = node_ca(ctl.tls_ca, url)
    cfg = NodeConfig(
        host=host, simulate=req.simulate, time_scale=req.time_scale, data_dir=layout.data, log_dir=layout.log_dir, pidfile=layout.pidfile,
        credentials=layout.credentials, nats_url=url, via=req.via, env=dict(req.env), nats_ca=layout.nats_ca if ca else None,
    )
    return Plan(
        facts=facts, layout=layout, release=release, pins=pins, wheels=wheels if req.offline else [], action=action,
        target_release=target_release, mode="systemd" if facts.systemd else "daemon", config=cfg,
        passwords=authority.passwords(host) if authority.secured else None, secured=authority.secured, need_mb=need_mb,
        requirements=requirements, clone_from=clone_from, ca=ca,
    )


async def _difference(conn: sshmod.Connection, plan: Plan, ctl: Controller, host: str, req: DeployRequest) -> str | None:
    """What differs from exactly this running (release, configuration, credentials, unit, node,
    liveness), or None: then there is nothing to do."""
    from autotune.reads.hosts import live_hosts

    if plan.action != "reconfigure":
        return f"release {plan.target_release} is not the current one"
    if plan.secured and plan.passwords is None:
        return "the host has no NATS users yet"
    layout = plan.layout
    if await remote.read_json(conn, layout.node_config) != msgspec.to_builtins(plan.config):
        return "the node's configuration changed"
    if await remote.read_json(conn, layout.credentials) != msgspec.to_builtins(node_credentials(plan.config.nats_url, plan.passwords, host)):
        return "the node's NATS credentials changed"
    if plan.ca is not None and await conn.read_file(layout.nats_ca) != plan.ca:
        return "the NATS CA changed"
    if plan.mode == "systemd":
        unit = await conn.read_file(layout.unit)
        if unit is None or unit.decode() != render_unit(layout, host):
            return "the systemd unit changed"
    if not await remote.running(conn, layout, plan.mode):
        return "the node is not running"
    if req.via == "ssh-tunnel" and tunnel.running_pid(ctl.data_dir, host) is None:
        return "its tunnel is not running"
    if ctl.js is not None and host not in await live_hosts(ctl.js, [host]):
        return "the host is not live (no heartbeat)"
    return None


def describe(plan: Plan, req: DeployRequest, t: Target) -> list[str]:
    """The plan in words (--dry-run)."""
    f, layout = plan.facts, plan.layout
    py = f.python
    lines = [
        f"machine   {t} ({f.arch}, {f.kernel}, {f.libc or 'libc ?'})",
        f"python    {py.path} {'.'.join(map(str, py.version))}" if py else "python    none",
        f"gpus      {req.simulate + ' (SIMULATED)' if req.simulate else ', '.join(g.name for g in f.gpus) or 'NVML only'}",
        f"install   {layout.prefix} as {'root' if layout.root else f.user}; runs as {plan.mode}",
        f"release   {plan.target_release} ({plan.action}; current: {f.current_release or 'none'})",
    ]
    if plan.target_release not in f.releases:
        lines.append(f"upload    {Path(plan.release.wheel).name}, requirements.txt ({len(plan.pins)} pinned packages)"
                     + (f", {len(plan.wheels)} wheels ({sum(w.size for w in plan.wheels) / 1e6:.0f} MB) into {layout.wheels}" if plan.wheels else ""))
        how = f"its dependencies cloned from release {plan.clone_from} (the same lock)" if plan.clone_from else f"pip, hashes required{', no index' if req.offline else ''}"
        lines.append(f"install   {layout.release(plan.target_release)}/venv ({how}); needs ~{plan.need_mb} MB")
    else:
        lines.append("upload    nothing (the release is there)")
    lines.append(f"nats      {plan.config.nats_url} as runner-{req.host} / gpumon-{req.host}" if plan.secured else f"nats      {plan.config.nats_url} (open: no users)")
    if plan.ca is not None:
        lines.append(f"tls       the node verifies NATS against this controller's CA, copied to {plan.layout.nats_ca}")
    if req.via == "ssh-tunnel":
        lines.append(f"tunnel    host 127.0.0.1:{req.tunnel_port} -> this controller's NATS, held by `autotune tunnel {req.host}`")
    if plan.action in ("upgrade", "rollback"):
        lines.append(f"drain     wait up to {req.drain_timeout_s:.0f}s for running experiments, then stop the node")
    lines.append(f"switch    {layout.current} -> releases/{plan.target_release}")
    lines.append(f"start     {'systemd unit ' + layout.unit if plan.mode == 'systemd' else 'daemon, pidfile ' + layout.pidfile}")
    lines.append(f"verify    `registered` from a new instance within {req.timeout_s:.0f}s, GPUs as expected, a GPU sample")
    return lines


async def deploy(req: DeployRequest, ctl: Controller) -> Outcome:
    """Deploy, upgrade, reconfigure or roll back one host. Raises Refused (nothing done) or returns the outcome."""
    req = with_ssh_defaults(req)
    t, host = check_request(req)
    rec = Recorder(ctl.js, host, new_id(host), on_step=ctl.on_step, dry_run=req.dry_run, requested_by=req.requested_by)  # type: ignore[arg-type]
    out = Outcome(deploy=rec.deploy, host=host, action="deploy", outcome="failed", target=str(t), via=req.via, dry_run=req.dry_run)
    conn: sshmod.Connection | None = None
    with tempfile.TemporaryDirectory(prefix="autotune-deploy-") as tmp:
        try:
            t0 = time.monotonic()
            try:
                conn = await sshmod.connect(t, identity=req.identity, known_hosts=req.known_hosts, accept_new=req.accept_new_host_key, record_new=not req.dry_run)
                plan = await _preflight(req, t, host, ctl, conn, Path(tmp))
            except (sshmod.SshError, rel.ReleaseError, sshmod.RemoteFailed) as e:
                raise Refused(str(e)) from None
            out.machine, out.prefix, out.mode, out.action = conn.machine, plan.layout.prefix, plan.mode, plan.action
            out.version = plan.release.version if plan.action != "rollback" else plan.target_release.rsplit("-", 1)[0]
            out.release, out.previous_release = plan.target_release, plan.facts.current_release
            await rec.step("preflight", "done", time.monotonic() - t0, f"{plan.facts.arch}, Python {'.'.join(map(str, plan.facts.python.version))}, {plan.mode}" if plan.facts.python else "")
            if req.dry_run:
                out.outcome = "planned"
                out.message = "\n".join(describe(plan, req, t))
                return await rec.finish(out)
            why = await _difference(conn, plan, ctl, host, req)
            if why is None:
                out.outcome, out.action = "unchanged", "deploy"
                out.message = f"{host} already runs release {plan.target_release} as configured; nothing to do"
                await rec.start(action="deploy", target=str(t), machine=conn.machine, version=out.version, release=out.release, previous_release=out.release, via=req.via)
                return await rec.finish(out)
            await rec.start(action=plan.action, target=str(t), machine=conn.machine, version=out.version, release=out.release, previous_release=out.previous_release, via=req.via)
            if plan.action == "reconfigure":
                await rec.step("plan", "done", 0, f"release {plan.target_release} is there; deploying because {why}")
            return await rec.finish(await _apply(req, ctl, conn, plan, rec, out, host))
        except Refused:
            raise
        except Exception as e:
            out.outcome = "failed"
            out.message = str(e) or type(e).__name__
            log.error("deploy failed", host=host, error=out.message.splitlines()[0] if out.message else "")
            return await rec.finish(out)
        finally:
            if conn is not None:
                await conn.close()


async def _apply(req: DeployRequest, ctl: Controller, conn: sshmod.Connection, plan: Plan, rec: Recorder, out: Outcome, host: str) -> Outcome:
    layout, facts = plan.layout, plan.facts
    new = plan.target_release
    old = facts.current_release
    first = not old
    state = State(**{k: v for k, v in facts.state.items() if k in State.__struct_fields__}) if facts.state else State(host=host)
    state.host, state.mode, state.machine = host, plan.mode, conn.machine
    state.controller = req.requested_by
    switched = False
    try:
        await remote.prepare(conn, layout)
        if new in facts.releases:
            await rec.step("upload", "skipped", 0, f"release {new} is there")
            await rec.step("install", "skipped", 0, f"release {new} is installed")
        else:
            async with rec.timed("upload") as d:
                files = await rel.fetch_wheels(plan.wheels) if plan.wheels and not plan.clone_from else []
                n, size = await remote.upload(conn, layout, plan.release, plan.requirements, files)
                d.append(f"{n} files, {size / 1e6:.1f} MB")
            async with rec.timed("install") as d:
                py = facts.python
                assert py is not None
                await remote.install(conn, layout, plan.release, py.path, offline=req.offline, clone_from=plan.clone_from)
                how = f"dependencies shared with release {plan.clone_from} (the same lock)" if plan.clone_from else f"{len(plan.pins)} packages"
                d.append(f"{layout.release(new)}/venv, {how}")
        async with rec.timed("credentials") as d:
            passwords = plan.passwords
            if plan.secured:
                authority = ctl.authority()
                if passwords is None:
                    passwords = await authority.add_host(host)
                    d.append(f"users runner-{host}, gpumon-{host} added; nats-server reloaded")
                else:
                    d.append(f"users runner-{host}, gpumon-{host} exist")
            else:
                d.append("NATS is open (no users)")
            await remote.write_config(conn, layout, plan.config, node_credentials(plan.config.nats_url, passwords, host), plan.ca)
            if plan.ca is not None:
                d.append(f"NATS over TLS: its CA in {layout.nats_ca}")
        if req.via == "ssh-tunnel":
            async with rec.timed("tunnel") as d:
                d.append(await _tunnel(req, ctl, conn, host, facts))
        elif tunnel.load(ctl.data_dir, host) is not None:
            tunnel.forget(ctl.data_dir, host)  # it connects directly now
        node_up = await remote.running(conn, layout, plan.mode)
        if node_up and plan.action in ("upgrade", "rollback"):
            async with rec.timed("drain") as d:
                d.append(await drain(ctl.js, host, req.drain_timeout_s))
        if node_up:
            async with rec.timed("stop"):
                await remote.stop(conn, layout, plan.mode)
        if new != old:
            async with rec.timed("switch") as d:
                await remote.switch(conn, layout, new)
                switched = True
                state.previous, state.current = old, new
                await remote.write_state(conn, layout, state)
                d.append(f"current -> releases/{new}" + (f" (was {old})" if old else ""))
        else:
            state.current = new
            await remote.write_state(conn, layout, state)
        await _start_and_verify(req, ctl, conn, plan, rec, out, host, state, plan.release.version if plan.action != "rollback" else "")
        keep = {new, *([old] if old else [])}
        gone = await remote.prune(conn, layout, keep)
        out.outcome = "succeeded"
        out.message = out.message + (f"; removed old releases {', '.join(gone)}" if gone else "")
        return out
    except Exception as e:
        out.log_tail = out.log_tail or await _safe(remote.log_tail(conn, layout), [])
        reason = str(e) or type(e).__name__
        if switched and old:
            return await _roll_back(req, ctl, conn, plan, rec, out, host, state, old, reason)
        if first:
            await _undo_first(req, ctl, conn, plan, rec, host)
        out.outcome = "failed"
        out.release = "" if first else old
        out.message = reason + ("" if first else f"; release {old} still runs")
        return out


async def _start_and_verify(req, ctl, conn, plan: Plan, rec: Recorder, out: Outcome, host: str, state: State, version: str) -> None:
    layout = plan.layout
    mark = await verify.mark(ctl.js, host) if ctl.js is not None else None
    async with rec.timed("start") as d:
        how = await remote.start(conn, layout, plan.mode, render_unit(layout, host), state)
        await remote.write_state(conn, layout, state)
        d.append(how)
        out.message = f"runs as {how}"
    if ctl.js is None or mark is None:
        raise RuntimeError("cannot verify the registration without NATS")
    async with rec.timed("registered") as d:
        expected = verify.expected_gpus(req.simulate, plan.facts)
        reg = await verify.registered(
            ctl.js, host, mark, timeout=req.timeout_s, version=version, expected=expected, alive=lambda: remote.running(conn, layout, plan.mode),
        )
        gpus = f"{len(reg.gpus)} GPU(s) ({', '.join(sorted({g.name for g in reg.gpus}))})" + (" SIMULATED" if reg.simulated else "")
        d.append(f"instance {reg.instance}, version {reg.version}, {gpus}")
        out.message = f"registered as instance {reg.instance} with {gpus}; {out.message}"


async def _roll_back(req, ctl, conn, plan: Plan, rec: Recorder, out: Outcome, host: str, state: State, old: str, reason: str) -> Outcome:
    """The new release did not come up: the old one runs again, the failed one is removed, and the
    rollback target (`previous`) stays what it was before this deploy."""
    layout = plan.layout
    failed = plan.target_release
    try:
        async with rec.timed("rollback") as d:
            await remote.stop(conn, layout, plan.mode)
            await remote.switch(conn, layout, old)
            state.current, state.previous = old, str(plan.facts.state.get("previous") or "")
            await remote.write_state(conn, layout, state)
            if plan.action != "rollback":  # a release that never ran properly is not kept
                await conn.run(["rm", "-rf", "--", layout.release(failed)], timeout=300)
            d.append(f"current -> releases/{old}")
        await _start_and_verify(req, ctl, conn, plan, rec, out, host, state, "")
    except Exception as e:
        out.outcome = "failed"
        out.release = old
        out.message = f"{reason}; rolling back to {old} failed too: {e}"
        return out
    out.outcome = "rolled_back"
    out.release = old
    out.message = f"release {failed} did not come up ({reason}); rolled back to {old}, which runs again"
    return out


async def _undo_first(req, ctl, conn, plan: Plan, rec: Recorder, host: str) -> None:
    """A first deploy that failed leaves nothing behind (its log tail is in the outcome)."""
    try:
        await remote.remove(conn, plan.layout, plan.mode, None)
        if plan.secured and plan.passwords is None:
            await ctl.authority().revoke_host(host)
        tunnel.forget(ctl.data_dir, host)
        await rec.step("remove", "done", 0, f"removed {plan.layout.prefix}: the machine is as it was")
    except Exception as e:
        await rec.step("remove", "failed", 0, f"could not clean up: {e}")


async def _tunnel(req: DeployRequest, ctl: Controller, conn: sshmod.Connection, host: str, facts: pr.Facts) -> str:
    nats_host, nats_port = nats_endpoint(ctl.nats_url)
    cfg = tunnel.TunnelConfig(
        host=host, target=conn.target.url, identity=req.identity, known_hosts=req.known_hosts or str(sshmod.default_known_hosts()),
        remote_port=req.tunnel_port, nats_host=nats_host, nats_port=nats_port,
    )
    if tunnel.load(ctl.data_dir, host) != cfg:
        tunnel.stop_daemon(ctl.data_dir, host)
        tunnel.save(ctl.data_dir, cfg)
    pid = await asyncio.to_thread(tunnel.start_daemon, ctl.data_dir, host)
    python = facts.python.path if facts.python else "python3"
    deadline = time.monotonic() + 30
    while True:
        r = await conn.run([python, "-c", tunnel.PORT_OPEN, str(req.tunnel_port)], timeout=20)
        if r.code == 0:
            return f"host 127.0.0.1:{req.tunnel_port} -> {nats_host}:{nats_port} (autotune tunnel {host}, pid {pid})"
        if time.monotonic() > deadline:
            raise RuntimeError(f"the tunnel to {host} did not come up in 30s; see {Path(ctl.data_dir) / 'logs' / f'tunnel-{host}-connection.log'}")
        await asyncio.sleep(0.5)


async def _safe(coro, default):
    try:
        return await coro
    except Exception:
        return default


__all__ = ["Controller", "DeployRequest", "Outcome", "Refused", "BadInput", "deploy", "drain", "AuthorityError"]
