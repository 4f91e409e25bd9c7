"""A task's replay dataset, from file bytes to the list of prompts every host benchmarks with. Pure:
no network, no clock (fetching and shipping are in dataset_store.py).

- **Unpacking.** gzip is gunzipped (`.csv.gz` → `.csv`, `.jsonl.gz` → `.jsonl`); `.zip`, `.tar.gz`
  and `.tgz` are extracted and the largest `.csv` inside is used, else the largest `.jsonl`, else
  the largest `.json`. Archives are recognised by their first bytes too, whatever the name says.
- **Reading prompts.** CSV: a `request_body` column holding a JSON request, or a plain `prompt`
  column (the earlier tool refused that one). JSONL (one JSON object a line) or JSON (a list of
  such objects): a top-level `prompt`, a `request_body` (a JSON string or an object), OpenAI-style
  `messages`, or ShareGPT-style `conversations` (`[{from: human|gpt, value}]`: the first human turn).
  From a request: its `prompt`, else the last `role: user` message of `messages`, its text parts
  joined by newlines.
- Rows that cannot be read are counted and skipped; the first few problems are kept for the
  message. Zero prompts is an error. **Deduplication** (default on) drops exact repeats and keeps
  the order.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MAX_BYTES = 1 << 30  # a dataset (download or unpacked member) larger than this is refused
SCHEMES = ("http", "https", "file")
_GZIP, _ZIP = b"\x1f\x8b", b"PK\x03\x04"


class DatasetError(ValueError):
    """A dataset that cannot be used; the message says what was wrong (the caller adds the URL)."""


@dataclass
class Prompts:
    prompts: list[str]
    member: str  # the file the prompts came from (inside an archive, its path there)
    format: str  # csv | jsonl | json
    rows: int = 0
    skipped: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)  # the first rows that could not be read, and why


def check_url(url: str) -> None:
    """A URL autotune can fetch: http(s), file://, or a bare path. Raises DatasetError."""
    if not url.strip():
        raise DatasetError("is empty; give an http(s) URL, a file:// URL or a path")
    scheme = urlsplit(url).scheme.lower()
    if scheme and len(scheme) > 1 and scheme not in SCHEMES:  # one letter: a Windows drive, a path
        raise DatasetError(f"`{url}`: the scheme `{scheme}` is not supported; use http, https, file:// or a path")


# --- unpacking -------------------------------------------------------------------------------------


def _stem(name: str) -> str:
    return name.rsplit("/", 1)[-1].lower()


def _kind_of(name: str) -> str | None:
    n = _stem(name)
    for ext, kind in ((".csv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json")):
        if n.endswith(ext):
            return kind
    return None


def _pick(members: list[tuple[str, int]], archive: str) -> str:
    """The largest .csv member, else the largest .jsonl, else the largest .json."""
    for kind in ("csv", "jsonl", "json"):
        found = [(size, name) for name, size in members if _kind_of(name) == kind]
        if found:
            return max(found)[1]
    listing = ", ".join(n for n, _ in members[:10]) or "nothing"
    raise DatasetError(f"the {archive} holds no .csv, .jsonl or .json file (it holds {listing})")


def _gunzip(data: bytes) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(MAX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"it is not a valid gzip file ({e})") from None
    if len(out) > MAX_BYTES:
        raise DatasetError(f"it unpacks to more than {MAX_BYTES >> 20} MiB")
    return out


def _is_tar(data: bytes) -> bool:
    return len(data) > 262 and data[257:262] == b"ustar"


