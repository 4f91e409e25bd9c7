"""Task spec → search space → engine command lines (autotune.shared.expand)."""

from __future__ import annotations

import pytest

from autotune.schemas.spec import SpecError
from autotune.shared.expand import (
    PARALLEL_PRESETS,
    QUANT_PRESETS,
    ExpandError,
    display_command,
    engine_command,
    engine_flags,
    experiment_space,
    gpus_for,
    image_for,
)
from tests.helpers import spec_of


def error_of(**fields) -> SpecError:
    with pytest.raises(SpecError) as info:
        spec_of(**fields)
    return info.value


# --- parameters ------------------------------------------------------------------------------------


def test_lists_become_choice_dimensions_in_spec_order_and_grid_is_stable():
    spec = spec_of(parameters={"mem-fraction-static": [0.8, 0.9], "schedule-policy": ["lpm", "fcfs", "random"]})
    space = experiment_space(spec)
    assert space.names == ["mem-fraction-static", "schedule-policy"]
    assert space.size == 6
    grid = space.grid()
    assert grid == [
        {"mem-fraction-static": 0.8, "schedule-policy": "lpm"},
        {"mem-fraction-static": 0.8, "schedule-policy": "fcfs"},
        {"mem-fraction-static": 0.8, "schedule-policy": "random"},
        {"mem-fraction-static": 0.9, "schedule-policy": "lpm"},
        {"mem-fraction-static": 0.9, "schedule-policy": "fcfs"},
        {"mem-fraction-static": 0.9, "schedule-policy": "random"},
    ]
    assert [space.config_at(i) for i in range(6)] == grid
    assert space.grid(limit=2) == grid[:2]


def test_empty_lists_skipped_single_values_fixed_and_internal_keys_kept():
    spec = spec_of(parameters={"a": [], "b": [1], "c": 7, "__note": "x", "d": {"type": "choice", "values": [True, False]}})
    space = experiment_space(spec)
    assert space.fixed == {"b": 1, "c": 7, "__note": "x"}
    assert space.names == ["d"]
    assert space.grid() == [{"b": 1, "c": 7, "__note": "x", "d": True}, {"b": 1, "c": 7, "__note": "x", "d": False}]


def test_ranges_for_bayesian():
    spec = spec_of(
        optimization={"strategy": "bayesian"},
        parameters={
            "mem-fraction-static": {"type": "continuous", "low": 0.7, "high": 0.95},
            "max-running-requests": {"type": "integer", "low": 16, "high": 512, "log": True},
            "chunked-prefill-size": {"type": "int", "low": 1024, "high": 8192, "step": 1024},
        },
    )
    space = experiment_space(spec)
    kinds = {d.name: (d.kind, d.size) for d in space.dims}
    assert kinds == {
        "mem-fraction-static": ("float", None),
        "max-running-requests": ("int", 497),
        "chunked-prefill-size": ("int", 8),
    }
    assert space.size is None
    assert space.dim("chunked-prefill-size").value_at(7) == 8192


def test_bad_ranges_are_refused_with_path():
    e = error_of(optimization={"strategy": "random"}, parameters={"x": {"type": "integer", "low": 1.5, "high": 4}})
    assert e.path == "$.parameters.x.low"
    e = error_of(optimization={"strategy": "random"}, parameters={"x": {"type": "float", "low": 1, "high": 4, "log": True, "step": 1}})
    assert e.path == "$.parameters.x.step"


# --- quantization ----------------------------------------------------------------------------------


def test_quant_presets_expand_into_one_bundle_dimension_for_sglang():
    space = experiment_space(spec_of(quant_config={"presets": ["default", "kv-cache-fp8", "dynamic-fp8"]}))
    assert space.size == 3
    assert space.grid() == [
        {"__quant": "default"},
        {"__quant": "kv-cache-fp8", "kv-cache-dtype": "fp8_e5m2"},
        {
            "__quant": "dynamic-fp8",
            "quantization": "fp8",
            "kv-cache-dtype": "fp8_e5m2",
            "attention-backend": "flashinfer",
        },
    ]


def test_quant_presets_for_vllm():
    space = experiment_space(spec_of(base_runtime="vllm", quant_config={"presets": ["dynamic-fp8", "bf16-stable"]}))
    assert space.grid() == [
        {"__quant": "dynamic-fp8", "quantization": "fp8", "kv-cache-dtype": "fp8_e5m2"},
        {"__quant": "bf16-stable", "dtype": "bfloat16", "kv-cache-dtype": "fp8_e5m2"},
    ]


def test_single_preset_is_fixed():
    space = experiment_space(spec_of(quant_config={"preset": "aggressive-moe"}))
    assert space.dims == ()
    assert space.fixed == {
        "__quant": "aggressive-moe",
        "dtype": "bfloat16",
        "kv-cache-dtype": "fp8_e5m2",
        "attention-backend": "flashinfer",
        "quantization": "w4afp8",
    }


