"""The simulator's log lines on stderr, stamped like the engines' own."""

from __future__ import annotations

import sys
import time


def log(level: str, message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    sys.stderr.write(f"[{stamp}] {level} {message}\n")
    sys.stderr.flush()
