"""Engine flag names: one canonical name per setting whatever alias a spec uses, the GPUs a configuration needs,
and how a flag's value is written."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_ALIASES: dict[str, tuple[str, ...]] = {
    "tp": ("tp", "tp-size", "tensor-parallel-size"),
    "pp": ("pp", "pp-size", "pipeline-parallel-size"),
    "dp": ("dp", "dp-size", "data-parallel-size"),
    "ep": ("ep", "ep-size", "expert-parallel-size", "moe-ep", "moe-ep-size"),
    "cp": ("cp", "cp-size", "context-parallel-size", "prefill-context-parallel-size", "attn-cp-size"),
    "dcp": ("dcp", "dcp-size", "decode-context-parallel-size"),
    "enable-expert-parallel": ("enable-expert-parallel", "enable-ep-moe"),
    "enable-dp-attention": ("enable-dp-attention",),
    # the earlier tool's template names (engine_params.py) meet the flags they become
    "mem-fraction-static": ("mem-fraction-static", "mem-frac", "gpu-memory-utilization"),
    "schedule-policy": ("schedule-policy", "scheduling-policy"),
    "max-total-tokens": ("max-total-tokens", "num-gpu-blocks-override"),
}
_CANONICAL = {alias: canon for canon, aliases in _ALIASES.items() for alias in aliases}


def canonical(flag: str) -> str:
    """One name per engine setting, so `tp`, `tp_size`, `--tp-size` and `tensor-parallel-size` meet."""
    name = flag.lower().lstrip("-").replace("_", "-")
    return _CANONICAL.get(name, name)


def _read_size(params: Mapping[str, Any], canon: str) -> int:
    for key, value in params.items():
        if key.startswith("__") or value is None or isinstance(value, bool) or canonical(key) != canon:
            continue
        try:
            return max(1, int(value))
        except (TypeError, ValueError):
            continue
    return 1


def gpus_for(params: Mapping[str, Any]) -> int:
    """GPUs one experiment needs: tp × pp × max(dp, dcp, cp), each read under any of its names.

    With SGLang's `enable-dp-attention` the dp ranks share the tp GPUs, so dp does not multiply.
    """
    tp, pp = _read_size(params, "tp"), _read_size(params, "pp")
    dp, dcp, cp = _read_size(params, "dp"), _read_size(params, "dcp"), _read_size(params, "cp")
    if any(not k.startswith("__") and canonical(k) == "enable-dp-attention" and v is True for k, v in params.items()):
        dp = 1
    return tp * pp * max(dp, dcp, cp)


def value_text(value: Any) -> str:
    """A flag value as the engine's command line and the bundle labels write it (booleans in lower case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
