"""What an experiment's launch takes from its task besides the tuned flags: the replay prompts, and
in Kubernetes/OME mode the model's storage claim and the OME resources (docs/task-file.md).

- `storage` (a PersistentVolumeClaim): mounted read-only at `mount_path` (its `pvc_subpath` as the
  mount's subPath), and the engine's model path points there. `--served-model-name` keeps the
  model's name in the API as the task names it (vLLM answers only to its served name).
- OME: the InferenceService names the task's ClusterBaseModel (its config's name, else the model
  name) and ClusterServingRuntime (`clusterservingruntime_config`, else base_runtime when that names
  a runtime rather than an engine); both are created when absent. Without a claim, the model path is
  where the ClusterBaseModel keeps the model (`spec.storage.path`) when its config says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autotune.schemas import events as ev
from autotune.schemas.runtime import ome_runtime_name
from autotune.schemas.spec import TaskSpec
from autotune.shared import ome


@dataclass
class ClusterLaunch:
    model_path: str | None = None
    served_name: dict[str, Any] = field(default_factory=dict)  # {"served-model-name": id} when the path is not the name
    storage: dict[str, str | None] | None = None
    ome_model: str | None = None
    ome_runtime: str | None = None
    ome_resources: list[dict] = field(default_factory=list)


def cluster_launch(spec: TaskSpec) -> ClusterLaunch:
    out = ClusterLaunch()
    if spec.storage is not None:
        st = spec.storage
        out.storage = {"pvc_name": st.pvc_name, "pvc_subpath": st.pvc_subpath, "mount_path": st.mount_path}
        out.model_path = st.mount_path
    if spec.deployment_mode == "ome":
        cbm, csr = spec.clusterbasemodel_config, spec.clusterservingruntime_config
        if cbm is not None:
            out.ome_resources.append(ome.resource("ClusterBaseModel", cbm))
            out.ome_model = out.ome_resources[-1]["metadata"]["name"]
            out.model_path = out.model_path or ome.model_path(cbm)
        if csr is not None:
            out.ome_resources.append(ome.resource("ClusterServingRuntime", csr))
        out.ome_runtime = ome_runtime_name(spec)
    if out.model_path and out.model_path != spec.model_id:
        out.served_name = {"served-model-name": spec.benchmark.model_name or spec.model_id}
    return out


async def replay_prompts(js, a: ev.ExperimentAssigned, spec: TaskSpec, host: str, note=lambda _: None) -> list[str] | None:
    """The task's replay prompts from the Object Store (fetched once, by the scheduler), or None.
    Raises Failure (launch_error) when they cannot be had: no engine has started yet."""
    if spec.benchmark.dataset_url is None:
        return None
    from autotune.runner.experiment import Failure
    from autotune.shared.dataset import DatasetError
    from autotune.shared.dataset_store import get_prompts

    ref = a.dataset
    if ref is None:
        raise Failure(
            "launch_error", "the task replays benchmark.dataset_url, but its assignment names no fetched dataset (a scheduler older "
            "than this runner?)", retryable=False,
        )  # fmt: skip
    try:
        prompts = await get_prompts(js, ref.object)
    except DatasetError as e:
        raise Failure("launch_error", f"the prompts of {ref.url} cannot be read on {host}: {e}", retryable=True) from None
    note(f"replaying {len(prompts)} prompts of {ref.url} (sha256 {ref.sha256[:12]})")
    return prompts
