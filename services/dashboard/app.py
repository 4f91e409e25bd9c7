"""What the API process mounts: the pages (one Router, whose errors are pages too), the static
files, and the template engine. Pages, fragments, chart data and static files are gzipped (the
JSON API and its SSE streams are not: a compressor would hold events back)."""

from __future__ import annotations

from litestar import Router
from litestar.config.compression import CompressionConfig
from litestar.datastructures import CacheControlHeader
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.compression import CompressionMiddleware
from litestar.static_files import create_static_files_router

from autotune.dashboard.common import EXCEPTION_HANDLERS, GZIP_LEVEL, STATIC, template_config
from autotune.dashboard.experiments import ExperimentPages
from autotune.dashboard.fleet import FleetPages
from autotune.dashboard.tasks import TaskPages

__all__ = ["route_handlers", "template_config"]

# points.json compresses its own body, once per version of the data (tasks.Versioned)
GZIP = DefineMiddleware(CompressionMiddleware, config=CompressionConfig(backend="gzip", gzip_compress_level=GZIP_LEVEL, minimum_size=1024,
                                                                        exclude=[r"/points\.json$"]))  # fmt: skip


def route_handlers() -> list[Router]:
    pages = Router(path="/", route_handlers=[FleetPages, TaskPages, ExperimentPages], exception_handlers=EXCEPTION_HANDLERS,
                   include_in_schema=False, middleware=[GZIP])  # fmt: skip
    # vendored files never change under a name (a new version is a new file): cache them an hour
    static = create_static_files_router(path="/static", directories=[STATIC], cache_control=CacheControlHeader(max_age=3600), include_in_schema=False,
                                        middleware=[GZIP])  # fmt: skip
    return [pages, static]
