"""The simulator as a process: startup, HTTP API, streaming, errors, failures at launch."""

from __future__ import annotations

import http.client
import json
import shutil
import sys
import time
from pathlib import Path

import pytest

import autotune.simulator
from autotune.simulator.process import SimProcess

FAST = {"AUTOTUNE_SIM_TIME_SCALE": "50", "AUTOTUNE_SIM_STARTUP_SCALE": "1000"}


@pytest.fixture(scope="module")
def sim():
    with SimProcess(["sglang", "--model-path", "meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", "llama", "--context-length", "4096"], env=FAST) as p:
        yield p


def request(url: str, method: str, path: str, body=None, raw: bytes | None = None):
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"content-type": "application/json"} if data is not None else {})
    resp = conn.getresponse()
    payload = resp.read()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    conn.close()
    return resp.status, headers, payload


def sse_events(payload: bytes) -> list:
    events = []
    for block in payload.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_health_models_and_simulated_markers(sim):
    status, headers, body = request(sim.url, "GET", "/health")
    assert status == 200 and headers["x-autotune-simulated"] == "1"
    status, _, body = request(sim.url, "GET", "/v1/models")
    models = json.loads(body)
    assert status == 200 and models["data"][0]["id"] == "llama" and models["data"][0]["max_model_len"] == 4096
    assert "SIMULATED" in sim.log() and "fired up and ready to roll" in sim.log()
    plan = json.loads(request(sim.url, "GET", "/autotune/plan")[2])
    assert plan["simulated"] is True and plan["kv_capacity_tokens"] > 0 and plan["params_b"] == 8.0


def test_streamed_completion_has_one_token_per_chunk_and_usage(sim):
    body = {"model": "llama", "prompt": "one two three four five", "max_tokens": 7, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    status, headers, payload = request(sim.url, "POST", "/v1/completions", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = sse_events(payload)
    assert events[-1] == "[DONE]"
    tokens = [e for e in events[:-1] if e["choices"] and e["choices"][0]["text"]]
    assert len(tokens) == 7
    assert [e["choices"][0]["finish_reason"] for e in tokens] == [None] * 6 + ["length"]
    assert all(e["system_fingerprint"] == "autotune-simulated" for e in events[:-1])
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    timing = usage_chunk["autotune_server_timing"]
    assert 0 < timing["ttft_s"] <= timing["e2e_s"] and timing["time_scale"] == 50


def test_streamed_chat_and_token_id_prompts(sim):
    body = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
            "max_tokens": 4, "stream": True}
    events = sse_events(request(sim.url, "POST", "/v1/chat/completions", body)[2])
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [e["choices"][0]["delta"].get("content") for e in events[1:-1]]
    assert len([c for c in contents if c]) == 4
    assert "autotune_server_timing" in events[-2]  # no usage chunk requested: the last token chunk carries it
    status, _, payload = request(sim.url, "POST", "/v1/completions", {"prompt": [1, 2, 3, 4, 5, 6], "max_tokens": 2})
    assert status == 200 and json.loads(payload)["usage"]["prompt_tokens"] == 6


def test_non_streamed_responses(sim):
    status, _, payload = request(sim.url, "POST", "/v1/completions", {"prompt": "a b c", "max_tokens": 5})
    out = json.loads(payload)
    assert status == 200 and out["object"] == "text_completion" and len(out["choices"][0]["text"].split()) == 5
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    status, _, payload = request(sim.url, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    out = json.loads(payload)
    assert out["choices"][0]["message"]["role"] == "assistant" and out["usage"]["completion_tokens"] == 3
    # default max_tokens for completions is 16, as OpenAI's
    assert json.loads(request(sim.url, "POST", "/v1/completions", {"prompt": "x"})[2])["usage"]["completion_tokens"] == 16


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/completions", b"{not json", 400, "not valid JSON"),
        ("/v1/completions", b"[1, 2]", 400, "JSON object"),
        ("/v1/completions", {"max_tokens": 5}, 400, "`prompt` is required"),
        ("/v1/chat/completions", {"max_tokens": 5}, 400, "`messages` is required"),
        ("/v1/chat/completions", {"messages": []}, 400, "`messages` is required"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400, "at least 1"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": "many"}, 400, "must be an integer"),
        ("/v1/completions", {"prompt": "hi there", "max_tokens": 4095}, 400, "maximum context length is 4096"),
        ("/v1/completions", {"prompt": "hi", "n": 2}, 400, "n > 1"),
        ("/v1/completions", {"prompt": ["a", "b"]}, 400, "batched prompts"),
        ("/v1/completions", {"prompt": ""}, 400, "empty"),
        ("/v1/nothing", {"prompt": "hi"}, 405, "not allowed"),
    ],
)
def test_bad_requests_get_clear_json_errors(sim, path, body, status, needle):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, headers, payload = request(sim.url, "POST", path, raw=raw)
    err = json.loads(payload)["error"]
    assert got == status and err["code"] == status and needle in err["message"] and err["type"]
    assert headers["x-autotune-simulated"] == "1"


def test_unknown_route_is_404(sim):
    status, _, payload = request(sim.url, "GET", "/nope")
    assert status == 404 and json.loads(payload)["error"]["code"] == 404


def test_keep_alive_serves_many_requests_on_one_connection(sim):
    host, port = sim.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    for _ in range(5):
        conn.request("POST", "/v1/completions", body=json.dumps({"prompt": "x y", "max_tokens": 3, "stream": True}))
        resp = conn.getresponse()
        events = sse_events(resp.read())
        assert resp.status == 200 and events[-1] == "[DONE]"
    conn.close()


def test_startup_is_slow_then_ready_and_warns_about_unknown_flags():
    env = {"AUTOTUNE_SIM_TIME_SCALE": "50", "AUTOTUNE_SIM_STARTUP_SCALE": "15"}  # ~2 s of startup
    p = SimProcess(["vllm", "serve", "Llama-3.1-8B", "--enforce-eager", "--no-such-flag", "3"], env=env).start()
    try:
        seen = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = p.health()
            seen.add(status)
            if status == 200:
                break
            time.sleep(0.05)
        assert 503 in seen and 200 in seen
        log = p.log()
        assert "WARNING unknown flag --no-such-flag ignored" in log and "Application startup complete" in log
    finally:
        p.close()


def test_oom_at_startup_prints_the_cuda_error_and_exits_nonzero():
    p = SimProcess(["sglang", "--model-path", "Llama-3.1-70B"], env={"AUTOTUNE_SIM_STARTUP_SCALE": "1000"}).start()
    try:
        assert p.wait_exit(30) == 1
        assert "torch.OutOfMemoryError: CUDA out of memory" in p.log()
    finally:
        p.close()


def test_a_value_the_engine_refuses_exits_2():
    p = SimProcess(["sglang", "--model-path", "M", "--tp-size", "two"]).start()
    try:
        assert p.wait_exit(30) == 2 and "invalid int value" in p.log()
    finally:
        p.close()


def test_runs_from_a_plain_copy_of_the_folder(tmp_path):
    shutil.copytree(Path(autotune.simulator.__file__).parent, tmp_path / "simulator")
    env = {"AUTOTUNE_SIM_STARTUP_SCALE": "1000", "PYTHONPATH": ""}
    with SimProcess(["sglang", "--model-path", "Qwen2.5-0.5B"], env=env, module="simulator", cwd=str(tmp_path), python=sys.executable) as p:
        status, _, payload = request(p.url, "POST", "/v1/completions", {"prompt": "a", "max_tokens": 2})
        assert status == 200 and json.loads(payload)["system_fingerprint"] == "autotune-simulated"
