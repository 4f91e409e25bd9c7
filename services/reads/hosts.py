"""Hosts as people see them: the log's lifecycle overlaid with the live liveness key and the latest
GPU samples; one host's GPUs and experiments; GPU history; the fleet's GPUs by model."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError, NotFoundError

from autotune.reads import models as m
from autotune.reads.common import BadRequest, NotFound, all_rows, clean, rows
from autotune.reads.experiments import TELEMETRY_COLUMNS, bucket_for, telemetry_points
from autotune.schemas import subjects as subj
from autotune.schemas.liveness import LiveHost
from autotune.schemas.status import EXPERIMENT_ON_HOST, HostLifecycle, HostStatus, sql_list

LIVE_GETS_AT_ONCE = 64  # key gets in flight at once: 1,000 hosts one after the other were ~1,000 round trips
LIVE_BATCH = 500  # keys per batched direct get
LIVE_STREAM = f"KV_{subj.HOSTS_BUCKET}"
SAMPLE_WINDOW_S = 600  # a GPU's latest sample is its state only if it is this recent


async def live_hosts(js, hosts: list[str]) -> dict[str, LiveHost]:
    """The liveness values of `hosts` (gets by key only: every role may read them, none may list them).
    A bucket with direct gets answers a whole fleet in one batched request per LIVE_BATCH hosts; one
    created before it had them (or a server without batches) is read one key at a time."""
    wanted = list(dict.fromkeys(h for h in hosts if subj.TOKEN.match(h or "")))
    if not wanted:
        return {}
    try:
        info = await js.stream_info(LIVE_STREAM)
    except NotFoundError:
        return {}
    out: dict[str, LiveHost] = {}
    rest = wanted
    if info.config.allow_direct and len(wanted) > 1:
        chunks = [wanted[i : i + LIVE_BATCH] for i in range(0, len(wanted), LIVE_BATCH)]
        answered = await asyncio.gather(*(_batch_get(js._nc, c, out) for c in chunks))  # js._nc: nats-py has no batched get
        rest = [h for c, ok in zip(chunks, answered, strict=True) if not ok for h in c]
    if rest:
        await _key_gets(js, rest, out)
    return out


_live = msgspec.json.Decoder(LiveHost)


def _decode_live(out: dict[str, LiveHost], host: str, value: bytes | None) -> None:
    if value:  # an expired or deleted key leaves an empty marker
        try:
            out[host] = _live.decode(value)
        except msgspec.MsgspecError:
            return


async def _batch_get(nc, hosts: list[str], out: dict[str, LiveHost], timeout: float = 5.0) -> bool:
    """One batched direct get (`multi_last`, NATS 2.11+) of `hosts`' keys into `out`; False when the
    server did not answer it as a batch (the caller then reads them one by one)."""
    prefix = f"$KV.{subj.HOSTS_BUCKET}."
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    got: list[tuple[str, bytes]] = []

    async def on_msg(msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status:  # 204: the end of the batch; 404: none of these keys exists; anything else: no batch
            if not done.done():
                done.set_result(status)
            return
        key = (msg.headers or {}).get("Nats-Subject", "")
        if key.startswith(prefix) and (msg.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
            got.append((key[len(prefix) :], msg.data))

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_msg)
    try:
        request = {"multi_last": [prefix + h for h in hosts], "batch": len(hosts)}
        await nc.publish(f"$JS.API.DIRECT.GET.{LIVE_STREAM}", msgspec.json.encode(request), reply=inbox)
        status = await asyncio.wait_for(done, timeout)
    except TimeoutError:
        return False
    finally:
        await sub.unsubscribe()
    if status not in ("204", "404"):
        return False
    for host, value in got:
        _decode_live(out, host, value)
    return True


async def _key_gets(js, hosts: list[str], out: dict[str, LiveHost]) -> None:
    try:
        kv = await js.key_value(subj.HOSTS_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return
    gets = asyncio.Semaphore(LIVE_GETS_AT_ONCE)

    async def one(h: str) -> None:
        async with gets:
            try:
                entry = await kv.get(h)
            except (KeyNotFoundError, KeyDeletedError, NotFoundError):
                return
        _decode_live(out, h, entry.value)

    await asyncio.gather(*(one(h) for h in hosts))


def _host_status(row: dict, live: LiveHost | None) -> HostStatus:
    """The live key says whether the host answers; the log says why one that does not is gone."""
    lifecycle = row.get("status")
    if live is None:
        gone = {HostLifecycle.REMOVED: HostStatus.REMOVED, HostLifecycle.LOST: HostStatus.LOST, HostLifecycle.STOPPED: HostStatus.STOPPED}
        return gone.get(lifecycle, HostStatus.OFFLINE)  # type: ignore[call-overload]
    if live.draining or lifecycle in (HostLifecycle.DRAINING, HostLifecycle.DRAINED):
        return HostStatus.DRAINING
    return HostStatus.BUSY if live.running else HostStatus.ONLINE


async def _latest_samples(nc, hosts: list[str] | None, window_s: float = SAMPLE_WINDOW_S) -> dict[tuple[str, int], dict]:
    where, params = f'"at" >= now() - to_seconds({float(window_s)})', []
    if hosts is not None:
        where += " AND host = ?"
        params = hosts[:1]
    got = await all_rows(
        nc,
        'SELECT host, "index", name, uuid, memory_total_mib, memory_used_mib, util_gpu, util_memory, temperature_c, power_w, "at", node '
        f"FROM gpu_samples WHERE {where} QUALIFY row_number() OVER (PARTITION BY host, \"index\" ORDER BY seq DESC) = 1 ORDER BY host, \"index\"",
        params or None,
    )
    return {(r["host"], r["index"]): r for r in got}


def _host(row: dict, live: LiveHost | None, samples: dict[tuple[str, int], dict], kind: type = m.Host) -> Any:
    h = row["host"]
    registered = row.get("gpus") if isinstance(row.get("gpus"), list) else []
    by_index: dict[int, dict] = {}
    for g in registered:
        if isinstance(g, dict) and isinstance(g.get("index"), int):
            by_index[g["index"]] = {"index": g["index"], "uuid": g.get("uuid"), "name": g.get("name"), "memory_total_mib": g.get("memory_total_mib")}
    for g in live.gpus if live else []:
        by_index.setdefault(g.index, {"index": g.index, "uuid": g.uuid, "name": g.name, "memory_total_mib": g.memory_total_mib})
    for (sh, i), s in samples.items():
        if sh == h:
            by_index.setdefault(i, {"index": i, "uuid": s.get("uuid"), "name": s.get("name"), "memory_total_mib": s.get("memory_total_mib")})
    node = (live.node if live else None) or row.get("node")
    gpus = []
    for i in sorted(by_index):
        g = dict(by_index[i])
        s = samples.get((h, i))
        if s and live is not None:  # a dead host's last reading is not its state
            g.update(
                memory_used_mib=s.get("memory_used_mib"), util_gpu=s.get("util_gpu"), util_memory=s.get("util_memory"),
                temperature_c=s.get("temperature_c"), power_w=s.get("power_w"), sampled_at=s.get("at"),
            )  # fmt: skip
            node = node or s.get("node")
            if not g.get("memory_total_mib"):
                g["memory_total_mib"] = s.get("memory_total_mib")
        # built directly: its fields come from decoded events and samples, already of their types (a
        # convert per GPU was a third of a 1,600-GPU fleet's read)
        gpus.append(m.HostGpu(**clean(g)))
    running = list(live.running) if live else []
    fields: dict[str, Any] = dict(
        host=h, status=_host_status(row, live), lifecycle=row.get("status"), alive=live is not None,
        instance=(live.instance if live else None) or row.get("instance"), hostname=(live.hostname if live else None) or row.get("hostname"),
        node=node, simulated=bool(row.get("simulated") or (live and live.simulated)), version=row.get("version"),
        release=row.get("release"), deploy_outcome=row.get("deploy_outcome"),
        gpu_count=len(gpus), gpus=gpus, runtimes=list((live.runtimes if live else None) or row.get("runtimes") or []),
        engines=list((live.engines if live else None) or row.get("engines") or []), running=running,
        registered_at=row.get("registered_at"),
        cpu_slots=(live.cpu_slots if live else None) or row.get("cpu_slots") or 0,
        cpu_engines=list((live.cpu_engines if live else None) or row.get("cpu_engines") or []),
        engine_paths=dict((live.engine_paths if live else None) or (row.get("engine_paths") if isinstance(row.get("engine_paths"), dict) else None) or {}),
        last_heartbeat=datetime.fromtimestamp(live.at, UTC).isoformat() if live and live.at else None,
    )  # fmt: skip
    if kind is m.HostDetail:
        for c in ("drain_requested_at", "drained_at", "removed_at", "lost_at", "returned_at", "stopped_at", "deployed_at", "deployed_by"):
            fields[c] = row.get(c)
    return kind(**fields)


async def list_hosts(nc, js, *, status: str | None = None, include_removed: bool = False, min_seq: int | None = None,
                     sample_window_s: float = SAMPLE_WINDOW_S) -> list[m.Host]:  # fmt: skip
    """`sample_window_s`: how recent a GPU's latest sample must be to be shown (the metrics take a
    short one: a scrape reports the present, and reads less)."""
    async def rows_and_live() -> tuple[list[dict], dict[str, LiveHost]]:
        got = await all_rows(nc, "SELECT * FROM hosts ORDER BY host", min_seq=min_seq)
        return got, await live_hosts(js, [r["host"] for r in got])

    # the reads that do not depend on each other go at once: a fleet page is one round trip deep, not four
    (host_rows, live), samples, leases = await asyncio.gather(rows_and_live(), _latest_samples(nc, None, sample_window_s), _leases(nc, None, min_seq=min_seq))
    per_host: dict[str, dict[tuple[str, int], dict]] = {}
    for key, sample in samples.items():  # each host looks only at its own: a fleet of hundreds is not hosts x samples
        per_host.setdefault(key[0], {})[key] = sample
    hosts = [_host(r, live.get(r["host"]), per_host.get(r["host"], {})) for r in host_rows]
    running = {h.host for h in hosts if h.running}  # a host that stopped heartbeating holds nothing it can show
    _lease_gpus(hosts, [x for x in leases if x["host"] in running])
    if status:
        hosts = [h for h in hosts if h.status == status]
    elif not include_removed:
        hosts = [h for h in hosts if h.status != HostStatus.REMOVED]
    return hosts


async def _leases(nc, hosts: list[str] | None, *, min_seq: int | None = None) -> list[dict]:
    """The attempts on `hosts`' GPUs (on every host's with None)."""
    if hosts is not None and not hosts:
        return []
    where = f"status IN {sql_list(EXPERIMENT_ON_HOST)}"
    if hosts is not None:
        where += f" AND host IN ({', '.join('?' for _ in hosts)})"
    return await all_rows(nc, f"SELECT task, n, attempt, host, gpu_indices FROM experiments WHERE {where} ORDER BY host, task, n, attempt", hosts, min_seq=min_seq)


def _lease_gpus(hosts: list[m.Host], leases: list[dict]) -> None:
    by_host = {h.host: h for h in hosts}
    for lease in leases:
        h = by_host.get(lease["host"])
        if h is None:
            continue
        key = f"{lease['task']}/{lease['n']}/{lease['attempt']}"
        for g in h.gpus:
            if g.index in (lease.get("gpu_indices") or []):
                g.leased_by = key


async def host_detail(nc, js, host: str, *, min_seq: int | None = None, experiments: int = 20) -> m.HostDetail:
    got = await rows(nc, "SELECT * FROM hosts WHERE host = ?", [host], min_seq=min_seq)
    live = await live_hosts(js, [host])
    if not got:
        if host not in live:
            raise NotFound(f"no host `{host}`; GET /api/hosts (or `autotune hosts`) lists them")
        got = [{"host": host, "status": None}]
    samples = await _latest_samples(nc, [host])
    detail = _host(got[0], live.get(host), samples, m.HostDetail)
    _lease_gpus([detail], await _leases(nc, [host]))
    detail.experiments = [
        clean(r)
        for r in await rows(
            nc,
            "SELECT task, n, attempt, status, gpu_indices, score, failure_kind, assigned_at, started_at, finished_at "
            "FROM experiments WHERE host = ? ORDER BY assigned_at DESC NULLS LAST LIMIT ?",
            [host, experiments],
        )
    ]
    return detail


async def gpu_history(nc, host: str, *, since: datetime | None = None, until: datetime | None = None, bucket_s: int | None = None,
                      gpu: int | None = None, min_seq: int | None = None) -> m.GpuHistory:  # fmt: skip
    until = until or datetime.now(UTC)
    since = since or until - timedelta(hours=1)
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    if until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    if since >= until:
        raise BadRequest("`since` must be before `until`")
    span = (until - since).total_seconds()
    bucket = bucket_s or bucket_for(span, 200)
    if span / bucket > 5000:
        raise BadRequest(f"a {bucket} s bucket over {span:.0f} s gives more than 5000 points; pass a larger bucket_s")
    known = await rows(nc, "SELECT 1 FROM hosts WHERE host = ? UNION ALL SELECT 1 FROM gpu_samples WHERE host = ? LIMIT 1", [host, host], min_seq=min_seq)
    if not known:
        raise NotFound(f"no host `{host}`; GET /api/hosts lists them")
    where, params = 'host = ? AND "at" >= ?::TIMESTAMPTZ AND "at" < ?::TIMESTAMPTZ', [host, since.isoformat(), until.isoformat()]
    if gpu is not None:
        where += ' AND "index" = ?'
        params.append(gpu)
    got = await rows(
        nc,
        f'SELECT "index" AS gpu, time_bucket(to_seconds(?), "at") AS t, {TELEMETRY_COLUMNS} FROM gpu_samples '
        f"WHERE {where} GROUP BY ALL ORDER BY t, gpu",
        [bucket, *params],
        limit=100_000,
    )
    return m.GpuHistory(host=host, since=since.isoformat(), until=until.isoformat(), bucket_s=bucket, points=telemetry_points(got))


async def gpu_summary(nc, js, *, kubernetes: bool | None = None, min_seq: int | None = None) -> m.GpuSummary:
    """GPUs by model over the fleet; plus the Kubernetes cluster's inventory when asked, or when this
    process runs in a cluster or has a kubeconfig."""
    hosts = await list_hosts(nc, js, min_seq=min_seq)
    models: dict[str, m.GpuModelSummary] = {}
    for h in hosts:
        for g in h.gpus:
            s = models.setdefault(g.name or "?", m.GpuModelSummary(name=g.name or "?", total=0, busy=0, free=0, offline=0, hosts=[]))
            if h.host not in s.hosts:
                s.hosts.append(h.host)
            if not h.alive:
                s.offline += 1
                continue
            s.total += 1
            if g.leased_by:
                s.busy += 1
            else:
                s.free += 1
    out = m.GpuSummary(fleet=sorted(models.values(), key=lambda s: s.name))
    if kubernetes is None:
        kubernetes = bool(os.environ.get("KUBERNETES_SERVICE_HOST") or os.environ.get("KUBECONFIG") or os.environ.get("AUTOTUNE_K8S_API_URL"))
    if kubernetes:
        try:
            from autotune.gpumon.kube import inventory_from_settings

            out.kubernetes = await asyncio.wait_for(inventory_from_settings(os.environ.get("AUTOTUNE_K8S_API_URL")), 10)
        except Exception as e:  # no cluster, no rights, unreachable: say so, it is not the API failing
            out.kubernetes_error = f"cannot read the Kubernetes API: {type(e).__name__}: {e}"[:500]
    return out
