"""`autotune projector ...` and `python -m autotune.projector ...`.

run       [--db FILE] [--burst]            project the streams and answer queries (the service)
rebuild   [--db FILE]                      replay every stream into a new file and swap it in
snapshot  FILE [--db FILE] [--overwrite]   write a consistent copy anyone can open with DuckDB
checksum  [--db FILE]                      per-table row count and digest (projector stopped)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from autotune.projector.settings import default_db_path
from autotune.shared import lifecycle
from autotune.shared.log import setup_logging
from autotune.shared.settings import Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autotune projector", description="The read model: NATS streams -> DuckDB, and SQL on it.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `autotune projector`; the `autotune` command's `projector` subcommand parses them too."""
    p.add_argument("--nats-url", help="NATS server(s), comma separated (default: $AUTOTUNE_NATS_URL or nats://127.0.0.1:4222)")
    p.add_argument("--data-dir", help="where autotune keeps its files (default: $AUTOTUNE_DATA_DIR)")
    sub = p.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="project the streams and answer queries until SIGTERM/SIGINT")
    run.add_argument("--db", help="database file (default: <data dir>/autotune.duckdb)")
    run.add_argument("--burst", action="store_true", help="return once caught up with the streams")
    rb = sub.add_parser("rebuild", help="replay every stream into a new file and swap it in")
    rb.add_argument("--db", help="database file (default: <data dir>/autotune.duckdb)")
    sn = sub.add_parser("snapshot", help="write a consistent DuckDB file of the read model")
    sn.add_argument("file", help="the file to write")
    sn.add_argument("--db", help="read this database directly when no projector is running")
    sn.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    ck = sub.add_parser("checksum", help="per-table row counts and digests (the projector must be stopped)")
    ck.add_argument("--db", help="database file (default: <data dir>/autotune.duckdb)")


def projector_main(argv: list[str]) -> int:
    """Entry point of `python -m autotune.projector`; returns the process exit status."""
    return run(_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the action the parsed options name; returns the process exit status."""
    setup_logging()
    settings = Settings.from_env(nats_url=args.nats_url, data_dir=args.data_dir)
    db = getattr(args, "db", None) or default_db_path(settings)
    if args.action == "run":
        from autotune.projector.service import run as projector_run

        lifecycle.run_until_signal(lambda stop: projector_run(settings, stop=stop, db_path=db, burst=args.burst))
        return 0
    if args.action == "rebuild":
        from autotune.projector.rebuild import rebuild

        print(json.dumps(asyncio.run(rebuild(settings, db))))
        return 0
    if args.action == "snapshot":
        print(json.dumps(asyncio.run(snapshot(settings, args.file, db_path=db, overwrite=args.overwrite))))
        return 0
    if args.action == "checksum":
        from autotune.projector.store import checksums

        store = _open_read_only(db)
        try:
            print(json.dumps(checksums(store.conn)))
        finally:
            store.close()
        return 0
    return 2


async def snapshot(settings: Settings, path: str, *, db_path: str | None = None, overwrite: bool = False) -> dict:
    """Ask a running projector for a snapshot; with none running, copy the database file directly.

    Over NATS the file is written on the projector's machine (the same one under `autotune up`).
    """
    from autotune.shared import bus, query

    path = os.path.abspath(path)
    try:
        nc = await bus.connect(settings, "snapshot", connect_timeout=2.0, max_reconnect_attempts=0, allow_reconnect=False)
    except Exception:
        nc = None
    if nc is not None:
        try:
            return {**await query.snapshot(nc, path, overwrite=overwrite), "via": "projector"}
        except query.QueryError as e:
            if "no projector is answering" not in e.message:
                raise SystemExit(f"snapshot failed: {e.message}") from None
        finally:
            await nc.close()
    from autotune.projector.store import write_snapshot

    store = _open_read_only(db_path or default_db_path(settings))
    try:
        with store.cursor() as cur:
            tables = write_snapshot(cur, path, overwrite=overwrite)
    finally:
        store.close()
    return {"path": path, "bytes": os.path.getsize(path), "tables": tables, "via": "file"}


def _open_read_only(db: str):
    import duckdb

    from autotune.projector.store import SchemaMismatch, Store

    if not os.path.exists(db):
        raise SystemExit(f"no database at {db}; pass --db FILE")
    try:
        return Store(db, read_only=True)
    except duckdb.IOException as e:
        raise SystemExit(f"{db} is open in a running projector ({e}); stop it, or ask it: `autotune projector snapshot FILE`") from None
    except SchemaMismatch as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    sys.exit(projector_main(sys.argv[1:]))
