"""A configuration → the engine's command line (argv, and as text to paste), and the image it runs in."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from autotune.schemas.spec import TaskSpec
from autotune.shared.expand.flags import value_text


def engine_flags(params: Mapping[str, Any]) -> list[str]:
    """The flag part of an engine command: `True` → bare `--flag`, `False`/None omitted, `__` keys skipped."""
    argv: list[str] = []
    for key, value in params.items():
        if key.startswith("__") or value is None or value is False:
            continue
        flag = key if key.startswith("-") else f"--{key}"
        argv.append(flag)
        if value is not True:
            argv.append(value_text(value))
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
