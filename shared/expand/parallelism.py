"""parallel_config → one `__parallel` bundle dimension: presets or per-field layouts, each as the engine's flags.

Parallel presets (each a small family of layouts, at most 8 GPUs, so they fit one host):

| preset | layouts |
|---|---|
| tp-only | tp ∈ {1, 2, 4, 8} |
| tp-dp | (tp, dp) ∈ {(1,2), (2,2), (1,4), (4,2), (2,4), (1,8)} |
| tp-pp | (tp, pp) ∈ {(1,2), (2,2), (4,2), (2,4)} |
| expert-parallel | tp ∈ {2, 4, 8} with enable_expert_parallel |
| dp-attention | tp = dp ∈ {2, 4, 8} with enable_dp_attention (SGLang only) |

Parallel fields → flags: SGLang tp/pp/dp → `--tp-size/--pp-size/--dp-size`, ep and moe_ep →
`--ep-size`, moe_tp → `--ep-size tp/moe_tp` (SGLang's MoE TP size is tp / ep), enable_expert_parallel →
`--enable-ep-moe`, enable_dp_attention → `--enable-dp-attention`, cp/dcp > 1 refused (no such flag).
vLLM tp/pp/dp → `--tensor-parallel-size/--pipeline-parallel-size/--data-parallel-size`, dcp →
`--decode-context-parallel-size`, cp → `--prefill-context-parallel-size`, enable_expert_parallel →
`--enable-expert-parallel`; vLLM's expert-parallel size is always tp × dp, so ep/moe_ep must be 1 or
tp × dp and moe_tp must be tp × dp or 1 (→ `--enable-expert-parallel`); enable_dp_attention is refused
(vLLM runs attention data-parallel whenever dp > 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autotune.schemas.spec import Scalar, TaskSpec
from autotune.shared.expand.bundles import Bundles, Flags, config_bundles, label, merge_flags
from autotune.shared.expand.flags import value_text
from autotune.shared.expand.space import ExpandError

PARALLEL_SIZE_FIELDS = ("tp", "pp", "dp", "cp", "dcp", "moe_tp", "moe_ep", "ep")
PARALLEL_BOOL_FIELDS = ("enable_expert_parallel", "enable_dp_attention")
PARALLEL_FIELDS = ("tp", "pp", "dp", "cp", "dcp", "enable_expert_parallel", "moe_tp", "moe_ep", "ep", "enable_dp_attention")

PARALLEL_PRESETS: dict[str, list[dict[str, int | bool]]] = {
    "tp-only": [{"tp": n} for n in (1, 2, 4, 8)],
    "tp-dp": [{"tp": t, "dp": d} for t, d in ((1, 2), (2, 2), (1, 4), (4, 2), (2, 4), (1, 8))],
    "tp-pp": [{"tp": t, "pp": p} for t, p in ((1, 2), (2, 2), (4, 2), (2, 4))],
    "expert-parallel": [{"tp": n, "enable_expert_parallel": True} for n in (2, 4, 8)],
    "dp-attention": [{"tp": n, "dp": n, "enable_dp_attention": True} for n in (2, 4, 8)],
}


def _parallel_value(field: str, value: Any, path: str) -> int | bool:
    if field in PARALLEL_BOOL_FIELDS:
        if not isinstance(value, bool):
            raise ExpandError(f"{field} must be true or false, got `{value}`", path)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise ExpandError(f"{field} must be a whole number of GPUs (at least 1), got `{value}`", path)
    return int(value)


def _parallel_flags(engine: str, layout: Mapping[str, Any], path: str) -> Flags:
    """One layout (field → value) as engine flags. Raises where the engine cannot express it."""
    get = layout.get
    tp, dp = get("tp", 1), get("dp", 1)
    flags: Flags = {}
    sources: dict[str, str] = {}

    def put(flag: str, value: Scalar, field: str) -> None:
        merge_flags(flags, {flag: value}, f"{field}={value_text(get(field))}", sources, path)

    if engine == "sglang":
        for field, flag in (("tp", "tp-size"), ("pp", "pp-size"), ("dp", "dp-size"), ("ep", "ep-size"), ("moe_ep", "ep-size")):
            if field in layout:
                put(flag, layout[field], field)
        if "moe_tp" in layout:
            if tp % layout["moe_tp"]:
                raise ExpandError(f"moe_tp={layout['moe_tp']} must divide tp={tp} (SGLang's MoE TP size is tp / ep)", path)
            put("ep-size", tp // layout["moe_tp"], "moe_tp")
        for field in ("cp", "dcp"):
            if get(field, 1) > 1:
                raise ExpandError(f"{field}={get(field)}: SGLang has no context-parallel flag; use vllm or drop {field}", path)
        if "enable_expert_parallel" in layout:
            put("enable-ep-moe", layout["enable_expert_parallel"], "enable_expert_parallel")
        if "enable_dp_attention" in layout:
            put("enable-dp-attention", layout["enable_dp_attention"], "enable_dp_attention")
        return flags

    for field, flag in (
        ("tp", "tensor-parallel-size"),
        ("pp", "pipeline-parallel-size"),
        ("dp", "data-parallel-size"),
        ("dcp", "decode-context-parallel-size"),
        ("cp", "prefill-context-parallel-size"),
    ):
        if field in layout:
            put(flag, layout[field], field)
    if "enable_expert_parallel" in layout:
        put("enable-expert-parallel", layout["enable_expert_parallel"], "enable_expert_parallel")
    for field in ("ep", "moe_ep"):
        if field in layout and layout[field] > 1:
            if layout[field] != tp * dp:
                raise ExpandError(
                    f"{field}={layout[field]}: vLLM's expert-parallel size is always tp × dp = {tp * dp}; "
                    "use that or enable_expert_parallel",
                    path,
                )
            put("enable-expert-parallel", True, field)
    if "moe_tp" in layout and tp * dp > 1:
        if layout["moe_tp"] == 1:
            put("enable-expert-parallel", True, "moe_tp")
        elif layout["moe_tp"] != tp * dp:
            raise ExpandError(
                f"moe_tp={layout['moe_tp']}: vLLM runs MoE layers with TP tp × dp = {tp * dp} or, with expert "
                "parallelism, 1; use one of those",
                path,
            )
    if get("enable_dp_attention"):
        raise ExpandError(
            "vLLM has no dp-attention switch (attention is data-parallel whenever dp > 1); set dp instead", path
        )
    return flags


def parallel_bundles(spec: TaskSpec) -> Bundles | None:
    base = "$.parallel_config"

    def preset(name: str, path: str) -> list[tuple[str, Flags]]:
        out = []
        for layout in PARALLEL_PRESETS[name]:
            try:
                out.append((f"{name}:{label(layout)}", _parallel_flags(spec.engine, layout, path)))
            except ExpandError as e:
                raise ExpandError(f"preset `{name}` ({label(layout)}): {e.message}", path) from None
        return out

    return config_bundles(
        spec.parallel_config, name="__parallel", base=base, kind="parallel", presets=PARALLEL_PRESETS, fields=PARALLEL_FIELDS,
        mixed="a preset fixes the whole layout; use presets or per-field values, not both",
        preset_flags=preset, value=_parallel_value, flags_of=lambda combo: _parallel_flags(spec.engine, combo, base), by_field=True,
    )  # fmt: skip
