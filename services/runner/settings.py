"""Runner settings: who this host is, which GPUs and runtimes it offers, and how each runtime runs engines."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import msgspec

from autotune.shared.settings import Settings

SIMULATED_RUNTIMES = ("process", "docker", "kubernetes")
CPU_ENGINES = ("vllm",)  # engines with a CPU build that autotune serves on a host without GPUs


def parse_pairs(items: list[str] | str, what: str) -> dict[str, str]:
    """`NAME=VALUE` items (a list, or one comma-separated string from the environment) as a dict."""
    if isinstance(items, str):
        items = [i for i in items.split(",") if i.strip()]
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{what}: `{item}` is not NAME=VALUE (e.g. {'vllm=/opt/vllm/bin/vllm' if what == 'engine' else 'VLLM_CPU_KVCACHE_SPACE=4'})")
        out[key.strip()] = value.strip()
    return out


def default_host_id() -> str:
    """Stable across restarts: AUTOTUNE_HOST, else the Kubernetes node (NODE_NAME), else derived from the machine id."""
    if h := os.environ.get("AUTOTUNE_HOST"):
        return h
    if n := os.environ.get("NODE_NAME"):
        return re.sub(r"[^A-Za-z0-9_-]", "-", n)
    for p in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            mid = Path(p).read_text().strip()
        except OSError:
            continue
        if mid:
            name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40]
            return f"{name}-{mid[:8]}"
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())


class RunnerSettings(msgspec.Struct, kw_only=True):
    host: str = msgspec.field(default_factory=default_host_id)
    simulate: str | None = None  # e.g. "4xH100": simulated GPUs (the default when NVML finds none)
    runtimes: list[str] = []  # default: what this host can run (probed at start)
    time_scale: float = 1.0  # simulated engines run this much faster than real time
    takeover: bool = False  # replace a live instance of the same host
    heartbeat_s: float = 2.0
    startup_timeout_s: float = 900.0
    engine_host: str = "127.0.0.1"
    sim_seed: int = 0
    gpu_busy_wait_s: float = 5.0  # a leased GPU still busy after this long fails the attempt as `gpus_busy`
    stop_grace_s: float = 10.0  # SIGTERM → SIGKILL (process), docker stop timeout, pod grace
    models_dir: str | None = None  # where `model.id_or_path` names without a `/` live (local and docker)
    # where each engine's executable lives on this host (local runtime): {"vllm": "/opt/vllm/bin/vllm",
    # "sglang": "/opt/sglang/bin/python3"}; an engine not named runs as its command line says (PATH)
    engines: dict[str, str] = {}
    engine_env: dict[str, str] = {}  # set in every engine's environment on this host (a task's engine_env overrides it)
    # real engines served on this host's CPU at once; None: one when the host has no GPU and an engine
    # that has a CPU build (CPU_ENGINES) is configured, else none. Two engines on a small machine would
    # share its cores and measure each other.
    cpu_slots: int | None = None
    # where simulated engines run: a local process, a Docker container, or a Kubernetes workload
    simulated_runtime: str = "process"
    # docker
    docker_url: str | None = None  # default: DOCKER_HOST or the local socket
    docker_image: str | None = None  # run this image instead of image_for(spec) (e.g. a local simulator image)
    docker_models_dir: str | None = None  # default: models_dir
    docker_hf_cache: str | None = None  # default: ~/.cache/huggingface
    docker_shm_size: str = "16g"
    docker_binds: list[str] = []  # extra "src:dst[:ro]" mounts for every engine container
    # kubernetes
    k8s_namespace: str = "autotune"
    k8s_node: str | None = None  # pin pods to this node (a runner per GPU node, as a DaemonSet)
    k8s_api_url: str | None = None  # default: in-cluster config, else kubeconfig
    k8s_kubeconfig: str | None = None
    k8s_image: str | None = None  # run this image instead of image_for(spec)
    k8s_service_url: str | None = None  # how to reach a Service, default "http://{service}.{namespace}.svc:{port}"
    k8s_ome_runtime: str | None = None  # OME ClusterServingRuntime to name in InferenceServices
    k8s_models_pvc: str | None = None
    k8s_poll_s: float = 1.0

    @classmethod
    def from_env(cls, **overrides: object) -> RunnerSettings:
        env = os.environ

        def opt(name: str) -> str | None:
            return env.get(name) or None

        s = cls(
            simulate=opt("AUTOTUNE_SIMULATE_GPUS"),
            time_scale=float(env.get("AUTOTUNE_SIM_TIME_SCALE", "1")),
            runtimes=[r for r in env.get("AUTOTUNE_RUNTIMES", "").split(",") if r],
            models_dir=opt("AUTOTUNE_MODELS_DIR"),
            engines=parse_pairs(env.get("AUTOTUNE_ENGINES", ""), "engine"),
            engine_env=parse_pairs(env.get("AUTOTUNE_ENGINE_ENV", ""), "engine-env"),
            cpu_slots=int(env["AUTOTUNE_CPU_SLOTS"]) if env.get("AUTOTUNE_CPU_SLOTS") else None,
            simulated_runtime=env.get("AUTOTUNE_SIMULATED_RUNTIME", "process"),
            docker_image=opt("AUTOTUNE_DOCKER_IMAGE"),
            docker_hf_cache=opt("AUTOTUNE_HF_CACHE"),
            docker_binds=[b for b in env.get("AUTOTUNE_DOCKER_BINDS", "").split(",") if b],
            docker_shm_size=env.get("AUTOTUNE_DOCKER_SHM_SIZE", "16g"),
            k8s_namespace=env.get("AUTOTUNE_K8S_NAMESPACE") or env.get("POD_NAMESPACE") or "autotune",
            k8s_node=opt("NODE_NAME"),
            k8s_api_url=opt("AUTOTUNE_K8S_API_URL"),
            k8s_image=opt("AUTOTUNE_K8S_IMAGE"),
            k8s_service_url=opt("AUTOTUNE_K8S_SERVICE_URL"),
            k8s_ome_runtime=opt("AUTOTUNE_OME_RUNTIME"),
            k8s_models_pvc=opt("AUTOTUNE_K8S_MODELS_PVC"),
        )
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        for engine, path in s.engines.items():
            if engine not in ("vllm", "sglang"):
                raise ValueError(f"engine `{engine}` is not vllm or sglang (--engine vllm=/path/to/bin/vllm)")
            if not Path(path).is_file() or not os.access(path, os.X_OK):
                raise ValueError(f"engine {engine}: `{path}` is not an executable file (install it first, e.g. infra/engines/vllm-cpu.sh)")
        if s.cpu_slots is not None and s.cpu_slots < 0:
            raise ValueError(f"cpu_slots must be 0 or more, got {s.cpu_slots}")
        if s.simulated_runtime not in SIMULATED_RUNTIMES:
            raise ValueError(f"simulated_runtime `{s.simulated_runtime}` is not one of {', '.join(SIMULATED_RUNTIMES)}")
        return s


__all__ = ["CPU_ENGINES", "RunnerSettings", "Settings", "default_host_id", "parse_pairs"]
