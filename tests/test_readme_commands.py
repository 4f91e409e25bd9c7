"""Every command line README.md shows works as written.

The command lines are taken from README.md itself (code spans in its tables and prose, the lines of
its shell blocks), so a command documented later is checked too. Each `autotune ...` line must parse
with the real `autotune` parser; each `just ...` line must name a recipe that takes those arguments
(and what the recipe runs must parse in turn). The ones that need no running stack run for real:
`--help` lines, and `autotune bench` against a real simulator process. Every example in the
commands' own --help must parse as well.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from autotune.cli import parser
from autotune.simulator.process import SimProcess

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECTS = {">", ">>", "<", "2>", "&>"}
UV_FLAGS = {"--locked", "--frozen", "--no-sync", "--offline", "--isolated", "--no-project", "--active", "--exact", "-q", "--quiet", "-v"}
# a code span is a command line when it starts like one (JSON, subjects, file names, flags and the bare
# name `autotune` are not; `just` alone is: it lists the recipes)
COMMAND_SPAN = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?:uv run\s|autotune\s|just(?:\s|$)|python3? -m autotune\.cli\b)")


@dataclass(frozen=True)
class Shown:
    line: int  # in README.md
    text: str  # as the README shows it
    tool: str  # "autotune" or "just"
    args: tuple[str, ...]
    name_only: bool = False  # prose naming a command (`autotune submit` prints ...): the command must exist


    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def commands_in(text: str, line: int) -> list[Shown]:
    """The `autotune` and `just` invocations in one shell line: after `&&`, `|` or `;` too, without
    redirections, comments and VAR=value assignments. `uv run [--locked] autotune` is `autotune`."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as e:  # an unclosed quote: the line cannot be what the README means
        pytest.fail(f"README.md:{line}: `{text}` is not a shell command line ({e})")
    segments: list[list[str]] = [[]]
    for t in tokens:
        if t in SEPARATORS:
            segments.append([])
        else:
            segments[-1].append(t)
    found = []
    for seg in segments:
        words = []
        skip = False
        for t in seg:
            if skip:
                skip = False
            elif t in REDIRECTS:
                skip = True  # and its target
            else:
                words.append(t)
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words.pop(0)
        if words[:2] == ["uv", "run"]:  # past uv's own options: --locked, --directory DIR, --with=PKG, ...
            words = words[2:]
            while words and words[0].startswith("-"):
                words = words[1 if "=" in words[0] or words[0] in UV_FLAGS else 2 :]
        if words[:3] == ["python", "-m", "autotune.cli"]:
            words = ["autotune", *words[3:]]
        if words and words[0] in ("autotune", "just"):
            found.append(Shown(line, text, words[0], tuple(words[1:])))
    return found


def readme_commands(markdown: str) -> list[Shown]:
    """Every `autotune` / `just` command line in the README: in shell blocks each line (only the `$ `
    lines where a block shows a session with its output), elsewhere each code span. In a table cell a
    span that starts with `-` continues the command before it (`cmd --format docker` / `--format k8s`).
    Among words (prose, or a table cell of text), `autotune NAME` alone names a command rather than
    showing a line to type: that command must exist."""
    shown: list[Shown] = []
    block: str | None = None  # the language of the fenced block we are in
    pending = ""
    lines = markdown.splitlines()
    prompts: set[int] = set()  # blocks that show `$ ` prompts
    for i, raw in enumerate(lines, 1):
        fence = re.match(r"\s*```(\w*)", raw)
        if fence:
            block = fence.group(1) if block is None else None
            if block is not None:
                rest = lines[i:]
                end = next((k for k, r in enumerate(rest) if r.strip().startswith("```")), len(rest))
                if any(r.startswith("$ ") for r in rest[:end]):
                    prompts.add(i)
                start = i
            continue
        if block is not None:
            if block not in SHELL_BLOCKS:
                continue
            text = raw
            if start in prompts:
                if not text.startswith("$ "):
                    continue
                text = text[2:]
            if text.rstrip().endswith("\\"):
                pending += text.rstrip()[:-1] + " "
                continue
            shown += commands_in(pending + text, i)
            pending = ""
            continue
        table = raw.lstrip().startswith("|")
        # a table row's cells (split at `|` outside code spans); a prose line is one piece of text
        for piece in re.split(r"\|(?=(?:[^`]*`[^`]*`)*[^`]*$)", raw) if table else [raw]:
            in_text = bool(re.search(r"[A-Za-z]", re.sub(r"`[^`]*`", "", piece)))  # spans among words, not a cell of commands
            previous: Shown | None = None
            for span in re.findall(r"`([^`]+)`", piece):
                span = span.strip()
                if span.startswith("-"):
                    if table and previous is not None:
                        shown += [Shown(i, f"{previous.text} {span}", previous.tool, previous.args + tuple(c.args))
                                  for c in commands_in(f"{previous.tool} {span}", i)]  # fmt: skip
                    continue
                found = commands_in(span, i) if COMMAND_SPAN.match(span) else []
                if in_text:
                    found = [Shown(c.line, c.text, c.tool, c.args, name_only=c.tool == "autotune" and len(c.args) == 1) for c in found]
                shown += found
                previous = found[-1] if found else None
    return shown


COMMANDS = readme_commands(README.read_text())
AUTOTUNE = [c for c in COMMANDS if c.tool == "autotune"]
JUST = [c for c in COMMANDS if c.tool == "just"]


def parse(args: tuple[str, ...] | list[str]) -> tuple[int | None, str]:
    """Parse with the real parser: (exit status if argparse exited, what it wrote)."""
    out = io.StringIO()
    with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
        try:
            parser().parse_args(list(args))
        except SystemExit as e:
            return (e.code if isinstance(e.code, int) else 2), out.getvalue()
    return None, out.getvalue()


