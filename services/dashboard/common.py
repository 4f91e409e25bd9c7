"""What every page shares: the templates and their filters, the live streams a page opens, and
errors as pages (a person who opens a wrong link reads what was wrong, not JSON)."""

from __future__ import annotations

import math
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msgspec
from jinja2 import Environment
from litestar import Request
from litestar.exceptions import HTTPException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.template.config import TemplateConfig
from markupsafe import Markup, escape
from nats.aio.client import Client as NATS

from autotune import reads
from autotune.reads import stream
from autotune.schemas import events as ev
from autotune.schemas import subjects as subj
from autotune.shared import query as q
from autotune.shared.log import get_logger

log = get_logger("dashboard")

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
PAGE_SIZE = 50
# Level 1: a task's chart data (600 KB) compresses to a quarter in ~7 ms; level 6 saves another tenth
# of the bytes for seven times the time, and Litestar's default (9) took 150 ms.
GZIP_LEVEL = 1
STREAMS = {"events": subj.EVENTS_STREAM, "telemetry": subj.TELEMETRY_STREAM, "logs": subj.LOGS_STREAM}


def nc(request: Request) -> NATS:
    return request.app.state.nc


def written(request: Request) -> int | None:
    """Read-your-writes: the projection must have applied the API process's own last publish (a page
    opened right after a cancel from this dashboard shows it) and `after`, the sequence of the event
    that made a live page re-render a section (the event comes straight from the log, ahead of the
    projector)."""
    seq = getattr(request.app.state, "last_seq", 0) or 0
    after = request.query_params.get("after", "")
    if after.isdigit() and len(after) < 17:
        seq = max(seq, int(after))
    return seq or None


# --- template filters ------------------------------------------------------------------------------------------


def num(v: Any, digits: int = 4) -> str:
    """A figure for people: integers with separators, floats to `digits` significant digits."""
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        if v == int(v) and abs(v) < 1e9:
            return f"{int(v):,}"
        return f"{v:.{digits}g}"
    return str(v)


def as_dt(v: Any) -> datetime | None:
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=UTC)
    if isinstance(v, str) and v:
        try:
            d = datetime.fromisoformat(v)
        except ValueError:
            return None
        return d if d.tzinfo else d.replace(tzinfo=UTC)
    return None


def when(v: Any) -> str:
    """A UTC time, short (the full one is the element's title)."""
    d = as_dt(v)
    return d.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if d else "–"


def duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds):
        return "–"
    s = int(seconds)
    if s < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 7200:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def since(v: Any) -> str:
    d = as_dt(v)
    return duration((datetime.now(UTC) - d).total_seconds()) + " ago" if d else "–"


_json = msgspec.json.Encoder()


def as_json(value: Any) -> Markup:
    """JSON for a <script type="application/json"> block: `</` cannot end the script early."""
    return Markup(_json.encode(msgspec.to_builtins(value)).decode().replace("</", "<\\/"))


def pct(part: Any, whole: Any) -> float | None:
    if not isinstance(part, (int, float)) or not isinstance(whole, (int, float)) or not whole:
        return None
    return max(0.0, min(100.0, 100.0 * part / whole))


def query(request: Request, **changes: Any) -> str:
    """This page's query string with `changes` applied (None removes a key): links that keep the
    user's filters and sorting."""
    items = [(k, v) for k, v in request.query_params.multi_items() if k not in changes and k not in ("part", "after")]
    for k, v in changes.items():
        if isinstance(v, (list, tuple)):
            items += [(k, x) for x in v]
        elif v is not None and v != "":
            items.append((k, v))
    return "?" + urlencode(items) if items else "?"


def spark(values: list[Any]) -> str:
    """Sparkline values for an attribute: integers, comma-separated (the page draws them)."""
    return ",".join("" if v is None else str(round(v)) for v in values)


def _int(v: Any) -> str:
    return "" if v is None else str(round(v))


