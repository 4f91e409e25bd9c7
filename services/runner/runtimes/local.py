"""The local runtime: the engine as a subprocess in its own process group, killed with its whole tree.

Engines carry their labels in their environment (AUTOTUNE_LABEL_*), so a restarted runner finds the
engines a previous instance left behind by reading /proc, without any state file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from autotune.runner.runtimes import LABEL_EXPERIMENT, LABEL_HOST, Handle
from autotune.shared import log as logging

log = logging.get("runner")


class ProcessHandle(Handle):
    def __init__(self, proc: asyncio.subprocess.Process, base_url: str) -> None:
        super().__init__(str(proc.pid), base_url)
        self.proc = proc
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                break
            self.add_line(raw.decode("utf-8", "replace").rstrip())
        self.exit_code = await self.proc.wait()
        self.exited.set()

    async def stop(self, grace_s: float = 10.0) -> None:
        kill_group(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace_s)
        except TimeoutError:
            kill_group(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        kill_group(self.proc.pid, signal.SIGKILL)  # stragglers that left the leader behind
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reader, 5)


def kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class LocalRuntime:
    name = "local"

    async def launch(self, argv: list[str], *, env: dict[str, str], labels: dict[str, str], gpu_indices: list[int], port: int) -> Handle:
        full_env = {**os.environ, **env, **labels, "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpu_indices))}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=full_env,
            start_new_session=True,  # its own process group: we kill the whole tree
        )
        return ProcessHandle(proc, f"http://127.0.0.1:{port}")

    async def reap_orphans(self, host: str, keep: set[str]) -> list[str]:
        stopped = []
        for pid, labels in labelled_processes():
            if labels.get(LABEL_HOST) != host or labels.get(LABEL_EXPERIMENT) in keep:
                continue
            log.warning("removing an engine no live experiment owns", pid=pid, experiment=labels.get(LABEL_EXPERIMENT))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            stopped.append(str(pid))
        return stopped


def labelled_processes() -> list[tuple[int, dict[str, str]]]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "environ").read_bytes()
        except OSError:
            continue
        if b"AUTOTUNE_LABEL_HOST=" not in raw:
            continue
        labels = {}
        for item in raw.split(b"\0"):
            k, _, v = item.partition(b"=")
            if k.startswith(b"AUTOTUNE_LABEL_"):
                labels[k.decode()] = v.decode("utf-8", "replace")
        out.append((int(d.name), labels))
    return out


class SimulatedRuntime(LocalRuntime):
    """The engine simulator as a local process, launched with the real engine's command line."""

    name = "simulated"
