"""Read-only SQL: what the query service accepts, checked with DuckDB's own parser.

Accepted: exactly one SELECT (WITH, FROM-first, DESCRIBE, SHOW, SUMMARIZE, VALUES parse as SELECT)
or EXPLAIN [ANALYZE] of one. Refused: every other statement kind (ATTACH, COPY, INSTALL/LOAD,
PRAGMA, SET/RESET/USE, CREATE/INSERT/UPDATE/DELETE/DROP/ALTER, EXPORT/IMPORT, CALL, CHECKPOINT,
VACUUM, transactions), table functions other than a small allowlist (no read_csv, read_parquet,
read_json, read_text, read_blob, glob, query ...) and file paths used as tables.

This is the first wall. The second is the database itself: it runs with external access disabled,
replacement scans off and its configuration locked, and each query runs in a transaction that is
rolled back, so a trick that got past the parser still cannot touch a file or change a row.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import duckdb

READ_ONLY_HINT = "queries on the projection are read-only: SELECT, WITH, FROM, DESCRIBE, SHOW, SUMMARIZE or EXPLAIN"

TABLE_FUNCTIONS = frozenset(
    {
        "range", "generate_series", "unnest", "json_each", "json_tree", "repeat_row",
        "pragma_table_info", "pragma_storage_info", "pragma_database_size", "pragma_version", "pragma_show",
    }
)  # fmt: skip
TABLE_FUNCTION_PREFIXES = ("duckdb_",)
TABLE_FUNCTIONS_REFUSED = frozenset({"duckdb_secrets", "duckdb_log", "duckdb_logs"})

_EXPLAIN = re.compile(r"^\s*explain\s+(?:analy[sz]e\s+)?(?:\([^)]*\)\s*)?(?P<rest>.*)$", re.I | re.S)
_PATHLIKE = re.compile(r"[./\\:~]")


class Refused(ValueError):
    """A query the service will not run; the message says why and what is allowed."""


_ACCEPTED: dict[str, None] = {}  # texts that passed (a check depends on the text alone); oldest first
_ACCEPTED_MAX = 1024
_ACCEPTED_LOCK = threading.Lock()


def check(cur: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise Refused unless `sql` is one read-only statement over the projection's tables. The
    services ask the same parameterized texts over and over: a text that passed is not parsed again."""
    if sql in _ACCEPTED:
        return
    _check(cur, sql)
    with _ACCEPTED_LOCK:  # queries are checked on several threads
        if len(_ACCEPTED) >= _ACCEPTED_MAX:
            del _ACCEPTED[next(iter(_ACCEPTED))]
        _ACCEPTED[sql] = None


def is_explain(sql: str) -> bool:
    return _EXPLAIN.match(sql) is not None


def _check(cur: duckdb.DuckDBPyConnection, sql: str) -> None:
    if not sql or not sql.strip():
        raise Refused("empty query; send one SELECT statement")
    try:
        statements = cur.extract_statements(sql)
    except duckdb.Error as e:
        raise Refused(f"cannot parse the query: {e}") from None
    if len(statements) != 1:
        raise Refused(f"send exactly one statement (got {len(statements)}); {READ_ONLY_HINT}")
    kind = statements[0].type.name
    if kind == "SELECT":
        _check_select(cur, sql)
    elif kind == "EXPLAIN":
        m = _EXPLAIN.match(statements[0].query)
        if not m:
            raise Refused("EXPLAIN is accepted only as `EXPLAIN [ANALYZE] SELECT ...`")
        inner = cur.extract_statements(m.group("rest"))
        if len(inner) != 1 or inner[0].type.name != "SELECT":
            raise Refused(f"EXPLAIN of a {inner[0].type.name if inner else 'missing'} statement is refused; {READ_ONLY_HINT}")
        _check_select(cur, m.group("rest"))
    else:
        raise Refused(f"{kind} statements are refused; {READ_ONLY_HINT}")


def _check_select(cur: duckdb.DuckDBPyConnection, sql: str) -> None:
    raw = cur.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchall()[0][0]
    tree = json.loads(raw)
    if tree.get("error"):
        raise Refused(f"this query form cannot be checked ({tree.get('error_message', 'unknown')}); rewrite it as a plain SELECT")
    _walk(tree)


def _walk(node: Any) -> None:
    if isinstance(node, dict):
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            name = str((node.get("function") or {}).get("function_name", "")).lower()
            allowed = name in TABLE_FUNCTIONS or (name.startswith(TABLE_FUNCTION_PREFIXES) and name not in TABLE_FUNCTIONS_REFUSED)
            if not allowed:
                raise Refused(
                    f"table function `{name}` is refused: queries read only the projection's tables "
                    f"(allowed: {', '.join(sorted(TABLE_FUNCTIONS))}, duckdb_* metadata)"
                )
        elif kind == "BASE_TABLE":
            table = str(node.get("table_name", ""))
            if _PATHLIKE.search(table):
                raise Refused(f"`{table}` looks like a file; queries read only the projection's tables")
        for v in node.values():
            _walk(v)
    elif isinstance(node, list):
        for v in node:
            _walk(v)
