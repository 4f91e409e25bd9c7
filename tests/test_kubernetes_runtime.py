"""The Kubernetes runtime and the cluster GPU inventory against an API STAND-IN (tests/fixtures/k8s_standin.py):
no API server can run here. The stand-in's "kubelet" runs each pod's container command and args as a local
process, probes its readinessProbe for real and serves its output as the pod log, so the experiments
below really launch, become ready, get benchmarked and are torn down through the API calls the runtime makes."""

from __future__ import annotations

import pytest

from autotune.gpumon.kube import cluster_gpu_inventory
from autotune.runner.runtimes import Launch
from autotune.runner.runtimes.kubernetes import A_KEY, K_EXPERIMENT, KubernetesRuntime, label_value, resource_name
from autotune.runner.service import run as runner_run
from autotune.runner.settings import RunnerSettings
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from tests.fixtures.k8s_standin import KubeStandin, gpu_node, gpu_pod
from tests.fixtures.runner_kit import context, engines_of, log_lines, run_one, spec
from tests.helpers import Services, events_of, scheduler_and_runner, submit, task_finished

pytestmark = pytest.mark.kubernetes


def runtime(k: KubeStandin, **kw) -> KubernetesRuntime:
    return KubernetesRuntime(api_url=k.url, namespace="tuning", node="gpu-node-1", service_url="http://127.0.0.1:{port}", poll_s=0.1, **kw)


def by_flag(args: list[str]) -> dict[str, str]:
    return {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}


async def test_kubernetes_runtime_against_api_standin_runs_the_tuned_engine_and_deletes_it(settings, js):
    async with KubeStandin(image_env={"AUTOTUNE_SIM_TIME_SCALE": "50"}) as k:
        rt = runtime(k)
        ctx = context(js, "kube", runtimes={"kubernetes": rt}, real_gpus=True)
        raw = spec("kube", deployment_mode="docker", runtime_image_tag="v0.4.6.post1")
        events = await run_one(js, ctx, raw, mode="kubernetes", simulated=False, gpus=[0, 1], params={"mem-fraction-static": 0.8, "max-running-requests": 16})
        await rt.close()
        (dep,) = k.created("Deployment")
        (svc,) = k.created("Service")
        deleted = [(m, p) for m, p, _ in k.requests if m == "DELETE"]
        assert k.pods == {} and not k.objects

    assert [ev.tag_of(type(e)) for e in events] == ["experiment.assigned", "experiment.started", "experiment.ready", "experiment.progress", "experiment.completed"]
    name = dep["metadata"]["name"]
    assert events[1].runtime == "kubernetes" and events[1].handle == name and events[-1].metrics.requests == 6
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    # the named bug of the original: in Kubernetes mode the tuned flags never reached the engine
    assert c["image"] == "lmsysorg/sglang:v0.4.6.post1" and c["command"] == ["python3"]
    assert c["args"][:2] == ["-m", "sglang.launch_server"]
    flags = by_flag(c["args"])
    assert flags["--mem-fraction-static"] == "0.8" and flags["--max-running-requests"] == "16" and flags["--host"] == "0.0.0.0"
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert c["readinessProbe"]["httpGet"]["path"] == "/health" and pod["nodeSelector"] == {"kubernetes.io/hostname": "gpu-node-1"}
    labels = dep["metadata"]["labels"]
    assert labels["autotune.io/host"] == "kube" and labels["autotune.io/task"] == "kube" and labels[K_EXPERIMENT] == name
    assert dep["metadata"]["annotations"][A_KEY] == "kube/0/0" and dep["spec"]["selector"]["matchLabels"] == {K_EXPERIMENT: name}
    assert svc["spec"]["selector"] == {K_EXPERIMENT: name} and svc["spec"]["ports"][0]["targetPort"] == int(flags["--port"])
    assert ("DELETE", f"/apis/apps/v1/namespaces/tuning/deployments/{name}") in deleted
    assert ("DELETE", f"/api/v1/namespaces/tuning/services/{name}") in deleted
    lines = await log_lines(js, "kube", 0, stream="engine")
    assert any("SIMULATED sglang server" in line for line in lines)  # followed from the pod log


async def test_kubernetes_runtime_against_api_standin_reports_a_crashed_pod_with_its_log_tail(settings, js):
    async with KubeStandin() as k:
        rt = runtime(k)
        events = await run_one(js, context(js, "kc", runtimes={"kubernetes": rt}), spec("kcrash"), mode="kubernetes", params={"tp-size": 2})
        await rt.close()
        assert k.pods == {} and not k.objects
    f = events[-1]
    assert isinstance(f, ev.ExperimentFailed) and f.kind == "crashed" and "code 1" in f.message
    assert any("needs tp x pp x dp" in line for line in f.log_tail)
    assert engines_of("kc") == []


