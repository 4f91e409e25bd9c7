"""Rebuild the read model from the first event into a new file, then swap it in atomically.

The rebuilt file is written beside the database (`<db>.rebuild`) by the same code that projects
incrementally, in burst mode: it stops once caught up with the streams as they were. The swap is
done by whoever has the database open: a running projector on this machine is asked (request on
its reopen subject) to close its file, rename the new one over it and reopen, resuming from the
new file's positions; when no projector answers, the file is swapped here. Either way, no process
ever has a file renamed under it and no stale write-ahead log is replayed into the new file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import duckdb
import msgspec
import nats.errors

from autotune.projector.answer import reopen_subject
from autotune.projector.pipeline import tune_gc
from autotune.projector.service import Projector
from autotune.projector.settings import ProjectorConfig, default_db_path
from autotune.projector.store import files, replace_files
from autotune.shared import bus
from autotune.shared.log import get_logger
from autotune.shared.provision import provision
from autotune.shared.settings import Settings

log = get_logger("projector")


async def rebuild(settings: Settings, db_path: str | None = None, *, config: ProjectorConfig | None = None) -> dict[str, Any]:
    """Replay every stream into a fresh file and swap it in. Returns what was rebuilt and how fast."""
    path = os.path.abspath(db_path or default_db_path(settings))
    new = path + ".rebuild"
    for f in files(new):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f)
    tune_gc()
    t0 = time.monotonic()
    nc = await bus.connect(settings, "projector-rebuild")
    try:
        js = nc.jetstream()
        await provision(js, settings)
        cfg = msgspec.structs.replace(config or ProjectorConfig.from_env())
        cfg.duckdb_threads = cfg.rebuild_duckdb_threads
        projector = Projector(nc, js, new, cfg, settings)
        stats = await projector.run(asyncio.Event(), burst=True, serve=False)
        built = time.monotonic() - t0
        swapped_by = await _swap_in(nc, path, new)
    finally:
        await bus.close(nc)
    out = {
        "path": path,
        "messages": stats.get("applied", 0) + stats.get("unknown", 0) + stats.get("dead_letters", 0),
        **{k: stats.get(k, 0) for k in ("applied", "unknown", "dead_letters")},
        "applied_seq": stats["applied_seq"],
        "build_s": round(built, 3),
        "seconds": round(time.monotonic() - t0, 3),
        "swapped_by": swapped_by,
    }
    log.info("rebuilt", **out)
    return out


async def _swap_in(nc: Any, path: str, new: str) -> str:
    try:
        msg = await nc.request(reopen_subject(path), msgspec.json.encode({"path": path, "new_path": new}), timeout=120)
    except nats.errors.NoRespondersError:
        swap_file(path, new)
        return "rebuild"
    reply = msgspec.json.decode(msg.data)
    if reply.get("error"):
        raise RuntimeError(f"the running projector could not swap in {new}: {reply['error']}")
    return "projector"


def swap_file(path: str, new: str) -> None:
    """Rename `new` over `path` (both files of each) when no projector has it open (taking
    DuckDB's lock to be sure)."""
    if os.path.exists(path):
        try:
            duckdb.connect(path).close()  # replays and checkpoints its WAL: nothing stale remains
        except duckdb.Error as e:
            if "lock" in str(e).lower() or "same database file" in str(e):
                raise RuntimeError(
                    f"{path} is open in another process but no projector answered on its reopen subject; "
                    f"stop that process and run the rebuild again ({e})"
                ) from None
            log.warning("the old read model cannot be opened; replacing it anyway", db=path, error=str(e))
    replace_files(new, path)