def test_every_preset_expands_on_sglang():
    for name in QUANT_PRESETS:
        experiment_space(spec_of(quant_config={"preset": name}))
    for name in PARALLEL_PRESETS:
        experiment_space(spec_of(parallel_config={"preset": name}))


def test_quant_fields_grid_translates_dtypes_per_engine():
    fields = {"gemm_dtype": ["auto", "fp8"], "kvcache_dtype": ["auto", "fp8"]}
    sg = experiment_space(spec_of(quant_config=fields)).grid()
    vl = experiment_space(spec_of(base_runtime="vllm", quant_config=fields)).grid()
    assert [c["__quant"] for c in sg] == [
        "gemm_dtype=auto,kvcache_dtype=auto",
        "gemm_dtype=auto,kvcache_dtype=fp8",
        "gemm_dtype=fp8,kvcache_dtype=auto",
        "gemm_dtype=fp8,kvcache_dtype=fp8",
    ]
    assert sg[3] == {"__quant": "gemm_dtype=fp8,kvcache_dtype=fp8", "quantization": "fp8", "kv-cache-dtype": "fp8_e5m2"}
    assert vl[3] == {"__quant": "gemm_dtype=fp8,kvcache_dtype=fp8", "quantization": "fp8", "kv-cache-dtype": "fp8"}


@pytest.mark.parametrize(
    ("fields", "path", "words"),
    [
        ({"quant_config": {"preset": "fp4-magic"}}, "$.quant_config.preset", "unknown quantization preset `fp4-magic`"),
        ({"quant_config": {"presets": ["default", "nope"]}}, "$.quant_config.presets[1]", "unknown quantization preset"),
        ({"quant_config": {"presets": ["default", "default"]}}, "$.quant_config.presets[1]", "listed twice"),
        ({"quant_config": {"kvcache_dtype": ["auto", "int4"]}}, "$.quant_config.kvcache_dtype[1]", "`int4` is not a kvcache_dtype"),
        ({"quant_config": {"gemm_dtype": "int8"}}, "$.quant_config.gemm_dtype", "not a gemm_dtype"),
        ({"base_runtime": "vllm", "quant_config": {"preset": "aggressive-moe"}}, "$.quant_config.preset", "needs SGLang"),
        ({"quant_config": {"preset": "default", "presets": ["default"]}}, "$.quant_config.preset", "not both"),
        ({"quant_config": {"preset": "kv-cache-fp8", "gemm_dtype": "fp8"}}, "$.quant_config.gemm_dtype", "not both"),
        ({"quant_config": {"attention_dtype": "fp8"}}, "$.quant_config", "FP8 KV cache"),
        ({"quant_config": {"gemm_dtype": "fp8", "moe_dtype": "w4afp8"}}, "$.quant_config", "cannot be combined"),
        (
            {"parameters": {"kv-cache-dtype": ["auto"]}, "quant_config": {"preset": "kv-cache-fp8"}},
            "$.quant_config.preset",
            "$.parameters.kv-cache-dtype",
        ),
    ],
)
def test_quant_mistakes_are_refused_never_dropped(fields, path, words):
    e = error_of(**fields)
    assert e.path == path
    assert words in e.message


# --- parallelism -----------------------------------------------------------------------------------


def test_parallel_fields_grid_sglang_and_vllm():
    pc = {"tp": [1, 2], "dp": 2}
    sg = experiment_space(spec_of(parallel_config=pc)).grid()
    assert sg == [
        {"__parallel": "tp=1,dp=2", "tp-size": 1, "dp-size": 2},
        {"__parallel": "tp=2,dp=2", "tp-size": 2, "dp-size": 2},
    ]
    vl = experiment_space(spec_of(base_runtime="vllm", parallel_config=pc)).grid()
    assert vl[1] == {"__parallel": "tp=2,dp=2", "tensor-parallel-size": 2, "data-parallel-size": 2}
    assert [gpus_for(c) for c in sg] == [2, 4]


def test_parallel_presets_and_expert_parallel_flags():
    space = experiment_space(spec_of(parallel_config={"presets": ["tp-only", "expert-parallel"]}))
    labels = space.dim("__parallel").values
    assert labels == (
        "tp-only:tp=1",
        "tp-only:tp=2",
        "tp-only:tp=4",
        "tp-only:tp=8",
        "expert-parallel:tp=2,enable_expert_parallel=true",
        "expert-parallel:tp=4,enable_expert_parallel=true",
        "expert-parallel:tp=8,enable_expert_parallel=true",
    )
    assert space.config_at(4) == {"__parallel": labels[4], "tp-size": 2, "enable-ep-moe": True}
    v = experiment_space(spec_of(base_runtime="vllm", parallel_config={"preset": "expert-parallel"}))
    assert v.config_at(0) == {"__parallel": labels[4], "tensor-parallel-size": 2, "enable-expert-parallel": True}


