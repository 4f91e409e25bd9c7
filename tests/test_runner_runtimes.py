"""The local and simulated runtimes with real processes: GPUs from the lease, output captured, the whole
tree killed (even a child that ignores SIGTERM or left the process group), orphans reaped by label."""

from __future__ import annotations

import asyncio
import os

import pytest

from autotune.runner.runtimes import Launch, simulated_argv
from autotune.runner.runtimes.local import LocalRuntime, SimulatedRuntime, labelled_processes
from autotune.shared.net import free_port


def launch(key: str, argv: list[str], *, host: str = "rt", gpus: list[int] | None = None, port: int = 1, simulated: bool = False) -> Launch:
    task, n, attempt = key.split("/")
    return Launch(key=key, task=task, n=int(n), attempt=int(attempt), host=host, instance="i1", argv=argv, port=port, gpu_indices=gpus or [0], simulated=simulated)


def pids_of(key: str) -> list[int]:
    return [pid for pid, labels in labelled_processes() if labels.get("AUTOTUNE_LABEL_EXPERIMENT") == key]


async def test_local_runtime_captures_output_and_kills_the_whole_tree():
    # the engine forks a child that ignores SIGTERM and a grandchild that escapes into its own session
    script = (
        'echo "gpus=$CUDA_VISIBLE_DEVICES experiment=$AUTOTUNE_LABEL_EXPERIMENT"; '
        "(trap '' TERM; sleep 300) & "
        "setsid sleep 300 & "
        "echo started; sleep 300"
    )
    h = await LocalRuntime().launch(launch("t/0/0", ["bash", "-c", script], gpus=[2, 3]))
    lines = [await asyncio.wait_for(h.lines.get(), 10) for _ in range(2)]
    assert lines == ["gpus=2,3 experiment=t/0/0", "started"]
    await asyncio.sleep(0.2)
    assert len(pids_of("t/0/0")) >= 3  # bash, the sleep that ignores SIGTERM, the setsid sleep
    await h.stop(grace_s=1)
    assert h.exited.is_set() and h.exit_code is not None
    assert pids_of("t/0/0") == []


async def test_an_engine_that_exits_reports_its_code_after_its_last_line():
    h = await LocalRuntime().launch(launch("t/1/0", ["bash", "-c", "echo boom >&2; exit 3"]))
    await asyncio.wait_for(h.exited.wait(), 10)
    assert h.exit_code == 3 and list(h.tail) == ["boom"]
    await h.stop()


async def test_simulated_runtime_runs_the_simulator_with_the_engine_flags():
    port = free_port()
    argv = ["python3", "-m", "sglang.launch_server", "--model-path", "meta-llama/Llama-3.1-8B-Instruct", "--host", "127.0.0.1", "--port", str(port), "--mem-fraction-static", "0.8"]
    h = await SimulatedRuntime().launch(launch("sim/0/0", argv, port=port))
    assert h.command == simulated_argv(argv) and h.base_url == f"http://127.0.0.1:{port}"
    first = await asyncio.wait_for(h.lines.get(), 10)
    assert "SIMULATED sglang server" in first
    await h.stop()
    assert pids_of("sim/0/0") == []


async def test_reap_removes_only_what_no_live_experiment_owns():
    rt = LocalRuntime()
    keep = await rt.launch(launch("r/0/0", ["sleep", "300"], host="reap"))
    orphan = await rt.launch(launch("r/1/0", ["sleep", "300"], host="reap"))
    other_host = await rt.launch(launch("r/2/0", ["sleep", "300"], host="someone-else"))
    try:
        removed = await rt.reap_orphans("reap", keep={"r/0/0"})
        assert removed == [orphan.ident]
        await asyncio.wait_for(orphan.exited.wait(), 10)
        assert pids_of("r/0/0") and pids_of("r/2/0") and not pids_of("r/1/0")
    finally:
        for h in (keep, orphan, other_host):
            await h.stop(grace_s=1)


def test_models_dir_names_resolve_to_a_directory(tmp_path):
    rt = LocalRuntime(models_dir=str(tmp_path))
    spec = launch("m/0/0", ["vllm", "serve", "llama-8b", "--port", "1"])
    spec.model = "llama-8b"
    assert rt.command(spec)[2] == os.path.join(tmp_path, "llama-8b")
    spec.model, spec.argv = "meta-llama/Llama-3.1-8B", ["vllm", "serve", "meta-llama/Llama-3.1-8B"]
    assert rt.command(spec)[2] == "meta-llama/Llama-3.1-8B"  # a HF id stays as it is


@pytest.mark.parametrize("argv", [["vllm", "serve", "m", "--port", "1"], ["python3", "-m", "sglang.launch_server", "--model-path", "m"]])
def test_simulated_argv_keeps_every_flag(argv):
    out = simulated_argv(argv, python="python3", module="simulator")
    assert out[:3] == ["python3", "-m", "simulator"] and out[-len(argv) + (2 if argv[0] == "vllm" else 3):] == argv[(2 if argv[0] == "vllm" else 3):]
