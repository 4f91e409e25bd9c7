"""OME (`ome.io/v1beta1`) resources a task file can bring along: the cluster-scoped ClusterBaseModel
(which model, where OME keeps it) and ClusterServingRuntime (which engine image serves it).

A task names each as `{preset}` or `{name, spec}`, plus `overrides` (deep-merged into the spec),
`labels` and `annotations`. The runner GETs the resource and creates it only when it is absent
(`runtimes/ome.py`), as the earlier tool did: a resource someone applied by hand is never changed.

The presets are the earlier tool's, described in our own words: seven safetensors models from
HuggingFace (`storage: {storageUri: hf://<org>/<name>, path: /raid/models/<vendor>/<name>, key:
hf-token}`) and five runtimes (SGLang or vLLM images; one, two or four GPUs). Where the earlier
tool called every model `LlamaForCausalLM`, the presets here name each model's real architecture.

In OME mode `base_runtime` names a ClusterServingRuntime, not an engine; `engine_of_runtime` tells
which engine it runs (from a preset, or the image and command of a spec), so autotune knows which
flags to write.
"""

from __future__ import annotations

import copy
from typing import Any

GROUP, VERSION = "ome.io", "v1beta1"
KINDS = {"ClusterBaseModel": "clusterbasemodels", "ClusterServingRuntime": "clusterservingruntimes"}

SGLANG_IMAGE = "docker.io/lmsysorg/sglang:v0.4.8.post1-cu126"
VLLM_IMAGE = "docker.io/vllm/vllm-openai:v0.9.0.1"


def _model(vendor: str, org: str, hf_name: str, name: str, architecture: str) -> dict[str, Any]:
    return {
        "vendor": vendor,
        "version": "1.0.0",
        "disabled": False,
        "modelFormat": {"name": "safetensors", "version": "1.0.0"},
        "modelFramework": {"name": "transformers"},
        "modelArchitecture": architecture,
        "storage": {"storageUri": f"hf://{org}/{hf_name}", "path": f"/raid/models/{vendor}/{name}", "key": "hf-token"},
    }


CLUSTERBASEMODEL_PRESETS: dict[str, dict[str, Any]] = {
    "llama-3-2-1b-instruct": _model("meta", "meta-llama", "Llama-3.2-1B-Instruct", "llama-3-2-1b-instruct", "LlamaForCausalLM"),
    "llama-3-2-3b-instruct": _model("meta", "meta-llama", "Llama-3.2-3B-Instruct", "llama-3-2-3b-instruct", "LlamaForCausalLM"),
    "llama-3-1-70b-instruct": _model("meta", "meta-llama", "Llama-3.1-70B-Instruct", "llama-3-1-70b-instruct", "LlamaForCausalLM"),
    "llama-3-3-70b-instruct": _model("meta", "meta-llama", "Llama-3.3-70B-Instruct", "llama-3-3-70b-instruct", "LlamaForCausalLM"),
    "mistral-7b-instruct": _model("mistralai", "mistralai", "Mistral-7B-Instruct-v0.3", "mistral-7b-instruct", "MistralForCausalLM"),
    "mixtral-8x7b-instruct": _model("mistralai", "mistralai", "Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b-instruct", "MixtralForCausalLM"),
    "deepseek-v3": _model("deepseek-ai", "deepseek-ai", "DeepSeek-V3", "deepseek-v3", "DeepseekV3ForCausalLM"),
}


def _runtime(engine: str, architecture: str, gpus: int, flags: list[str]) -> dict[str, Any]:
    """A ClusterServingRuntime spec: the engine on port 8080, serving the model OME mounts at $MODEL_PATH."""
    if engine == "sglang":
        image = SGLANG_IMAGE
        line = ["python3 -m sglang.launch_server --host=0.0.0.0 --port=8080 --model-path=\"$MODEL_PATH\"", *flags]
    else:
        image = VLLM_IMAGE
        line = ["python3 -m vllm.entrypoints.openai.api_server --host=0.0.0.0 --port=8080 --model=\"$MODEL_PATH\"", *flags]
    return {
        "disabled": False,
        "supportedModelFormats": [
            {"modelFormat": {"name": "safetensors", "version": "1.0.0"}, "modelArchitecture": architecture, "autoSelect": False, "priority": 1}
        ],
        "protocolVersions": ["openAI"],
        "engineConfig": {
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
            "runner": {
                "name": "ome-container",
                "image": image,
                "ports": [{"containerPort": 8080, "name": "http1", "protocol": "TCP"}],
                "command": ["/bin/bash", "-lc", "--"],
                "args": [" ".join(line)],
                "volumeMounts": [{"mountPath": "/dev/shm", "name": "dshm"}],
                "resources": {"requests": {"nvidia.com/gpu": gpus}, "limits": {"nvidia.com/gpu": gpus}},
                "readinessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10, "failureThreshold": 3},
            },
        },
    }


