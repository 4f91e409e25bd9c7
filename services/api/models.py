"""HTTP schemas: what only the API accepts and answers (errors, acknowledgements, requests, health).
Every view is one of the read side's Structs (`autotune.reads.models`), re-exported here so that a
controller names all its shapes through one module."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from autotune.reads.models import *  # noqa: F403

# --- errors and acknowledgements -----------------------------------------------------------------------


class ApiError(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Every error: what was wrong and what to do; for a task spec also the field path and line."""

    error: str
    status: int
    path: str | None = None
    line: int | None = None
    detail: list[dict[str, Any]] | None = None


class Accepted(msgspec.Struct, kw_only=True):
    """A command was recorded in the log at `seq`; a GET right after it sees its effect."""

    id: str
    seq: int
    status: str
    url: str | None = None


class TaskCreated(msgspec.Struct, kw_only=True):
    id: str
    seq: int
    url: str
    simulate: bool = False
    cloned_from: str | None = None
    unfit: list[UnfitGroup] = []  # noqa: F405 - a warning: configurations the live fleet could never run (they fail as unplaceable)


class CloneRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Re-run a task as a new one. `overrides` is laid over the recorded spec (mappings merge, a
    null removes a field); `simulate` defaults to the source task's."""

    task_name: str | None = None
    overrides: dict[str, Any] = {}
    simulate: bool | None = None


class CancelRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: str = ""


class SqlRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    sql: str
    params: list[Any] | None = None
    limit: int | None = None


# --- system ----------------------------------------------------------------------------------------------


class Health(msgspec.Struct, kw_only=True):
    status: Literal["ok", "degraded"]
    nats_connected: bool
    version: str


class Ready(msgspec.Struct, kw_only=True):
    ready: bool
    nats_connected: bool
    projector: bool
    last_seq: int | None = None  # AUTOTUNE_EVENTS' last sequence
    applied_seq: int | None = None  # what the projector has applied
    lag: int | None = None
    max_lag: int
    reason: str | None = None


class Version(msgspec.Struct, kw_only=True):
    version: str
    api: str
    projector_schema: int
