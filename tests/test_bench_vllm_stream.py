"""The benchmark client's stream parser on the bytes the real vLLM (0.32.0, CPU build) sends: a token
whose text is empty (a byte-level token that does not complete a character) is a token, timed; chat's
role chunk is not; the usage chunk has no choices. Bytes captured from `vllm serve` and the tiny model
of infra/engines, fed to the parser as they arrive on the socket."""

from __future__ import annotations

import asyncio

from autotune.bench.http import RequestResult, _Exchange


def sse(*events: str) -> bytes:
    body = "".join(f"data: {e}\n\n" for e in events).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n" + b"content-length: %d\r\n\r\n" % len(body) + body


M = '"model":"/root/.cache/autotune/models/tiny-llama"'
COMPLETION = [
    '{"id":"cmpl-b0","object":"text_completion","created":1796654847,' + M + ',"choices":[{"index":0,"text":"","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}]}',
    '{"id":"cmpl-b0","object":"text_completion","created":1796654847,' + M + ',"choices":[{"index":0,"text":"\ufffd862","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}]}',
    '{"id":"cmpl-b0","object":"text_completion","created":1796654847,' + M + ',"choices":[{"index":0,"text":" 7511","logprobs":null,"finish_reason":"length","stop_reason":null,"prompt_token_ids":null,"token_ids":null}]}',
    '{"id":"cmpl-b0","object":"text_completion","created":1796654847,' + M + ',"choices":[],"usage":{"prompt_tokens":6,"total_tokens":9,"completion_tokens":3},"system_fingerprint":"vllm-0.32.0-0bc22ebe"}',
    "[DONE]",
]
CHAT = [
    '{"id":"chatcmpl-97","object":"chat.completion.chunk","created":1796654847,' + M + ',"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}',
    '{"id":"chatcmpl-97","object":"chat.completion.chunk","created":1796654847,' + M + ',"choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":null,"token_ids":null}]}',
    '{"id":"chatcmpl-97","object":"chat.completion.chunk","created":1796654847,' + M + ',"choices":[{"index":0,"delta":{"content":"great"},"logprobs":null,"finish_reason":null,"token_ids":null}]}',
    '{"id":"chatcmpl-97","object":"chat.completion.chunk","created":1796654847,' + M + ',"choices":[{"index":0,"delta":{"content":" 67"},"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null}]}',
    '{"id":"chatcmpl-97","object":"chat.completion.chunk","created":1796654847,' + M + ',"choices":[],"usage":{"prompt_tokens":10,"total_tokens":13,"completion_tokens":3},"system_fingerprint":"vllm-0.32.0-0bc22ebe"}',
    "[DONE]",
]


def parse(raw: bytes, times: list[float]) -> RequestResult:
    """Feed one SSE event per read, at the given times (seconds after sending)."""
    loop = asyncio.new_event_loop()
    try:
        res = RequestResult(sent=0.0)
        ex = _Exchange(res, loop.create_future(), stream=True)
        head, _, body = raw.partition(b"\r\n\r\n")
        ex.feed(head + b"\r\n\r\n", 0.0)
        events = [e + b"\n\n" for e in body.split(b"\n\n") if e]
        for event, t in zip(events, times, strict=True):
            ex.feed(event, t)
        ex.complete(times[-1])
        return res
    finally:
        loop.close()


def test_an_empty_text_chunk_is_the_first_token():
    res = parse(sse(*COMPLETION), [0.10, 0.12, 0.15, 0.16, 0.16])
    assert res.ok and res.ttft == 0.10  # not 0.12: the first token came with empty text
    assert res.chunks == 3 and res.completion_tokens == 3 and res.prompt_tokens == 6
    assert res.gaps == [0.12 - 0.10, 0.15 - 0.12]


def test_chats_role_chunk_is_not_a_token_but_an_empty_content_token_is():
    res = parse(sse(*CHAT), [0.05, 0.10, 0.12, 0.15, 0.16, 0.16])
    assert res.ok and res.ttft == 0.10
    assert res.chunks == 3 and res.completion_tokens == 3
