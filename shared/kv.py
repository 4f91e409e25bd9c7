"""KV keys as claims: create a key only if nobody holds it, renew it only if it is still ours (liveness, leases, names)."""

from __future__ import annotations

from typing import Any

from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError


async def kv_claim(kv: Any, key: str, value: bytes, *, ttl: float | None = None) -> int | None:
    """Create `key` only if it does not exist (or has expired). Returns the revision, or None if taken."""
    try:
        return await kv.create(key, value, msg_ttl=ttl)
    except KeyWrongLastSequenceError:
        pass
    # An expired key leaves a server-placed marker (no value, kept limit_marker_ttl) that nats-py's
    # create() does not treat as deleted and get() returns as an entry whose value is None.
    try:
        if (await kv.get(key)).value:
            return None  # alive
    except (KeyDeletedError, KeyNotFoundError):
        pass
    try:
        last = await kv._js.get_last_msg(kv._stream, f"{kv._pre}{key}")
    except NotFoundError:
        return None
    try:
        return await kv_renew(kv, key, value, last=last.seq, ttl=ttl)
    except KeyWrongLastSequenceError:
        return None


async def kv_renew(kv: Any, key: str, value: bytes, *, last: int, ttl: float | None) -> int:
    """Update `key` only if its revision is still `last`, with a fresh per-key TTL.

    nats-py's public `update()` takes no TTL; its `_update()` does (raises KeyWrongLastSequenceError)."""
    return await kv._update(key, value, last=last, msg_ttl=ttl)
