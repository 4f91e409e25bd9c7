"""SQL that turns raw payloads into the append-only tables' rows, inside DuckDB.

Building rows as Python tuples and converting them to Arrow cost more than everything else the
projector does (an ExperimentCompleted alone carries 4 runs x 77 statistics and ~50 raw samples).
So Python hands over (position, payload) and DuckDB parses each payload once (json_transform to
typed structs and lists) in C++, off the GIL, on the other core. The events were already
validated by the strict msgspec decoder (unknown types excepted: their columns are best effort),
so the SQL only mirrors the Structs' defaults for fields a producer left out; the defaults are
read from the Structs, never restated.
"""

from __future__ import annotations

import json

import msgspec

from autotune.projector import schema as sc
from autotune.schemas import events as ev
from autotune.schemas.metrics import RequestSample

SOURCE = "_metrics"  # registered Arrow table: task, n, attempt, samples (a JSON array of array_like rows)

_DUCK = {int: "BIGINT", float: "DOUBLE", str: "VARCHAR", bool: "BOOLEAN"}


def _literal(value: object) -> str:
    if value is None or value is msgspec.NODEFAULT:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return f"'{json.dumps(value)}'::JSON"
    return f"'{value}'"


def _default(field: msgspec.structs.FieldInfo) -> object:
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return None


def _samples_sql() -> str:
    # RequestSample is array_like: a JSON array in field order, trailing defaults may be missing
    fields = msgspec.structs.fields(RequestSample)
    select = ["task", "n", "attempt", "i - 1 AS i"]
    for k, f in enumerate(fields, start=1):
        col = sc.REQUEST_SAMPLES.index[f.name]
        typ = sc.REQUEST_SAMPLES.columns[col][1]
        if f.name == "itl":  # kept only when present: NULL for the usual empty list
            select.append(f"CASE WHEN x[{k}] IS NOT NULL AND x[{k}] <> '[]' THEN CAST(x[{k}] AS DOUBLE[]) END AS itl")
            continue
        cast = f"CAST(x[{k}] AS {typ})"
        d = _default(f)
        select.append(f"coalesce({cast}, {_literal(d)}) AS {f.name}" if d is not None else f"{cast} AS {f.name}")
    return (
        f"INSERT INTO {sc.REQUEST_SAMPLES.ref} BY NAME SELECT {', '.join(select)} FROM ("
        f"SELECT task, n, attempt, unnest(a) AS x, generate_subscripts(a, 1) AS i FROM ("
        f"SELECT task, n, attempt, json_transform(decode(samples), '[[\"VARCHAR\"]]') AS a FROM {SOURCE}"
        f") WHERE a IS NOT NULL)"
    )


def _events_sql() -> str:
    # a result's runs and raw samples were emptied in Python (views._payload): they are in
    # experiment_runs and request_samples, typed
    cols = ", ".join(f'"{c}"' for c in sc.EVENTS.names if c != "payload")
    # into the JSON column uncast: DuckDB still validates it, ~30 % cheaper than an explicit CAST
    return f"INSERT INTO {sc.EVENTS.ref} SELECT {cols}, decode(payload) FROM {EVENTS_SOURCE}"


def _gpu_sql() -> str:
    fields = {f.name: f for f in msgspec.structs.fields(ev.GpuSample)}
    shape: dict[str, object] = {"processes": [["VARCHAR"]]}
    select = ["seq"]
    for col, typ in sc.GPU_SAMPLES.columns:
        if col in ("seq", "processes"):
            continue
        f = fields[col]
        if col == "at":
            shape[col] = "VARCHAR"
            select.append("TRY_CAST(j.at AS TIMESTAMPTZ) AS at")
            continue
        shape[col] = typ
        d = _default(f)
        if col in ("uuid", "name"):
            select.append(f'nullif(j."{col}", \'\') AS "{col}"')
        elif d is not None:
            select.append(f'coalesce(j."{col}", {_literal(d)}) AS "{col}"')
        else:
            select.append(f'j."{col}" AS "{col}"')
    select.append(
        "CASE WHEN len(j.processes) > 0 THEN CAST(to_json(list_transform(j.processes, lambda p: "
        "{'pid': CAST(p[1] AS BIGINT), 'used_memory_mib': CAST(p[2] AS DOUBLE)})) AS JSON) END AS processes"
    )
    return (
        f"INSERT INTO {sc.GPU_SAMPLES.ref} BY NAME SELECT {', '.join(select)} FROM ("
        f"SELECT seq, json_transform(decode(payload), '{json.dumps(shape)}') AS j FROM {GPU_SOURCE})"
    )


def _logs_sql() -> str:
    fields = {f.name: f for f in msgspec.structs.fields(ev.LogLines)}
    shape = {
        "task": "VARCHAR",
        "n": "BIGINT",
        "attempt": "BIGINT",
        "host": "VARCHAR",
        "stream": "VARCHAR",
        "seq": "BIGINT",
        "at": "VARCHAR",
        "lines": ["VARCHAR"],
    }
    return (
        f"INSERT INTO {sc.LOG_LINES.ref} BY NAME SELECT seq, i - 1 AS line_no, j.task AS task, j.n AS n, "
        f"coalesce(j.attempt, {_literal(_default(fields['attempt']))}) AS attempt, nullif(j.host, '') AS host, "
        f"coalesce(j.stream, {_literal(_default(fields['stream']))}) AS source, "
        f"coalesce(j.seq, {_literal(_default(fields['seq']))}) AS chunk, TRY_CAST(j.at AS TIMESTAMPTZ) AS at, line FROM ("
        "SELECT seq, j, unnest(j.lines) AS line, generate_subscripts(j.lines, 1) AS i FROM ("
        f"SELECT seq, json_transform(decode(payload), '{json.dumps(shape)}') AS j FROM {LOG_SOURCE}))"
    )


EVENTS_SOURCE, GPU_SOURCE, LOG_SOURCE = "_events_src", "_gpu_src", "_log_src"
SAMPLES_SQL = _samples_sql()
EVENTS_SQL = _events_sql()
GPU_SQL = _gpu_sql()
LOGS_SQL = _logs_sql()

# the Arrow tables the store registers for each (columns in this order)
SOURCES = {
    EVENTS_SOURCE: [*sc.EVENTS.columns[:-1], ("payload", "BLOB")],
    GPU_SOURCE: [("seq", "BIGINT"), ("payload", "BLOB")],
    LOG_SOURCE: [("seq", "BIGINT"), ("payload", "BLOB")],
    SOURCE: [("task", "VARCHAR"), ("n", "BIGINT"), ("attempt", "BIGINT"), ("samples", "BLOB")],
}
