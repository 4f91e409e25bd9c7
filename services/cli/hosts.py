"""The fleet: hosts, host, gpus, drain, remove."""

from __future__ import annotations

import argparse
import json
import sys

from autotune.cli.connection import EXIT_OK, Connection, err, nats_command
from autotune.cli.options import add_command, json_option
from autotune.cli.render import ago, cell, console, shown, table, when


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "hosts", "list hosts: online / busy / draining / offline / lost / stopped, GPUs with model, memory, utilization, temperature, node",
                    "autotune hosts\nautotune hosts --status busy --json", hosts)  # fmt: skip
    p.add_argument("--status", help="online | busy | draining | offline | lost | stopped | removed")
    p.add_argument("--all", action="store_true", help="include removed hosts")
    json_option(p)

    p = add_command(sub, "host", "show one host: its GPUs, running and recent experiments, and GPU history",
                    "autotune host local\nautotune host gpu-node-7 --history 1h --bucket 60", host)  # fmt: skip
    p.add_argument("id")
    p.add_argument("--history", metavar="SINCE", type=when, help="GPU history since SINCE (10m, 2h, 1d or an ISO time), downsampled")
    p.add_argument("--bucket", type=int, help="history bucket in seconds (default: ~200 points)")
    json_option(p)

    p = add_command(sub, "gpus", "the fleet's GPUs by model (total, busy, free, offline) and the Kubernetes cluster's GPU nodes",
                    "autotune gpus\nautotune gpus --kubernetes   # also allocatable vs requested nvidia.com/gpu per node", gpus)  # fmt: skip
    p.add_argument("--kubernetes", action="store_true", help="read the cluster's GPU nodes (needs a kubeconfig or in-cluster credentials)")
    json_option(p)

    p = add_command(sub, "drain", "take no new experiments on a host; running ones finish", "autotune drain gpu-node-7", drain)
    p.add_argument("host")
    json_option(p)

    p = add_command(sub, "remove", "remove a host from the fleet",
                    "autotune remove gpu-node-7\nautotune remove gpu-node-7 --force   # even while it runs experiments", remove)  # fmt: skip
    p.add_argument("host")
    p.add_argument("--force", action="store_true", help="remove it even while it runs experiments")
    json_option(p)


def _gpu_summary(h) -> str:
    names: dict[str, int] = {}
    for g in h.gpus:
        names[g.name or "?"] = names.get(g.name or "?", 0) + 1
    cpu = f"; CPU: {h.cpu_slots} slot(s) for real {','.join(h.cpu_engines)}" if getattr(h, "cpu_slots", 0) else ""
    return ", ".join(f"{k}x {n}" for n, k in names.items()) + cpu


@nats_command
async def hosts(args: argparse.Namespace, conn: Connection) -> int:
    from autotune import reads

    found = await reads.list_hosts(conn.nc, conn.js, status=args.status, include_removed=args.all)
    return shown(args, found, lambda: _show_hosts(found))


def _show_hosts(found) -> None:
    rows = []
    for h in found:
        util = [g.util_gpu for g in h.gpus if g.util_gpu is not None]
        mem = [(g.memory_used_mib or 0, g.memory_total_mib or 0) for g in h.gpus if g.memory_used_mib is not None]
        temp = [g.temperature_c for g in h.gpus if g.temperature_c is not None]
        rows.append([
            h.host + (" (simulated)" if h.simulated else ""), h.status, _gpu_summary(h),
            f"{sum(util) / len(util):.0f}%" if util else "", f"{sum(u for u, _ in mem) / 1024:.0f}/{sum(t for _, t in mem) / 1024:.0f} GiB" if mem else "",
            f"{max(temp):.0f} C" if temp else "", len(h.running), h.node, h.version, ago(h.last_heartbeat),
        ])  # fmt: skip
    cols = ["host", "status", "GPUs", "util", "memory", "temp", "running", "node", "version", "heartbeat"]
    console().print(table(f"hosts ({len(found)})", cols, rows))