async def test_ome_inference_service_against_api_standin_carries_the_tuned_flags(settings, js):
    async with KubeStandin() as k:
        rt = runtime(k, ome_runtime="srt-llama-3-1-8b")
        raw = spec("ome", deployment_mode="ome")
        events = await run_one(js, context(js, "ome", runtimes={"kubernetes": rt}), raw, mode="kubernetes", params={"mem-fraction-static": 0.82})
        await rt.close()
        (isvc,) = k.created("InferenceService")
        assert not k.created("Deployment") and k.pods == {} and not k.objects
    assert isinstance(events[-1], ev.ExperimentCompleted)
    assert isvc["apiVersion"] == "ome.io/v1beta1" and isvc["spec"]["runtime"] == {"name": "srt-llama-3-1-8b"}
    runner = isvc["spec"]["engine"]["runner"]
    assert by_flag(runner["args"])["--mem-fraction-static"] == "0.82" and isvc["spec"]["engine"]["minReplicas"] == 1


OME_SPEC = {
    "model": {"id_or_path": "llama-3-2-1b-instruct"}, "deployment_mode": "ome", "base_runtime": "sglang-llama-small",
    "storage": {"type": "pvc", "pvc_name": "model-storage-pvc", "pvc_subpath": "meta/llama-3-2-1b-instruct", "mount_path": "/raid/models/llama-1b"},
    "clusterbasemodel_config": {"preset": "llama-3-2-1b-instruct", "labels": {"team": "perf"}},
    "clusterservingruntime_config": {"preset": "sglang-llama-small"},
}  # fmt: skip


@pytest.mark.long
async def test_ome_task_against_api_standin_gets_its_model_and_runtime_and_every_tuned_flag(settings, js):
    """The earlier tool's OME mode dropped every tuned parameter but the GPU count; here the template
    names reach the InferenceService's engine args as SGLang's flags, the claim is mounted where
    --model-path points, and the ClusterBaseModel is created while the hand-applied runtime is left alone."""
    async with KubeStandin() as k:
        applied = {"apiVersion": "ome.io/v1beta1", "kind": "ClusterServingRuntime", "metadata": {"name": "sglang-llama-small"}, "spec": {"x": 1}}
        k.objects[("ClusterServingRuntime", "", "sglang-llama-small")] = applied
        rt = runtime(k)
        params = {"tp_size": 1, "mem_frac": 0.8, "max_total_tokens": 40000, "schedule_policy": "lpm", "chunked-prefill-size": 2048}
        ctx = context(js, "ome2", runtimes={"kubernetes": rt})
        events = await run_one(js, ctx, spec("ome2", **OME_SPEC), mode="kubernetes", params=params, simulated=False)
        await rt.close()
        (cbm,) = k.created("ClusterBaseModel")
        (isvc,) = k.created("InferenceService")
        assert not k.created("ClusterServingRuntime") and k.objects[("ClusterServingRuntime", "", "sglang-llama-small")] is applied
        gets = [p for m, p, _ in k.requests if m == "GET" and ("/clusterservingruntimes/" in p or "/clusterbasemodels/" in p)]
        assert "/apis/ome.io/v1beta1/clusterservingruntimes/sglang-llama-small" in gets
        assert ("ClusterBaseModel", "", "llama-3-2-1b-instruct") in k.objects  # cluster-scoped, kept after the experiment
    assert isinstance(events[-1], ev.ExperimentCompleted), events[-1]
    assert cbm["metadata"]["name"] == "llama-3-2-1b-instruct" and cbm["metadata"]["labels"]["team"] == "perf"
    assert cbm["spec"]["storage"]["storageUri"] == "hf://meta-llama/Llama-3.2-1B-Instruct"
    assert isvc["spec"]["model"] == {"name": "llama-3-2-1b-instruct"} and isvc["spec"]["runtime"] == {"name": "sglang-llama-small"}
    eng = isvc["spec"]["engine"]
    runner = eng["runner"]
    f = by_flag(runner["args"])
    assert (f["--tp-size"], f["--mem-fraction-static"], f["--max-total-tokens"], f["--schedule-policy"], f["--chunked-prefill-size"]) == (
        "1", "0.8", "40000", "lpm", "2048")  # fmt: skip
    assert f["--model-path"] == "/raid/models/llama-1b" and f["--served-model-name"] == "llama-3-2-1b-instruct"
    assert "image" not in runner  # the runtime's image runs (no runtime_image_tag)
    assert {"name": "model-storage", "mountPath": "/raid/models/llama-1b", "readOnly": True, "subPath": "meta/llama-3-2-1b-instruct"} in runner["volumeMounts"]
    assert {"name": "model-storage", "persistentVolumeClaim": {"claimName": "model-storage-pvc", "readOnly": True}} in eng["volumes"]


