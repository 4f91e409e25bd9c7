"""Event catalog, subjects and the task spec: the public contract."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path

import msgspec
import pytest

from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.schemas.spec import SpecError, parse_spec
from tests.helpers import GOLDEN


def test_every_event_type_has_a_golden_sample():
    tags = {ev.tag_of(t) for t in ev.ALL_EVENT_TYPES}
    assert tags == {p.stem for p in GOLDEN.glob("*.json")}


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_golden_samples_keep_decoding(path):
    raw = path.read_bytes()
    e = ev.decode(raw)
    assert ev.tag_of(type(e)) == path.stem
    assert e.at.tzinfo is not None and e.at.utcoffset() == UTC.utcoffset(None)
    # re-encoding keeps every field the sample has
    again = json.loads(ev.encode(e))
    for k, v in json.loads(raw).items():
        assert again[k] == v, k


def test_unknown_fields_are_ignored_on_events_but_unknown_types_are_not():
    data = json.loads((GOLDEN / "task.started.json").read_text())
    data["field_from_the_future"] = 1
    assert isinstance(ev.decode(json.dumps(data).encode()), ev.TaskStarted)
    data["type"] = "task.teleported"
    with pytest.raises(msgspec.ValidationError):
        ev.decode(json.dumps(data).encode())


def test_tags_are_explicit_and_unique():
    tags = [ev.tag_of(t) for t in ev.ALL_EVENT_TYPES]
    assert len(tags) == len(set(tags))
    assert all(t != cls.__name__ for t, cls in zip(tags, ev.ALL_EVENT_TYPES, strict=True))


def test_subjects_are_built_and_parsed():
    assert subj.task("t-1", "submitted") == "autotune.task.t-1.submitted"
    assert subj.experiment("t-1", 3, "assigned", "gpu_7") == "autotune.task.t-1.exp.3.assigned.gpu_7"
    assert subj.experiment("t-1", 3, "completed") == "autotune.task.t-1.exp.3.completed"
    assert subj.gpu("h", 2) == "autotune.gpu.h.2"
    p = subj.parse("autotune.task.t-1.exp.3.cancel_requested.h9")
    assert (p.kind, p.task, p.experiment, p.event, p.host) == ("experiment", "t-1", 3, "cancel_requested", "h9")
    assert subj.parse("autotune.host.h9.lost") == subj.Parsed("host", "lost", host="h9")
    assert subj.parse("something.else").kind == "other"


@pytest.mark.parametrize("bad", ["a.b", "a*", ">", "", "x y", "a" * 129])
def test_subject_tokens_are_validated(bad):
    with pytest.raises(subj.SubjectError):
        subj.task(bad, "submitted")


def test_experiment_events_need_the_right_shape():
    with pytest.raises(subj.SubjectError):
        subj.experiment("t", 1, "assigned")
    with pytest.raises(subj.SubjectError):
        subj.experiment("t", 1, "exploded")


ORIGINAL_JSON = """{
  "task_name": "llama-tune",
  "description": "from the original tool",
  "model": {"id_or_path": "meta-llama/Llama-3.1-8B-Instruct", "namespace": "autotuner"},
  "base_runtime": "sglang",
  "runtime_image_tag": "v0.4.6",
  "deployment_mode": "docker",
  "gpu_type": "h100",
  "parameters": {"tp-size": [1, 2], "mem-fraction-static": {"type": "choice", "values": [0.8, 0.9]}, "enable-torch-compile": [true, false], "empty": []},
  "optimization": {"strategy": "grid_search", "objective": "minimize_latency", "max_iterations": 8, "timeout_per_iteration": 900},
  "benchmark": {"task": "text-to-text", "model_name": "llama", "model_tokenizer": "meta-llama/Llama-3.1-8B-Instruct",
                "traffic_scenarios": ["D(100,100)", "N(480,240)/(300,150)", "U(10,100)/(20,50)"], "num_concurrency": [1, 4],
                "max_time_per_iteration": 10, "max_requests_per_iteration": 50, "additional_params": {"temperature": 0.0}},
  "slo": {"latency": {"p90": {"threshold": 5.0, "weight": 2.0, "hard_fail": true, "fail_ratio": 0.2}}, "ttft": {"threshold": 1.0}, "steepness": 0.1}
}"""


def test_an_original_task_file_is_accepted_unchanged():
    spec = parse_spec(ORIGINAL_JSON, source="task.json")
    assert spec.task_id == "llama-tune"
    assert spec.engine == "sglang" and spec.model_id == "meta-llama/Llama-3.1-8B-Instruct"
    assert spec.benchmark.max_time_per_iteration == 10  # minutes, as in the original
    assert spec.slo and spec.slo.latency and spec.slo.latency.p90 and spec.slo.latency.p90.hard_fail


def test_examples_are_valid():
    for p in Path(__file__).parent.parent.glob("examples/*.yaml"):
        parse_spec(p.read_text(), source=str(p))


@pytest.mark.parametrize(
    ("text", "path", "fragment", "line"),
    [
        ("task_name: t\nmodel: m\noptimisation: {}\n", "$.optimisation", "unknown field", 3),
        ("task_name: t\nmodel: m\noptimization:\n  max_iterations: many\n", "$.optimization.max_iterations", "Expected `int`", 4),
        ("task_name: t\nmodel: m\noptimization:\n  strategy: annealing\n", "$.optimization.strategy", "annealing", 4),
        ("task_name: t\nmodel: m\nbase_runtime: tgi\n", "$.base_runtime", "sglang or vllm", 3),
        ("task_name: t\nmodel: m\nbenchmark:\n  traffic_scenarios: ['D(1,1)', 'X(2)']\n", "$.benchmark.traffic_scenarios[1]", "not a scenario", 4),
        ("model: m\n", "$", "task_name", None),
        ("task_name: t\nmodel: m\nparameters:\n  tp-size: {type: integer, low: 1, high: 8}\n", "$.parameters.tp-size", "grid_search", 4),
        ("task_name: t\nmodel: m\nslo:\n  ttft: {threshold: -1}\n", "$.slo.ttft.threshold", "positive", 4),
        ("task_name: t\nmodel: m\noptimization: {strategy: random}\nparameters:\n  x: {type: integer, low: 1, high: .inf}\n", "$.parameters.x", "finite", 5),
    ],
)
def test_invalid_specs_name_the_field_and_line(text, path, fragment, line):
    with pytest.raises(SpecError) as ei:
        parse_spec(text, source="t.yaml")
    e = ei.value
    assert e.path == path
    assert fragment in str(e)
    if line:
        assert e.line == line
        assert str(e).startswith(f"t.yaml:{line}: {path}")


def test_malformed_yaml_and_json_report_the_line():
    with pytest.raises(SpecError) as ei:
        parse_spec("task_name: t\nmodel: [unclosed\n", source="t.yaml")
    assert "invalid YAML" in str(ei.value)
    with pytest.raises(SpecError) as ei:
        parse_spec('{"task_name": "t",\n "model": }', source="t.json")
    assert ei.value.line == 2
