"""Deploying hosts: deploy, undeploy, node, tunnel (thin: the work is in autotune.deploy, which the HTTP
API and the agent tools call too)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from autotune.cli.connection import EXIT_FAILED, EXIT_INPUT, EXIT_OK, Connection, err, nats_command, stack_settings
from autotune.cli.options import add_command, json_option

EXAMPLES_DEPLOY = """\
autotune deploy ssh://root@10.0.0.5 --host gpu-7 --accept-new-host-key   # first time: trust its host key
autotune deploy ssh://ubuntu@gpu-7.lab:2222 --host gpu-7 --identity ~/.ssh/lab_ed25519
autotune deploy ssh://root@10.0.0.9 --host sim-1 --simulate 4xH100 --dry-run   # print the plan only
autotune deploy ssh://root@10.0.0.5 --host gpu-7 --offline                     # no internet there: wheels from here
autotune deploy ssh://root@172.16.0.4 --host gpu-9 --via ssh-tunnel            # it cannot reach NATS
autotune deploy ssh://root@10.0.0.5 --host gpu-7 --rollback                    # back to the previous release"""

EXAMPLES_UNDEPLOY = """\
autotune undeploy gpu-7
autotune undeploy gpu-7 --dry-run
autotune undeploy gpu-7 --force     # the machine is gone: forget it in the fleet and NATS"""

