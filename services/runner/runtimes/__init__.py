"""Runtimes: how an engine is launched, watched and torn down on a host (local, simulated, docker, kubernetes).

Every runtime gets the same `Launch` (the real engine command line with the tuned flags, the image, the
leased GPUs, the labels) and returns a `Handle`: the engine's base URL, its output lines, whether it
exited (and how), and how to stop it for good. Everything a runtime starts carries the host and
experiment labels, so a restarted runner finds and removes what no live experiment owns.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from dataclasses import dataclass, field
from typing import Protocol

# label keys as environment variables (local processes, and inside containers for gpumon's simulated fleet)
LABEL_HOST = "AUTOTUNE_LABEL_HOST"
LABEL_EXPERIMENT = "AUTOTUNE_LABEL_EXPERIMENT"
LABEL_INSTANCE = "AUTOTUNE_LABEL_INSTANCE"
LABEL_TASK = "AUTOTUNE_LABEL_TASK"
LABEL_GPUS = "AUTOTUNE_LABEL_GPUS"  # the leased GPU indices, "0,1": what a machine watcher needs to see double-booking


def gpus_label(indices: list[int]) -> str:
    return ",".join(map(str, indices))


def parse_gpus_label(value: str | None) -> list[int] | None:
    """The GPU indices of a label value; None when absent or unreadable (then: any GPU of the host)."""
    if value is None:
        return None
    try:
        return [int(g) for g in value.split(",") if g.strip()]
    except ValueError:
        return None


@dataclass
class Launch:
    """Everything a runtime needs to start one experiment attempt's engine."""

    key: str  # "<task>/<n>/<attempt>": the experiment label
    task: str
    n: int
    attempt: int
    host: str
    instance: str
    argv: list[str]  # the real engine command line, tuned flags included
    engine: str = "sglang"
    image: str = ""  # image_for(spec): the engine image with the task's runtime_image_tag
    model: str = ""  # the model as the task names it (HF id, directory name or absolute path)
    hf_token: str | None = None
    port: int = 30000
    gpu_indices: list[int] = field(default_factory=list)
    gpu_uuids: list[str] = field(default_factory=list)
    real_gpus: bool = False  # the leased GPUs exist (NVML saw them): only then ask for devices
    simulated: bool = False  # run the engine simulator with this command line instead of the engine
    env: dict[str, str] = field(default_factory=dict)
    device: str = ""  # "cpu": a real engine on the host's CPU (no GPUs leased)
    ome: bool = False  # Kubernetes: an OME InferenceService instead of a Deployment + Service
    image_pinned: bool = False  # the task set runtime_image_tag (OME: else the ClusterServingRuntime's image runs)
    # Kubernetes/OME: the task's `storage` claim, mounted read-only (pvc_name, pvc_subpath, mount_path)
    storage: dict[str, str | None] | None = None
    ome_model: str | None = None  # OME: the ClusterBaseModel the InferenceService names
    ome_runtime: str | None = None  # OME: the ClusterServingRuntime it names
    ome_resources: list[dict] = field(default_factory=list)  # OME: cluster-scoped objects created when absent

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_HOST: self.host, LABEL_EXPERIMENT: self.key, LABEL_INSTANCE: self.instance, LABEL_TASK: self.task, LABEL_GPUS: gpus_label(self.gpu_indices)}


def served_as(argv: list[str], engine: str, name: str) -> list[str]:
    """The command line with `--served-model-name name` unless it names one already: when a runtime
    rewrites the model into a path, the engine would otherwise serve it under that path and answer
    404 to requests for the model as the task names it."""
    if any(a == "--served-model-name" or a.startswith("--served-model-name=") for a in argv):
        return argv
    return [*argv, "--served-model-name", name]


def simulated_argv(argv: list[str], python: str = sys.executable, module: str = "autotune.simulator") -> list[str]:
    """The engine's command line with the program swapped for the simulator; the flags stay as they are."""
    if argv[:3] == ["python3", "-m", "sglang.launch_server"]:
        return [python, "-m", module, "sglang", *argv[3:]]
    if argv[:2] == ["vllm", "serve"]:
        return [python, "-m", module, "vllm", "serve", *argv[2:]]
    raise ValueError(f"cannot simulate engine command {argv[:3]}")


class Handle:
    """A launched engine: its output lines and how to stop it. Runtimes subclass it.

    `exited` is set only once the engine's output has been read to the end, so `tail` then holds its
    last lines; `exit_reason` is what the runtime knows beyond the code (e.g. `OOMKilled`).
    """

    def __init__(self, ident: str, base_url: str) -> None:
        self.ident = ident  # pid, container id, deployment name
        self.command: list[str] = []  # what actually runs (after the runtime's rewrites)
        self.env: dict[str, str] = {}  # what the runtime set in the engine's environment (no labels, no secrets)
        self.base_url = base_url
        self.tail: collections.deque[str] = collections.deque(maxlen=200)
        self.lines: asyncio.Queue[str | None] = asyncio.Queue(maxsize=10_000)  # None: the end (queued at teardown)
        self.exit_code: int | None = None
        self.exit_reason: str = ""
        self.exited = asyncio.Event()
        self.dropped = 0  # lines not streamed because the queue was full (they are still in `tail`)
        self._partial = ""

    def add_line(self, line: str) -> None:
        self.tail.append(line)
        try:
            self.lines.put_nowait(line)
        except asyncio.QueueFull:
            self.dropped += 1

    def add_chunk(self, chunk: str) -> None:
        """Output that arrives in arbitrary pieces (container logs): split it into lines."""
        data = self._partial + chunk
        *complete, self._partial = data.split("\n")
        for line in complete:
            self.add_line(line.rstrip("\r"))

    def flush_partial(self) -> None:
        if self._partial:
            self.add_line(self._partial.rstrip("\r"))
            self._partial = ""

    async def ready(self) -> bool:
        """What the runtime itself knows about readiness (a pod's Ready condition); True when it has no opinion."""
        return True

    async def stop(self, grace_s: float = 10.0) -> None:
        raise NotImplementedError


class Runtime(Protocol):
    """What the runner needs of a runtime: its capabilities, and how to launch, reap and close."""

    name: str
    always_simulate: bool  # runs the engine simulator whatever the assignment says (simulated GPUs on this host)
    leases_gpus_itself: bool  # its own scheduler hands out GPUs (Kubernetes' device plugin): the lease is a count, NVML indices say nothing
    bind_host: str | None  # the address engines listen on; None: the runner's `engine_host`

    async def available(self) -> str | None:
        """None when the runtime answers here; else why not (one clear log line)."""
        ...

    async def launch(self, spec: Launch) -> Handle: ...

    async def reap_orphans(self, host: str, keep: set[str]) -> list[str]:
        """Stop and remove everything labelled with `host` whose experiment is not in `keep`; return what was removed."""
        ...

    async def engines(self, host: str) -> dict[str, list[int] | None]:
        """The engines labelled with `host` that are running now: experiment key → its GPU indices (None: unknown)."""
        ...

    async def close(self) -> None: ...
