"""The cluster's GPUs, from the Kubernetes API: per GPU node, its product and how many `nvidia.com/gpu`
are allocatable and requested by running pods. For the API's "cluster GPU summary".

The product and memory come from the labels NVIDIA's GPU feature discovery puts on nodes
(`nvidia.com/gpu.product`, `nvidia.com/gpu.memory`, `nvidia.com/gpu.count`).
"""

from __future__ import annotations

from autotune.runner.runtimes.kubernetes import call

GPU = "nvidia.com/gpu"


def _count(v: object) -> int:
    try:
        return int(str(v))
    except (TypeError, ValueError):
        return 0


async def cluster_gpu_inventory(api_client) -> list[dict]:
    """[{node, product, memory_mib, allocatable, capacity, requested, free, ready, schedulable}] for nodes with GPUs, by node name.

    `requested` sums the GPU requests (or limits) of the pods on the node that are not finished."""
    from kubernetes_asyncio import client

    core = client.CoreV1Api(api_client)
    nodes = (await call(core.list_node)).get("items", [])
    requested: dict[str, int] = {}
    pods = (await call(core.list_pod_for_all_namespaces, field_selector="status.phase!=Succeeded,status.phase!=Failed")).get("items", [])
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for c in (pod.get("spec") or {}).get("containers") or []:
            res = c.get("resources") or {}
            n = _count((res.get("requests") or {}).get(GPU) or (res.get("limits") or {}).get(GPU))
            if n:
                requested[node] = requested.get(node, 0) + n
    out = []
    for n in nodes:
        meta, status = n.get("metadata") or {}, n.get("status") or {}
        labels = meta.get("labels") or {}
        allocatable = _count((status.get("allocatable") or {}).get(GPU))
        capacity = _count((status.get("capacity") or {}).get(GPU))
        if not (allocatable or capacity or labels.get("nvidia.com/gpu.product")):
            continue
        name = meta.get("name", "")
        used = requested.get(name, 0)
        out.append(
            {
                "node": name,
                "product": labels.get("nvidia.com/gpu.product", ""),
                "memory_mib": _count(labels.get("nvidia.com/gpu.memory")),
                "capacity": capacity,
                "allocatable": allocatable,
                "requested": used,
                "free": max(0, allocatable - used),
                "ready": any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []),
                "schedulable": not (n.get("spec") or {}).get("unschedulable", False),
            }
        )
    return sorted(out, key=lambda r: r["node"])


async def inventory_from_settings(api_url: str | None = None, kubeconfig: str | None = None) -> list[dict]:
    """The inventory with a client from in-cluster config, else kubeconfig (or an explicit API URL)."""
    from kubernetes_asyncio import client, config

    cfg = client.Configuration()
    if api_url:
        cfg.host = api_url
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    async with client.ApiClient(cfg) as api:
        return await cluster_gpu_inventory(api)
