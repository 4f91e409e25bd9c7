"""`autotune undeploy NAME`: drain, stop the node, remove its unit and every file, take the host out of
the fleet, revoke its NATS users, stop its tunnel. Afterwards nothing of autotune is on the machine.

Where the host is comes from the log (its last `host.deploy_finished`), so only the name is needed.
`force` is for a machine that is gone: the fleet and NATS forget the host; its files are not touched.
"""

from __future__ import annotations

import contextlib
import time

from nats.js.errors import NotFoundError

from autotune.deploy import remote, tunnel
from autotune.deploy import ssh as sshmod
from autotune.deploy.engine import Controller, drain
from autotune.deploy.layout import Layout, State, layout_for
from autotune.deploy.record import Outcome, Recorder, Refused, UndeployRequest, new_id, with_ssh_defaults
from autotune.deploy.target import check_host_name, parse_target
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared import commands
from autotune.shared.log import get_logger

log = get_logger("deploy")


async def last_deploy(js, host: str) -> ev.HostDeployFinished | None:
    """The host's last recorded deploy outcome that left something on a machine."""
    if js is None:
        return None
    try:
        msg = await js.get_last_msg(subj.EVENTS_STREAM, subj.host(host, "deploy_finished"))
    except NotFoundError:
        return None
    e = ev.decode(msg.data or b"")
    return e if isinstance(e, ev.HostDeployFinished) else None


async def undeploy(req: UndeployRequest, ctl: Controller) -> Outcome:
    req = with_ssh_defaults(req)
    host = check_host_name(req.host)
    last = await last_deploy(ctl.js, host)
    if req.target:
        t = parse_target(req.target)
    elif last is not None and last.target:
        t = parse_target(last.target)
    else:
        raise Refused(f"the log has no deploy of host `{host}`; pass --target ssh://user@host[:port] (`autotune hosts` lists the fleet)")
    prefix = last.prefix if last is not None and last.prefix else None
    rec = Recorder(ctl.js, host, new_id(host), on_step=ctl.on_step, dry_run=req.dry_run, requested_by=req.requested_by)  # type: ignore[arg-type]
    out = Outcome(deploy=rec.deploy, host=host, action="undeploy", outcome="failed", target=str(t), dry_run=req.dry_run,
                  via=last.via if last else "direct", previous_release=last.release if last else "")  # fmt: skip
    conn: sshmod.Connection | None = None
    t0 = time.monotonic()
    try:
        try:
            conn = await sshmod.connect(t, identity=req.identity, known_hosts=req.known_hosts)
            facts = await remote.facts(conn, prefix)
        except sshmod.SshError as e:
            if not req.force:
                raise Refused(f"{e} (pass --force to remove {host} from the fleet without touching the machine)") from None
            conn, facts = None, None
        if facts is not None:
            other = facts.state.get("host")
            if other and other != host:
                raise Refused(f"{t} runs autotune node `{other}`, not `{host}`; nothing was changed")
            if last is not None and last.machine and conn is not None and conn.machine != last.machine:
                raise Refused(f"{t} is not the machine {host} was deployed to (host key {conn.machine}, recorded {last.machine}); nothing was changed")
            out.machine, out.prefix = conn.machine if conn else "", facts.prefix
        await rec.step("preflight", "done", time.monotonic() - t0, "machine unreachable: --force" if facts is None else f"{facts.prefix}")
        if req.dry_run:
            out.outcome = "planned"
            out.message = "\n".join(_describe(host, t, facts, ctl))
            return await rec.finish(out)
        await rec.start(action="undeploy", target=str(t), machine=out.machine, release="", previous_release=out.previous_release, via=out.via)
        if ctl.js is not None:
            async with rec.timed("drain") as d:
                d.append(await drain(ctl.js, host, req.drain_timeout_s))
        if conn is not None and facts is not None:
            layout = layout_for(facts)
            state = _state(facts.state, host)
            mode = state.mode if facts.installed else ("systemd" if facts.systemd else "daemon")
            async with rec.timed("remove") as d:
                await remote.remove(conn, layout, mode, state)
                d.append(f"stopped the node, removed {layout.prefix}" + (f" and {layout.unit}" if facts.unit else ""))
            await _check_clean(conn, layout, host)
        async with rec.timed("revoke") as d:
            tunnel.forget(ctl.data_dir, host)
            if ctl.js is not None:
                await commands.remove_host(ctl.js, host, requested_by=req.requested_by or "undeploy")
                with contextlib.suppress(Exception):  # only admin may delete consumers; a new deploy resumes it anyway
                    await ctl.js.delete_consumer(subj.EVENTS_STREAM, f"runner-{host}")
            authority = ctl.authority()
            revoked = authority.secured and await authority.revoke_host(host)
            d.append("removed from the fleet" + (f"; NATS users runner-{host}, gpumon-{host} revoked" if revoked else ""))
        out.outcome = "succeeded"
        out.message = f"{host} undeployed" + ("" if conn is not None else "; the machine was not reachable, so its files were not removed")
        return await rec.finish(out)
    except Refused:
        raise
    except Exception as e:
        out.message = str(e) or type(e).__name__
        return await rec.finish(out)
    finally:
        if conn is not None:
            await conn.close()


def _state(raw: dict, host: str) -> State:
    return State(**{k: v for k, v in raw.items() if k in State.__struct_fields__}) if raw else State(host=host)


async def _check_clean(conn: sshmod.Connection, layout: Layout, host: str) -> None:
    left = [p for p in (layout.prefix, layout.unit) if await conn.exists(p)]
    if left:
        raise RuntimeError(f"{', '.join(left)} still exist on {conn.target} after removing node {host}")


def _describe(host: str, t, facts, ctl: Controller) -> list[str]:
    lines = [f"machine   {t}" + (" (unreachable: only the fleet and NATS forget it)" if facts is None else "")]
    if facts is not None:
        lines += [
            f"drain     running experiments finish, then the node stops ({'systemd unit' if facts.unit else 'daemon'})",
            f"remove    {facts.prefix}" + (f" and {facts.unit}" if facts.unit else ""),
        ]
    lines += [f"fleet     host.removed for {host}", f"nats      revoke runner-{host}, gpumon-{host} (when NATS is secured)"]
    if tunnel.load(ctl.data_dir, host) is not None:
        lines.append(f"tunnel    stop `autotune tunnel {host}` on this controller")
    return lines
