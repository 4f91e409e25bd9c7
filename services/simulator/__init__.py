"""The engine simulator: an OpenAI-compatible server that stands in for SGLang or vLLM without a GPU.

    python3 -m autotune.simulator sglang --model-path Llama-3.1-8B --port 30000 --tp-size 1 ...
    python3 -m autotune.simulator vllm serve Qwen2.5-72B --port 8000 --tensor-parallel-size 4 ...

Its speed follows a performance model of the engine flags, GPU type and model size (`perfmodel`), with a
continuous-batching scheduler running in (scaled) real time (`scheduler`, `replica`), served over HTTP
(`server`, `connection`, `completions`, `prometheus`; `main` runs the process). Standard library only,
relative imports only: the folder runs in any python3 container, also copied on its own as `simulator`.
Every response and log line says SIMULATED. See README.md beside this file.
"""

from .perfmodel import steady_state

__all__ = ["steady_state"]
