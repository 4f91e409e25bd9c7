"""The task spec: the original autotuner's task file, field for field, plus autotune's extensions.

Users bring their JSON or YAML task files unchanged. Unknown fields are refused (a typo must fail
loudly), and every error names the field path, the line (YAML/JSON), and what to do.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

import msgspec
import yaml

Scalar = str | int | float | bool | None

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

STRATEGIES = ("grid_search", "random", "bayesian", "multi_objective")
OBJECTIVES = ("minimize_latency", "maximize_throughput", "minimize_ttft", "minimize_tpot")
DEPLOYMENT_MODES = ("docker", "local", "ome", "kubernetes", "simulated")
ENGINES = ("sglang", "vllm")
CLUSTER_MODES = ("kubernetes", "ome")  # the modes that can mount a PersistentVolumeClaim
DEFAULT_MOUNT_PATH = "/mnt/models"


class SpecError(ValueError):
    """A task spec that cannot be accepted. `path` is like `$.optimization.max_iterations`."""

    def __init__(self, message: str, path: str = "$", line: int | None = None, source: str = "") -> None:
        self.message = message
        self.path = path
        self.line = line
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path
        if self.source:
            where = f"{self.source}:{self.line}: {where}" if self.line else f"{self.source}: {where}"
        elif self.line:
            where = f"line {self.line}: {where}"
        return f"{where}: {self.message}"


class _Spec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class Model(_Spec, kw_only=True):
    id_or_path: str
    namespace: str = "autotuner"
    hf_token: str | None = None


class ParameterRange(_Spec, kw_only=True):
    """A search dimension given as a dict; a plain list is shorthand for `{type: choice, values}`."""

    type: Literal["choice", "categorical", "continuous", "integer", "float", "int"]
    values: list[Scalar] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None


class Optimization(_Spec, kw_only=True):
    strategy: str = "grid_search"
    objective: str = "minimize_latency"
    max_iterations: int = 100
    timeout_per_iteration: float = 1800.0  # seconds, one experiment end to end
    n_initial_random: int = 5
    seed: int | None = None
    # autotune extensions
    max_parallel: int = 1
    time_budget_s: float | None = None  # stop planning after this many seconds
    patience: int | None = None  # stop after this many experiments without improvement
    objectives: list[str] | None = None  # multi_objective: e.g. [maximize_throughput, minimize_latency]
    repeats: int = 1  # run each configuration this many times
    max_retries: int = 3  # retries of an experiment that failed for infrastructure reasons


class Benchmark(_Spec, kw_only=True):
    task: str = "text-to-text"
    model_name: str | None = None
    model_tokenizer: str | None = None
    traffic_scenarios: list[str] = msgspec.field(default_factory=lambda: ["D(100,100)"])
    num_concurrency: list[int] = msgspec.field(default_factory=lambda: [1])
    max_time_per_iteration: float = 10.0  # MINUTES, per scenario x concurrency run
    max_requests_per_iteration: int = 50
    additional_params: dict[str, Any] = {}
    # replay real prompts instead of synthetic ones (docs/task-file.md, shared/dataset.py)
    dataset_url: str | None = None
    dataset_deduplicate: bool = True
    # autotune extensions
    warmup_requests: int = 1
    driver: Literal["builtin", "genai-bench"] = "builtin"


class SLOTerm(_Spec, kw_only=True):
    threshold: float  # seconds
    weight: float = 1.0
    hard_fail: bool = False
    fail_ratio: float = 0.5


class LatencySLO(_Spec, kw_only=True):
    p50: SLOTerm | None = None
    p90: SLOTerm | None = None
    p99: SLOTerm | None = None


class SLO(_Spec, kw_only=True):
    latency: LatencySLO | None = None
    ttft: SLOTerm | None = None
    tpot: SLOTerm | None = None
    steepness: float = 0.1


Multi = Scalar | list[Scalar]


class QuantConfig(_Spec, kw_only=True):
    gemm_dtype: Multi = None
    kvcache_dtype: Multi = None
    attention_dtype: Multi = None
    moe_dtype: Multi = None
    preset: str | None = None
    presets: list[str] | None = None


class ParallelConfig(_Spec, kw_only=True):
    tp: Multi = None
    pp: Multi = None
    dp: Multi = None
    cp: Multi = None
    dcp: Multi = None
    enable_expert_parallel: Multi = None
    moe_tp: Multi = None
    moe_ep: Multi = None
    ep: Multi = None
    enable_dp_attention: Multi = None
    preset: str | None = None
    presets: list[str] | None = None


class Storage(_Spec, kw_only=True):
    """Serve the model from a PersistentVolumeClaim (Kubernetes and OME modes), mounted read-only."""

    type: str = "pvc"  # the only kind there is; checked in schemas/runtime.py, so the refusal says so
    pvc_name: str
    pvc_subpath: str | None = None
    mount_path: str = DEFAULT_MOUNT_PATH


class OmeResource(_Spec, kw_only=True):
    """An OME ClusterBaseModel or ClusterServingRuntime: `{preset}` or `{name, spec}` (shared/ome.py)."""

    preset: str | None = None
    name: str | None = None
    spec: dict[str, Any] | None = None
    overrides: dict[str, Any] = {}
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class TaskSpec(_Spec, kw_only=True):
    task_name: str
    description: str = ""
    model: Model | str
    base_runtime: str = "sglang"
    runtime_image_tag: str | None = None
    deployment_mode: str = "docker"
    gpu_type: str | None = None
    parameters: dict[str, list[Scalar] | ParameterRange | Scalar] = {}
    optimization: Optimization = Optimization()
    benchmark: Benchmark = Benchmark()
    slo: SLO | None = None
    quant_config: QuantConfig | None = None
    parallel_config: ParallelConfig | None = None
    storage: Storage | None = None
    clusterbasemodel_config: OmeResource | None = None
    clusterservingruntime_config: OmeResource | None = None
    # autotune extension: the engine, where base_runtime (an OME ClusterServingRuntime) does not tell
    runtime_engine: Literal["sglang", "vllm"] | None = None
    # autotune extension: set in the engine's environment (e.g. VLLM_CPU_KVCACHE_SPACE for vLLM on CPU);
    # the host's own configuration (`--engine-env`) comes first, the task's overrides it
    engine_env: dict[str, str] = {}

    @property
    def engine(self) -> str:
        from autotune.schemas.runtime import infer_engine

        return infer_engine(self) or "sglang"

    @property
    def model_id(self) -> str:
        return self.model if isinstance(self.model, str) else self.model.id_or_path

    @property
    def task_id(self) -> str:
        return task_id_for(self.task_name)


def task_id_for(name: str) -> str:
    """The subject token for a task name: the name itself when it is a valid token, else a slug."""
    if TOKEN_RE.match(name):
        return name
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")
    return slug or "task"


# --- decoding -------------------------------------------------------------------------------------


def load_spec_file(path: str) -> TaskSpec:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise SpecError(f"cannot read the task file: {e.strerror}", source=path) from None
    return parse_spec(text, source=path)


def parse_spec(text: str | bytes, *, source: str = "", fmt: str | None = None) -> TaskSpec:
    """Decode a task file (JSON or YAML, sniffed unless `fmt` says) and validate it fully."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise SpecError("the task file is not UTF-8 text", source=source) from None
    is_json = fmt == "json" or (fmt is None and (source.endswith(".json") or text.lstrip().startswith("{")))
    if is_json:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"invalid JSON: {e.msg}", line=e.lineno, source=source) from None
    else:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            problem = getattr(e, "problem", None) or str(e)
            raise SpecError(f"invalid YAML: {problem}", line=mark.line + 1 if mark else None, source=source) from None
    try:
        return spec_from_obj(raw)
    except SpecError as e:
        e.source = source
        e.line = _line_of(text, e.path, is_json)
        raise


