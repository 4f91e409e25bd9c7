"""How a task names what runs its experiments: the engine (base_runtime, or in OME mode the
ClusterServingRuntime it names and what that runs), the storage the model comes from, and the OME
resources it brings. Validation and inference for schemas/spec.py (docs/task-file.md).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from autotune.schemas.spec import CLUSTER_MODES, ENGINES, SpecError

if TYPE_CHECKING:
    from autotune.schemas.spec import TaskSpec


def infer_engine(spec: TaskSpec) -> str | None:
    """sglang or vllm: `runtime_engine` when given; else what `base_runtime` starts with; in OME mode
    (where base_runtime names a ClusterServingRuntime) what that runtime runs, from its preset or the
    image and command of `clusterservingruntime_config`. None when nothing tells."""
    if spec.runtime_engine is not None:
        return spec.runtime_engine
    rt = spec.base_runtime.lower()
    for engine in ENGINES:
        if rt.startswith(engine):
            return engine
    if spec.deployment_mode != "ome":
        return None
    return runtime_config_engine(spec) or _ome().engine_of_runtime(spec.base_runtime)


def engine_of_recorded(raw: dict) -> str:
    """The engine of a recorded spec (an event's plain JSON), without validating it again; for views."""
    import msgspec

    from autotune.schemas.spec import TaskSpec

    try:
        return infer_engine(msgspec.convert(raw, TaskSpec, strict=False)) or "sglang"
    except (msgspec.ValidationError, TypeError, ValueError):
        return "vllm" if str(raw.get("base_runtime") or "").lower().startswith("vllm") else "sglang"


def runtime_config_engine(spec: TaskSpec) -> str | None:
    """The engine `clusterservingruntime_config` runs (its preset, or its spec's image and command)."""
    csr = spec.clusterservingruntime_config
    if csr is None:
        return None
    ome = _ome()
    try:
        obj = ome.resource("ClusterServingRuntime", csr)
    except ome.OmeConfigError:
        return None
    plain_preset = csr.preset is not None and not csr.overrides
    return ome.engine_of_runtime(obj["metadata"]["name"], None if plain_preset else obj["spec"])


def ome_runtime_name(spec: TaskSpec) -> str | None:
    """The ClusterServingRuntime an OME task's InferenceServices name: its clusterservingruntime_config's,
    else base_runtime unless that is just an engine word (then the runner's configured default)."""
    csr = spec.clusterservingruntime_config
    if csr is not None:
        return csr.preset or csr.name
    return None if spec.base_runtime.lower() in ENGINES else spec.base_runtime


def _ome():
    from autotune.shared import ome

    return ome


def validate_runtime(spec: TaskSpec) -> None:
    """base_runtime and runtime_engine, storage, and the OME resources (docs/task-file.md)."""
    from autotune.shared import ome

    mode = spec.deployment_mode
    rt = spec.base_runtime.lower()
    named = next((e for e in ENGINES if rt.startswith(e)), None)
    if named and spec.runtime_engine and named != spec.runtime_engine:
        raise SpecError(f"base_runtime `{spec.base_runtime}` is {named}, but runtime_engine says {spec.runtime_engine}", "$.runtime_engine")
    if mode != "ome" and named is None and spec.runtime_engine is None:
        raise SpecError(
            f"`{spec.base_runtime}` is not an engine; use sglang or vllm (only in deployment_mode ome does base_runtime name a "
            "ClusterServingRuntime)",
            "$.base_runtime",
        )
    if not spec.base_runtime.strip():
        raise SpecError("must name an engine (sglang or vllm) or, in OME mode, a ClusterServingRuntime", "$.base_runtime")
    for field, kind in (("clusterbasemodel_config", "ClusterBaseModel"), ("clusterservingruntime_config", "ClusterServingRuntime")):
        cfg = getattr(spec, field)
        if cfg is None:
            continue
        if mode != "ome":
            raise SpecError(f"a {kind} is used in deployment_mode ome only (this task's is {mode}); remove {field} or set deployment_mode: ome", f"$.{field}")
        try:
            ome.resource(kind, cfg)
        except ome.OmeConfigError as e:
            raise SpecError(e.message, e.path) from None
    from_config = runtime_config_engine(spec)
    if named and from_config and named != from_config:
        raise SpecError(
            f"base_runtime `{spec.base_runtime}` is {named}, but the ClusterServingRuntime of clusterservingruntime_config runs {from_config}",
            "$.clusterservingruntime_config",
        )
    if mode == "ome" and infer_engine(spec) is None:
        raise SpecError(
            f"cannot tell which engine the ClusterServingRuntime `{spec.base_runtime}` runs (it is not a preset: "
            f"{', '.join(ome.CLUSTERSERVINGRUNTIME_PRESETS)}); set `runtime_engine: sglang` or `runtime_engine: vllm`, "
            "or describe the runtime in clusterservingruntime_config (name and spec with its image)",
            "$.base_runtime",
        )
    if spec.storage is not None:
        st = spec.storage
        if st.type != "pvc":
            raise SpecError(f"storage type `{st.type}` is not supported; the one type is `pvc` (a PersistentVolumeClaim)", "$.storage.type")
        if mode not in CLUSTER_MODES:
            raise SpecError(
                f"storage mounts a PersistentVolumeClaim, which only deployment_mode kubernetes or ome can do (this task's is {mode}); "
                "in docker or local mode put the model on the host and give its path in model.id_or_path "
                "(a rehearsal of a kubernetes/ome task with --simulate is fine)",
                "$.storage",
            )
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", st.pvc_name):
            raise SpecError(f"`{st.pvc_name}` is not a PersistentVolumeClaim name (lower case letters, digits, `-` and `.`)", "$.storage.pvc_name")
        if st.pvc_subpath is not None and (st.pvc_subpath.startswith("/") or ".." in st.pvc_subpath.split("/") or not st.pvc_subpath.strip()):
            raise SpecError(f"`{st.pvc_subpath}` must be a relative path inside the claim (no leading `/`, no `..`)", "$.storage.pvc_subpath")
        if not st.mount_path.startswith("/") or st.mount_path.rstrip("/") in ("", "/dev", "/dev/shm", "/proc", "/sys"):
            raise SpecError(f"`{st.mount_path}` must be an absolute path in the engine's container (not / or a system directory)", "$.storage.mount_path")
