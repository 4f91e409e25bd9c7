"""A tuned configuration as something to run: the engine command line, a `docker run` line, or a
Kubernetes manifest (Deployment + Service). Pure functions of (task spec, parameters)."""

from __future__ import annotations

import re
import shlex
from typing import Any

import yaml

from autotune.schemas.spec import SpecError, TaskSpec, spec_from_obj
from autotune.shared.expand import display_command, engine_command, gpus_for, image_for

FORMATS = ("cmd", "docker", "k8s")
DEFAULT_PORT = {"sglang": 30000, "vllm": 8000}
SHM_SIZE = "16g"


def spec_of(spec: dict[str, Any]) -> TaskSpec | None:
    """The typed spec of a recorded one (None if it no longer validates, e.g. a hand-made event)."""
    try:
        return spec_from_obj(dict(spec))
    except (SpecError, TypeError, ValueError):
        return None


def port_for(spec: TaskSpec, port: int | None = None) -> int:
    return port or DEFAULT_PORT[spec.engine]


def command_argv(spec: TaskSpec, params: dict[str, Any], *, port: int | None = None) -> list[str]:
    return engine_command(spec, params, port=port_for(spec, port))


def served_argv(spec: TaskSpec, params: dict[str, Any], *, port: int | None = None) -> list[str]:
    """The engine's command line as its experiments ran it: a storage task reads the model from its claim,
    mounted at `mount_path`, under the model's name."""
    st = spec.storage
    if st is None:
        return command_argv(spec, params, port=port)
    served = {"served-model-name": spec.benchmark.model_name or spec.model_id}
    return engine_command(spec, {**served, **params}, port=port_for(spec, port), model_path=st.mount_path)


def storage_note(spec: TaskSpec) -> str | None:
    """Where a storage task's model comes from, for the formats that cannot mount a claim themselves."""
    st = spec.storage
    if st is None:
        return None
    where = f"{st.pvc_name}:{st.pvc_subpath}" if st.pvc_subpath else st.pvc_name
    return f"the model is read from PersistentVolumeClaim {where}, mounted at {st.mount_path} (`--format k8s` mounts it)"


def command_line(spec_dict: dict[str, Any], params: dict[str, Any], *, port: int | None = None) -> str | None:
    spec = spec_of(spec_dict)
    return display_command(command_argv(spec, params, port=port)) if spec else None


def _split_entrypoint(spec: TaskSpec, argv: list[str]) -> tuple[list[str], list[str]]:
    """(command, args): the program part and the flags, as a container wants them."""
    if spec.engine == "vllm":  # `vllm serve MODEL ...`
        return argv[:2], argv[2:]
    return argv[:3], argv[3:]  # `python3 -m sglang.launch_server ...`


def docker_run(spec: TaskSpec, params: dict[str, Any], *, port: int | None = None) -> str:
    p = port_for(spec, port)
    argv = command_argv(spec, params, port=p)
    gpus = gpus_for(params)
    head = [
        "docker", "run", "--rm", "-d", "--name", container_name(spec.task_id),
        "--gpus", str(gpus), "--shm-size", SHM_SIZE, "--ipc=host", "-p", f"{p}:{p}",
        "-v", "$HOME/.cache/huggingface:/root/.cache/huggingface",
    ]  # fmt: skip
    if not isinstance(spec.model, str) and spec.model.hf_token:
        head += ["-e", "HF_TOKEN"]  # passed from the caller's environment, never written here
    command, args = _split_entrypoint(spec, argv)
    if spec.engine == "vllm":  # the image's entrypoint is the OpenAI server; run `vllm serve` explicitly
        head += ["--entrypoint", command[0]]
        tail = [image_for(spec), *command[1:], *args]
    else:
        tail = [image_for(spec), *command, *args]
    line = shlex.join(head + tail)
    return line.replace("'$HOME/.cache/huggingface:/root/.cache/huggingface'", "$HOME/.cache/huggingface:/root/.cache/huggingface")


def container_name(task: str) -> str:
    """A DNS-1123 label (Kubernetes object names, container names): lower case, digits, `-`, ≤ 63."""
    name = re.sub(r"[^a-z0-9-]+", "-", task.lower()).strip("-")
    return (f"autotune-{name}" if name else "autotune")[:63].rstrip("-")


def kubernetes(spec: TaskSpec, params: dict[str, Any], *, port: int | None = None, note: str | None = None) -> str:
    p = port_for(spec, port)
    st = spec.storage  # its claim, read-only at mount_path, where the model path points (as its experiments ran)
    argv = served_argv(spec, params, port=p)
    command, args = _split_entrypoint(spec, argv)
    gpus = gpus_for(params)
    name = container_name(spec.task_id)
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "autotune"}
    container: dict[str, Any] = {
        "name": spec.engine,
        "image": image_for(spec),
        "command": command,
        "args": args,
        "ports": [{"name": "http", "containerPort": p}],
        "resources": {"limits": {"nvidia.com/gpu": gpus}, "requests": {"nvidia.com/gpu": gpus}},
        "readinessProbe": {"httpGet": {"path": "/health", "port": p}, "periodSeconds": 10, "failureThreshold": 60},
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
    }
    if not isinstance(spec.model, str) and spec.model.hf_token:
        container["env"] = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token", "optional": True}}}]
    volumes: list[dict[str, Any]] = [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]
    if st is not None:
        mount = {"name": "model-storage", "mountPath": st.mount_path, "readOnly": True, **({"subPath": st.pvc_subpath} if st.pvc_subpath else {})}
        container["volumeMounts"].append(mount)
        volumes.append({"name": "model-storage", "persistentVolumeClaim": {"claimName": st.pvc_name, "readOnly": True}})
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container], "volumes": volumes},
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"selector": {"app.kubernetes.io/name": name}, "ports": [{"name": "http", "port": p, "targetPort": p}]},
    }
    head = f"# {spec.engine} for {spec.model_id}, tuned by autotune (task {spec.task_id})\n"
    if note:
        head += f"# {note}\n"
    return head + yaml.dump_all([deployment, service], Dumper=_Plain, sort_keys=False, explicit_start=True)


class _Plain(yaml.SafeDumper):
    """No `&id001` anchors for the labels used twice: a manifest people read and edit."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(fmt: str, spec: TaskSpec, params: dict[str, Any], *, port: int | None = None, note: str | None = None) -> str:
    if fmt == "cmd":
        return display_command(served_argv(spec, params, port=port))
    if fmt == "docker":
        return docker_run(spec, params, port=port)
    if fmt == "k8s":
        return kubernetes(spec, params, port=port, note=note)
    raise ValueError(f"unknown format `{fmt}`; one of {', '.join(FORMATS)}")
