"""What the API process mounts: the pages (one Router, whose errors are pages too), the static
files, and the template engine."""

from __future__ import annotations

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

from autotune.dashboard.common import EXCEPTION_HANDLERS, STATIC, template_config
from autotune.dashboard.experiments import ExperimentPages
from autotune.dashboard.fleet import FleetPages
from autotune.dashboard.tasks import TaskPages

__all__ = ["route_handlers", "template_config"]


def route_handlers() -> list[Router]:
    pages = Router(path="/", route_handlers=[FleetPages, TaskPages, ExperimentPages], exception_handlers=EXCEPTION_HANDLERS,
                   include_in_schema=False)  # fmt: skip
    # vendored files never change under a name (a new version is a new file): cache them an hour
    static = create_static_files_router(path="/static", directories=[STATIC], cache_control=CacheControlHeader(max_age=3600), include_in_schema=False)
    return [pages, static]