async def test_kubernetes_deployment_mounts_the_tasks_claim_read_only_where_the_model_path_points(settings, js):
    async with KubeStandin() as k:
        rt = runtime(k)
        raw = spec("kpvc", deployment_mode="kubernetes", storage={"pvc_name": "models", "pvc_subpath": "llama-8b"})
        events = await run_one(js, context(js, "kpvc", runtimes={"kubernetes": rt}), raw, mode="kubernetes", params={"mem_frac": 0.7})
        await rt.close()
        (dep,) = k.created("Deployment")
    assert isinstance(events[-1], ev.ExperimentCompleted)
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    f = by_flag(c["args"])
    assert f["--model-path"] == "/mnt/models" and f["--mem-fraction-static"] == "0.7" and f["--served-model-name"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert {"name": "model-storage", "mountPath": "/mnt/models", "readOnly": True, "subPath": "llama-8b"} in c["volumeMounts"]
    assert {"name": "model-storage", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod["volumes"]


async def test_kubernetes_runtime_against_api_standin_reaps_orphans_by_label():
    async with KubeStandin() as k:
        rt = runtime(k)
        await rt.api()

        def launch(key: str, host: str) -> Launch:
            task, n, attempt = key.split("/")
            return Launch(key=key, task=task, n=int(n), attempt=int(attempt), host=host, instance="old", argv=["python3", "-c", "import time; time.sleep(300)"], port=1)

        handles = [await rt.launch(launch(key, host)) for key, host in (("o/0/0", "kh"), ("o/1/0", "kh"), ("o/2/0", "kh-other"))]
        removed = await rt.reap_orphans("kh", keep={"o/0/0"})
        assert removed == [resource_name(launch("o/1/0", "kh"))]
        left = {o["metadata"]["annotations"][A_KEY] for (kind, _, _), o in k.objects.items() if kind == "Deployment"}
        assert left == {"o/0/0", "o/2/0"}
        for h in handles:
            await h.stop(grace_s=1)
        await rt.close()
        assert not k.objects


async def test_a_runner_with_simulated_engines_on_kubernetes_against_api_standin_runs_a_task(settings, js):
    async with KubeStandin() as k:
        rs = RunnerSettings(host="kr", simulate="2xH100", time_scale=50, simulated_runtime="kubernetes", k8s_api_url=k.url, k8s_namespace="tuning",
                            k8s_service_url="http://127.0.0.1:{port}", k8s_poll_s=0.1)
        async with scheduler_and_runner(settings, rs):
            task = await submit(js, spec("kend", optimization={"max_iterations": 2}))
            final = await task_finished(js, task, timeout=90)
        assert isinstance(final, ev.TaskCompleted), final
        history = [e for _, e in await events_of(js, subj.task_all(task))]
        assert {e.runtime for e in history if isinstance(e, ev.ExperimentStarted)} == {"kubernetes"}
        for dep in k.created("Deployment"):
            assert dep["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["-m", "autotune.simulator"]
        assert not k.objects and k.pods == {}


async def test_cluster_gpu_inventory_against_api_standin():
    from kubernetes_asyncio import client

    nodes = [gpu_node("gpu-a", "NVIDIA-H100-80GB-HBM3", 8), gpu_node("gpu-b", "NVIDIA-A100-SXM4-40GB", 4, memory_mib=40960, ready=False),
             {"metadata": {"name": "cpu-1", "labels": {}}, "status": {"allocatable": {"cpu": "8"}}}]
    pods = [gpu_pod("train", "gpu-a", 4), gpu_pod("serve", "gpu-a", 1), gpu_pod("done", "gpu-a", 2, phase="Succeeded"), gpu_pod("b", "gpu-b", 1)]
    async with KubeStandin(nodes=nodes, extra_pods=pods) as k:
        cfg = client.Configuration()
        cfg.host = k.url
        async with client.ApiClient(cfg) as api:
            inv = await cluster_gpu_inventory(api)
    assert inv == [
        {"node": "gpu-a", "product": "NVIDIA-H100-80GB-HBM3", "memory_mib": 81559, "capacity": 8, "allocatable": 8, "requested": 5, "free": 3, "ready": True, "schedulable": True},
        {"node": "gpu-b", "product": "NVIDIA-A100-SXM4-40GB", "memory_mib": 40960, "capacity": 4, "allocatable": 4, "requested": 1, "free": 3, "ready": False, "schedulable": True},
    ]


def test_names_and_labels_stay_valid_for_any_task_id():
    long = "a" * 120
    name = resource_name(Launch(key=f"{long}/12/3", task=long, n=12, attempt=3, host="h", instance="i", argv=[]))
    assert len(name) <= 63 and name[0].isalpha() and name == name.lower()
    assert label_value("ok-value") == "ok-value"
    v = label_value("_bad/value_" + "x" * 80)
    assert len(v) <= 63 and v[0].isalnum() and v[-1].isalnum()


async def test_a_runner_in_a_pod_without_nvml_takes_its_gpus_from_the_node_against_api_standin(settings, js, monkeypatch):
    from tests.fixtures import nvml_standin
    from tests.helpers import wait_for

    nvml_standin.install_absent(monkeypatch)
    async with KubeStandin(nodes=[gpu_node("gpu-node-9", "NVIDIA-H100-80GB-HBM3", 4)]) as k:
        rs = RunnerSettings(host="gpu-node-9", runtimes=["kubernetes"], k8s_node="gpu-node-9", k8s_api_url=k.url, k8s_namespace="tuning")
        svc = Services()
        svc.start(lambda stop: runner_run(settings, stop=stop, runner=rs), "runner")
        try:
            reg = await wait_for(js, subj.host("gpu-node-9", "registered"), lambda e: True, timeout=20)
        finally:
            await svc.stop_all()
    assert not reg.simulated and reg.runtimes == ["kubernetes"] and reg.node == "gpu-node-9"
    assert [g.name for g in reg.gpus] == ["NVIDIA H100 80GB HBM3"] * 4 and reg.gpus[0].memory_total_mib == 81559


async def test_an_earlier_ome_task_file_runs_end_to_end_on_simulated_hosts_against_api_standin(settings, js, tmp_path):
    """The earlier tool's OME task file, every field it had (template names, storage, dataset, both OME
    configs), submitted unchanged: the stand-in API receives the ClusterBaseModel, the
    ClusterServingRuntime and InferenceServices whose engine args carry the tuned flags; the engines
    (simulated, in the stand-in's pods) receive exactly the dataset's prompts."""
    import gzip
    import json

    from tests.test_dataset_replay import JSONL, JSONL_PROMPTS, Files
    from tests.test_task_fields import OME_FILE

    record = tmp_path / "received.jsonl"
    async with Files() as srv, KubeStandin(image_env={"AUTOTUNE_SIM_RECORD_PROMPTS": str(record)}) as k:
        srv.files["/prompts.jsonl.gz"] = gzip.compress(JSONL.encode())
        raw = json.loads(OME_FILE)
        raw["benchmark"].update(dataset_url=srv.url + "/prompts.jsonl.gz", dataset_deduplicate=True, max_requests_per_iteration=3,
                                warmup_requests=0, max_time_per_iteration=1)  # fmt: skip
        raw["parameters"] = {"tp_size": [1, 2], "mem_frac": 0.8, "max_total_tokens": 60000, "schedule_policy": "lpm"}
        rs = RunnerSettings(host="omehost", simulate="2xH100", time_scale=50, simulated_runtime="kubernetes", k8s_api_url=k.url,
                            k8s_namespace="tuning", k8s_service_url="http://127.0.0.1:{port}", k8s_poll_s=0.1)  # fmt: skip
        async with scheduler_and_runner(settings, rs):
            from autotune.shared import commands

            task = (await commands.submit_task(js, commands.parse(json.dumps(raw), source="ome.json"))).task
            final = await task_finished(js, task, timeout=120)
        cbms, csrs, isvcs = k.created("ClusterBaseModel"), k.created("ClusterServingRuntime"), k.created("InferenceService")
        assert not k.pods
    assert isinstance(final, ev.TaskCompleted) and final.experiments == 2, final
    assert [c["metadata"]["name"] for c in cbms] == ["llama-3-2-1b-instruct"]  # once: it exists from then on
    assert [c["metadata"]["name"] for c in csrs] == ["sglang-llama-small"]
    assert len(isvcs) == 2
    for isvc, tp in zip(isvcs, ("1", "2"), strict=True):
        assert isvc["spec"]["runtime"] == {"name": "sglang-llama-small"} and isvc["spec"]["model"] == {"name": "llama-3-2-1b-instruct"}
        f = by_flag(isvc["spec"]["engine"]["runner"]["args"])
        assert (f["--tp-size"], f["--mem-fraction-static"], f["--max-total-tokens"], f["--schedule-policy"]) == (tp, "0.8", "60000", "lpm")
        assert f["--model-path"] == "/raid/models/meta/llama-3-2-1b-instruct"
    received = [json.loads(line)["prompt"] for line in record.read_text().splitlines()]
    assert received == JSONL_PROMPTS * 2  # each experiment replayed exactly the deduplicated prompts
    history = [e for _, e in await events_of(js, subj.task_all(task))]
    assert all(e.simulated for e in history if isinstance(e, ev.ExperimentAssigned))  # labelled: simulated hosts
