"""The short form of the chaos suite, in CI: kill -9 services during a real task, then audit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_chaos_short_form_finds_no_violation():
    r = subprocess.run([sys.executable, "tests/chaos/chaos.py", "--short", "--seed", "3"], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert r.stdout.strip(), r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["violations"] == [], result
    assert sum(result["kills"].values()) >= 3 and result["restarts"] >= 3, result
    assert r.returncode == 0
