"""Task spec → search space → engine command lines.

A *configuration* is one experiment's parameter assignment: a flat `dict[str, Scalar]` of engine flags
(without `--`) plus internal keys starting with `__`, which never reach the command line. The search
space has one *dimension* per thing a strategy chooses:

- every `parameters` entry (a list or `{type: choice|categorical}` → `choice`; `{type: integer|int}` →
  `int`; `{type: continuous|float}` → `float`; a single value or a one-element list → fixed);
- `quant_config` → one `bundle` dimension named `__quant` whose values are labels (a preset name, or
  `gemm_dtype=fp8,kvcache_dtype=auto` for a combination of per-field values) and whose flags are
  merged into the configuration;
- `parallel_config` → one `bundle` dimension named `__parallel`, likewise.

A configuration therefore carries both the bundle's label (`"__quant": "kv-cache-fp8"`) and its flags
(`"kv-cache-dtype": "fp8_e5m2"`), so the label survives the event log and a strategy can replay it.

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

Nothing is dropped silently: an unknown preset or dtype, a value the engine cannot express, or a
setting given twice (e.g. `tp-size` in `parameters` and `tp` in `parallel_config`) raises
`ExpandError` with the field path.
"""

from __future__ import annotations

import itertools
import math
import shlex
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import msgspec

from autotune.schemas.spec import ParameterRange, Scalar, TaskSpec

__all__ = [
    "PARALLEL_PRESETS",
    "QUANT_PRESETS",
    "Dimension",
    "ExpandError",
    "SearchSpace",
    "display_command",
    "engine_command",
    "engine_flags",
    "experiment_space",
    "gpus_for",
    "image_for",
]


class ExpandError(ValueError):
    """The spec asks for something that cannot become an engine command line. `path` names the field."""

    def __init__(self, message: str, path: str = "$") -> None:
        self.message = message
        self.path = path
        super().__init__(f"{path}: {message}")


# --- search space ---------------------------------------------------------------------------------

DimKind = Literal["choice", "bundle", "int", "float"]


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1 (flags are often booleans next to sizes)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _on(value: Any) -> Any:
    """A flag's effect: absent, None and False all leave it off."""
    return None if value is False else value


