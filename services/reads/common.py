"""What every read needs: SQL on the projection with read-your-writes, secrets kept out, and the
errors every surface maps to its own (HTTP 404/400, exit code 2)."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from autotune.schemas.spec import is_simulated, real_cpu
from autotune.shared import query as q

SECRET_FIELDS = frozenset({"hf_token"})
COLUMN = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")


def headline(row: dict) -> dict[str, Any]:
    """The experiment's headline metrics (latency percentiles, throughputs, success rate)."""
    keep = ("requests_per_s", "success_rate", "error_rate")
    return {k: finite(v) for k, v in row.items() if k.startswith(("mean_", "p50_", "p90_", "p99_", "max_")) and "util" not in k
            and "memory" not in k and "power" not in k and "temperature" not in k or k in keep}  # fmt: skip


class NotFound(Exception):
    """What was asked for does not exist; the message says what to try."""


class BadRequest(Exception):
    """A parameter that cannot be answered; the message says what is accepted."""


async def rows(nc, sql: str, params: list[Any] | None = None, *, min_seq: int | None = None, limit: int | None = None) -> list[dict]:
    res = await q.sql(nc, sql, params, min_seq=min_seq or None, limit=limit)
    return res.rows_as_dicts()


async def all_rows(nc, sql: str, params: list[Any] | None = None, *, min_seq: int | None = None) -> list[dict]:
    """Every row of `sql` (which must end in ORDER BY, so that pages follow each other), however many:
    an answer larger than one NATS message comes back truncated, and the rest is asked for after it."""
    out: list[dict] = []
    while True:
        res = await q.sql(nc, f"{sql} LIMIT 1000000 OFFSET {len(out)}", params, min_seq=min_seq or None, limit=1_000_000)
        out += res.rows_as_dicts()
        if not res.truncated or not res.row_count:
            return out


async def all_columns(nc, sql: str, params: list[Any] | None = None, *, min_seq: int | None = None) -> dict[str, list]:
    """Every row of `sql` (ORDER BY, as all_rows) as one list per column: what a chart draws, without a
    dict per row (10,000 rows as dicts cost more than the query)."""
    names: list[str] = []
    got: list[list[Any]] = []
    while True:
        res = await q.sql(nc, f"{sql} LIMIT 1000000 OFFSET {len(got)}", params, min_seq=min_seq or None, limit=1_000_000)
        names = res.columns
        got += res.rows
        if not res.truncated or not res.row_count:
            break
    return {c: list(v) for c, v in zip(names, zip(*got, strict=True), strict=True)} if got else {c: [] for c in names}


def redact(value: Any) -> Any:
    """A copy with secrets (the model's hf_token) replaced: responses never carry them."""
    if isinstance(value, dict):
        return {k: ("***" if k in SECRET_FIELDS and v else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value




def simulated(row: dict) -> bool:
    """Whether a task (or experiment) row was measured on simulated engines and GPUs."""
    return is_simulated(row.get("simulate"), row.get("deployment_mode")) or bool(row.get("simulated"))


def on_cpu(row: dict) -> bool:
    """Whether a task (or experiment) row was measured on a real engine serving on CPU (labelled like SIMULATED)."""
    return real_cpu(row.get("simulate"), row.get("deployment_mode"), row.get("gpu_type")) and not bool(row.get("simulated"))


def finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def as_time(v: Any) -> datetime | None:
    if isinstance(v, datetime):
        return v
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v)
        except ValueError:
            return None
    return None


def clean(row: dict) -> dict:
    """A row with non-finite floats as None (JSON has no NaN)."""
    return {k: finite(v) for k, v in row.items()}