# name -> (engine, spec)
CLUSTERSERVINGRUNTIME_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "sglang-llama-small": ("sglang", _runtime("sglang", "LlamaForCausalLM", 1, ["--tp-size=1", "--mem-frac=0.9"])),
    "sglang-llama-large": ("sglang", _runtime("sglang", "LlamaForCausalLM", 4, ["--tp-size=4", "--mem-frac=0.85"])),
    "vllm-llama-small": ("vllm", _runtime("vllm", "LlamaForCausalLM", 1, ["--tensor-parallel-size=1", "--gpu-memory-utilization=0.9"])),
    "vllm-llama-large": ("vllm", _runtime("vllm", "LlamaForCausalLM", 4, ["--tensor-parallel-size=4", "--gpu-memory-utilization=0.85"])),
    "sglang-mixtral-moe": ("sglang", _runtime("sglang", "MixtralForCausalLM", 2, ["--tp-size=2", "--mem-frac=0.85"])),
}

PRESETS = {"ClusterBaseModel": CLUSTERBASEMODEL_PRESETS, "ClusterServingRuntime": {k: v[1] for k, v in CLUSTERSERVINGRUNTIME_PRESETS.items()}}
FIELDS = {"ClusterBaseModel": "clusterbasemodel_config", "ClusterServingRuntime": "clusterservingruntime_config"}


class OmeConfigError(ValueError):
    def __init__(self, message: str, path: str) -> None:
        super().__init__(f"{path}: {message}")
        self.message, self.path = message, path


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` laid over `base`: mappings merge key by key, anything else (lists too) replaces."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resource(kind: str, cfg: Any) -> dict[str, Any]:
    """The full object a `{preset}` / `{name, spec}` config asks for (overrides merged, labels set).
    Raises OmeConfigError with the field path."""
    base = f"$.{FIELDS[kind]}"
    if cfg.preset is not None and (cfg.name is not None or cfg.spec is not None):
        raise OmeConfigError("give either `preset` or `name` with `spec`, not both", f"{base}.preset")
    if cfg.preset is not None:
        presets = PRESETS[kind]
        if cfg.preset not in presets:
            raise OmeConfigError(f"unknown {kind} preset `{cfg.preset}`; known presets: {', '.join(presets)}", f"{base}.preset")
        name, spec = cfg.preset, presets[cfg.preset]
    elif cfg.name is None or cfg.spec is None:
        missing = "name" if cfg.name is None else "spec"
        raise OmeConfigError(f"needs `preset`, or `name` and `spec` (`{missing}` is missing)", f"{base}.{missing}")
    else:
        name, spec = cfg.name, cfg.spec
    if not _dns_name(name):
        raise OmeConfigError(f"`{name}` is not a Kubernetes object name (lower case letters, digits, `-` and `.`)", f"{base}.name")
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/managed-by": "autotune", **cfg.labels}}
    if cfg.annotations:
        meta["annotations"] = dict(cfg.annotations)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": meta, "spec": deep_merge(spec, cfg.overrides)}


def _dns_name(name: str) -> bool:
    import re

    return bool(re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name))


def engine_of_runtime(name: str, spec: dict[str, Any] | None = None) -> str | None:
    """The engine a ClusterServingRuntime runs: its preset's, else the first of `sglang` / `vllm` named
    by its containers' images, else by their commands, else by its name. None when nothing says."""
    if name in CLUSTERSERVINGRUNTIME_PRESETS and spec is None:
        return CLUSTERSERVINGRUNTIME_PRESETS[name][0]
    texts: list[str] = []
    if spec:
        containers = [(spec.get("engineConfig") or {}).get("runner") or {}, *((spec.get("containers") or []) if isinstance(spec.get("containers"), list) else [])]
        texts += [str(c.get("image") or "") for c in containers if isinstance(c, dict)]
        texts += [" ".join(map(str, (c.get("command") or []) + (c.get("args") or []))) for c in containers if isinstance(c, dict)]
    texts.append(name)
    for text in texts:
        low = text.lower()
        found = [e for e in ("sglang", "vllm") if e in low]
        if len(found) == 1:
            return found[0]
    return None


def model_path(cfg: Any) -> str | None:
    """Where OME keeps the model of a ClusterBaseModel config on the node (`spec.storage.path`)."""
    try:
        storage = resource("ClusterBaseModel", cfg)["spec"].get("storage") or {}
    except OmeConfigError:
        return None
    path = storage.get("path")
    return path if isinstance(path, str) and path else None
