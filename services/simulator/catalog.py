"""What the simulator knows about hardware and models: a GPU catalog and model sizes from names.

Standard library only (this package must run in any python3 container).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float  # usable device memory
    bandwidth_tbs: float  # HBM/GDDR bandwidth, TB/s
    tflops_bf16: float  # dense bf16 tensor TFLOPs
    fp8: bool  # native fp8 tensor cores (Hopper, Ada, Blackwell)
    link_gbs: float  # per-GPU bandwidth of the TP interconnect, GB/s (NVLink or PCIe)
    link_latency_us: float  # latency of one small all-reduce over that interconnect
    nvlink: bool


# Order matters for matching: longer / more specific names first.
GPUS: dict[str, GPU] = {
    "B200": GPU("B200", 180, 8.0, 2250, True, 900, 6, True),
    "H200": GPU("H200", 141, 4.8, 989, True, 450, 8, True),
    "H100": GPU("H100", 80, 3.35, 989, True, 450, 8, True),
    "H20": GPU("H20", 96, 4.0, 148, True, 450, 8, True),
    "A100-40GB": GPU("A100-40GB", 40, 1.555, 312, False, 300, 10, True),
    "A100": GPU("A100", 80, 2.04, 312, False, 300, 10, True),
    "L40S": GPU("L40S", 48, 0.864, 362, True, 25, 30, False),
    "RTX4090": GPU("RTX4090", 24, 1.008, 165, True, 25, 30, False),
    "L4": GPU("L4", 24, 0.3, 121, True, 20, 35, False),
    "A10G": GPU("A10G", 24, 0.6, 70, False, 16, 35, False),
}


def gpu_by_name(name: str) -> tuple[GPU, str | None]:
    """The catalog entry for a GPU name like `H100`, `NVIDIA A100-SXM4-40GB`, `rtx 4090`.

    Returns the GPU and a warning when the name is unknown (then H100 is assumed).
    """
    key = re.sub(r"[^A-Z0-9]", "", (name or "H100").upper())
    if "A100" in key and "40" in key.replace("A100", ""):
        return GPUS["A100-40GB"], None
    if "4090" in key:
        return GPUS["RTX4090"], None
    if "A10G" in key or key.endswith("A10") or "A10PCIE" in key:
        return GPUS["A10G"], None
    for short in ("B200", "H200", "H100", "H20", "A100", "L40S", "L4"):
        if short in key:
            return GPUS[short], None
    return GPUS["H100"], f"unknown GPU type {name!r}; simulating an H100 (known: {', '.join(GPUS)})"


@dataclass(frozen=True)
class ModelShape:
    """Enough architecture to cost a forward pass, derived from the parameter count."""

    params_b: float  # total parameters, billions (what the weights weigh)
    active_b: float  # parameters used per token (MoE: shared + routed top-k)
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    experts: int  # 0 for dense models
    experts_per_token: int
    max_context: int

    @property
    def moe(self) -> bool:
        return self.experts > 0

    @property
    def kv_bytes_per_token_bf16(self) -> int:
        """K and V for every layer, bf16."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2


# Names whose size is not in the name: (total B, active B).
_KNOWN = {
    "deepseek-v3": (671.0, 37.0),
    "deepseek-r1": (671.0, 37.0),
    "deepseek-v2-lite": (15.7, 2.4),
    "deepseek-v2": (236.0, 21.0),
    "gpt-oss-120b": (117.0, 5.1),
    "gpt-oss-20b": (21.0, 3.6),
    "phi-3-mini": (3.8, 3.8),
    "phi-3-medium": (14.0, 14.0),
    "gpt2": (0.124, 0.124),
    "opt-125m": (0.125, 0.125),
}

_MOE_NXM = re.compile(r"(?:^|[-_/.])(\d+)x(\d+(?:\.\d+)?)[bB](?:$|[-_/.])")
_ACTIVE = re.compile(r"(?:^|[-_/.])[aA](\d+(?:\.\d+)?)[bB](?:$|[-_/.])")
_SIZE_B = re.compile(r"(?:^|[-_/.])(\d+(?:\.\d+)?)[bB](?:$|[-_/.])")
_SIZE_M = re.compile(r"(?:^|[-_/.])(\d+(?:\.\d+)?)[mM](?:$|[-_/.])")


def params_from_name(model: str) -> tuple[float, float, int, str | None]:
    """(total B, active B, experts, warning) from a model name or path; 8B dense when unknown."""
    name = model.rstrip("/").split("/")[-1] if "/" in model else model
    low = name.lower()
    for known, (total, active) in _KNOWN.items():
        if known in low:
            experts = 0 if total == active else 64
            return total, active, experts, None
    if m := _MOE_NXM.search(name):
        n, size = int(m[1]), float(m[2])
        # Mixtral-8x7B: ~80% of each "7B" is the expert FFN, the rest attention/embeddings shared.
        total = n * size * 0.8 + size * 0.2
        active = 2 * size * 0.8 + size * 0.2
        return round(total, 2), round(active, 2), n, None
    if m := _SIZE_B.search(name):
        total = float(m[1])
        if a := _ACTIVE.search(name[m.end() - 1 :]):
            return total, float(a[1]), 128, None
        return total, total, 0, None
    if m := _SIZE_M.search(name):
        total = float(m[1]) / 1000
        return total, total, 0, None
    return 8.0, 8.0, 0, f"cannot tell the size of model {model!r} from its name; simulating 8B parameters (set AUTOTUNE_SIM_MODEL_PARAMS_B)"


def model_shape(total_b: float, active_b: float | None = None, experts: int = 0, max_context: int = 32768) -> ModelShape:
    """A plausible decoder-only transformer of that size (Llama-like: GQA with 8 KV heads of 128)."""
    active = active_b if active_b else total_b
    # Layer count tracks the active size (Llama-3 8B: 32, 70B: 80; Mixtral 8x7B: 32).
    layers = max(4, int(round(32 * (active / 8.0) ** 0.4)))
    hidden = int(round(math.sqrt(max(active, 0.05) * 1e9 / (12 * layers)) / 128)) * 128 or 128
    heads = 32 if active < 20 else 64
    head_dim = 128 if active >= 2 else 64
    kv_heads = 8
    return ModelShape(
        params_b=total_b,
        active_b=active,
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        experts=experts if experts and total_b > active else 0,
        experts_per_token=2 if experts else 0,
        max_context=max_context,
    )