class Dimension(msgspec.Struct, frozen=True, kw_only=True):
    """One thing a strategy chooses. `bundle` values are labels; `bundles[i]` holds label i's flags."""

    name: str
    kind: DimKind
    values: tuple[Scalar, ...] = ()
    bundles: tuple[dict[str, Scalar], ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    path: str = "$"

    @property
    def size(self) -> int | None:
        """Number of distinct values, None for a continuous range."""
        if self.kind in ("choice", "bundle"):
            return len(self.values)
        if self.step is None:
            return int(self.high - self.low) + 1 if self.kind == "int" else None
        return int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1

    def value_at(self, i: int) -> Scalar:
        if self.kind in ("choice", "bundle"):
            return self.values[i]
        step = self.step if self.step is not None else 1
        if self.kind == "int":
            return int(self.low + i * step)
        return round(self.low + i * step, 12)

    def index_of(self, value: Any) -> int | None:
        """Position of `value` among the dimension's values, None when it is not one of them."""
        if self.kind in ("choice", "bundle"):
            for i, v in enumerate(self.values):
                if _same(v, value):
                    return i
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        step = self.step if self.step is not None else 1
        i = round((value - self.low) / step)
        return i if 0 <= i < (self.size or 0) and math.isclose(self.value_at(i), value, abs_tol=1e-9) else None

    def contains(self, value: Any) -> bool:
        if self.kind in ("choice", "bundle") or self.step is not None or self.kind == "int":
            return self.index_of(value) is not None
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def flags_of(self, label: Scalar) -> dict[str, Scalar]:
        i = self.index_of(label)
        return dict(self.bundles[i]) if self.kind == "bundle" and i is not None else {}


class SearchSpace(msgspec.Struct, frozen=True, kw_only=True):
    """The experiment space of a task: dimensions to choose plus settings common to every experiment."""

    engine: str
    dims: tuple[Dimension, ...] = ()
    fixed: dict[str, Scalar] = {}

    @property
    def size(self) -> int | None:
        """Number of distinct configurations; None when a dimension is continuous."""
        total = 1
        for d in self.dims:
            n = d.size
            if n is None:
                return None
            total *= n
        return total

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def dim(self, name: str) -> Dimension:
        for d in self.dims:
            if d.name == name:
                return d
        raise KeyError(name)

    def configuration(self, point: Mapping[str, Scalar]) -> dict[str, Scalar]:
        """Flatten a point (dimension name → value or bundle label) into a configuration."""
        params: dict[str, Scalar] = dict(self.fixed)
        for d in self.dims:
            value = point[d.name]
            params[d.name] = value
            if d.kind == "bundle":
                params.update(d.flags_of(value))
        return params

    def point(self, params: Mapping[str, Any]) -> dict[str, Scalar] | None:
        """The dimension values of a configuration, None when it is not a member of this space.

        A bundle is found by its `__` label, or else by matching its flags.
        """
        point: dict[str, Scalar] = {}
        for d in self.dims:
            if d.kind == "bundle":
                label = params.get(d.name)
                if label is None or d.index_of(label) is None:
                    union = {k for fl in d.bundles for k in fl}
                    label = next(
                        (
                            lab
                            for lab, fl in zip(d.values, d.bundles, strict=True)
                            if all(_same(_on(params.get(k)), _on(fl.get(k))) for k in union)
                        ),
                        None,
                    )
                    if label is None:
                        return None
                point[d.name] = label
            else:
                if d.name not in params or not d.contains(params[d.name]):
                    return None
                point[d.name] = params[d.name]
        return point

    def key(self, params: Mapping[str, Any]) -> str:
        """Canonical text of a configuration, equal for equal configurations (used to avoid repeats)."""
        point = self.point(params)
        return msgspec.json.encode(point if point is not None else dict(params), order="sorted").decode()

    def config_at(self, index: int) -> dict[str, Scalar]:
        """The configuration at `index` of `grid()` without building the grid (first dimension slowest)."""
        size = self.size
        if size is None or not 0 <= index < size:
            raise IndexError(f"configuration {index} is outside a space of {size} configurations")
        point: dict[str, Scalar] = {}
        for d in reversed(self.dims):
            n = d.size or 1
            index, i = divmod(index, n)
            point[d.name] = d.value_at(i)
        return self.configuration({d.name: point[d.name] for d in self.dims})

    def iter_grid(self) -> Iterator[dict[str, Scalar]]:
        if self.size is None:
            raise ValueError("a continuous range cannot be enumerated; give a list of values or a step")
        axes = [[d.value_at(i) for i in range(d.size or 0)] for d in self.dims]
        for combo in itertools.product(*axes):
            yield self.configuration(dict(zip(self.names, combo, strict=True)))

    def grid(self, limit: int | None = None) -> list[dict[str, Scalar]]:
        """The Cartesian product in a stable order (spec order, first dimension varying slowest)."""
        return list(itertools.islice(self.iter_grid(), limit))


# --- flag names and their aliases ------------------------------------------------------------------

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


def _canonical(flag: str) -> str:
    """One name per engine setting, so `tp`, `tp_size`, `--tp-size` and `tensor-parallel-size` meet."""
    name = flag.lower().lstrip("-").replace("_", "-")
    return _CANONICAL.get(name, name)


def _read_size(params: Mapping[str, Any], canon: str) -> int:
    for key, value in params.items():
        if key.startswith("__") or value is None or isinstance(value, bool) or _canonical(key) != canon:
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
    if any(not k.startswith("__") and _canonical(k) == "enable-dp-attention" and v is True for k, v in params.items()):
        dp = 1
    return tp * pp * max(dp, dcp, cp)


# --- quantization ----------------------------------------------------------------------------------

QUANT_FIELDS = ("gemm_dtype", "kvcache_dtype", "attention_dtype", "moe_dtype")

QUANT_PRESETS: dict[str, dict[str, str]] = {
    "default": {"gemm_dtype": "auto", "kvcache_dtype": "auto", "attention_dtype": "auto", "moe_dtype": "auto"},
    "kv-cache-fp8": {"gemm_dtype": "auto", "kvcache_dtype": "fp8_e5m2", "attention_dtype": "auto", "moe_dtype": "auto"},
    "dynamic-fp8": {"gemm_dtype": "fp8", "kvcache_dtype": "fp8_e5m2", "attention_dtype": "fp8", "moe_dtype": "fp8"},
    "bf16-stable": {"gemm_dtype": "bfloat16", "kvcache_dtype": "fp8_e5m2", "attention_dtype": "auto", "moe_dtype": "auto"},
    "aggressive-moe": {"gemm_dtype": "bfloat16", "kvcache_dtype": "fp8_e5m2", "attention_dtype": "fp8", "moe_dtype": "w4afp8"},
}

_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}