@nats_command
async def host(args: argparse.Namespace, conn: Connection) -> int:
    import msgspec

    from autotune import reads

    d = await reads.host_detail(conn.nc, conn.js, args.id)
    history = None
    if args.history:
        history = await reads.gpu_history(conn.nc, args.id, since=args.history, bucket_s=args.bucket)
    if args.json:
        out = json.loads(json.dumps(msgspec.to_builtins(d)))
        if history is not None:
            out["history"] = msgspec.to_builtins(history)
        print(json.dumps(out))
        return EXIT_OK
    c = console()
    c.print(f"[bold]host {d.host}[/bold]  {d.status}" + ("  [bold yellow][SIMULATED GPUs][/bold yellow]" if d.simulated else ""))
    c.print(f"  instance   {d.instance or '-'} on {d.hostname or '-'}" + (f", node {d.node}" if d.node else "") + f", version {d.version or '-'}")
    c.print(f"  offers     runtimes {', '.join(d.runtimes) or '-'}; engines {', '.join(d.engines) or '-'}")
    if d.release:
        c.print(f"  deployed   release {d.release} ({d.deploy_outcome or '-'}, {d.deployed_at or '-'}, by {d.deployed_by or '-'})")
    c.print(f"  lifecycle  {d.lifecycle or '-'}; registered {d.registered_at or '-'}; heartbeat {ago(d.last_heartbeat) or 'none (offline)'}"
            + "".join(f"; {k} {v}" for k, v in (("drain requested", d.drain_requested_at), ("drained", d.drained_at),
                                                 ("lost", d.lost_at), ("back", d.returned_at), ("stopped", d.stopped_at),
                                                 ("removed", d.removed_at)) if v))  # fmt: skip
    cols = ["gpu", "model", "memory MiB", "util %", "temp C", "power W", "running"]
    c.print(table("GPUs", cols, [[g.index, g.name, f"{cell(g.memory_used_mib)}/{cell(g.memory_total_mib)}", g.util_gpu, g.temperature_c, g.power_w, g.leased_by]
                                 for g in d.gpus]))  # fmt: skip
    if d.experiments:
        cols = ["task", "n", "attempt", "status", "gpu_indices", "score", "failure_kind", "started_at"]
        c.print(table("latest experiments here", cols, [[e.get(k) for k in cols] for e in d.experiments]))
    if history is not None:
        cols = ["t", "gpu", "samples", "util_gpu", "util_gpu_max", "memory_used_mib", "temperature_c", "power_w"]
        c.print(table(f"GPU history since {history.since} ({history.bucket_s} s buckets)", cols,
                      [[getattr(p, k) for k in cols] for p in history.points]))  # fmt: skip
    return EXIT_OK


@nats_command
async def gpus(args: argparse.Namespace, conn: Connection) -> int:
    from autotune import reads

    out = await reads.gpu_summary(conn.nc, conn.js, kubernetes=True if args.kubernetes else None)
    return shown(args, out, lambda: _show_gpus(out))


def _show_gpus(out) -> None:
    c = console()
    c.print(table("the fleet's GPUs", ["model", "total", "busy", "free", "offline", "hosts"],
                  [[g.name, g.total, g.busy, g.free, g.offline, ", ".join(g.hosts)] for g in out.fleet]))  # fmt: skip
    if out.kubernetes is not None:
        cols = ["node", "product", "memory_mib", "allocatable", "requested", "free", "ready", "schedulable"]
        c.print(table("Kubernetes GPU nodes", cols, [[n.get(k) for k in cols] for n in out.kubernetes]))
    if out.kubernetes_error:
        sys.stderr.write(f"autotune: {out.kubernetes_error}\n")


async def _known_host(conn: Connection, host_id: str) -> None:
    from autotune import reads
    from autotune.shared import commands

    if not await commands.host_known(conn.js, host_id) and not await reads.live_hosts(conn.js, [host_id]):
        raise commands.UnknownHost(host_id)


@nats_command
async def drain(args: argparse.Namespace, conn: Connection) -> int:
    from autotune.shared import commands

    await _known_host(conn, args.host)
    seq = await commands.drain_host(conn.js, args.host, requested_by="cli")
    if args.json:
        print(json.dumps({"id": args.host, "seq": seq, "status": "drain_requested"}))
    else:
        print(f"drain requested for host {args.host}: it takes no new experiments; running ones finish")
    return EXIT_OK


@nats_command
async def remove(args: argparse.Namespace, conn: Connection) -> int:
    from autotune import reads
    from autotune.shared import commands

    await _known_host(conn, args.host)
    live = (await reads.live_hosts(conn.js, [args.host])).get(args.host)
    if live is not None and live.running and not args.force:
        return err(f"host {args.host} is running {', '.join(live.running)}; drain it first (autotune drain {args.host}) or pass --force")
    seq = await commands.remove_host(conn.js, args.host, requested_by="cli")
    if args.json:
        print(json.dumps({"id": args.host, "seq": seq, "status": "removed"}))
    else:
        print(f"host {args.host} removed from the fleet" + ("; its runner is still alive: stop it there" if live is not None else ""))
    return EXIT_OK
