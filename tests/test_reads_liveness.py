"""A fleet's liveness keys read in one batched direct get, against a real nats-server: the same answer
as a get per key (deleted, purged, undecodable and missing keys left out), and a bucket created
before it had direct gets (per-key gets only) still answers."""

from __future__ import annotations

import time

import msgspec
from nats.js import api as jsapi

from autotune.reads import hosts as rh
from autotune.schemas import subjects as subj
from autotune.schemas.liveness import LiveHost


async def fill(kv, count: int) -> list[str]:
    for i in range(count):
        await kv.put(f"h{i}", msgspec.json.encode(LiveHost(host=f"h{i}", instance=f"h{i}-1", at=time.time(), running=[f"t/{i}/0"])))
    await kv.delete("h1")
    await kv.purge("h2")
    await kv.put("h3", b"{not json")
    return [f"h{i}" for i in range(count + 5)] + ["bad.name"]


async def one_by_one(js, hosts: list[str]) -> dict:
    out: dict = {}
    await rh._key_gets(js, [h for h in hosts if subj.TOKEN.match(h)], out)
    return out


async def test_a_batched_get_answers_as_a_get_per_key(js, monkeypatch):
    kv = await js.key_value(subj.HOSTS_BUCKET)
    assert (await js.stream_info(rh.LIVE_STREAM)).config.allow_direct, "the hosts bucket is provisioned with direct gets"
    hosts = await fill(kv, 30)
    monkeypatch.setattr(rh, "LIVE_BATCH", 8)  # several batches, the last one short
    batched: list[int] = []
    real = rh._batch_get

    async def counted(nc, chunk, out, timeout=5.0):
        ok = await real(nc, chunk, out, timeout)
        batched.append(len(chunk) if ok else -1)
        return ok

    monkeypatch.setattr(rh, "_batch_get", counted)
    got = await rh.live_hosts(js, hosts)
    assert sorted(batched) == [3, 8, 8, 8, 8], "35 names in batches of 8, each answered as a batch"
    assert got == await one_by_one(js, hosts)
    assert set(got) == {f"h{i}" for i in range(30)} - {"h1", "h2", "h3"}
    assert got["h7"].running == ["t/7/0"]
    assert await rh.live_hosts(js, ["nobody", "nobody-else"]) == {}, "no key of them: an empty answer, not a wait"


async def test_a_bucket_without_direct_gets_is_read_key_by_key(js, monkeypatch):
    await js.delete_key_value(subj.HOSTS_BUCKET)
    kv = await js.create_key_value(jsapi.KeyValueConfig(bucket=subj.HOSTS_BUCKET, history=1))  # as buckets were created before
    hosts = await fill(kv, 5)

    async def no_batch(*a, **k):
        raise AssertionError("a bucket without direct gets cannot answer a batch")

    monkeypatch.setattr(rh, "_batch_get", no_batch)
    got = await rh.live_hosts(js, hosts)
    assert set(got) == {"h0", "h4"} and got == await one_by_one(js, hosts)
