"""The wheel: it ships every package of the source tree and the reference documents, and an
installed autotune finds the task-file reference (the MCP resource) without a source tree.

Built with `uv build` from a copy of the tree (a stale `build/` of the checkout cannot leak in), then
imported from the unpacked wheel in a subprocess whose sys.path puts it before the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"services": "autotune", "shared": "autotune/shared", "schemas": "autotune/schemas", "docs": "autotune/docs"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed: it builds the wheel")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([uv, "build", "--wheel", "--offline", "--out-dir", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("autotune-*.whl")
    return path


def test_the_wheel_ships_every_package_and_document(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, package in FOLDERS.items():
        for f in (ROOT / folder).rglob("*"):
            rel = f.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts or not f.is_file():
                continue
            if f.suffix == ".py" and (f.parent / "__init__.py").is_file() or folder == "docs" and f.suffix == ".md":
                assert f"{package}/{rel.as_posix()}" in names, f"{folder}/{rel} is not in the wheel: list its package in pyproject.toml"


def test_an_installed_wheel_serves_the_task_file_reference(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import autotune.mcp.data as d, sys\n"
        f"assert d.__file__.startswith({str(site)!r}), d.__file__\n"
        "sys.stdout.write(d.task_file_reference())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path, env={"PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr[-3000:]
    doc = ROOT / "docs" / "task-file.md"
    if doc.is_file():  # once docs/task-file.md exists, the wheel serves it
        assert done.stdout == doc.read_text(encoding="utf-8")
    else:  # until then, the README's section, from the installed distribution's description
        assert done.stdout.startswith("# Task files\n") and "task_name" in done.stdout and "autotune://schema/task-spec.json" in done.stdout
