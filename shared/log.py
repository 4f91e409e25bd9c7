"""Structured logs: one line per record, `time level service message key=value ...`, on stderr."""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        fields = getattr(record, "fields", None) or {}
        extra = "".join(f" {k}={_fmt(v)}" for k, v in fields.items())
        line = f"{ts} {record.levelname:<5} {record.name:<10} {record.getMessage()}{extra}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _fmt(v: object) -> str:
    s = str(v)
    return repr(s) if (" " in s or not s) else s


class Log:
    """A thin logger that takes key=value fields: `log.info("experiment started", task=t, n=3)`."""

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)

    def _emit(self, level: int, msg: str, exc: bool, fields: dict[str, object]) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, msg, extra={"fields": fields}, exc_info=exc)

    def debug(self, msg: str, **f: object) -> None:
        self._emit(logging.DEBUG, msg, False, f)

    def info(self, msg: str, **f: object) -> None:
        self._emit(logging.INFO, msg, False, f)

    def warning(self, msg: str, **f: object) -> None:
        self._emit(logging.WARNING, msg, False, f)

    def error(self, msg: str, exc: bool = False, **f: object) -> None:
        self._emit(logging.ERROR, msg, exc, f)


def get_logger(name: str) -> Log:
    return Log(name)


def setup_logging(level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("AUTOTUNE_LOG_LEVEL", "INFO")).upper())
    for noisy in ("nats", "asyncio", "httpx", "uvicorn.access", "aiodocker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
