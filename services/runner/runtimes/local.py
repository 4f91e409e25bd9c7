"""The local runtime: the engine as a subprocess in its own process group, killed with its whole tree.

Engines carry their labels in their environment (AUTOTUNE_LABEL_*), and children inherit it, so a
restarted runner finds the engines a previous instance left behind by reading /proc, without any
state file — and a stop also catches descendants that left the process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from autotune.runner.runtimes import LABEL_EXPERIMENT, LABEL_GPUS, LABEL_HOST, Handle, Launch, parse_gpus_label, served_as, simulated_argv
from autotune.shared.log import get_logger

log = get_logger("runner")


class ProcessHandle(Handle):
    def __init__(self, proc: asyncio.subprocess.Process, base_url: str, key: str) -> None:
        super().__init__(str(proc.pid), base_url)
        self.proc = proc
        self.key = key
        self._lines = asyncio.create_task(self._read_lines())
        self._reader = asyncio.create_task(self._watch())

    async def _read_lines(self) -> None:
        assert self.proc.stdout
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                break
            self.add_line(raw.decode("utf-8", "replace").rstrip())

    async def _watch(self) -> None:
        """`exited` once the engine's main process is gone and its output read: to the end, or for a
        moment when children it left behind still hold the pipe (vLLM's engine core and worker do,
        when its API server is killed), so an engine that died is noticed at once."""
        # Python 3.11's Process.wait() also waits for the pipes to close (it wakes with connection_lost),
        # so a child holding them hides the exit: the return code, set by the child watcher, is read instead
        while (code := self.proc.returncode) is None and not self._lines.done():
            await asyncio.sleep(0.2)
        if code is None:
            code = await self.proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._lines), 2.0)
        self.exit_code = code
        if code is not None and code < 0:
            self.exit_reason = signal.Signals(-code).name if -code in signal.valid_signals() else ""
        self.exited.set()

    async def stop(self, grace_s: float = 10.0) -> None:
        kill_group(self.proc.pid, signal.SIGTERM)
        kill_group(self.proc.pid, signal.SIGCONT)  # a stopped (hung) engine must run to see its SIGTERM
        try:
            await asyncio.wait_for(self.proc.wait(), grace_s)
        except TimeoutError:
            kill_group(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        kill_group(self.proc.pid, signal.SIGKILL)  # stragglers that left the leader behind
        for pid, labels in labelled_processes():  # descendants that started their own session
            if labels.get(LABEL_EXPERIMENT) == self.key:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._lines), 5)
        if not self._lines.done():  # a grandchild still holds the pipe open: stop reading it
            self._lines.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reader), 5)
        if not self._reader.done():
            self._reader.cancel()
            self.exited.set()


def kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class LocalRuntime:
    """The real engine command line as a subprocess (needs the engine installed on the host)."""

    name = "local"
    always_simulate = False
    leases_gpus_itself = False
    bind_host: str | None = None

    def __init__(self, models_dir: str | None = None, engines: dict[str, str] | None = None, engine_env: dict[str, str] | None = None) -> None:
        self.models_dir = models_dir
        self.executables = dict(engines or {})  # engine → its executable on this host (RunnerSettings.engines)
        self.engine_env = dict(engine_env or {})  # the host's engine environment (RunnerSettings.engine_env)

    async def available(self) -> str | None:
        return None

    def command(self, spec: Launch) -> list[str]:
        argv = list(spec.argv)
        model = spec.model
        if self.models_dir and model and "/" not in model and model in argv:  # a directory under the models dir
            argv[argv.index(model)] = str(Path(self.models_dir) / model)
            argv = served_as(argv, spec.engine, model)
        if spec.simulated or self.always_simulate:
            return simulated_argv(argv)
        exe = self.executables.get(spec.engine)
        if exe and argv[:2] == ["vllm", "serve"]:
            argv[0] = exe
        elif exe and argv[:3] == ["python3", "-m", "sglang.launch_server"]:
            argv[0] = exe  # the Python of SGLang's environment
        return argv

    def environment(self, spec: Launch) -> dict[str, str]:
        """What this runtime sets for the engine (recorded with the experiment): the host's engine
        environment, the task's and the runner's, the devices."""
        env = {**self.engine_env, **spec.env, "CUDA_VISIBLE_DEVICES": ",".join(map(str, spec.gpu_indices))}
        if spec.real_gpus:
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA's indices then match NVML's, which the lease uses
        return env

    async def launch(self, spec: Launch) -> Handle:
        argv = self.command(spec)
        own = self.environment(spec)
        env = {**os.environ, **own, **spec.labels}
        if spec.hf_token:
            env["HF_TOKEN"] = spec.hf_token
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: we kill the whole tree
        )
        handle = ProcessHandle(proc, f"http://127.0.0.1:{spec.port}", spec.key)
        handle.command = argv
        handle.env = own
        return handle

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

    async def engines(self, host: str) -> dict[str, list[int] | None]:
        return engines_on(host)

    async def close(self) -> None:
        pass


def engines_on(host: str) -> dict[str, list[int] | None]:
    """Live engine processes labelled with `host`: experiment key → GPU indices (a key's processes together)."""
    out: dict[str, list[int] | None] = {}
    for _, labels in labelled_processes():
        if labels.get(LABEL_HOST) != host or not (key := labels.get(LABEL_EXPERIMENT)):
            continue
        gpus, known = parse_gpus_label(labels.get(LABEL_GPUS)), out.get(key, [])
        out[key] = None if gpus is None or known is None else sorted(set(known) | set(gpus))
    return out


def labelled_processes() -> list[tuple[int, dict[str, str]]]:
    """(pid, AUTOTUNE_LABEL_* environment) of every process that carries autotune labels."""
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
    always_simulate = True
