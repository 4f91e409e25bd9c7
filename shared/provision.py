"""Provisioning: the streams and KV/object buckets every service needs, created when missing, and the
stream settings an admin may change later (`autotune streams --apply`)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import nats
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import APIError, BadRequestError, NotFoundError, ServiceUnavailableError

from autotune.schemas import subjects as subj
from autotune.shared.bus import retry_transient
from autotune.shared.settings import Settings

MAX_PAYLOAD = 8 * 1024 * 1024  # the events stream's largest message (the server's default is 1 MB)


class ProvisionError(RuntimeError):
    """The streams are missing and this role may not create them."""


def stream_configs(settings: Settings) -> list[jsapi.StreamConfig]:
    r = settings.replicas
    return [
        jsapi.StreamConfig(
            name=subj.EVENTS_STREAM,
            subjects=list(subj.EVENTS_SUBJECTS),
            retention=jsapi.RetentionPolicy.LIMITS,
            storage=jsapi.StorageType.FILE,
            num_replicas=r,
            duplicate_window=300,
            max_msg_size=MAX_PAYLOAD,
            description="autotune: the truth (tasks, experiments, hosts)",
        ),
        _ageing(subj.TELEMETRY_STREAM, subj.GPU_ALL, r, settings.telemetry_max_age_s, "autotune: GPU samples"),
        _ageing(subj.LOGS_STREAM, subj.LOG_ALL, r, settings.logs_max_age_s, "autotune: engine and runner log lines"),
    ]


def _ageing(name: str, subject: str, replicas: int, max_age_s: float, description: str) -> jsapi.StreamConfig:
    """A stream whose messages age out after `max_age_s` (0: never), deduplicated for a minute."""
    return jsapi.StreamConfig(
        name=name,
        subjects=[subject],
        storage=jsapi.StorageType.FILE,
        num_replicas=replicas,
        max_age=max_age_s,
        duplicate_window=_dedupe_window(60, max_age_s),
        description=description,
    )


def _dedupe_window(seconds: float, max_age_s: float) -> float:
    """The server refuses a duplicate window longer than the stream's max age (0: none)."""
    return min(seconds, max_age_s) if max_age_s > 0 else seconds


async def provision(js: JetStreamContext, settings: Settings) -> None:
    """Create the streams and KV buckets that are missing. Idempotent: every service calls it at start.

    Existing streams are left alone (a role without the right to create or update streams — every
    role but admin in secure mode — only needs to read their info); `apply_stream_settings` (`autotune streams --apply`) is for admins.
    """
    for cfg in stream_configs(settings):
        for attempt in range(10):
            try:
                await js.stream_info(cfg.name)
                break
            except NotFoundError:
                try:
                    await js.add_stream(cfg)
                except BadRequestError as e:
                    if e.err_code != 10058:  # created concurrently with another configuration
                        raise
                except TimeoutError:
                    raise ProvisionError(
                        f"stream {cfg.name} is missing and this connection may not create it; "
                        "provision as admin first (autotune up does), or check the NATS credentials"
                    ) from None
                break
            except (TimeoutError, ServiceUnavailableError, nats.errors.NoRespondersError):
                if attempt == 9:  # a cluster that has no JetStream leader yet
                    raise
                await asyncio.sleep(0.5)
    # direct gets: a fleet's liveness is read in one batched request (reads.live_hosts), not one per host
    await kv_bucket(js, subj.HOSTS_BUCKET, settings, ttl_markers=True, direct=True)
    await kv_bucket(js, subj.LEASES_BUCKET, settings, ttl_markers=True)
    await kv_bucket(js, subj.NAMES_BUCKET, settings)
    await kv_bucket(js, subj.STATS_BUCKET, settings, max_age=STATS_MAX_AGE_S, memory=True)
    await object_bucket(js, subj.DATASETS_BUCKET, settings)


TUNABLE = ("num_replicas", "max_age", "duplicate_window")  # what `autotune streams --apply` changes on a stream


def stream_differences(have: jsapi.StreamConfig, want: jsapi.StreamConfig) -> list[tuple[str, Any, Any]]:
    """(field, have, want) for each TUNABLE field of a stream's configuration that differs."""
    return [(f, getattr(have, f), getattr(want, f)) for f in TUNABLE if float(getattr(have, f) or 0) != float(getattr(want, f) or 0)]


async def apply_stream_settings(js: JetStreamContext, settings: Settings) -> list[tuple[str, str, Any, Any]]:
    """Create what is missing, then give each stream the replicas and max age of `settings` where
    they differ. Returns (stream, field, was, now) per change. Only admin may (secure mode)."""
    await provision(js, settings)
    changes = []
    for want in stream_configs(settings):
        have = (await js.stream_info(want.name)).config
        diff = stream_differences(have, want)
        if not diff:
            continue
        try:
            await js.update_stream(dataclasses.replace(have, **{f: v for f, _, v in diff}))
        except TimeoutError:
            raise ProvisionError(f"stream {want.name} was not changed: this connection may not change streams (only admin may, in secure mode)") from None
        changes += [(want.name, f, was, now) for f, was, now in diff]
    return changes


STATS_MAX_AGE_S = 60.0  # a service that stopped publishing its figures drops out of /metrics after this


async def kv_bucket(js: JetStreamContext, name: str, settings: Settings, *, ttl_markers: bool = False, max_age: float | None = None, memory: bool = False,
                    direct: bool = False):  # fmt: skip
    try:
        return await retry_transient(lambda: js.key_value(name))
    except (NotFoundError, APIError):
        pass
    cfg = jsapi.KeyValueConfig(
        bucket=name,
        history=1,
        replicas=settings.replicas,
        storage=jsapi.StorageType.MEMORY if memory else jsapi.StorageType.FILE,
        ttl=max_age,
        # per-key TTLs with delete markers: an expired liveness key or lease is seen by watchers
        limit_marker_ttl=5.0 if ttl_markers else None,
        direct=direct or None,
    )
    try:
        return await js.create_key_value(cfg)
    except BadRequestError:  # created concurrently by another service
        return await js.key_value(name)


async def object_bucket(js: JetStreamContext, name: str, settings: Settings):
    """An Object Store bucket (replay datasets), created when missing (as admin, in secure mode)."""
    try:
        return await retry_transient(lambda: js.object_store(name))
    except (NotFoundError, APIError):
        pass
    cfg = jsapi.ObjectStoreConfig(bucket=name, replicas=settings.replicas, storage=jsapi.StorageType.FILE,
                                  description="autotune: replay prompts by their sha256")
    try:
        return await js.create_object_store(bucket=name, config=cfg)
    except BadRequestError:  # created concurrently by another service
        return await js.object_store(name)
    except TimeoutError:
        raise ProvisionError(
            f"object store {name} is missing and this connection may not create it; provision as admin first (autotune up does)"
        ) from None
