"""ARCHITECTURE.md describes the code as it is: every file, folder, function and method it names exists."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "ARCHITECTURE.md"
SOURCES = ("services", "shared", "schemas")


@cache
def definitions() -> dict[str, set[str]]:
    """Every function and class name in the source tree, and `Class.method` for methods: name -> files."""
    found: dict[str, set[str]] = {}
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    found.setdefault(node.name, set()).add(str(path))
                    for item in node.body:
                        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                            found.setdefault(f"{node.name}.{item.name}", set()).add(str(path))
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found.setdefault(node.name, set()).add(str(path))
    return found


def resolve(path: str) -> Path | None:
    for base in (ROOT, ROOT / "services"):
        if (base / path).exists():
            return (base / path).resolve()
    return None


def problems(text: str) -> list[str]:
    wrong = []
    for span in re.findall(r"`([^`\n]+)`", text):
        where, _, name = span.partition(": ")
        if re.fullmatch(r"[\w/.-]+(\.py|\.md|/)", where.strip()) and "/" in where:
            if resolve(where.strip()) is None:
                wrong.append(f"{span}: no file or folder {where}")
                continue
        else:
            name = span
        m = re.fullmatch(r"(\w+(?:\.\w+)?)(\(\))?", name.strip())
        named_in_file = name is not span
        if not m or not (named_in_file or m.group(2) or "." in m.group(1) and m.group(1)[0].isupper()):
            continue  # not a function, class or Class.method reference
        files = definitions().get(m.group(1))
        if not files:
            wrong.append(f"{span}: nothing defines {m.group(1)}")
        elif named_in_file and str(resolve(where.strip())) not in files:
            wrong.append(f"{span}: {m.group(1)} is not defined in {where} (it is in {', '.join(sorted(files))})")
    return wrong


def test_every_name_in_architecture_md_exists():
    assert DOC.exists()
    assert problems(DOC.read_text()) == []


def test_the_check_catches_a_name_that_moved():
    assert problems("`decide()` and `scheduler/decide.py: decide()`") == []
    assert problems("`no_such_function()`") and problems("`scheduler/state.py: decide()`") and problems("`nowhere/x.py`")
    assert problems("`Runner.no_such_method`") and problems("`scheduler/state.py: Scheduler`")
    assert problems("`runner/service.py: Runner`") == []


def test_the_readme_links_it():
    assert "ARCHITECTURE.md" in (ROOT / "README.md").read_text()
