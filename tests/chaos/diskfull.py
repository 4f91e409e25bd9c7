"""Disk full (`just diskfull`): the projector's data volume, then the NATS store, run out of space during a task.

`autotune up` runs a task on 2 simulated hosts, with the projector's database on a small tmpfs of its
own and the NATS store on another (so this needs root, for `mount`). The driver fills the projector's
volume with a file until nothing more fits, keeps it full for a while, then deletes the file; then
the same with the NATS store. It checks that:

- the services keep running, or are restarted by `autotune up`;
- each full disk is said plainly in a log (which volume, what to do);
- nothing acknowledged is lost: every event stored before the NATS disk ran full is still there, in order;
- both recover by themselves once there is room: the projector catches up, nats-server is restarted
  by `autotune up` (JetStream refuses to store on a stream whose write failed for lack of space until
  it restarts) and the task completes;
- the projection then equals a fresh rebuild from the log.

Prints one JSON line; exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from autotune.schemas import events as ev  # noqa: E402
from autotune.schemas import subjects as subj  # noqa: E402
from autotune.shared import bus  # noqa: E402
from autotune.shared import query as q  # noqa: E402
from autotune.shared.natsserver import NatsServer  # noqa: E402
from autotune.shared.net import free_port  # noqa: E402
from autotune.shared.settings import Settings  # noqa: E402
from tests.chaos.chaos import _compare_projection, _task_end  # noqa: E402
from tests.helpers import small_spec, stop_group, submit  # noqa: E402


def mount_tmpfs(path: Path, mib: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)], check=True, capture_output=True, text=True)


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(volume: Path) -> Path:
    """A file that takes every free byte of `volume`."""
    filler = volume / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (2**20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def grep(path: Path, *needles: str) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text(errors="replace").splitlines() if any(n in line for n in needles)]


async def until(check, seconds: float, every: float = 0.5):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if got := await check():
                return got
        except Exception:  # noqa: BLE001 - NATS or the projector not back yet
            pass
        await asyncio.sleep(every)
    return None


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hold", type=float, default=12.0, help="seconds each volume stays full")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    result: dict = {"benchmark": "diskfull"}
    if os.geteuid() != 0:
        result["skipped"] = "needs root to mount the small tmpfs volumes that are filled"
        print(json.dumps(result))
        return 0
    work = Path(tempfile.mkdtemp(prefix="autotune-diskfull-"))
    data, proj = work / "data", work / "projector"
    logs = data / "logs"
    violations: list[str] = []
    up = None
    nc = None
    try:
        try:
            mount_tmpfs(data / "nats", 64)
            mount_tmpfs(proj, 24)
        except subprocess.CalledProcessError as e:  # root, but no CAP_SYS_ADMIN (an unprivileged container)
            umount(data / "nats")
            result["skipped"] = f"cannot mount a tmpfs here: {e.stderr.strip()[:200]}"
            print(json.dumps(result))
            return 0
        logs.mkdir(parents=True)
        db = proj / "autotune.duckdb"
        port = free_port()
        env = {**os.environ, "AUTOTUNE_DATA_DIR": str(data), "AUTOTUNE_PROJECTOR_DB": str(db), "AUTOTUNE_HOST_TTL_S": "5"}
        env.pop("AUTOTUNE_NATS_URL", None)
        up_log = open(logs / "up.log", "ab")  # noqa: SIM115 - handed to the child
        up = subprocess.Popen(
            [sys.executable, "-m", "autotune.cli", "up", "--nats-port", str(port), "--api-port", str(free_port()), "--hosts", "2",
             "--simulate", "1xH100", "--time-scale", "40", "--no-auth"],
            stdout=up_log, stderr=up_log, env=env, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        settings = Settings(nats_url=f"nats://127.0.0.1:{port}", data_dir=str(data), host_ttl_s=5)
        nc = await until(lambda: bus.connect(settings, "diskfull"), 60)
        if nc is None:
            raise RuntimeError("autotune up did not start: " + (logs / "up.log").read_text(errors="replace")[-1000:])
        js = nc.jetstream()
        await until(lambda: q.sql(nc, "SELECT 1", timeout=2), 60)
        raw = small_spec("diskfull", parameters={"max-running-requests": [4, 8, 16, 32, 64], "mem-fraction-static": [0.7, 0.8, 0.85, 0.88, 0.9]},
                         optimization={"max_iterations": 36, "max_parallel": 2, "timeout_per_iteration": 120}, benchmark={"max_requests_per_iteration": 40})  # fmt: skip
        task = await submit(js, raw)
        t0 = time.monotonic()

        async def completed() -> int:
            return len([e for _, e in await _events(js, subj.task_all(task)) if isinstance(e, ev.ExperimentCompleted)])

        await until(lambda: _at_least(completed, 3), 120)

        # --- the projector's volume -----------------------------------------------------------------
        filler = fill(proj)
        said = await until(lambda: _said(logs / "projector.log", "data volume is full"), args.hold + 20)
        result["projector"] = {"full_said": said[-240:] if said else None}
        if not said:
            violations.append("the projector did not say that its volume is full")
        await asyncio.sleep(args.hold)
        alive_sql = await until(lambda: q.sql(nc, "SELECT count(*) FROM tasks", timeout=3), 10)
        result["projector"]["answered_while_full"] = alive_sql is not None
        filler.unlink()
        freed = time.monotonic()
        last = await bus.last_seq(js, ">")
        caught = await until(lambda: q.sql(nc, "SELECT count(*) FROM experiments", min_seq=last, timeout=5), 120)
        result["projector"]["caught_up_s"] = round(time.monotonic() - freed, 1) if caught else None
        result["projector"]["restarts"] = len(grep(logs / "up.log", "projector exited with code"))
        if not caught:
            violations.append("the projector did not catch up once there was room again")

        # --- the NATS store -------------------------------------------------------------------------
        before = (await js.stream_info(subj.EVENTS_STREAM)).state
        stored = [(d.seq, d.event.id) for d in await _stored(js, before.last_seq)]
        filler = fill(data / "nats")
        said = await until(lambda: _said(logs / "up.log", "NATS store's disk is full"), args.hold + 30)
        result["nats"] = {"full_said": said[-300:] if said else None, "events_before": before.last_seq}
        if not said:
            violations.append("autotune up did not say that the NATS store's disk is full")
        await asyncio.sleep(args.hold)
        filler.unlink()
        freed = time.monotonic()
        restarted = await until(lambda: _said(logs / "up.log", "restarting nats-server"), 60)
        result["nats"]["restarted"] = restarted is not None
        grown = await until(lambda: _grown(js, before.last_seq), 120)
        result["nats"]["recovered_s"] = round(time.monotonic() - freed, 1) if grown else None
        if not grown:
            violations.append("no event was stored after the NATS store had room again")
        after = [(d.seq, d.event.id) for d in await _stored(js, before.last_seq)]
        result["nats"]["acknowledged_intact"] = after == stored
        if after != stored:
            violations.append(f"events stored before the disk ran full are missing or changed ({len(stored)} before, {len(after)} after)")

        final = await until(lambda: _task_end(js, task), 300, every=1.0)
        result["task"] = type(final).__name__ if final else "did not end"
        if not isinstance(final, ev.TaskCompleted):
            violations.append(f"task did not complete: {result['task']}")
        result["completed"] = await completed()
        result["elapsed_s"] = round(time.monotonic() - t0, 1)
        result["restarts"] = {name: len(grep(logs / "up.log", f"{name} exited with code")) for name in ("scheduler", "projector", "api", "runner-", "gpumon-")}
    finally:
        if nc is not None:
            await nc.close()
        if up is not None and up.poll() is None:
            stop_group(up, 90)

    # the incrementally built projection, caught up, must equal a fresh rebuild from the log
    if "task" in result:
        nats = NatsServer(data / "nats", log_file=str(logs / "nats-rebuild.log")).start()
        try:
            s = Settings(nats_url=nats.url, data_dir=str(data))
            diff = await _compare_projection(s, db, work / "fresh.duckdb", {"AUTOTUNE_NATS_URL": nats.url, "AUTOTUNE_DATA_DIR": str(data)})
        finally:
            nats.stop()
        result["projection_equals_rebuild"] = not diff
        violations += diff
    result["violations"] = violations
    result["work_dir"] = str(work) if args.keep or violations else None
    for m in (proj, data / "nats"):
        if not (args.keep or violations):
            umount(m)
    if not (args.keep or violations):
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 1 if violations else 0


async def _events(js, subject: str) -> list[tuple[str, ev.Event]]:
    return [(d.subject, d.event) async for d in bus.replay(js, subject, follow=False)]


async def _stored(js, last: int) -> list[bus.Delivery]:
    """The events of AUTOTUNE_EVENTS up to sequence `last`."""
    out = []
    async for d in bus.replay(js, ">", follow=False):
        if d.seq > last:
            break
        if d.event is not None:
            out.append(d)
    return out


async def _at_least(count, n: int) -> bool:
    return await count() >= n


async def _said(log: Path, *needles: str) -> str | None:
    lines = grep(log, *needles)
    return lines[-1] if lines else None


async def _grown(js, seq: int) -> bool:
    return (await js.stream_info(subj.EVENTS_STREAM)).state.last_seq > seq


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
