"""The Kubernetes runtime (kubernetes-asyncio): per experiment a Deployment + Service, or an OME
InferenceService when the task's deployment_mode is `ome`.

The tuned flags are the container's args — the original tool dropped them in Kubernetes mode, so every
"experiment" there ran the same default engine. The pod asks for `nvidia.com/gpu` (its count from the
lease), is pinned to this runner's node when the runner knows it, carries the host and experiment
labels, and is probed on `/health`. Readiness comes from the pod's Ready condition; requests go through
the Service (cluster DNS by default; `service_url` overrides it, e.g. for a port-forward). Logs are
followed from the pod. Teardown deletes everything and waits until the pods are gone, so the GPUs are
free when the next experiment starts there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
from typing import Any

from autotune.runner.runtimes import Handle, Launch, simulated_argv
from autotune.shared.log import get_logger

log = get_logger("runner")

MANAGED_BY = "app.kubernetes.io/managed-by"
K_HOST, K_TASK, K_N, K_ATTEMPT, K_INSTANCE, K_EXPERIMENT = (
    "autotune.io/host", "autotune.io/task", "autotune.io/n", "autotune.io/attempt", "autotune.io/instance", "autotune.io/experiment",
)
A_KEY = "autotune.io/experiment-key"  # the full "<task>/<n>/<attempt>" (label values cannot hold `/`)
OME_GROUP, OME_VERSION, OME_PLURAL = "ome.io", "v1beta1", "inferenceservices"
IMAGE_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"}
_LABEL_OK = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class KubeError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"Kubernetes API answered {status}: {body[:300]}")
        self.status = status


def label_value(s: str) -> str:
    """`s` if it is a valid label value, else a readable prefix plus a hash (≤ 63 characters)."""
    if len(s) <= 63 and _LABEL_OK.match(s):
        return s
    h = hashlib.sha1(s.encode()).hexdigest()[:8]
    head = re.sub(r"[^A-Za-z0-9_.-]", "-", s)[:50].strip("-_.")
    return f"{head}-{h}" if head else h


def resource_name(spec: Launch) -> str:
    """A DNS-1035 name (Services need it): lowercase, starts with a letter, ≤ 63 characters, unique per attempt."""
    h = hashlib.sha1(f"{spec.host}/{spec.key}".encode()).hexdigest()[:6]
    task = re.sub(r"[^a-z0-9-]", "-", spec.task.lower()).strip("-")[:30].strip("-")
    return f"at-{task}-{spec.n}-{spec.attempt}-{h}".replace("--", "-")


async def call(fn, *args: Any, **kw: Any) -> dict:
    """One API call, its JSON body as a dict (no model classes), non-2xx raised as KubeError."""
    r = await fn(*args, _preload_content=False, **kw)
    try:
        body = await r.read()
        if not 200 <= r.status <= 299:
            raise KubeError(r.status, body.decode("utf-8", "replace"))
        return json.loads(body) if body else {}
    finally:
        r.release()


class KubeHandle(Handle):
    """One experiment's workload: watches its pod (ready, restarted, terminated) and follows its logs."""

    def __init__(self, rt: KubernetesRuntime, name: str, base_url: str, kind: str) -> None:
        super().__init__(name, base_url)
        self.rt, self.name, self.kind = rt, name, kind
        self.pod: str | None = None
        self.pod_ready = False
        self.isvc_ready = False
        self._logs: asyncio.Task | None = None
        self._watch = asyncio.create_task(self._watch_pod())

    async def ready(self) -> bool:
        return self.isvc_ready if self.kind == "ome" else self.pod_ready

    async def _watch_pod(self) -> None:
        core = self.rt.core()
        selector = f"{K_EXPERIMENT}={self.name}"
        reported: set[str] = set()
        while True:
            try:
                if self.kind == "ome":
                    isvc = await call(self.rt.custom().get_namespaced_custom_object, OME_GROUP, OME_VERSION, self.rt.namespace, OME_PLURAL, self.name)
                    conds = (isvc.get("status") or {}).get("conditions") or []
                    self.isvc_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
                pods = (await call(core.list_namespaced_pod, self.rt.namespace, label_selector=selector)).get("items", [])
            except Exception as e:
                self.add_line(f"[autotune] cannot read the pod of {self.name}: {e}")
                await asyncio.sleep(self.rt.poll_s)
                continue
            for pod in pods:
                name = pod["metadata"]["name"]
                status = pod.get("status") or {}
                if self.pod is None:
                    self.pod = name
                    self.add_line(f"[autotune] pod {name} scheduled on {(pod.get('spec') or {}).get('nodeName') or '(pending)'}")
                if name != self.pod:
                    continue
                conds = status.get("conditions") or []
                self.pod_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
                for c in conds:
                    if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") not in reported:
                        reported.add(c.get("reason"))
                        self.add_line(f"[autotune] pod not scheduled: {c.get('reason')}: {c.get('message', '')}")
                cs = next((c for c in status.get("containerStatuses") or [] if c.get("name") in ("engine", "ome-container")), None)
                if cs is None and status.get("containerStatuses"):
                    cs = status["containerStatuses"][0]
                if cs is None:
                    continue
                state = cs.get("state") or {}
                if "running" in state and self._logs is None:
                    self._logs = asyncio.create_task(self._follow(name, cs.get("name", "engine")))
                waiting = (state.get("waiting") or {}).get("reason")
                terminated = state.get("terminated") or (cs.get("lastState") or {}).get("terminated")
                if waiting in IMAGE_ERRORS:
                    self.add_line(f"[autotune] the engine container cannot start: {waiting}: {(state.get('waiting') or {}).get('message', '')}")
                    return self._exit(None, waiting)
                if terminated or cs.get("restartCount", 0) > 0 or status.get("phase") in ("Failed", "Succeeded"):
                    terminated = terminated or {}
                    if self._logs is not None:  # its last lines first
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(asyncio.shield(self._logs), 5)
                    return self._exit(terminated.get("exitCode"), terminated.get("reason", ""))
            await asyncio.sleep(self.rt.poll_s)

    def _exit(self, code: int | None, reason: str) -> None:
        self.flush_partial()
        self.exit_code, self.exit_reason = code, reason or ""
        self.exited.set()

    async def _follow(self, pod: str, container: str) -> None:
        import aiohttp

        try:
            r = await self.rt.core().read_namespaced_pod_log(
                pod, self.rt.namespace, container=container, follow=True, _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
            )
            try:
                async for raw in r.content:
                    self.add_line(raw.decode("utf-8", "replace").rstrip("\r\n"))
            finally:
                r.release()
        except Exception as e:
            self.add_line(f"[autotune] pod log stream ended: {e!r}")

    async def stop(self, grace_s: float = 10.0) -> None:
        await self.rt.delete_workload(self.name, self.kind)
        selector = f"{K_EXPERIMENT}={self.name}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s + 30
        while loop.time() < deadline:  # the GPUs are free only once the pod is gone
            try:
                if not (await call(self.rt.core().list_namespaced_pod, self.rt.namespace, label_selector=selector)).get("items"):
                    break
            except Exception:
                break
            await asyncio.sleep(self.rt.poll_s)
        else:
            log.warning("pod still terminating after teardown", workload=self.name)
        for t in (self._watch, self._logs):
            if t is not None and not t.done():
                t.cancel()
        await asyncio.gather(*(t for t in (self._watch, self._logs) if t is not None), return_exceptions=True)
        self.flush_partial()
        self.exited.set()


