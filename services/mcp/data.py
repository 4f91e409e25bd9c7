"""Data: read-only SQL on the projection (the projector's guard decides what is read-only), and the
task-file reference and the task spec's JSON schema as resources, so an agent can write a valid
task file."""

from __future__ import annotations

import re
from importlib import metadata, resources
from pathlib import Path
from typing import Annotated

import msgspec
from mcp.server.mcpserver import Context
from mcp.types import CallToolResult
from pydantic import Field

from autotune.mcp.registry import answer, link_of, tool
from autotune.schemas.spec import TaskSpec
from autotune.shared import query as q

TASK_FILE_URI = "autotune://docs/task-file"
TASK_SCHEMA_URI = "autotune://schema/task-spec.json"
SOURCE_TREE = Path(__file__).resolve().parents[2]


@tool("Read-only SQL on the projection")
async def sql(
    ctx: Context,
    query: Annotated[str, Field(description="one SELECT (or WITH / DESCRIBE / SHOW / SUMMARIZE / EXPLAIN) on the DuckDB read model: "
                                            "tasks, experiments, experiment_runs, request_samples, hosts, gpu_samples, log_lines, events, dead_letters",
                                max_length=100_000)],
    limit: Annotated[int, Field(ge=1, le=10_000, description="rows at most")] = 100,
) -> CallToolResult:  # fmt: skip
    """Run one read-only SQL statement on the projection (DuckDB). `describe experiments` lists a
    table's columns. Secrets (model.hf_token) are masked wherever they would appear."""
    link = link_of(ctx)
    res = await q.sql(await link.nc(), query, limit=limit, min_seq=link.min_seq)
    more = f"; only the first {res.row_count}: pass a larger limit for more" if res.truncated else ""
    summary = f"{res.row_count} row(s) of {', '.join(res.columns) or 'no columns'} ({res.elapsed_ms:.0f} ms){more}"
    return await answer(link, summary, res)


def task_file_reference() -> str:
    """docs/task-file.md, which ships as package data of `autotune.docs` (a wheel has it as the
    source tree does); where this copy of autotune has none, the README's "Task files" section."""
    doc = resources.files("autotune.docs").joinpath("task-file.md")
    if doc.is_file():
        return doc.read_text(encoding="utf-8")
    match = re.search(r"^## Task files\n(.*?)(?=^## )", _readme(), re.S | re.M)
    if match:
        return "# Task files\n" + match.group(1).rstrip() + f"\n\nThe JSON schema of every field: {TASK_SCHEMA_URI}\n"
    return f"The task-file reference is not installed with this copy of autotune. {TASK_SCHEMA_URI} gives the JSON schema, and validate_task checks a spec.\n"


def _readme() -> str:
    """The README: from the source tree, else the installed distribution's description (which is
    the README: pyproject's `readme`)."""
    path = SOURCE_TREE / "README.md"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    try:
        meta = metadata.metadata("autotune")
    except metadata.PackageNotFoundError:
        return ""
    return meta.get_payload() or meta.get("Description") or ""  # type: ignore[attr-defined]


def task_spec_schema() -> str:
    """The JSON schema of a task file, from the msgspec Structs every task file is decoded into."""
    return msgspec.json.encode(msgspec.json.schema(TaskSpec)).decode()