CPU = "cpu"


def is_cpu_serving(gpu_type: str | None) -> bool:
    """Whether a task asks for a real engine on a host's CPU (`gpu_type: cpu`) instead of GPUs."""
    return (gpu_type or "").strip().lower() == CPU


def real_cpu(simulate: bool | None, deployment_mode: str | None, gpu_type: str | None) -> bool:
    """Whether results come from a real engine serving on a CPU: real, but its speeds say nothing
    about GPUs. Every surface labels such a task or experiment, as it labels simulated ones."""
    return is_cpu_serving(gpu_type) and not is_simulated(simulate, deployment_mode)


REAL_CPU_NOTE = "measured on a REAL engine serving on CPU: its speeds say nothing about GPUs"


def is_simulated(simulate: bool | None, deployment_mode: str | None) -> bool:
    """Whether a task runs on simulated engines and GPUs: asked for at submit (`--simulate`), or a
    spec whose `deployment_mode` is `simulated`. The one rule every surface labels results by."""
    return bool(simulate) or deployment_mode == "simulated"


def spec_from_obj(raw: Any) -> TaskSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"a task file must be a mapping of fields, got {type(raw).__name__}")
    try:
        spec = msgspec.convert(raw, TaskSpec, strict=False)
    except msgspec.ValidationError as e:
        msg, _, path = str(e).rpartition(" - at `")
        if not msg:
            msg, path = str(e), "$"
        path = path.rstrip("`") or "$"
        if path.startswith("key` in `"):  # msgspec: "Expected `str` - at `key` in `$.model`"
            path = path.removeprefix("key` in `")
            msg = f"a key here is not a field name ({msg}); field names are text"
        if msg.startswith("Object contains unknown field"):
            field = msg.split("`")[1]
            path = f"{path}.{field}" if path != "$" else f"$.{field}"
            msg = f"unknown field `{field}`; check its spelling against the task file reference"
        elif msg.startswith("Object missing required field"):
            field = msg.split("`")[1]
            msg = f"required field `{field}` is missing"
        raise SpecError(msg, path) from None
    validate(spec)
    return spec