class KubernetesRuntime:
    """Engines as Kubernetes workloads in one namespace, pinned to this runner's node when it has one."""

    name = "kubernetes"
    bind_host: str | None = "0.0.0.0"  # the pod's own network namespace: reachable through the Service
    leases_gpus_itself = True  # the device plugin allocates `nvidia.com/gpu`; the lease is a count here

    def __init__(
        self,
        *,
        namespace: str = "autotune",
        node: str | None = None,
        api_url: str | None = None,
        kubeconfig: str | None = None,
        image: str | None = None,
        service_url: str | None = None,
        ome_runtime: str | None = None,
        shm_size: str = "16Gi",
        models_pvc: str | None = None,
        hf_secret: str | None = None,
        simulator_image: str | None = None,
        poll_s: float = 1.0,
        always_simulate: bool = False,
    ) -> None:
        self.namespace, self.node = namespace, node
        self.api_url, self.kubeconfig = api_url, kubeconfig
        self.image = image
        self.service_url = service_url  # e.g. "http://{service}.{namespace}.svc:{port}" or "http://127.0.0.1:{port}"
        self.ome_runtime = ome_runtime
        self.shm_size = shm_size
        self.models_pvc = models_pvc
        self.hf_secret = hf_secret
        # a simulated engine runs `python3 -m autotune.simulator`: an image with autotune installed (the runner's own)
        self.simulator_image = simulator_image or os.environ.get("AUTOTUNE_IMAGE")
        self.poll_s = poll_s
        self.always_simulate = always_simulate
        self._api = None

    async def api(self):
        if self._api is None:
            from kubernetes_asyncio import client, config

            cfg = client.Configuration()
            if self.api_url:
                cfg.host = self.api_url
            else:
                try:
                    config.load_incluster_config(client_configuration=cfg)
                except config.ConfigException:
                    await config.load_kube_config(config_file=self.kubeconfig, client_configuration=cfg)
            self._api = client.ApiClient(cfg)
        return self._api

    def core(self):
        from kubernetes_asyncio import client

        return client.CoreV1Api(self._api)

    def apps(self):
        from kubernetes_asyncio import client

        return client.AppsV1Api(self._api)

    def custom(self):
        from kubernetes_asyncio import client

        return client.CustomObjectsApi(self._api)

    async def available(self) -> str | None:
        try:
            await self.api()
            await call(self.core().list_namespaced_pod, self.namespace, limit=1)
            return None
        except Exception as e:
            await self.close()
            return f"{type(e).__name__}: {e}"

    # --- manifests ---------------------------------------------------------------------------------

    def labels(self, spec: Launch, name: str) -> dict[str, str]:
        return {
            MANAGED_BY: "autotune", K_HOST: label_value(spec.host), K_TASK: label_value(spec.task), K_N: str(spec.n),
            K_ATTEMPT: str(spec.attempt), K_INSTANCE: label_value(spec.instance), K_EXPERIMENT: name,
        }

    def command(self, spec: Launch) -> list[str]:
        simulate = spec.simulated or self.always_simulate
        return simulated_argv(spec.argv, python="python3", module="autotune.simulator") if simulate else list(spec.argv)

    def container(self, spec: Launch, name: str) -> dict:
        simulate = spec.simulated or self.always_simulate
        argv = self.command(spec)
        env = [{"name": k, "value": v} for k, v in {**spec.env, **spec.labels}.items()]
        if spec.hf_token:
            env.append({"name": "HF_TOKEN", "value": spec.hf_token})
        elif self.hf_secret:
            env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": self.hf_secret, "key": "token", "optional": True}}})
        c: dict = {
            "name": "engine",
            "image": self.image or (self.simulator_image if simulate else None) or spec.image,
            "command": argv[:1],
            "args": argv[1:],  # the tuned flags, as the engine reads them
            "env": env,
            "ports": [{"name": "http", "containerPort": spec.port}],
            "readinessProbe": {"httpGet": {"path": "/health", "port": spec.port}, "periodSeconds": 2, "failureThreshold": 3},
            "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        }
        if not simulate and spec.gpu_indices:
            c["resources"] = {"limits": {"nvidia.com/gpu": str(len(spec.gpu_indices))}}
        if self.models_pvc:
            c["volumeMounts"].append({"name": "models", "mountPath": "/models", "readOnly": True})
        if spec.storage:  # the task's own claim: read-only, its subPath at mount_path, where --model-path points
            mount = {"name": "model-storage", "mountPath": spec.storage["mount_path"], "readOnly": True}
            if spec.storage.get("pvc_subpath"):
                mount["subPath"] = spec.storage["pvc_subpath"]
            c["volumeMounts"].append(mount)
        return c

    def volumes(self, spec: Launch) -> list[dict]:
        volumes: list[dict] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": self.shm_size}}]
        if self.models_pvc:
            volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": self.models_pvc, "readOnly": True}})
        if spec.storage:
            volumes.append({"name": "model-storage", "persistentVolumeClaim": {"claimName": spec.storage["pvc_name"], "readOnly": True}})
        return volumes

    def pod_spec(self, spec: Launch, name: str) -> dict:
        volumes = self.volumes(spec)
        pod: dict = {
            "containers": [self.container(spec, name)],
            "volumes": volumes,
            "terminationGracePeriodSeconds": 10,
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        }
        if self.node:
            pod["nodeSelector"] = {"kubernetes.io/hostname": self.node}
        return pod

    def deployment(self, spec: Launch, name: str) -> dict:
        labels = self.labels(spec, name)
        meta = {"name": name, "namespace": self.namespace, "labels": labels, "annotations": {A_KEY: spec.key}}
        return {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {K_EXPERIMENT: name}},
                "strategy": {"type": "Recreate"},
                "template": {"metadata": {"labels": labels, "annotations": {A_KEY: spec.key}}, "spec": self.pod_spec(spec, name)},
            },
        }

    def service(self, spec: Launch, name: str) -> dict:
        return {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": self.namespace, "labels": self.labels(spec, name), "annotations": {A_KEY: spec.key}},
            "spec": {"type": "ClusterIP", "selector": {K_EXPERIMENT: name}, "ports": [{"name": "http", "port": spec.port, "targetPort": spec.port}]},
        }

    def inference_service(self, spec: Launch, name: str) -> dict:
        """OME: the engine component runs our container (tuned args, GPUs, the task's claim); OME makes the
        pods and Service. It names the task's ClusterBaseModel and ClusterServingRuntime; the runtime's
        image runs unless the task pinned one (runtime_image_tag) or no runtime is named."""
        labels = self.labels(spec, name)
        c = self.container(spec, name)
        c["name"] = "ome-container"
        runtime = spec.ome_runtime or self.ome_runtime
        if runtime and not spec.image_pinned and not (spec.simulated or self.always_simulate or self.image):
            c.pop("image", None)
        # the volumes its mounts name (OME merges them with the runtime's by name)
        engine: dict = {"minReplicas": 1, "maxReplicas": 1, "labels": labels, "runner": c, "volumes": self.volumes(spec)}
        body: dict = {
            "apiVersion": f"{OME_GROUP}/{OME_VERSION}", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels, "annotations": {A_KEY: spec.key}},
            "spec": {"model": {"name": spec.ome_model or spec.model.rsplit("/", 1)[-1].lower()}, "engine": engine},
        }
        if runtime:
            body["spec"]["runtime"] = {"name": runtime}
        return body

    def url_for(self, name: str, port: int) -> str:
        template = self.service_url or "http://{service}.{namespace}.svc:{port}"
        return template.format(service=name, namespace=self.namespace, port=port)

    # --- lifecycle ---------------------------------------------------------------------------------

    async def launch(self, spec: Launch) -> Handle:
        await self.api()
        name = resource_name(spec)
        await self.delete_workload(name, "ome" if spec.ome else "deployment")  # a leftover of a crashed earlier try
        if spec.ome:
            from autotune.runner.runtimes.ome import ensure

            for manifest in spec.ome_resources:  # the task's ClusterBaseModel / ClusterServingRuntime, when absent
                await ensure(self, manifest)
            await call(self.custom().create_namespaced_custom_object, OME_GROUP, OME_VERSION, self.namespace, OME_PLURAL, self.inference_service(spec, name))
            handle = KubeHandle(self, name, self.url_for(name, spec.port), "ome")
            handle.command = self.command(spec)
            return handle
        try:
            await call(self.apps().create_namespaced_deployment, self.namespace, self.deployment(spec, name))
            await call(self.core().create_namespaced_service, self.namespace, self.service(spec, name))
        except BaseException:
            await self.delete_workload(name, "deployment")
            raise
        handle = KubeHandle(self, name, self.url_for(name, spec.port), "deployment")
        handle.command = self.command(spec)
        return handle

    async def delete_workload(self, name: str, kind: str) -> None:
        if kind == "ome":
            deletes = [(self.custom().delete_namespaced_custom_object, (OME_GROUP, OME_VERSION, self.namespace, OME_PLURAL, name))]
        else:
            deletes = [
                (self.apps().delete_namespaced_deployment, (name, self.namespace)),
                (self.core().delete_namespaced_service, (name, self.namespace)),
            ]
        for fn, args in deletes:
            try:
                await call(fn, *args, propagation_policy="Background", grace_period_seconds=10)
            except KubeError as e:
                if e.status != 404:
                    log.warning("Kubernetes object not deleted", name=name, error=str(e))
            except Exception as e:
                log.warning("Kubernetes object not deleted", name=name, error=repr(e))

    async def reap_orphans(self, host: str, keep: set[str]) -> list[str]:
        removed: list[str] = []
        done: set[tuple[str, str]] = set()
        for kind, name, key in await self._workloads(host):
            if key in keep or (kind, name) in done:  # a Deployment and its Service share the name: one delete
                continue
            done.add((kind, name))
            log.warning("removing a Kubernetes workload no live experiment owns", name=name, experiment=key)
            await self.delete_workload(name, kind)
            removed.append(name)
        return sorted(removed)

    async def engines(self, host: str) -> dict[str, list[int] | None]:
        # the device plugin picked the GPUs: which ones, this runner cannot tell
        return {key: None for _, _, key in await self._workloads(host) if key}

    async def _workloads(self, host: str) -> list[tuple[str, str, str]]:
        """(kind, name, experiment key) of every workload labelled with `host`."""
        await self.api()
        selector = f"{K_HOST}={label_value(host)}"
        found: list[tuple[str, str, str]] = []
        for kind, fn, args in (
            ("deployment", self.apps().list_namespaced_deployment, (self.namespace,)),
            ("deployment", self.core().list_namespaced_service, (self.namespace,)),
            ("ome", self.custom().list_namespaced_custom_object, (OME_GROUP, OME_VERSION, self.namespace, OME_PLURAL)),
        ):
            try:
                items = (await call(fn, *args, label_selector=selector)).get("items", [])
            except KubeError as e:
                if e.status != 404:  # 404: OME is not installed
                    log.warning("cannot list Kubernetes objects", error=str(e))
                continue
            for it in items:
                meta = it.get("metadata") or {}
                found.append((kind, meta.get("name", ""), (meta.get("annotations") or {}).get(A_KEY, "")))
        return found

    async def close(self) -> None:
        if self._api is not None:
            api, self._api = self._api, None
            with contextlib.suppress(Exception):
                await api.close()


async def node_gpus(api_client, node: str) -> tuple[int, str, float]:
    """(allocatable nvidia.com/gpu, product, memory MiB) of one node, from the NVIDIA GPU feature discovery labels."""
    from kubernetes_asyncio import client

    n = await call(client.CoreV1Api(api_client).read_node, node)
    labels = (n.get("metadata") or {}).get("labels") or {}
    count = int(((n.get("status") or {}).get("allocatable") or {}).get("nvidia.com/gpu", 0) or 0)
    return count, labels.get("nvidia.com/gpu.product", ""), float(labels.get("nvidia.com/gpu.memory", 0) or 0)