EXAMPLES_NODE = """\
autotune node --host gpu-7 --nats nats://10.0.0.1:4222        # runner + GPU monitor, supervised, in the foreground
autotune node --config /opt/autotune/etc/node.json            # what the unit `autotune deploy` writes runs
autotune node --config /opt/autotune/etc/node.json --daemon   # detached, with a pidfile (no systemd)
autotune node --config /opt/autotune/etc/node.json --stop"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "deploy", "install autotune on a GPU host over SSH, start its node (runner + GPU monitor), verify it registers; upgrade, roll back",
            EXAMPLES_DEPLOY, deploy)  # fmt: skip
    p.add_argument("target", help="ssh://user@host[:port]")
    p.add_argument("--host", required=True, help="the host's name in the fleet (letters, digits, - and _)")
    p.add_argument("--identity", "-i", metavar="KEY", help="SSH private key (default: your agent and ~/.ssh keys)")
    p.add_argument("--known-hosts", metavar="FILE", help="known_hosts file (default ~/.ssh/known_hosts)")
    p.add_argument("--accept-new-host-key", action="store_true", help="trust a host key seen for the first time and record it (never a changed one)")
    p.add_argument("--simulate", metavar="GPUS", help="simulated GPUs for a host without any, e.g. 4xH100 (labelled SIMULATED everywhere)")
    p.add_argument("--time-scale", type=float, help="simulated engines run this much faster than real time")
    p.add_argument("--via", choices=["direct", "ssh-tunnel"], default="direct",
                   help="direct: the node connects to NATS itself (default); ssh-tunnel: through a reverse tunnel this controller holds")  # fmt: skip
    p.add_argument("--tunnel-port", type=int, default=14222, help="--via ssh-tunnel: the port on the host's loopback that leads to NATS")
    p.add_argument("--offline", action="store_true", help="the host has no internet: upload every wheel from here (checked against uv.lock)")
    p.add_argument("--dry-run", action="store_true", help="connect, check and print the plan; change nothing")
    p.add_argument("--rollback", action="store_true", help="switch the host back to its previous release")
    p.add_argument("--prefix", help="install directory on the host (default /opt/autotune as root, ~/.local/share/autotune-node otherwise)")
    p.add_argument("--node-nats", metavar="URL", help="the NATS URL(s) the host connects to (default: this controller's, as the host reaches it)")
    p.add_argument("--wheel", help="deploy this autotune wheel instead of building one of the running autotune")
    p.add_argument("--lock", help="the uv.lock to pin dependencies from (default: the checkout's)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the registration (default 120)")
    p.add_argument("--drain-timeout", type=float, default=600.0, help="seconds an upgrade waits for running experiments (default 600)")
    p.add_argument("--env", action="append", default=[], metavar="AUTOTUNE_X=V", help="a setting for the node's services (repeatable)")
    json_option(p)

    p = add_command(sub, "undeploy", "remove a deployed host: drain, stop, remove its files and unit, take it out of the fleet, revoke its NATS users",
            EXAMPLES_UNDEPLOY, undeploy)  # fmt: skip
    p.add_argument("host")
    p.add_argument("--target", help="ssh://user@host[:port] (default: where the log says it was deployed)")
    p.add_argument("--identity", "-i", metavar="KEY")
    p.add_argument("--known-hosts", metavar="FILE")
    p.add_argument("--force", action="store_true", help="the machine is unreachable: only remove the host from the fleet and revoke its users")
    p.add_argument("--drain-timeout", type=float, default=600.0)
    p.add_argument("--dry-run", action="store_true")
    json_option(p)

    p = add_command(sub, "node", "run this host's runner and GPU monitor under one supervisor (what `autotune deploy` installs)", EXAMPLES_NODE, node)
    p.add_argument("--config", help="the node configuration `autotune deploy` wrote")
    p.add_argument("--host", help="without --config: this host's id")
    p.add_argument("--simulate", help="without --config: simulated GPUs, e.g. 4xH100")
    p.add_argument("--time-scale", type=float, help="without --config: simulated engines' time compression")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--daemon", action="store_true", help="detach (pidfile); use where systemd does not run")
    mode.add_argument("--stop", action="store_true", help="stop the daemon (it drains: running experiments move to other hosts)")
    mode.add_argument("--status", action="store_true", help="print whether the daemon runs (JSON)")
    json_option(p)

    p = add_command(sub, "tunnel", "hold the reverse SSH tunnel of a host deployed with --via ssh-tunnel (deploy starts it as a daemon)",
            "autotune tunnel gpu-9", tunnel)  # fmt: skip
    p.add_argument("host")
    p.add_argument("--connect", action="store_true", help=argparse.SUPPRESS)  # the supervised child that holds the connection


def _env(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep:
            raise ValueError(f"--env {item}: write AUTOTUNE_NAME=VALUE")
        out[k.strip()] = v
    return out


def _printer(as_json: bool):
    def show(step) -> None:
        if not as_json:
            print(f"  {step.step:<12} {step.status:<8} {step.seconds:>6.1f} s  {step.detail}", flush=True)

    return show


def _report(out, as_json: bool) -> int:
    import msgspec

    if as_json:
        print(json.dumps(msgspec.to_builtins(out)))
    elif out.outcome == "planned":
        print(f"plan for {out.host} ({out.action}, dry run: nothing was changed):")
        print("\n".join(f"  {line}" for line in out.message.splitlines()))
    else:
        print(f"{out.action} {out.host}: {out.outcome} in {out.seconds:.1f} s: {out.message}")
    if out.ok:
        return EXIT_OK
    if not as_json and out.log_tail:
        sys.stderr.write("the node's log:\n" + "\n".join(out.log_tail) + "\n")
    return EXIT_FAILED


async def _operate(args: argparse.Namespace, conn: Connection, op) -> int:
    """Run `op(controller)`; a refusal (nothing was done) is one line and exit 2."""
    from autotune import deploy as d

    ctl = d.Controller.of(conn.js, conn.settings, _printer(args.json))
    try:
        return _report(await op(ctl), args.json)
    except (d.Refused, d.BadInput) as e:
        return err(str(e), EXIT_INPUT)


def deploy(args: argparse.Namespace) -> int:
    from autotune import deploy as d
    from autotune.deploy.engine import check_request

    try:
        env = _env(args.env)
    except ValueError as e:
        return err(str(e))
    req = d.DeployRequest(
        target=args.target, host=args.host, identity=_path(args.identity), known_hosts=_path(args.known_hosts),
        accept_new_host_key=args.accept_new_host_key, simulate=args.simulate, time_scale=args.time_scale, via=args.via, offline=args.offline,
        dry_run=args.dry_run, rollback=args.rollback, prefix=args.prefix, node_nats=args.node_nats, tunnel_port=args.tunnel_port,
        wheel=args.wheel, lock=args.lock, timeout_s=args.timeout, drain_timeout_s=args.drain_timeout, env=env, requested_by=d.who("cli"),
    )  # fmt: skip
    try:
        check_request(req)
    except d.BadInput as e:
        return err(str(e))
    if not args.json:
        print(f"{'planning' if args.dry_run else 'deploying'} {args.host} on {args.target}" + (" [SIMULATED GPUs]" if args.simulate else ""), flush=True)
    return _deploy(args, req)


@nats_command
async def _deploy(args: argparse.Namespace, conn: Connection, req) -> int:
    from autotune import deploy as d

    return await _operate(args, conn, lambda ctl: d.deploy(req, ctl))


def undeploy(args: argparse.Namespace) -> int:
    from autotune import deploy as d

    req = d.UndeployRequest(
        host=args.host, target=args.target, identity=_path(args.identity), known_hosts=_path(args.known_hosts), force=args.force,
        drain_timeout_s=args.drain_timeout, dry_run=args.dry_run, requested_by=d.who("cli"),
    )
    if not args.json:
        print(f"{'planning the removal of' if args.dry_run else 'undeploying'} {args.host}", flush=True)
    return _undeploy(args, req)


@nats_command
async def _undeploy(args: argparse.Namespace, conn: Connection, req) -> int:
    from autotune import deploy as d

    return await _operate(args, conn, lambda ctl: d.undeploy(req, ctl))


def node(args: argparse.Namespace) -> int:
    from autotune.deploy import node as n
    from autotune.shared.log import setup_logging

    if not args.stop and not args.status and not args.daemon:
        setup_logging()
    if args.nats:  # the node's services read it from the environment
        os.environ["AUTOTUNE_NATS_URL"] = args.nats
    return n.main(args)


def tunnel(args: argparse.Namespace) -> int:
    from autotune.deploy import tunnel as t
    from autotune.shared.log import setup_logging

    setup_logging()
    return t.main(args.host, stack_settings(args).data_dir, connect=args.connect)


def _path(p: str | None) -> str | None:
    return os.path.abspath(os.path.expanduser(p)) if p else None
