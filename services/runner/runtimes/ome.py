"""OME mode's cluster-scoped resources: the task's ClusterBaseModel and ClusterServingRuntime
(`ome.io/v1beta1`), made sure of before its InferenceService is created.

As the earlier tool did, each is read first (GET on the cluster-scoped object) and created only
when the API answers 404: a resource that exists, perhaps applied by hand and tuned since, is never
changed (a 409 from a concurrent create counts as existing). What a task asks for comes whole from
`shared/ome.py` (a preset or a `{name, spec}`, overrides merged, labels and annotations set), so
the runner only talks to the API. Each runtime remembers what it has made sure of, so an experiment
costs one GET per resource at most once per runner.
"""

from __future__ import annotations

from autotune.runner.runtimes.kubernetes import KubeError, call
from autotune.shared.log import get_logger
from autotune.shared.ome import GROUP, KINDS, VERSION

log = get_logger("runner")


async def ensure(rt, manifest: dict) -> bool:
    """Create `manifest` (a ClusterBaseModel or ClusterServingRuntime) unless it exists. True if created."""
    kind, name = manifest["kind"], manifest["metadata"]["name"]
    plural = KINDS[kind]
    seen: set[tuple[str, str]] = rt.__dict__.setdefault("_ome_ensured", set())
    if (kind, name) in seen:
        return False
    custom = rt.custom()
    try:
        await call(custom.get_cluster_custom_object, GROUP, VERSION, plural, name)
        log.info("OME resource exists; leaving it as it is", kind=kind, name=name)
        created = False
    except KubeError as e:
        if e.status != 404:
            raise
        try:
            await call(custom.create_cluster_custom_object, GROUP, VERSION, plural, manifest)
            log.info("OME resource created", kind=kind, name=name)
            created = True
        except KubeError as e2:
            if e2.status != 409:  # created by someone else meanwhile: it exists, which is all we need
                raise
            created = False
    seen.add((kind, name))
    return created