def unpack(data: bytes, name: str) -> tuple[str, bytes]:
    """(member name, content) of the file to read prompts from."""
    if not data:
        raise DatasetError("the file is empty")
    low = _stem(name)
    if data[:2] == _GZIP or low.endswith((".gz", ".tgz")):
        data = _gunzip(data)
        name = name[:-4] + ".tar" if low.endswith(".tgz") else (name[:-3] if low.endswith(".gz") else name)
        if not data:
            raise DatasetError("the gzip file holds nothing")
    if _is_tar(data):
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                files = [m for m in tar.getmembers() if m.isfile()]
                chosen = _pick([(m.name, m.size) for m in files], "tar archive")
                member = tar.extractfile(chosen)
                assert member is not None
                return chosen, member.read(MAX_BYTES + 1)
        except tarfile.TarError as e:
            raise DatasetError(f"it is not a valid tar archive ({e})") from None
    if data[:4] == _ZIP or low.endswith(".zip"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                infos = [i for i in z.infolist() if not i.is_dir()]
                chosen = _pick([(i.filename, i.file_size) for i in infos], "zip archive")
                if z.getinfo(chosen).file_size > MAX_BYTES:
                    raise DatasetError(f"{chosen} unpacks to more than {MAX_BYTES >> 20} MiB")
                return chosen, z.read(chosen)
        except (zipfile.BadZipFile, zlib.error) as e:
            raise DatasetError(f"it is not a valid zip archive ({e})") from None
    return name, data


# --- prompts from requests -------------------------------------------------------------------------


def _text(content: Any) -> str | None:
    """A message's content: a string, or a list of parts whose text parts are joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type", "text") == "text" and isinstance(p.get("text"), str)]
        parts += [p for p in content if isinstance(p, str)]
        return "\n".join(parts) if parts else None
    return None


def _last_user(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return _text(m.get("content"))
    return None


def _first_human(conversations: Any) -> str | None:
    """ShareGPT: the first turn a person wrote (`from: human` or `user`)."""
    if not isinstance(conversations, list):
        return None
    for turn in conversations:
        if isinstance(turn, dict) and str(turn.get("from", turn.get("role", ""))).lower() in ("human", "user"):
            return _text(turn.get("value", turn.get("content")))
    return None


def _from_request(body: Any) -> str | None:
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except json.JSONDecodeError as e:
            raise ValueError(f"request_body is not JSON ({e.msg})") from None
    if not isinstance(body, dict):
        raise ValueError("request_body is not a JSON object")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    found = _last_user(body.get("messages"))
    if found is None:
        raise ValueError("request_body has neither a `prompt` nor a user message in `messages`")
    return found


def _from_object(row: Any) -> str | None:
    """One JSONL line or JSON list item as a prompt."""
    if not isinstance(row, dict):
        raise ValueError(f"is a JSON {type(row).__name__}, not an object")
    if isinstance(row.get("prompt"), str):
        return row["prompt"]
    if "request_body" in row:
        return _from_request(row["request_body"])
    if "messages" in row:
        found = _last_user(row["messages"])
        if found is None:
            raise ValueError("`messages` has no user message")
        return found
    if "conversations" in row or "conversation" in row:
        found = _first_human(row.get("conversations", row.get("conversation")))
        if found is None:
            raise ValueError("the conversation has no human turn")
        return found
    raise ValueError(f"has no `prompt`, `request_body`, `messages` or `conversations` (keys: {', '.join(list(row)[:8])})")


# --- reading ---------------------------------------------------------------------------------------


class _Collector:
    def __init__(self, out: Prompts) -> None:
        self.out = out

    def add(self, where: str, make) -> None:
        self.out.rows += 1
        try:
            prompt = make()
            if prompt is None or not prompt.strip():
                raise ValueError("the prompt is empty")
        except (ValueError, TypeError) as e:
            self.out.skipped += 1
            if len(self.out.problems) < 3:
                self.out.problems.append(f"{where}: {e}")
            return
        self.out.prompts.append(prompt)


def _decode(content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"it is not UTF-8 text (byte {e.start})") from None


def _read_csv(text: str, out: Prompts) -> None:
    csv.field_size_limit(MAX_BYTES)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns
    if "request_body" not in columns and "prompt" not in columns:
        raise DatasetError(f"the CSV has no `request_body` or `prompt` column (its columns: {', '.join(columns) or 'none'})")
    c = _Collector(out)
    try:
        for i, row in enumerate(reader, start=2):  # line 1 is the header
            body, prompt = row.get("request_body"), row.get("prompt")
            c.add(f"row {i}", lambda body=body, prompt=prompt: _from_request(body) if body else prompt)
    except csv.Error as e:
        raise DatasetError(f"the CSV cannot be read past row {reader.line_num} ({e})") from None


def _read_jsonl(text: str, out: Prompts) -> None:
    c = _Collector(out)
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue

        def make(line=line):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"not JSON ({e.msg})") from None
            return _from_object(row)

        c.add(f"line {i}", make)


def _read_json(text: str, out: Prompts) -> None:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"it is not JSON (line {e.lineno}: {e.msg})") from None
    if isinstance(doc, dict):
        doc = next((v for k, v in doc.items() if k in ("data", "rows", "items", "conversations") and isinstance(v, list)), [doc])
    if not isinstance(doc, list):
        raise DatasetError("the JSON file is neither a list of rows nor an object holding one")
    c = _Collector(out)
    for i, row in enumerate(doc):
        c.add(f"item {i}", lambda row=row: _from_object(row))


def _sniff(text: str) -> str:
    head = text.lstrip()[:1]
    if head == "[":
        return "json"
    if head == "{":
        first = text.lstrip().split("\n", 1)[0].strip()
        try:
            json.loads(first)
            return "jsonl"
        except json.JSONDecodeError:
            return "json"
    return "csv"


def read_prompts(data: bytes, name: str, *, deduplicate: bool = True) -> Prompts:
    """The prompts of a dataset file (any of the forms in the module docstring). Raises DatasetError."""
    member, content = unpack(data, name)
    if len(content) > MAX_BYTES:
        raise DatasetError(f"{member} is larger than {MAX_BYTES >> 20} MiB")
    text = _decode(content)
    if not text.strip():
        raise DatasetError(f"{member} is empty" if member != name else "the file is empty")
    kind = _kind_of(member) or _sniff(text)
    out = Prompts(prompts=[], member=member, format=kind)
    {"csv": _read_csv, "jsonl": _read_jsonl, "json": _read_json}[kind](text, out)
    if not out.prompts:
        why = f"; {out.skipped} could not be read, e.g. {out.problems[0]}" if out.problems else ""
        raise DatasetError(f"it holds no prompt ({out.rows} rows{why})")
    if deduplicate:
        seen: set[str] = set()
        kept = [p for p in out.prompts if not (p in seen or seen.add(p))]
        out.duplicates = len(out.prompts) - len(kept)
        out.prompts = kept
    return out
