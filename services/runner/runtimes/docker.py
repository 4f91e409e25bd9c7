"""The Docker runtime (aiodocker): the engine image with the task's tag, the leased GPUs as device
requests, the model directory and HF cache mounted, `ipc=host` and a large /dev/shm like the original,
host networking, labels, logs streamed into the handle, and the container stopped and removed always.

A simulated engine runs the same way — same image handling, same labels, same teardown — with the
engine simulator (standard library only) bind-mounted from this installation and started with the
container's `python3`, so any image with Python serves (tests build an empty image that borrows the
host's /usr).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path

from autotune.runner.runtimes import Handle, Launch, gpus_label, parse_gpus_label, served_as, simulated_argv
from autotune.shared.log import get_logger

log = get_logger("runner")

# container labels (Docker allows any string value)
L_HOST, L_EXPERIMENT, L_INSTANCE, L_TASK = "autotune.host", "autotune.experiment", "autotune.instance", "autotune.task"
L_GPUS = "autotune.gpus"
SIM_MOUNT = "/opt/autotune"  # the simulator package is mounted at /opt/autotune/simulator
HF_CACHE_IN_CONTAINER = "/root/.cache/huggingface"
MODELS_IN_CONTAINER = "/models"


def parse_size(text: str) -> int:
    """`16g`, `512m`, `1073741824` → bytes (what Docker's --shm-size accepts)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise ValueError(f"`{text}` is not a size; write e.g. 16g or 512m")
    return int(float(m[1]) * 1024 ** " kmgt".index(m[2] or " "))


def model_arg_index(argv: list[str]) -> int | None:
    """Where the model sits in an engine command line (`--model-path M` or `vllm serve M`)."""
    if "--model-path" in argv:
        return argv.index("--model-path") + 1
    if argv[:2] == ["vllm", "serve"] and len(argv) > 2:
        return 2
    return None


class DockerHandle(Handle):
    def __init__(self, container, base_url: str) -> None:
        super().__init__(container.id[:12], base_url)
        self.container = container
        self._follow = asyncio.create_task(self._logs())

    async def _logs(self) -> None:
        try:
            async for chunk in self.container.log(stdout=True, stderr=True, follow=True):
                self.add_chunk(chunk)
        except Exception as e:  # the container went away under us: say so, then read its state
            self.add_line(f"[autotune] container log stream ended: {e!r}")
        self.flush_partial()
        try:
            result = await self.container.wait()
            self.exit_code = result.get("StatusCode")
            info = await self.container.show()
            state = info.get("State", {})
            if state.get("OOMKilled"):
                self.exit_reason = "OOMKilled"
            elif state.get("Error"):
                self.exit_reason = state["Error"]
        except Exception:
            pass
        self.exited.set()

    async def stop(self, grace_s: float = 10.0) -> None:
        with contextlib.suppress(Exception):
            await self.container.stop(t=int(max(1, grace_s)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._follow), 5)
        if not self._follow.done():
            self._follow.cancel()
            self.exited.set()
        for _ in range(3):
            try:
                await self.container.delete(force=True, v=True)
                return
            except Exception as e:
                if getattr(e, "status", None) == 404:
                    return
                log.warning("container not removed yet; retrying", container=self.ident, error=repr(e))
                await asyncio.sleep(1)


class DockerRuntime:
    """Engines as Docker containers on this host's Docker Engine."""

    leases_gpus_itself = False  # the lease's indices become the container's device request
    bind_host: str | None = None

    def __init__(
        self,
        *,
        name: str = "docker",
        url: str | None = None,
        image: str | None = None,
        always_simulate: bool = False,
        models_dir: str | None = None,
        hf_cache: str | None = None,
        shm_size: str = "16g",
        ipc_host: bool = True,
        binds: list[str] | None = None,
        pull: bool = True,
    ) -> None:
        self.name = name
        self.url = url
        self.image = image  # overrides image_for(spec), e.g. a locally built simulator image
        self.always_simulate = always_simulate
        self.models_dir = models_dir
        self.hf_cache = hf_cache or str(Path.home() / ".cache" / "huggingface")
        self.shm_size = parse_size(shm_size)
        self.ipc_host = ipc_host
        self.binds = list(binds or [])
        self.pull = pull
        self._docker = None

    async def client(self):
        if self._docker is None:
            import aiodocker

            self._docker = aiodocker.Docker(url=self.url)
        return self._docker

    async def available(self) -> str | None:
        """None when the engine answers; else why not (for one clear log line)."""
        try:
            d = await self.client()
            await d.version()
            return None
        except Exception as e:
            await self.close()
            return f"{type(e).__name__}: {e}"

    def container_config(self, spec: Launch) -> dict:
        simulate = spec.simulated or self.always_simulate
        argv = list(spec.argv)
        binds = list(self.binds)
        env = {**spec.env, **spec.labels}
        if spec.hf_token:
            env["HF_TOKEN"] = spec.hf_token
        i = model_arg_index(argv)
        model = spec.model or (argv[i] if i is not None else "")
        if model.startswith("/"):
            binds.append(f"{model}:{model}:ro")
        elif "/" not in model and self.models_dir and i is not None:
            binds.append(f"{self.models_dir}:{MODELS_IN_CONTAINER}:ro")
            argv[i] = f"{MODELS_IN_CONTAINER}/{model}"
            argv = served_as(argv, spec.engine, model)  # requests name the model as the task does
        elif Path(self.hf_cache).is_dir():
            binds.append(f"{self.hf_cache}:{HF_CACHE_IN_CONTAINER}")
        if simulate:
            import autotune.simulator

            binds.append(f"{Path(autotune.simulator.__file__).parent}:{SIM_MOUNT}/simulator:ro")
            env["PYTHONPATH"] = SIM_MOUNT
            env["PYTHONDONTWRITEBYTECODE"] = "1"
            argv = simulated_argv(argv, python="python3", module="simulator")
        host_config: dict = {
            "NetworkMode": "host",
            "IpcMode": "host" if self.ipc_host else "private",
            "Binds": binds,
            "Init": True,  # signals reach the engine and zombies are reaped
            "ShmSize": self.shm_size,  # applies when ipc is private; with ipc=host the engine shares the host's /dev/shm
            "AutoRemove": False,  # we read the exit code and the OOM flag before removing it
        }
        if spec.real_gpus and spec.gpu_indices:
            ids = spec.gpu_uuids if len(spec.gpu_uuids) == len(spec.gpu_indices) and all(spec.gpu_uuids) else [str(g) for g in spec.gpu_indices]
            host_config["DeviceRequests"] = [{"Driver": "nvidia", "DeviceIDs": ids, "Capabilities": [["gpu"]]}]
        else:
            # no real devices: tell the engine (and gpumon's simulated fleet) which GPUs it leased
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, spec.gpu_indices))
        return {
            "Image": self.image or spec.image,
            "Cmd": argv,
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Labels": {L_HOST: spec.host, L_EXPERIMENT: spec.key, L_INSTANCE: spec.instance, L_TASK: spec.task, "autotune.n": str(spec.n), "autotune.attempt": str(spec.attempt), L_GPUS: gpus_label(spec.gpu_indices)},
            "HostConfig": host_config,
            "AttachStdout": False,
            "AttachStderr": False,
            "Tty": False,
        }

    @staticmethod
    def container_name(spec: Launch) -> str:
        base = re.sub(r"[^A-Za-z0-9_.-]", "-", f"autotune-{spec.host}-{spec.task}-{spec.n}-{spec.attempt}")
        return base[:200]

    async def launch(self, spec: Launch) -> Handle:
        from aiodocker.exceptions import DockerError

        d = await self.client()
        config = self.container_config(spec)
        name = self.container_name(spec)
        with contextlib.suppress(DockerError):  # a leftover with the same name (a crashed earlier try)
            old = await d.containers.get(name)
            await old.delete(force=True)
        try:
            container = await d.containers.create(config, name=name)
        except DockerError as e:
            if e.status != 404 or not self.pull:
                raise
            log.info("pulling the engine image", image=config["Image"])
            await d.images.pull(config["Image"])
            container = await d.containers.create(config, name=name)
        try:
            await container.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await container.delete(force=True)
            raise
        handle = DockerHandle(container, f"http://127.0.0.1:{spec.port}")
        handle.command = list(config["Cmd"])
        return handle

    async def reap_orphans(self, host: str, keep: set[str]) -> list[str]:
        d = await self.client()
        removed = []
        for c in await d.containers.list(all=True, filters=json.dumps({"label": [f"{L_HOST}={host}"]})):
            labels = c._container.get("Labels") or {}
            if labels.get(L_EXPERIMENT) in keep:
                continue
            log.warning("removing a container no live experiment owns", container=c.id[:12], experiment=labels.get(L_EXPERIMENT))
            with contextlib.suppress(Exception):
                await c.delete(force=True, v=True)
                removed.append(c.id[:12])
        return removed

    async def engines(self, host: str) -> dict[str, list[int] | None]:
        d = await self.client()
        out: dict[str, list[int] | None] = {}
        for c in await d.containers.list(filters=json.dumps({"label": [f"{L_HOST}={host}"]})):  # running ones
            labels = c._container.get("Labels") or {}
            if key := labels.get(L_EXPERIMENT):
                out[key] = parse_gpus_label(labels.get(L_GPUS))
        return out

    async def close(self) -> None:
        if self._docker is not None:
            d, self._docker = self._docker, None
            with contextlib.suppress(Exception):
                await d.close()
