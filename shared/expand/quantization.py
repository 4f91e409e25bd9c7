"""quant_config → one `__quant` bundle dimension: presets or per-field dtypes, each as the engine's flags.

Quantization presets (the original's meaning, per field):

| preset | gemm_dtype | kvcache_dtype | attention_dtype | moe_dtype |
|---|---|---|---|---|
| default | auto | auto | auto | auto |
| kv-cache-fp8 | auto | fp8_e5m2 | auto | auto |
| dynamic-fp8 | fp8 | fp8_e5m2 | fp8 | fp8 |
| bf16-stable | bfloat16 | fp8_e5m2 | auto | auto |
| aggressive-moe | bfloat16 | fp8_e5m2 | fp8 | w4afp8 (SGLang only) |

Field values → flags (`_QUANT_FLAGS` below): gemm fp8 → `--quantization fp8`; gemm bfloat16/float16/
float32 → `--dtype X`; kvcache fp8 → `--kv-cache-dtype fp8_e5m2` (SGLang) / `fp8` (vLLM), fp8_e5m2 and
fp8_e4m3 pass through, bfloat16 → `--kv-cache-dtype bfloat16`; attention fp8* → SGLang
`--attention-backend flashinfer`, vLLM nothing (FP8 attention follows the FP8 KV cache), and it needs
an fp8 kvcache_dtype; moe fp8 → `--quantization fp8` (the engines quantize experts with the dense
layers), w4afp8 → SGLang `--quantization w4afp8`, mxfp4 → `--quantization mxfp4`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autotune.schemas.spec import TaskSpec
from autotune.shared.expand.bundles import Bundles, Flags, config_bundles, merge_flags
from autotune.shared.expand.space import ExpandError

QUANT_FIELDS = ("gemm_dtype", "kvcache_dtype", "attention_dtype", "moe_dtype")

QUANT_PRESETS: dict[str, dict[str, str]] = {
    "default": {"gemm_dtype": "auto", "kvcache_dtype": "auto", "attention_dtype": "auto", "moe_dtype": "auto"},
    "kv-cache-fp8": {"gemm_dtype": "auto", "kvcache_dtype": "fp8_e5m2", "attention_dtype": "auto", "moe_dtype": "auto"},
    "dynamic-fp8": {"gemm_dtype": "fp8", "kvcache_dtype": "fp8_e5m2", "attention_dtype": "fp8", "moe_dtype": "fp8"},
    "bf16-stable": {"gemm_dtype": "bfloat16", "kvcache_dtype": "fp8_e5m2", "attention_dtype": "auto", "moe_dtype": "auto"},
    "aggressive-moe": {"gemm_dtype": "bfloat16", "kvcache_dtype": "fp8_e5m2", "attention_dtype": "fp8", "moe_dtype": "w4afp8"},
}

_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}

# field -> value -> (SGLang flags, vLLM flags); None where that engine has no way to do it
_QUANT_FLAGS: dict[str, dict[str, tuple[Flags | None, Flags | None]]] = {
    "gemm_dtype": {
        "auto": ({}, {}),
        "bfloat16": ({"dtype": "bfloat16"}, {"dtype": "bfloat16"}),
        "float16": ({"dtype": "float16"}, {"dtype": "float16"}),
        "float32": ({"dtype": "float32"}, {"dtype": "float32"}),
        "fp8": ({"quantization": "fp8"}, {"quantization": "fp8"}),
    },
    "kvcache_dtype": {
        "auto": ({}, {}),
        "fp8": ({"kv-cache-dtype": "fp8_e5m2"}, {"kv-cache-dtype": "fp8"}),
        "fp8_e5m2": ({"kv-cache-dtype": "fp8_e5m2"}, {"kv-cache-dtype": "fp8_e5m2"}),
        "fp8_e4m3": ({"kv-cache-dtype": "fp8_e4m3"}, {"kv-cache-dtype": "fp8_e4m3"}),
        "bfloat16": ({"kv-cache-dtype": "bfloat16"}, {"kv-cache-dtype": "bfloat16"}),
    },
    "attention_dtype": {
        "auto": ({}, {}),
        "bfloat16": ({}, {}),  # attention runs in the model dtype unless it is FP8
        "float16": ({}, {}),
        "fp8": ({"attention-backend": "flashinfer"}, {}),
        "fp8_e5m2": ({"attention-backend": "flashinfer"}, {}),
        "fp8_e4m3": ({"attention-backend": "flashinfer"}, {}),
    },
    "moe_dtype": {
        "auto": ({}, {}),
        "bfloat16": ({}, {}),
        "float16": ({}, {}),
        "fp8": ({"quantization": "fp8"}, {"quantization": "fp8"}),
        "w4afp8": ({"quantization": "w4afp8"}, None),
        "mxfp4": ({"quantization": "mxfp4"}, {"quantization": "mxfp4"}),
    },
}


def _quant_value(field: str, raw: Any, engine: str, path: str) -> str:
    known = _QUANT_FLAGS[field]
    value = _DTYPE_ALIASES.get(str(raw).lower(), str(raw).lower()) if isinstance(raw, str) else raw
    if not isinstance(value, str) or value not in known:
        raise ExpandError(f"`{raw}` is not a {field}; use one of {', '.join(known)}", path)
    if known[value][0 if engine == "sglang" else 1] is None:
        raise ExpandError(f"{field} `{raw}` is not available on {engine}; it needs SGLang", path)
    return value


def _quant_flags(engine: str, combo: Mapping[str, str], path: str) -> Flags:
    col = 0 if engine == "sglang" else 1
    flags: Flags = {}
    sources: dict[str, str] = {}
    for field in QUANT_FIELDS:
        value = combo.get(field, "auto")
        merge_flags(flags, _QUANT_FLAGS[field][value][col] or {}, f"{field}={value}", sources, path)
    if combo.get("attention_dtype", "auto").startswith("fp8") and not combo.get("kvcache_dtype", "auto").startswith("fp8"):
        raise ExpandError(
            f"attention_dtype={combo['attention_dtype']} runs attention on an FP8 KV cache, but kvcache_dtype is "
            f"{combo.get('kvcache_dtype', 'auto')}; set kvcache_dtype to fp8, fp8_e5m2 or fp8_e4m3",
            path,
        )
    return flags


def quant_bundles(spec: TaskSpec) -> Bundles | None:
    base = "$.quant_config"

    def preset(name: str, path: str) -> list[tuple[str, Flags]]:
        combo = QUANT_PRESETS[name]
        try:
            for field in QUANT_FIELDS:
                _quant_value(field, combo[field], spec.engine, path)
            return [(name, _quant_flags(spec.engine, combo, path))]
        except ExpandError as e:
            raise ExpandError(f"preset `{name}`: {e.message}", path) from None

    return config_bundles(
        spec.quant_config, name="__quant", base=base, kind="quantization", presets=QUANT_PRESETS, fields=QUANT_FIELDS,
        mixed="a preset fixes all four dtypes; use presets or per-field dtypes, not both (or list the combination you want as per-field values)",
        preset_flags=preset, value=lambda field, value, path: _quant_value(field, value, spec.engine, path),
        flags_of=lambda combo: _quant_flags(spec.engine, combo, base),
    )  # fmt: skip
