"""The earlier tool's task-file fields that autotune used to refuse: benchmark.dataset_url /
dataset_deduplicate, storage, clusterbasemodel_config / clusterservingruntime_config, OME's
base_runtime naming a ClusterServingRuntime, and the template parameter names (docs/task-file.md)."""

from __future__ import annotations

import pytest

from autotune.schemas.runtime import ome_runtime_name
from autotune.schemas.spec import SpecError, parse_spec, spec_from_obj
from autotune.shared import ome
from autotune.shared.expand import engine_command, experiment_space, gpus_for

OME_FILE = """{
  "task_name": "ome-llama",
  "model": {"id_or_path": "llama-3-2-1b-instruct", "namespace": "autotuner"},
  "base_runtime": "sglang-llama-small",
  "deployment_mode": "ome",
  "parameters": {"tp_size": [1, 2], "mem_frac": [0.8, 0.9], "max_total_tokens": 65536, "schedule_policy": ["lpm", "fcfs"]},
  "optimization": {"strategy": "grid_search", "objective": "minimize_latency", "max_iterations": 4},
  "benchmark": {"task": "text-to-text", "model_name": "llama-3-2-1b-instruct", "traffic_scenarios": ["D(100,100)"],
                "num_concurrency": [1], "dataset_url": "https://example.com/prompts.csv.gz", "dataset_deduplicate": false},
  "storage": {"type": "pvc", "pvc_name": "model-storage-pvc", "pvc_subpath": "meta/llama-3-2-1b-instruct",
              "mount_path": "/raid/models/meta/llama-3-2-1b-instruct"},
  "clusterbasemodel_config": {"preset": "llama-3-2-1b-instruct", "overrides": {"storage": {"key": "my-hf-token"}}, "labels": {"team": "perf"}},
  "clusterservingruntime_config": {"preset": "sglang-llama-small", "annotations": {"owner": "perf"}}
}"""


def make(**fields):
    return spec_from_obj({"task_name": "t", "model": "meta-llama/Llama-3.2-1B-Instruct", **fields})


def refusal(**fields) -> SpecError:
    with pytest.raises(SpecError) as info:
        make(**fields)
    return info.value


def flags(argv: list[str]) -> dict[str, str]:
    return {a: argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else "" for i, a in enumerate(argv) if a.startswith("--")}


def test_an_earlier_ome_task_file_with_every_field_is_accepted_unchanged():
    spec = parse_spec(OME_FILE, source="ome.json")
    assert spec.engine == "sglang"  # from the preset that base_runtime names
    assert spec.benchmark.dataset_url == "https://example.com/prompts.csv.gz" and spec.benchmark.dataset_deduplicate is False
    assert spec.storage and spec.storage.pvc_name == "model-storage-pvc" and spec.storage.pvc_subpath == "meta/llama-3-2-1b-instruct"
    assert ome_runtime_name(spec) == "sglang-llama-small"
    cbm = ome.resource("ClusterBaseModel", spec.clusterbasemodel_config)
    assert cbm["spec"]["storage"] == {"storageUri": "hf://meta-llama/Llama-3.2-1B-Instruct", "path": "/raid/models/meta/llama-3-2-1b-instruct", "key": "my-hf-token"}
    assert cbm["metadata"]["labels"]["team"] == "perf" and cbm["kind"] == "ClusterBaseModel" and cbm["apiVersion"] == "ome.io/v1beta1"
    csr = ome.resource("ClusterServingRuntime", spec.clusterservingruntime_config)
    assert csr["metadata"]["annotations"] == {"owner": "perf"} and "lmsysorg/sglang" in csr["spec"]["engineConfig"]["runner"]["image"]
    assert experiment_space(spec).size == 8
    assert spec.storage.mount_path == "/raid/models/meta/llama-3-2-1b-instruct"


def test_template_names_become_each_engines_flags():
    params = {"tp_size": 2, "mem_frac": 0.85, "max_total_tokens": 65536, "schedule_policy": "fcfs", "chunked-prefill-size": 4096}
    sg = flags(engine_command(make(), params, port=1))
    assert (sg["--tp-size"], sg["--mem-fraction-static"], sg["--max-total-tokens"], sg["--schedule-policy"]) == ("2", "0.85", "65536", "fcfs")
    assert sg["--chunked-prefill-size"] == "4096" and "--tp_size" not in sg and "--mem_frac" not in sg
    vl = flags(engine_command(make(base_runtime="vllm"), {**params, "block-size": 32}, port=1))
    assert (vl["--tensor-parallel-size"], vl["--gpu-memory-utilization"], vl["--scheduling-policy"]) == ("2", "0.85", "fcfs")
    assert vl["--num-gpu-blocks-override"] == "2048"  # 65536 tokens in blocks of 32
    assert gpus_for(params) == 2


def test_template_names_are_checked_against_the_engine():
    e = refusal(base_runtime="vllm", parameters={"schedule_policy": ["lpm", "fcfs"]})
    assert e.path == "$.parameters.schedule_policy" and "--scheduling-policy" in e.message
    e = refusal(parameters={"mem_frac": [0.8], "mem-fraction-static": [0.9]})
    assert "same engine setting" in e.message