def test_the_readme_shows_commands_of_each_kind():
    # the extraction itself: if the README's layout changes so that nothing is found, say so
    assert len(AUTOTUNE) >= 30 and len(JUST) >= 8, (len(AUTOTUNE), len(JUST))
    texts = {c.text for c in COMMANDS}
    assert "uv run autotune bench --url http://127.0.0.1:30000 --model M --concurrency 1 8" in texts
    assert "uv run autotune best quickstart --format docker --format k8s > deploy.yaml" in texts  # a table's continued cell
    assert "uv run autotune submit bad.yaml" in texts  # a session block: its `$ ` line, not its output
    assert not any(c.args and c.args[0].startswith("invalid") for c in COMMANDS)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("shown", AUTOTUNE, ids=str)
def test_every_autotune_command_in_the_readme_parses(shown: Shown):
    if shown.name_only:
        assert shown.args[0] in subcommands(), f"{shown}\n  names no command of autotune (autotune --help lists them)"
        return
    code, said = parse(shown.args)
    helps = {"-h", "--help", "--version"} & set(shown.args)
    assert code is None or (code == 0 and helps), f"{shown}\n  does not parse (argparse exit {code}):\n{said}"


def _just() -> str:
    exe = shutil.which("just")
    if exe is None:
        pytest.skip("`just` is not installed (pip install rust-just; .ci/run installs it)")
    return exe


@pytest.mark.parametrize("shown", JUST, ids=str)
def test_every_just_command_in_the_readme_names_a_recipe_that_takes_its_arguments(shown: Shown):
    # --dry-run prints what the recipe (and its dependencies) would run, and runs nothing
    r = subprocess.run([_just(), "--dry-run", *shown.args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"{shown}\n  just says: {r.stderr.strip()}"
    for line in r.stderr.splitlines():
        for inner in commands_in(line, shown.line):  # `just up` runs `uv run --locked autotune up`
            if inner.tool == "autotune":
                code, said = parse(inner.args)
                assert code is None, f"{shown}\n  runs `{line}`, which does not parse:\n{said}"
        script = re.search(r"\bpython3? (\S+\.py)\b", line)
        if script:
            assert (ROOT / script.group(1)).is_file(), f"{shown}\n  runs `{line}`, but {script.group(1)} does not exist"


def _autotune(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_each_command_the_readme_documents_answers_help_for_real():
    # the part of every documented command that needs no running stack, as a process; a README line
    # that is itself a --help or --version line runs as written
    lines = {(c.args[0], "--help"): str(c) for c in AUTOTUNE if c.args}
    lines |= {c.args: str(c) for c in AUTOTUNE if {"-h", "--help", "--version"} & set(c.args)}
    with ThreadPoolExecutor(4) as pool:
        results = dict(zip(lines, pool.map(lambda args: _autotune(*args), lines), strict=True))
    for args, r in results.items():
        what = f"autotune {' '.join(args)} (for {lines[args]})"
        assert r.returncode == 0 and r.stdout.strip() and "Traceback" not in r.stderr, f"{what}\n{r.stdout}\n{r.stderr}"
        if args[-1] == "--help" and len(args) == 2:
            assert "examples:" in r.stdout, what


BENCH = [c for c in AUTOTUNE if c.args[:1] == ("bench",) and "--url" in c.args]


@pytest.fixture(scope="module")
def simulator():
    env = {"AUTOTUNE_SIM_TIME_SCALE": "50", "AUTOTUNE_SIM_STARTUP_SCALE": "1000", "AUTOTUNE_SIM_SEED": "1"}
    with SimProcess(["sglang", "--model-path", "M"], env=env) as sim:
        yield sim


@pytest.mark.parametrize("shown", BENCH, ids=str)
def test_the_readme_bench_lines_benchmark_a_real_simulator(shown: Shown, simulator):
    # the README's server is on :30000; here a simulator process on a free port stands where it would be
    args = list(shown.args)
    args[args.index("--url") + 1] = simulator.url
    r = _autotune(*args, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, f"{shown}\n{r.stdout}\n{r.stderr}"
    asked = parser().parse_args(args)
    if asked.json:
        runs = [(run["scenario"], run["concurrency"], run["requests"] - run["completed"]) for run in json.loads(r.stdout)["runs"]]
    else:  # the table: scenario, concurrency, requests, ok, errors, ...
        rows = [line.split() for line in r.stdout.splitlines() if line.split()[:1] and line.split()[0] in asked.scenario]
        runs = [(row[0], int(row[1]), int(row[2]) - int(row[3])) for row in rows]
    # one run per scenario and concurrency level the line asks for, every request answered
    assert sorted(runs) == sorted((s, c, 0) for s in asked.scenario for c in asked.concurrency), r.stdout
    assert json.loads(r.stdout)["success_rate"] == 1.0 if asked.json else "success 100.0%" in r.stdout


def _examples(p: argparse.ArgumentParser) -> list[str]:
    text = p.format_help()
    return [line.strip() for line in text.split("examples:", 1)[-1].splitlines() if line.strip()] if "examples:" in text else []


def test_every_example_in_the_commands_help_parses():
    commands = subcommands()
    checked = 0
    for name, p in commands.items():
        examples = _examples(p)
        assert examples, f"autotune {name} --help shows no examples"
        for example in examples:
            for shown in commands_in(example, 0):
                if shown.tool != "autotune":
                    continue
                code, said = parse(shown.args)
                assert code is None, f"`autotune {name} --help` shows `{example}`, which does not parse:\n{said}"
                checked += 1
    assert checked >= len(commands)