_Flags = dict[str, Scalar]
# field -> value -> (SGLang flags, vLLM flags); None where that engine has no way to do it
_QUANT_FLAGS: dict[str, dict[str, tuple[_Flags | None, _Flags | None]]] = {
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


def _merge(into: _Flags, flags: _Flags, what: str, sources: dict[str, str], path: str) -> None:
    for flag, value in flags.items():
        if flag in into and not _same(into[flag], value):
            raise ExpandError(
                f"{what} sets --{flag} {_fmt(value)} but {sources[flag]} already sets --{flag} {_fmt(into[flag])}; "
                "these cannot be combined",
                path,
            )
        into[flag] = value
        sources.setdefault(flag, what)


def _quant_flags(engine: str, combo: Mapping[str, str], path: str) -> _Flags:
    col = 0 if engine == "sglang" else 1
    flags: _Flags = {}
    sources: dict[str, str] = {}
    for field in QUANT_FIELDS:
        value = combo.get(field, "auto")
        _merge(flags, _QUANT_FLAGS[field][value][col] or {}, f"{field}={value}", sources, path)
    if combo.get("attention_dtype", "auto").startswith("fp8") and not combo.get("kvcache_dtype", "auto").startswith("fp8"):
        raise ExpandError(
            f"attention_dtype={combo['attention_dtype']} runs attention on an FP8 KV cache, but kvcache_dtype is "
            f"{combo.get('kvcache_dtype', 'auto')}; set kvcache_dtype to fp8, fp8_e5m2 or fp8_e4m3",
            path,
        )
    return flags


class _Bundles(msgspec.Struct):
    name: str
    path: str
    labels: list[str] = []
    flags: list[_Flags] = []
    sources: dict[str, str] = {}  # flag -> field path that produces it, for conflict messages

    def add(self, label: str, flags: _Flags, *, dedupe: bool) -> None:
        if dedupe and flags in self.flags:
            return  # two field combinations that give the same command line are one experiment
        self.labels.append(label)
        self.flags.append(flags)


def _as_list(value: Any) -> list[Any] | None:
    """A field's values: None when the field is absent or an empty list (skipped, like parameters)."""
    if value is None:
        return None
    if isinstance(value, list):
        return value or None
    return [value]


def _presets_of(cfg: Any, base: str) -> list[tuple[str, str]] | None:
    if cfg.preset is not None and cfg.presets:
        raise ExpandError("give either `preset` or `presets`, not both", f"{base}.preset")
    if cfg.preset is not None:
        return [(cfg.preset, f"{base}.preset")]
    if cfg.presets:
        seen: set[str] = set()
        out = []
        for i, name in enumerate(cfg.presets):
            if name in seen:
                raise ExpandError(f"preset `{name}` is listed twice", f"{base}.presets[{i}]")
            seen.add(name)
            out.append((name, f"{base}.presets[{i}]"))
        return out
    return None


def _field_values(cfg: Any, fields: tuple[str, ...], base: str) -> dict[str, list[tuple[Any, str]]]:
    """Given fields → [(value, path of the value)], in field order."""
    out: dict[str, list[tuple[Any, str]]] = {}
    for field in fields:
        raw = getattr(cfg, field)
        values = _as_list(raw)
        if values is None:
            continue
        if isinstance(raw, list):
            out[field] = [(v, f"{base}.{field}[{i}]") for i, v in enumerate(values)]
        else:
            out[field] = [(raw, f"{base}.{field}")]
    return out


def _combos(fields: dict[str, list[tuple[Any, str]]]) -> Iterator[dict[str, Any]]:
    names = list(fields)
    for combo in itertools.product(*(fields[n] for n in names)):
        yield {n: v for n, (v, _) in zip(names, combo, strict=True)}


def _label(combo: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={_fmt(v)}" for k, v in combo.items())


def _quant_bundles(spec: TaskSpec) -> _Bundles | None:
    qc = spec.quant_config
    if qc is None:
        return None
    base = "$.quant_config"
    presets = _presets_of(qc, base)
    fields = _field_values(qc, QUANT_FIELDS, base)
    if presets and fields:
        first = next(iter(fields))
        raise ExpandError(
            "a preset fixes all four dtypes; use presets or per-field dtypes, not both "
            "(or list the combination you want as per-field values)",
            f"{base}.{first}",
        )
    if presets:
        out = _Bundles(name="__quant", path=f"{base}.presets" if qc.presets else f"{base}.preset")
        for name, path in presets:
            if name not in QUANT_PRESETS:
                raise ExpandError(f"unknown quantization preset `{name}`; known presets: {', '.join(QUANT_PRESETS)}", path)
            combo = QUANT_PRESETS[name]
            try:
                for field in QUANT_FIELDS:
                    _quant_value(field, combo[field], spec.engine, path)
                flags = _quant_flags(spec.engine, combo, path)
            except ExpandError as e:
                raise ExpandError(f"preset `{name}`: {e.message}", path) from None
            out.add(name, flags, dedupe=False)
            for flag in flags:
                out.sources.setdefault(flag, path)
        return out
    if not fields:
        return None
    normal = {
        f: [(_quant_value(f, v, spec.engine, p), p) for v, p in vals] for f, vals in fields.items()
    }
    out = _Bundles(name="__quant", path=base)
    for combo in _combos(normal):
        flags = _quant_flags(spec.engine, combo, base)
        out.add(_label(combo), flags, dedupe=True)
        for flag in flags:
            out.sources.setdefault(flag, base)
    return out


# --- parallelism -----------------------------------------------------------------------------------

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


def _parallel_flags(engine: str, layout: Mapping[str, Any], path: str) -> _Flags:
    """One layout (field → value) as engine flags. Raises where the engine cannot express it."""
    get = layout.get
    tp, dp = get("tp", 1), get("dp", 1)
    flags: _Flags = {}
    sources: dict[str, str] = {}

    def put(flag: str, value: Scalar, field: str) -> None:
        _merge(flags, {flag: value}, f"{field}={_fmt(get(field))}", sources, path)

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


def _parallel_bundles(spec: TaskSpec) -> _Bundles | None:
    pc = spec.parallel_config
    if pc is None:
        return None
    base = "$.parallel_config"
    presets = _presets_of(pc, base)
    fields = _field_values(pc, PARALLEL_FIELDS, base)
    if presets and fields:
        first = next(iter(fields))
        raise ExpandError("a preset fixes the whole layout; use presets or per-field values, not both", f"{base}.{first}")
    if presets:
        out = _Bundles(name="__parallel", path=f"{base}.presets" if pc.presets else f"{base}.preset")
        for name, path in presets:
            if name not in PARALLEL_PRESETS:
                raise ExpandError(f"unknown parallel preset `{name}`; known presets: {', '.join(PARALLEL_PRESETS)}", path)
            for layout in PARALLEL_PRESETS[name]:
                try:
                    flags = _parallel_flags(spec.engine, layout, path)
                except ExpandError as e:
                    raise ExpandError(f"preset `{name}` ({_label(layout)}): {e.message}", path) from None
                out.add(f"{name}:{_label(layout)}", flags, dedupe=False)
                for flag in flags:
                    out.sources.setdefault(flag, path)
        return out
    if not fields:
        return None
    normal = {f: [(_parallel_value(f, v, p), p) for v, p in vals] for f, vals in fields.items()}
    out = _Bundles(name="__parallel", path=base)
    for combo in _combos(normal):
        flags = _parallel_flags(spec.engine, combo, base)
        out.add(_label(combo), flags, dedupe=True)
        for flag in flags:
            field = next((f for f in normal if _canonical(f) == _canonical(flag)), None)
            out.sources.setdefault(flag, f"{base}.{field}" if field else base)
    return out


# --- the space -------------------------------------------------------------------------------------


def _dedupe(values: list[Scalar]) -> list[Scalar]:
    out: list[Scalar] = []
    for v in values:
        if not any(_same(v, o) and type(v) is type(o) for o in out):
            out.append(v)
    return out


def _range_dimension(name: str, p: ParameterRange, path: str) -> Dimension:
    assert p.low is not None and p.high is not None  # spec validation guarantees both
    if p.low > p.high:
        raise ExpandError(f"low ({p.low}) is greater than high ({p.high})", path)
    if p.log and p.low <= 0:
        raise ExpandError("a log-scaled range needs low > 0", f"{path}.low")
    if p.step is not None and p.step <= 0:
        raise ExpandError(f"step must be positive, got {p.step}", f"{path}.step")
    if p.type in ("integer", "int"):
        for what, v in (("low", p.low), ("high", p.high), ("step", p.step)):
            if v is not None and v != int(v):
                raise ExpandError(f"an integer range needs a whole {what}, got {v}", f"{path}.{what}")
        step = None if p.step in (None, 1) else float(int(p.step))  # type: ignore[arg-type]
        if p.log and step is not None:
            raise ExpandError("a log-scaled range cannot have a step", f"{path}.step")
        return Dimension(name=name, kind="int", low=float(int(p.low)), high=float(int(p.high)), log=p.log, step=step, path=path)
    if p.log and p.step is not None:
        raise ExpandError("a log-scaled range cannot have a step", f"{path}.step")
    return Dimension(name=name, kind="float", low=float(p.low), high=float(p.high), log=p.log, step=p.step, path=path)


def experiment_space(spec: TaskSpec) -> SearchSpace:
    """The dimensions to search for `spec`, with quant and parallel configs expanded into engine flags."""
    dims: list[Dimension] = []
    fixed: dict[str, Scalar] = {}
    owners: dict[str, tuple[str, str]] = {}  # canonical setting -> (path, flag)

    def claim(flag: str, path: str) -> None:
        if flag.startswith("__"):
            return
        canon = _canonical(flag)
        if canon in owners:
            other, other_flag = owners[canon]
            raise ExpandError(
                f"`{flag}` sets the same engine setting as {other} (`{other_flag}`); set it in one place only", path
            )
        owners[canon] = (path, flag)

    for name, p in spec.parameters.items():
        path = f"$.parameters.{name}"
        if name in ("__quant", "__parallel"):
            raise ExpandError(f"`{name}` is reserved for quant_config/parallel_config", path)
        if isinstance(p, ParameterRange):
            if p.type in ("choice", "categorical"):
                values = _dedupe(list(p.values or []))
                if not values:
                    continue
            else:
                claim(name, path)
                dims.append(_range_dimension(name, p, path))
                continue
        elif isinstance(p, list):
            values = _dedupe(p)
            if not values:
                continue  # empty lists are skipped, as in the original
        else:
            values = [p]
        claim(name, path)
        if len(values) == 1:
            fixed[name] = values[0]
        else:
            dims.append(Dimension(name=name, kind="choice", values=tuple(values), path=path))

    for bundles in (_quant_bundles(spec), _parallel_bundles(spec)):
        if bundles is None:
            continue
        flags = {flag: None for fl in bundles.flags for flag in fl}  # ordered union
        for flag in flags:
            claim(flag, bundles.sources.get(flag, bundles.path))
        if len(bundles.labels) == 1:
            fixed[bundles.name] = bundles.labels[0]
            fixed.update(bundles.flags[0])
        else:
            dims.append(
                Dimension(
                    name=bundles.name,
                    kind="bundle",
                    values=tuple(bundles.labels),
                    bundles=tuple(bundles.flags),
                    path=bundles.path,
                )
            )
    return SearchSpace(engine=spec.engine, dims=tuple(dims), fixed=fixed)


# --- command lines ---------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def engine_flags(params: Mapping[str, Any]) -> list[str]:
    """The flag part of an engine command: `True` → bare `--flag`, `False`/None omitted, `__` keys skipped."""
    argv: list[str] = []
    for key, value in params.items():
        if key.startswith("__") or value is None or value is False:
            continue
        flag = key if key.startswith("-") else f"--{key}"
        argv.append(flag)
        if value is not True:
            argv.append(_fmt(value))
    return argv


def engine_command(
    spec: TaskSpec,
    params: Mapping[str, Any],
    *,
    port: int,
    host: str = "0.0.0.0",
    model_path: str | None = None,
) -> list[str]:
    """The real engine argv for one configuration (template parameter names become the engine's flags)."""
    from autotune.shared.engine_params import engine_params

    model = model_path or spec.model_id
    if spec.engine == "vllm":
        head = ["vllm", "serve", model, "--host", host, "--port", str(port)]
    else:
        head = ["python3", "-m", "sglang.launch_server", "--model-path", model, "--host", host, "--port", str(port)]
    return head + engine_flags(engine_params(spec.engine, params))


def display_command(argv: list[str]) -> str:
    """A command line a person can paste into a shell."""
    return shlex.join(argv)


def image_for(spec: TaskSpec) -> str:
    tag = spec.runtime_image_tag or "latest"
    return f"vllm/vllm-openai:{tag}" if spec.engine == "vllm" else f"lmsysorg/sglang:{tag}"