def host_cells(h: Any) -> Markup:
    """The cells of a host shown as one row (a large fleet): GPU count and model, mean utilization, its
    GPUs as a strip of cells colored by utilization (each carries its figures; the page's hover and
    live samples read and update them), memory used of total, the hottest GPU, GPUs held. Built here,
    not in the template: a page of hosts is thousands of cells."""
    gpus = h.gpus
    names = {g.name for g in gpus if g.name}
    model = escape(names.pop() if len(names) == 1 else "mixed" if names else "?")
    utils = [g.util_gpu for g in gpus if g.util_gpu is not None]
    temps = [g.temperature_c for g in gpus if g.temperature_c is not None]
    used = [g.memory_used_mib for g in gpus if g.memory_used_mib is not None]
    total = sum(g.memory_total_mib or 0 for g in gpus)
    strip = "".join(
        f'<i data-gpu="{escape(h.host)}/{g.index}" data-u="{_int(g.util_gpu)}" data-m="{_int(g.memory_used_mib)}" data-mt="{_int(g.memory_total_mib)}" '
        f'data-t="{_int(g.temperature_c)}" data-l="{escape(g.leased_by or "")}"{"" if g.util_gpu is None else f" style=--u:{round(g.util_gpu)}"}></i>'
        for g in gpus
    )
    util = f"{round(sum(utils) / len(utils))} %" if utils else "–"
    mem = f"{sum(used) / 1024:.0f} / {total / 1024:.0f} GiB" if used else "–"
    temp = f"max {round(max(temps))} °C" if temps else "–"
    held = sum(1 for g in gpus if g.leased_by)
    return Markup(
        f'<td class="num">{len(gpus)}</td><td class="small">{model}</td><td class="num" data-field="util">{util}</td><td><span class="strip">{strip}</span></td>'
        f'<td class="num" data-field="mem">{mem}</td><td></td><td class="num" data-field="temp">{temp}</td><td></td>'
        f'<td class="small">{held} of {len(gpus)} held</td>'
    )


def _environment(engine: JinjaTemplateEngine) -> None:
    env: Environment = engine.engine
    env.filters.update(num=num, when=when, duration=duration, since=since, json=as_json, spark=spark, host_cells=host_cells)
    env.globals.update(pct=pct, query=query)
    env.trim_blocks = env.lstrip_blocks = True


def template_config() -> TemplateConfig:
    return TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine, engine_callback=_environment)


# --- live streams ----------------------------------------------------------------------------------------------


class Live(msgspec.Struct, kw_only=True):
    """One SSE stream a page opens: the existing API endpoint and the sequence it goes on from."""

    id: str
    url: str
    since_seq: int | None = None
    stream: str = subj.EVENTS_STREAM  # whose sequences these are (a section re-rendered after an event asks for at least its sequence)
    until: list[str] = []  # event types after which the stream is done (a finished task's stream)


def events_url(subject: str) -> str:
    return "/api/events?" + urlencode({"subject": subject, "follow": "true"})


async def positions(request: Request) -> dict[str, int]:
    """Where this page's live streams go on (read before the page's data: nothing falls between)."""
    return await stream.positions(nc(request), min_seq=written(request))


# What an SSE stream of the API may name: every event type of the log, and the log stream's own.
EVENT_TYPES = sorted({ev.tag_of(t) for t in typing.get_args(ev.AnyEvent)} | {"log", "end", "error", "undecodable", "unknown"})


def page(template: str, request: Request, *, title: str, live: list[Live] = (), simulated: bool = False, real_cpu: bool = False, **context: Any) -> Template:
    """A whole page; `simulated` and `real_cpu` put their banner on it (what its figures were measured on)."""
    config = {"streams": [msgspec.to_builtins(x) for x in live], "types": EVENT_TYPES}
    return Template(template_name=template, context={"request": request, "title": title, "live": config, "simulated": simulated, "real_cpu": real_cpu, **context})


def fragment(template: str, request: Request, **context: Any) -> Template:
    """One section of a page, what a live refresh swaps in."""
    return Template(template_name=f"parts/{template}.html", context={"request": request, **context})


# --- errors as pages -------------------------------------------------------------------------------------------


def _error_page(request: Request, status: int, message: str) -> Template:
    return Template(template_name="error.html", status_code=status, context={"request": request, "title": f"{status}", "status": status,
                                                                              "message": message, "live": {"streams": [], "types": []}, "simulated": False})  # fmt: skip


def _query_error(request: Request, exc: q.QueryError) -> Template:
    unavailable = any(s in exc.message for s in ("no projector is answering", "did not answer within", "is behind", "no query slot"))
    return _error_page(request, 503 if unavailable else 400, exc.message)


def _http(request: Request, exc: HTTPException) -> Template:
    detail = str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no page {request.url.path}; the overview (/) links every task and host"
    return _error_page(request, exc.status_code, detail)


def _internal(request: Request, exc: Exception) -> Template:
    log.error("dashboard page failed", exc=True, path=request.url.path, error=repr(exc))
    return _error_page(request, 500, f"internal error ({type(exc).__name__}); this is a bug in autotune, please report it with the URL")


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    reads.NotFound: lambda r, e: _error_page(r, 404, str(e)),
    reads.BadRequest: lambda r, e: _error_page(r, 400, str(e)),
    q.QueryError: _query_error,
    HTTPException: _http,
    Exception: _internal,
}
