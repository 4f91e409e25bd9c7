"""The earlier tool's template parameter names, mapped to each engine's own flags.

Its OME mode rendered InferenceServices from a template whose variables were `tp_size`, `mem_frac`,
`max_total_tokens` and `schedule_policy`, so task files written for it name their parameters so.
Here they are accepted in every deployment mode and become the engine's flags on the command line
(the parameters themselves keep the names the task file gave them, in events and views):

| template name | SGLang | vLLM |
|---|---|---|
| `tp_size` | `--tp-size` | `--tensor-parallel-size` |
| `mem_frac` | `--mem-fraction-static` | `--gpu-memory-utilization` |
| `max_total_tokens` | `--max-total-tokens` | `--num-gpu-blocks-override` (tokens ÷ `block-size`, 16 unless set; rounded up) |
| `schedule_policy` | `--schedule-policy` | `--scheduling-policy` (vLLM knows `fcfs` and `priority` only) |

(The earlier tool's templates wrote `--mem-frac`, an abbreviation SGLang's argparse accepts; the
full flag is written here.) Every other parameter is an engine flag as given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

TEMPLATE_FLAGS: dict[str, dict[str, str]] = {
    "tp_size": {"sglang": "tp-size", "vllm": "tensor-parallel-size"},
    "mem_frac": {"sglang": "mem-fraction-static", "vllm": "gpu-memory-utilization"},
    "max_total_tokens": {"sglang": "max-total-tokens", "vllm": "num-gpu-blocks-override"},
    "schedule_policy": {"sglang": "schedule-policy", "vllm": "scheduling-policy"},
}
VLLM_SCHEDULING_POLICIES = ("fcfs", "priority")
VLLM_BLOCK_SIZE = 16  # vLLM's default --block-size on GPUs


class TemplateParamError(ValueError):
    def __init__(self, message: str, path: str) -> None:
        super().__init__(f"{path}: {message}")
        self.message, self.path = message, path


def _block_size(params: Mapping[str, Any]) -> int:
    for key in ("block-size", "block_size"):
        value = params.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return VLLM_BLOCK_SIZE


def _vllm_value(name: str, value: Any, params: Mapping[str, Any]) -> Any:
    if name == "max_total_tokens" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return max(1, math.ceil(value / _block_size(params)))
    return value


def engine_params(engine: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` with the template names replaced by `engine`'s flags (order kept)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        flags = TEMPLATE_FLAGS.get(key)
        if flags is None:
            out[key] = value
        else:
            out[flags[engine]] = _vllm_value(key, value, params) if engine == "vllm" else value
    return out


def check(engine: str, parameters: Mapping[str, Any]) -> None:
    """Refuse template-parameter values the engine cannot take (raises TemplateParamError with the path)."""
    from autotune.schemas.spec import ParameterRange

    for name, p in parameters.items():
        if name not in TEMPLATE_FLAGS:
            continue
        path = f"$.parameters.{name}"
        if isinstance(p, ParameterRange):
            values = list(p.values or []) if p.type in ("choice", "categorical") else []
        else:
            values = p if isinstance(p, list) else [p]
        if name == "schedule_policy" and engine == "vllm":
            for v in values:
                if v not in VLLM_SCHEDULING_POLICIES:
                    raise TemplateParamError(
                        f"schedule_policy `{v}` becomes vLLM's --scheduling-policy, which is {' or '.join(VLLM_SCHEDULING_POLICIES)}; "
                        "SGLang's policies (lpm, random, dfs-weight) have no vLLM equivalent",
                        path,
                    )
        if name == "max_total_tokens":
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 1:
                    raise TemplateParamError(f"max_total_tokens must be a number of tokens (at least 1), got `{v}`", path)
