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

The presets' meanings and their flags per engine are in `quantization.py` and `parallelism.py`.

Nothing is dropped silently: an unknown preset or dtype, a value the engine cannot express, or a
setting given twice (e.g. `tp-size` in `parameters` and `tp` in `parallel_config`) raises
`ExpandError` with the field path.
"""

from autotune.shared.expand.command import display_command, engine_command, engine_flags, image_for
from autotune.shared.expand.flags import gpus_for
from autotune.shared.expand.from_spec import experiment_space
from autotune.shared.expand.parallelism import PARALLEL_PRESETS
from autotune.shared.expand.quantization import QUANT_PRESETS
from autotune.shared.expand.space import Dimension, ExpandError, SearchSpace

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
