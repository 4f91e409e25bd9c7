"""Replay datasets end to end: the scheduler fetches a task's benchmark.dataset_url once (real HTTP
from a local aiohttp server), records what it fetched, stores the prompts in the Object Store; the
runner's benchmark replays them against the engine simulator, which records every prompt it receives
(AUTOTUNE_SIM_RECORD_PROMPTS). A bad dataset fails the task before any engine starts.
Also the parser (shared/dataset.py) on each format the earlier tool read, and the ones it refused."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile

import pytest
from aiohttp import web

from autotune.runner.settings import RunnerSettings
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared.dataset import DatasetError, read_prompts
from autotune.shared.dataset_store import get_prompts
from tests.fixtures.runner_kit import spec
from tests.helpers import events_of, scheduler_and_runner, submit, task_finished

CSV = (
    'id,request_body\n'
    '1,"{""model"": ""x"", ""prompt"": ""tell me about GPUs""}"\n'
    '2,"{""messages"": [{""role"": ""system"", ""content"": ""be brief""}, {""role"": ""user"", ""content"": [{""type"": ""text"", ""text"": ""what is""}, {""type"": ""text"", ""text"": ""a KV cache""}]}]}"\n'
    '3,not json at all\n'
    '4,"{""model"": ""x"", ""prompt"": ""tell me about GPUs""}"\n'
)  # fmt: skip
CSV_PROMPTS = ["tell me about GPUs", "what is\na KV cache"]
JSONL = "\n".join(json.dumps(r) for r in [
    {"prompt": "first jsonl prompt"}, {"request_body": {"prompt": "second from an object"}},
    {"request_body": json.dumps({"messages": [{"role": "user", "content": "third, a string body"}]})},
    {"prompt": "first jsonl prompt"}, {"unrelated": 1},
]) + "\n"  # fmt: skip
JSONL_PROMPTS = ["first jsonl prompt", "second from an object", "third, a string body"]
SHAREGPT = json.dumps([
    {"id": "a", "conversations": [{"from": "human", "value": "sharegpt question one"}, {"from": "gpt", "value": "an answer"}]},
    {"id": "b", "conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "sharegpt question two"}]},
    {"id": "c", "conversations": [{"from": "human", "value": "sharegpt question one"}]},
])  # fmt: skip
SHAREGPT_PROMPTS = ["sharegpt question one", "sharegpt question two"]


class Files:
    """A local HTTP server for dataset files (`files[path] = bytes`); any other path answers 404."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []

    async def __aenter__(self) -> Files:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._serve)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    async def _serve(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        self.hits.append(path)
        if path not in self.files:
            return web.Response(status=404, text="not here")
        return web.Response(body=self.files[path])


def dataset_task(name: str, url: str, n_prompts: int, **bench) -> dict:
    return spec(name, optimization={"max_iterations": 1, "max_parallel": 1}, parameters={"mem-fraction-static": [0.8], "max-running-requests": [8]},
                benchmark={"dataset_url": url, "max_requests_per_iteration": n_prompts, "warmup_requests": 0, "num_concurrency": [1],
                           "model_name": f"model-{name}", "traffic_scenarios": ["D(50,8)"], **bench})  # fmt: skip


async def test_tasks_replay_exactly_their_datasets_prompts_deduplicated(settings, js, tmp_path, monkeypatch):
    record = tmp_path / "received.jsonl"
    monkeypatch.setenv("AUTOTUNE_SIM_RECORD_PROMPTS", str(record))  # the simulator processes inherit it
    async with Files() as srv:
        srv.files = {"/p.csv": CSV.encode(), "/p.jsonl.gz": gzip.compress(JSONL.encode()), "/sharegpt.json": SHAREGPT.encode()}
        async with scheduler_and_runner(settings, RunnerSettings(host="ds", simulate="2xH100", time_scale=50)):
            cases = {"csv": ("/p.csv", CSV_PROMPTS), "jsonl": ("/p.jsonl.gz", JSONL_PROMPTS), "sharegpt": ("/sharegpt.json", SHAREGPT_PROMPTS)}
            tasks = {}
            for name, (path, prompts) in cases.items():
                tasks[name] = await submit(js, dataset_task(f"replay-{name}", srv.url + path, len(prompts)))
            finals = {name: await task_finished(js, t, timeout=120) for name, t in tasks.items()}
            # a second task with the same URL reads the scheduler's cache, and keeps the duplicates when asked
            again = await submit(js, dataset_task("replay-again", srv.url + "/p.csv", 3, dataset_deduplicate=False))
            finals["again"] = await task_finished(js, again, timeout=120)
    assert all(isinstance(f, ev.TaskCompleted) for f in finals.values()), finals
    received = [json.loads(line) for line in record.read_text().splitlines()]
    for name, (path, prompts) in cases.items():
        got = [r["prompt"] for r in received if r["model"] == f"model-replay-{name}"]
        assert got == prompts, name  # exactly those prompts, in their order, each once
        history = [e for _, e in await events_of(js, subj.task_all(tasks[name]))]
        (fetched,) = [e for e in history if isinstance(e, ev.TaskDatasetFetched)]
        assert fetched.url == srv.url + path and fetched.prompts == len(prompts) and len(fetched.sha256) == 64
        assert [ev.tag_of(type(e)) for e in history][:3] == ["task.submitted", "task.dataset_fetched", "task.started"]
        assert all(e.dataset == fetched.ref() for e in history if isinstance(e, ev.ExperimentAssigned))
        assert await get_prompts(js, fetched.object) == prompts  # what every host reads
    assert srv.hits.count("/p.csv") == 1  # fetched once: the second task read the cache
    again_got = [r["prompt"] for r in received if r["model"] == "model-replay-again"]
    assert again_got == ["tell me about GPUs", "what is\na KV cache", "tell me about GPUs"]  # the cache honours dataset_deduplicate
    (fetched,) = [e for _, e in await events_of(js, subj.task_all(again)) if isinstance(e, ev.TaskDatasetFetched)]
    assert fetched.cached and fetched.duplicates == 0 and fetched.skipped == 1 and not fetched.deduplicate


async def test_a_bad_dataset_fails_the_task_before_any_engine_starts_naming_the_url_and_the_problem(settings, js):
    async with Files() as srv:
        srv.files = {"/cols.csv": b"id,text\n1,hello\n", "/empty.jsonl": b"", "/broken.csv.gz": gzip.compress(b"prompt\nhello\n")[:12]}
        async with scheduler_and_runner(settings, RunnerSettings(host="bad", simulate="2xH100", time_scale=50)):
            cases = {
                "missing": ("/nothing-here.csv", "HTTP 404"),
                "cols": ("/cols.csv", "no `request_body` or `prompt` column (its columns: id, text)"),
                "empty": ("/empty.jsonl", "the file is empty"),
                "gzip": ("/broken.csv.gz", "not a valid gzip file"),
            }
            finals = {}
            for name, (path, _) in cases.items():
                task = await submit(js, dataset_task(f"bad-{name}", srv.url + path, 2))
                finals[name] = (task, await task_finished(js, task, timeout=60))
    for name, (path, problem) in cases.items():
        task, final = finals[name]
        assert isinstance(final, ev.TaskFailed), (name, final)
        assert srv.url + path in final.reason and problem in final.reason, final.reason
        history = [ev.tag_of(type(e)) for _, e in await events_of(js, subj.task_all(task))]
        assert history == ["task.submitted", "task.failed"], history  # never started: no experiment, no engine


# --- the parser ------------------------------------------------------------------------------------


def tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_archives_yield_their_largest_csv_else_jsonl():
    many = tgz({"d/small.csv": b"prompt\nfrom the csv\n", "d/big.jsonl": b'{"prompt": "from the jsonl"}\n' * 50, "README": b"x" * 999})
    p = read_prompts(many, "data.tgz")
    assert (p.member, p.prompts) == ("d/small.csv", ["from the csv"])
    assert read_prompts(many, "data.tar.gz").member == "d/small.csv"
    zb = io.BytesIO()
    with zipfile.ZipFile(zb, "w") as z:
        z.writestr("a.jsonl", b'{"prompt": "small"}\n')
        z.writestr("nested/b.jsonl", b'{"prompt": "big"}\n' + b'{"prompt": "big"}\n' * 20)
    p = read_prompts(zb.getvalue(), "data.zip")
    assert (p.member, p.prompts, p.duplicates) == ("nested/b.jsonl", ["big"], 20)
    with pytest.raises(DatasetError, match="holds no .csv, .jsonl or .json"):
        read_prompts(tgz({"notes.txt": b"hi"}), "x.tgz")


def test_a_plain_prompt_column_and_rows_that_cannot_be_read():
    p = read_prompts(b"prompt,other\nhello,1\n,2\nworld,3\nhello,4\n", "plain.csv", deduplicate=False)
    assert (p.prompts, p.rows, p.skipped) == (["hello", "world", "hello"], 4, 1)
    assert p.problems == ["row 3: the prompt is empty"]
    p = read_prompts(b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}\n', "m.jsonl")
    assert p.prompts == ["c"]  # the last user message
    with pytest.raises(DatasetError, match="holds no prompt .*3 rows; 3 could not be read, e.g. line 1: not JSON"):
        read_prompts(b"{oops\n[1]\n{}\n", "bad.jsonl")
