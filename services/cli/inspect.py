"""Looking inside: events (the log itself), sql (the projection), snapshot (a DuckDB file of it)."""

from __future__ import annotations

import argparse
import json
import sys

from autotune.cli.connection import EXIT_OK, Connection, Failed, err, nats_command, stack_settings
from autotune.cli.options import add_command, json_option
from autotune.cli.render import print_rows, when


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "events", "print events from the log (any subject filter), from a sequence or a time, then live with --follow",
                    "autotune events --task quickstart\nautotune events --follow 'autotune.task.quickstart.>'\nautotune events 'autotune.host.>' --since 1h\n"
                    "autotune events 'autotune.gpu.local.*' --since-seq 1000 --limit 20 --json", events)  # fmt: skip
    p.add_argument("subject", nargs="?", help="subject filter (default: autotune.> — every task and host event)")
    p.add_argument("--task", help="shorthand for autotune.task.<TASK>.> (with --follow: until the task finishes)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing live events (Ctrl-C stops)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--since-seq", type=int, help="start at this stream sequence")
    start.add_argument("--since", type=when, help="start at this time: 10m, 2h, 1d ago, or an ISO 8601 time")
    p.add_argument("--limit", type=int, help="stop after this many events")
    json_option(p)

    p = add_command(sub, "sql", "run a read-only SQL query on the projection (DuckDB)",
                    'autotune sql "select id, status, best_score from tasks"\nautotune sql "describe experiments"\n'
                    "autotune sql \"select n, parameters, score from experiments where task='quickstart' order by score limit 3\" --json", sql)  # fmt: skip
    p.add_argument("query")
    p.add_argument("--limit", type=int)
    json_option(p)

    p = add_command(sub, "snapshot", "write a consistent DuckDB file of the projection that anyone can open",
                    "autotune snapshot /tmp/autotune.duckdb\nduckdb /tmp/autotune.duckdb 'select * from tasks'", snapshot)  # fmt: skip
    p.add_argument("file")
    p.add_argument("--overwrite", action="store_true")
    json_option(p)


def _summary(env: dict) -> str:
    e = env.get("event") or {}
    keys = ("task", "n", "attempt", "host", "status", "kind", "stage", "score", "reason", "strategy", "budget", "message")
    parts = [f"{k}={e[k]}" for k in keys if e.get(k) not in (None, "", [])]
    if env["type"] == "gpu.sample":
        parts = [f"host={e.get('host')}", f"gpu={e.get('index')}", f"util={e.get('util_gpu')}%", f"mem={e.get('memory_used_mib')}MiB", f"temp={e.get('temperature_c')}C"]
    elif env["type"] == "log.lines":
        parts = [f"task={e.get('task')}", f"n={e.get('n')}", f"lines={len(e.get('lines') or [])}"]
    return " ".join(parts)


@nats_command
async def events(args: argparse.Namespace, conn: Connection) -> int:
    from autotune.reads import stream
    from autotune.schemas import subjects as subj

    try:
        subject = args.subject or (subj.task_all(args.task) if args.task else subj.ALL)
    except subj.SubjectError as e:  # --task is a name, not a pattern
        return err(f"--task: {e}")
    stream.route(subject)
    until = stream.TASK_FINISHED if args.task and not args.subject else frozenset()  # a task's events end with the task
    async for env in stream.events(conn.js, subject, since_seq=args.since_seq, since_time=args.since, follow=args.follow, limit=args.limit, until=until):
        if env is None:
            continue
        if args.json:
            print(json.dumps(env), flush=True)
        else:
            at = env["stored_at"][11:23]
            print(f"{env['seq']:>8}  {at}  {env['type']:<26} {_summary(env)}", flush=True)
    return EXIT_OK


@nats_command
async def sql(args: argparse.Namespace, conn: Connection) -> int:
    from autotune.shared import query as q

    res = await q.sql(conn.nc, args.query, None, limit=args.limit)
    print_rows(res, args.json)
    if res.truncated and not args.json:
        sys.stderr.write(f"autotune: only the first {res.row_count} rows; pass --limit N for more\n")
    return EXIT_OK


@nats_command(connect=False)  # a running projector writes it; with none, the database file is copied
async def snapshot(args: argparse.Namespace) -> int:
    from autotune.projector.cli import snapshot as take_snapshot
    from autotune.shared import query as q

    try:
        out = await take_snapshot(stack_settings(args), args.file, overwrite=args.overwrite)
    except SystemExit as e:
        raise Failed(str(e.code)) from None
    except q.QueryError as e:
        raise Failed(e.message) from None
    if args.json:
        print(json.dumps(out, default=str))
    else:
        print(f"wrote {out['path']} ({out.get('bytes', 0) / 1e6:.1f} MB, via the {out.get('via')}); open it with: duckdb {out['path']}")
    return EXIT_OK