def test_moe_sizes_translate_or_are_refused():
    sg = experiment_space(spec_of(parallel_config={"tp": 8, "moe_tp": 2}))
    assert sg.fixed == {"__parallel": "tp=8,moe_tp=2", "tp-size": 8, "ep-size": 4}
    vl = experiment_space(spec_of(base_runtime="vllm", parallel_config={"tp": 4, "dp": 2, "moe_ep": 8}))
    assert vl.fixed["enable-expert-parallel"] is True
    e = error_of(base_runtime="vllm", parallel_config={"tp": 4, "moe_ep": 2})
    assert e.path == "$.parallel_config" and "tp × dp" in e.message


@pytest.mark.parametrize(
    ("fields", "path", "words"),
    [
        ({"parallel_config": {"preset": "tp-everything"}}, "$.parallel_config.preset", "unknown parallel preset"),
        ({"parallel_config": {"presets": ["tp-only", "xx"]}}, "$.parallel_config.presets[1]", "unknown parallel preset"),
        ({"parallel_config": {"tp": [1, 0]}}, "$.parallel_config.tp[1]", "whole number"),
        ({"parallel_config": {"enable_dp_attention": 1}}, "$.parallel_config.enable_dp_attention", "true or false"),
        ({"parallel_config": {"cp": 2}}, "$.parallel_config", "SGLang has no context-parallel"),
        ({"base_runtime": "vllm", "parallel_config": {"preset": "dp-attention"}}, "$.parallel_config.preset", "dp-attention"),
        ({"parameters": {"tp-size": [1, 2]}, "parallel_config": {"tp": [1, 2]}}, "$.parallel_config.tp", "$.parameters.tp-size"),
        ({"parameters": {"tp": [1, 2]}, "parallel_config": {"preset": "tp-only"}}, "$.parallel_config.preset", "$.parameters.tp"),
        ({"parameters": {"tp": 2, "tensor_parallel_size": [1, 2]}}, "$.parameters.tensor_parallel_size", "$.parameters.tp"),
        ({"parameters": {"__quant": "x"}}, "$.parameters.__quant", "reserved"),
    ],
)
def test_parallel_mistakes_are_refused(fields, path, words):
    e = error_of(**fields)
    assert e.path == path
    assert words in e.message


def test_expand_error_carries_message_and_path():
    e = ExpandError("bad", "$.x")
    assert (e.message, e.path, str(e)) == ("bad", "$.x", "$.x: bad")


# --- gpus, command lines, images -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "gpus"),
    [
        ({}, 1),
        ({"tp-size": 4}, 4),
        ({"tensor-parallel-size": 2, "pipeline-parallel-size": 2}, 4),
        ({"tp_size": 2, "dp-size": 2}, 4),
        ({"tp": "2", "data-parallel-size": 4}, 8),
        ({"tp-size": 2, "dp": 2, "decode-context-parallel-size": 4}, 8),  # max(dp, dcp, cp)
        ({"tp-size": 8, "dp-size": 8, "enable-dp-attention": True}, 8),  # dp shares the tp GPUs
        ({"__tp": 8, "mem-fraction-static": 0.8}, 1),
    ],
)
def test_gpus_for(params, gpus):
    assert gpus_for(params) == gpus


def test_engine_command_sglang_and_vllm():
    params = {"tp-size": 2, "enable-torch-compile": True, "disable-radix-cache": False, "x": None, "__quant": "default",
              "mem-fraction-static": 0.85}
    spec = spec_of()
    argv = engine_command(spec, params, port=30001)
    assert argv == [
        "python3", "-m", "sglang.launch_server", "--model-path", "meta-llama/Llama-3.1-8B",
        "--host", "0.0.0.0", "--port", "30001",
        "--tp-size", "2", "--enable-torch-compile", "--mem-fraction-static", "0.85",
    ]  # fmt: skip
    assert engine_flags(params) == argv[9:]
    vargv = engine_command(spec_of(base_runtime="vllm"), {"tensor-parallel-size": 2}, port=8000, host="127.0.0.1", model_path="/m")
    assert vargv == ["vllm", "serve", "/m", "--host", "127.0.0.1", "--port", "8000", "--tensor-parallel-size", "2"]
    assert display_command(["a b", "c"]) == "'a b' c"


def test_image_for():
    assert image_for(spec_of()) == "lmsysorg/sglang:latest"
    assert image_for(spec_of(base_runtime="vllm", runtime_image_tag="v0.6.3")) == "vllm/vllm-openai:v0.6.3"


def test_point_and_key_round_trip_through_json():
    import msgspec

    spec = spec_of(parameters={"a": [1, 2]}, quant_config={"presets": ["default", "kv-cache-fp8"]})
    space = experiment_space(spec)
    for config in space.grid():
        wire = msgspec.json.decode(msgspec.json.encode(config))
        assert space.point(wire) == {d: config[d] for d in space.names}
        assert space.key(wire) == space.key(config)
    # a bundle is also recognised by its flags when the label is missing
    assert space.point({"a": 1, "kv-cache-dtype": "fp8_e5m2"}) == {"a": 1, "__quant": "kv-cache-fp8"}
    assert space.point({"a": 3, "__quant": "default"}) is None