def validate(spec: TaskSpec) -> None:
    """Checks msgspec's types cannot express. Raises SpecError with the field path."""
    from autotune.schemas.scenarios import ScenarioError, parse_scenario

    if not spec.task_name.strip():
        raise SpecError("must not be empty", "$.task_name")
    if len(spec.task_name) > 128:
        raise SpecError("must be at most 128 characters", "$.task_name")
    if not spec.model_id.strip():
        raise SpecError("must name a model (HuggingFace id, a directory, or an absolute path)", "$.model.id_or_path")
    if spec.deployment_mode not in DEPLOYMENT_MODES:
        raise SpecError(f"`{spec.deployment_mode}` is not one of {', '.join(DEPLOYMENT_MODES)}", "$.deployment_mode")
    from autotune.schemas.runtime import validate_runtime

    validate_runtime(spec)
    for name in spec.engine_env:
        if not ENV_NAME.match(name):
            raise SpecError("an environment variable name is letters, digits and _, not starting with a digit", f"$.engine_env.{name}")
    if is_cpu_serving(spec.gpu_type) and spec.deployment_mode not in ("local", "simulated"):
        raise SpecError(
            f"CPU serving (gpu_type: cpu) runs the engine as a local process: use deployment_mode local, not {spec.deployment_mode}",
            "$.deployment_mode",
        )
    opt = spec.optimization
    if opt.strategy not in STRATEGIES:
        raise SpecError(f"`{opt.strategy}` is not one of {', '.join(STRATEGIES)}", "$.optimization.strategy")
    if opt.objective not in OBJECTIVES:
        raise SpecError(f"`{opt.objective}` is not one of {', '.join(OBJECTIVES)}", "$.optimization.objective")
    for i, o in enumerate(opt.objectives or []):
        if o not in OBJECTIVES:
            raise SpecError(f"`{o}` is not one of {', '.join(OBJECTIVES)}", f"$.optimization.objectives[{i}]")
    if opt.strategy == "multi_objective" and len(opt.objectives or []) < 2:
        raise SpecError("multi_objective needs at least two objectives", "$.optimization.objectives")
    for field, value, low in (
        ("max_iterations", opt.max_iterations, 1),
        ("max_parallel", opt.max_parallel, 1),
        ("repeats", opt.repeats, 1),
        ("n_initial_random", opt.n_initial_random, 0),
        ("max_retries", opt.max_retries, 0),
    ):
        if value < low:
            raise SpecError(f"must be at least {low}, got {value}", f"$.optimization.{field}")
    if not math.isfinite(opt.timeout_per_iteration) or (opt.time_budget_s is not None and not math.isfinite(opt.time_budget_s)):
        raise SpecError("must be a finite number of seconds", "$.optimization")
    if opt.timeout_per_iteration <= 0:
        raise SpecError("must be positive (seconds)", "$.optimization.timeout_per_iteration")
    if opt.patience is not None and opt.patience < 1:
        raise SpecError("must be at least 1", "$.optimization.patience")
    for name, p in spec.parameters.items():
        path = f"$.parameters.{name}"
        if not name or not re.match(r"^[A-Za-z0-9_.-]+$", name):
            raise SpecError("a parameter name is an engine flag without `--` (letters, digits, - _ .)", path)
        if isinstance(p, ParameterRange):
            if p.type in ("choice", "categorical"):
                if not p.values:
                    raise SpecError(f"type {p.type} needs a non-empty `values` list", f"{path}.values")
            else:
                if p.low is None or p.high is None:
                    raise SpecError(f"type {p.type} needs `low` and `high`", path)
                if not (math.isfinite(p.low) and math.isfinite(p.high)) or max(abs(p.low), abs(p.high)) > 1e15:
                    raise SpecError("low and high must be finite numbers (at most 1e15)", path)
                if p.low > p.high:
                    raise SpecError(f"low ({p.low}) is greater than high ({p.high})", path)
                if p.log and p.low <= 0:
                    raise SpecError("a log-scaled range needs low > 0", f"{path}.low")
                if opt.strategy == "grid_search":
                    raise SpecError(
                        f"a {p.type} range cannot be enumerated by grid_search; "
                        "use strategy bayesian or random, or give a list of values",
                        path,
                    )
    bench = spec.benchmark
    if bench.dataset_url is not None:
        from autotune.shared.dataset import DatasetError, check_url

        try:
            check_url(bench.dataset_url)
        except DatasetError as e:
            raise SpecError(str(e), "$.benchmark.dataset_url") from None
    if not bench.traffic_scenarios:
        raise SpecError("needs at least one scenario, e.g. D(100,100)", "$.benchmark.traffic_scenarios")
    for i, s in enumerate(bench.traffic_scenarios):
        try:
            parse_scenario(s)
        except ScenarioError as e:
            raise SpecError(str(e), f"$.benchmark.traffic_scenarios[{i}]") from None
    if not bench.num_concurrency:
        raise SpecError("needs at least one concurrency level", "$.benchmark.num_concurrency")
    for i, c in enumerate(bench.num_concurrency):
        if c < 1:
            raise SpecError(f"must be at least 1, got {c}", f"$.benchmark.num_concurrency[{i}]")
    if bench.max_time_per_iteration <= 0:
        raise SpecError("must be positive (minutes)", "$.benchmark.max_time_per_iteration")
    if bench.max_requests_per_iteration < 1:
        raise SpecError("must be at least 1", "$.benchmark.max_requests_per_iteration")
    if spec.slo:
        terms: list[tuple[str, SLOTerm | None]] = [("ttft", spec.slo.ttft), ("tpot", spec.slo.tpot)]
        if spec.slo.latency:
            terms += [(f"latency.{k}", getattr(spec.slo.latency, k)) for k in ("p50", "p90", "p99")]
        for key, term in terms:
            if term is None:
                continue
            if not math.isfinite(term.threshold) or not math.isfinite(term.weight):
                raise SpecError("must be a finite number", f"$.slo.{key}")
            if term.threshold <= 0:
                raise SpecError("must be positive (seconds)", f"$.slo.{key}.threshold")
            if term.weight < 0 or term.fail_ratio < 0:
                raise SpecError("weight and fail_ratio must not be negative", f"$.slo.{key}")
        if spec.slo.steepness <= 0:
            raise SpecError("must be positive", "$.slo.steepness")
    # presets and engine flags are checked where they expand, so the error names the preset
    from autotune.shared.engine_params import TemplateParamError, check
    from autotune.shared.expand import ExpandError, experiment_space

    try:
        experiment_space(spec)
        check(spec.engine, spec.parameters)
    except (ExpandError, TemplateParamError) as e:
        raise SpecError(e.message, e.path) from None


# --- line numbers for error messages ----------------------------------------------------------------

_PATH_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _path_parts(path: str) -> list[str | int]:
    return [k if k is not None and k != "" else int(i) for k, i in _PATH_TOKEN.findall(path.removeprefix("$"))]


def _line_of(text: str, path: str, is_json: bool) -> int | None:
    """Best-effort 1-based line of `path` in the source text, for error messages."""
    parts = _path_parts(path)
    if not parts:
        return None
    try:
        node = yaml.compose(text)  # JSON is YAML, so one walker serves both
    except yaml.YAMLError:
        return None
    line = None
    for part in parts:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for k, v in node.value:
                if k.value == part:
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
