"""Secrets kept out of what leaves autotune for a reader that must never see them (an LLM agent).

`redact` (common.py) hides secret fields by name, which covers every shaped read. Raw SQL can still
reach a secret another way: `spec::VARCHAR`, an event's payload, a JSON path spelled in pieces. So a
surface that hands raw rows out also scrubs the secret values themselves, wherever they appear.
"""

from __future__ import annotations

from typing import Any

from autotune.reads.common import redact, rows

MASK = "***"
MIN_SECRET_LEN = 6  # shorter values (empty, "none", a placeholder) are not tokens, and masking them would garble text


async def known_secrets(nc, *, min_seq: int | None = None) -> frozenset[str]:
    """Every secret value the log holds: the tasks' `model.hf_token`."""
    got = await rows(
        nc,
        "SELECT DISTINCT json_extract_string(spec, '$.model.hf_token') AS token FROM tasks WHERE token IS NOT NULL",
        min_seq=min_seq,
        limit=100_000,
    )
    return frozenset(t for r in got if isinstance(t := r.get("token"), str) and len(t) >= MIN_SECRET_LEN)


def scrub(value: Any, secrets: frozenset[str]) -> Any:
    """`value` with secret fields redacted and every occurrence of a secret value masked."""
    return _mask(redact(value), sorted(secrets, key=len, reverse=True))


def _mask(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for s in secrets:
            if s in value:
                value = value.replace(s, MASK)
        return value
    if isinstance(value, dict):
        return {_mask(k, secrets) if isinstance(k, str) else k: _mask(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v, secrets) for v in value]
    return value
