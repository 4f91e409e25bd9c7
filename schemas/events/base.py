"""The base of every event (its deterministic `id` and UTC `at`), and the parameter map events carry."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

Params = dict[str, str | int | float | bool | None]


def now() -> datetime:
    return datetime.now(UTC)


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    id: str
    at: datetime = msgspec.field(default_factory=now)