def test_ome_base_runtime_names_a_runtime_and_the_engine_is_inferred():
    assert make(deployment_mode="ome", base_runtime="vllm-llama-large").engine == "vllm"
    hand = make(deployment_mode="ome", base_runtime="llama-3-2-1b-instruct-rt",
                clusterservingruntime_config={"name": "llama-3-2-1b-instruct-rt", "spec": {"engineConfig": {"runner": {"image": "docker.io/vllm/vllm-openai:v0.9"}}}})
    assert hand.engine == "vllm" and ome_runtime_name(hand) == "llama-3-2-1b-instruct-rt"
    assert make(deployment_mode="ome", base_runtime="my-rt", runtime_engine="vllm").engine == "vllm"
    e = refusal(deployment_mode="ome", base_runtime="llama-3-2-1b-instruct-rt")
    assert e.path == "$.base_runtime" and "runtime_engine: sglang" in e.message
    assert refusal(base_runtime="llama-3-2-1b-instruct-rt").path == "$.base_runtime"  # outside OME it names an engine
    e = refusal(deployment_mode="ome", base_runtime="sglang", clusterservingruntime_config={"preset": "vllm-llama-small"})
    assert e.path == "$.clusterservingruntime_config" and "runs vllm" in e.message


@pytest.mark.parametrize(
    ("fields", "path", "fragment"),
    [
        ({"storage": {"pvc_name": "models"}}, "$.storage", "kubernetes or ome"),
        ({"deployment_mode": "simulated", "storage": {"pvc_name": "models"}}, "$.storage", "kubernetes or ome"),
        ({"deployment_mode": "kubernetes", "storage": {"pvc_name": "Models_PVC"}}, "$.storage.pvc_name", "PersistentVolumeClaim name"),
        ({"deployment_mode": "kubernetes", "storage": {"pvc_name": "m", "pvc_subpath": "../etc"}}, "$.storage.pvc_subpath", "relative"),
        ({"deployment_mode": "kubernetes", "storage": {"pvc_name": "m", "mount_path": "models"}}, "$.storage.mount_path", "absolute"),
        ({"deployment_mode": "kubernetes", "storage": {"type": "nfs", "pvc_name": "m"}}, "$.storage.type", "pvc"),
        ({"clusterbasemodel_config": {"preset": "llama-3-2-1b-instruct"}}, "$.clusterbasemodel_config", "deployment_mode ome"),
        ({"deployment_mode": "ome", "base_runtime": "sglang", "clusterbasemodel_config": {"preset": "llama-9"}}, "$.clusterbasemodel_config.preset", "known presets"),
        ({"deployment_mode": "ome", "base_runtime": "sglang", "clusterbasemodel_config": {"name": "x"}}, "$.clusterbasemodel_config.spec", "missing"),
        ({"deployment_mode": "ome", "base_runtime": "sglang", "clusterservingruntime_config": {"preset": "sglang-llama-small", "name": "x", "spec": {}}},
         "$.clusterservingruntime_config.preset", "not both"),
        ({"benchmark": {"dataset_url": "s3://bucket/prompts.csv"}}, "$.benchmark.dataset_url", "scheme `s3`"),
        ({"benchmark": {"dataset_url": ""}}, "$.benchmark.dataset_url", "empty"),
    ],
)
def test_bad_fields_are_refused_with_their_path(fields, path, fragment):
    e = refusal(**fields)
    assert e.path == path and fragment in e.message, str(e)


def test_a_kubernetes_task_with_storage_may_be_rehearsed_and_deep_merge_keeps_what_overrides_do_not_touch():
    spec = make(deployment_mode="kubernetes", storage={"pvc_name": "models", "pvc_subpath": "llama"})
    assert spec.storage and spec.storage.mount_path == "/mnt/models" and spec.storage.type == "pvc"
    merged = ome.deep_merge({"a": {"b": 1, "c": [1]}, "d": 1}, {"a": {"c": [2]}, "e": 3})
    assert merged == {"a": {"b": 1, "c": [2]}, "d": 1, "e": 3}
    for name, (engine, csr) in ome.CLUSTERSERVINGRUNTIME_PRESETS.items():
        assert ome.engine_of_runtime(name) == engine == ome.engine_of_runtime("x", csr)
    assert set(ome.CLUSTERBASEMODEL_PRESETS) == {
        "llama-3-2-1b-instruct", "llama-3-2-3b-instruct", "llama-3-1-70b-instruct", "llama-3-3-70b-instruct", "mistral-7b-instruct",
        "mixtral-8x7b-instruct", "deepseek-v3",
    }  # fmt: skip


def test_the_exported_kubernetes_manifest_of_a_storage_task_mounts_its_claim():
    import yaml

    from autotune.reads.export import kubernetes

    spec = make(deployment_mode="kubernetes", storage={"pvc_name": "models", "pvc_subpath": "llama"})
    dep = next(yaml.safe_load_all(kubernetes(spec, {"mem_frac": 0.8})))
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert flags(c["args"])["--model-path"] == "/mnt/models" and flags(c["args"])["--mem-fraction-static"] == "0.8"
    assert {"name": "model-storage", "mountPath": "/mnt/models", "readOnly": True, "subPath": "llama"} in c["volumeMounts"]
    assert {"name": "model-storage", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod["volumes"]


def test_the_command_line_of_a_storage_task_is_the_one_its_experiments_ran_and_says_where_the_model_is():
    from autotune.reads.export import render, storage_note

    spec = make(deployment_mode="kubernetes", storage={"pvc_name": "models", "pvc_subpath": "llama"})
    line = render("cmd", spec, {"mem_frac": 0.8})
    got = flags(line.split())
    assert got["--model-path"] == "/mnt/models" and got["--served-model-name"] == spec.model_id, line
    assert storage_note(spec) == "the model is read from PersistentVolumeClaim models:llama, mounted at /mnt/models (`--format k8s` mounts it)"
    assert storage_note(make(deployment_mode="kubernetes")) is None
