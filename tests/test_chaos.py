"""The short form of the chaos suite, in CI: kill -9 and pause services during a real task, then audit
the log, the projection and the machine (no GPU ran two engines at once)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _chaos(*args: str) -> dict:
    """Run the driver; its JSON line, once it found no violation."""
    r = subprocess.run([sys.executable, "tests/chaos/chaos.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert r.stdout.strip(), r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["violations"] == [], result
    assert r.returncode == 0
    return result


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_chaos_short_form_finds_no_violation():
    result = _chaos("--short", "--seed", "3")
    assert sum(result["kills"].values()) >= 3 and result["restarts"] >= 3, result
    assert result["long_pauses"].get("runner", 0) >= 1 and result["machine"]["samples"] > 100, result


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_chaos_cluster_short_form_finds_no_violation():
    """The same on a 3-node NATS cluster (streams x3, a user per role), with a node among the victims."""
    result = _chaos("--short", "--cluster", "--seed", "3")
    assert result["cluster"] and result["kills"].get("nats", 0) >= 1, result
    assert set(result["kills"]) == {"scheduler", "runner", "projector", "api", "nats"} and result["restarts"] >= 5, result
    assert result["long_pauses"].get("runner", 0) >= 1 and result["machine"]["samples"] > 100, result
