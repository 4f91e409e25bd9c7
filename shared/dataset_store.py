"""Fetching a task's replay dataset once and shipping its prompts to every host.

- **Fetch** (the scheduler service, before the task starts): an http(s) URL is downloaded (3 tries,
  300 s timeout each, HTTP(S)_PROXY / NO_PROXY honoured) into a cache keyed by the URL's sha256
  under `<data dir>/datasets/`, so a later task with the same URL reads the file from there;
  a `file://` URL or a bare path is read where it is (on the scheduler's machine), every time.
  The cache holds the file as downloaded: deduplication is applied when it is read, so
  `dataset_deduplicate` is honoured whatever an earlier task asked (the earlier tool cached the
  processed prompts and ignored it from then on).
- **Ship**: the prompt list (JSON) goes into the JetStream Object Store bucket `autotune-datasets`
  under its own sha256. The `task.dataset_fetched` event names that object; each runner reads it
  from there (and keeps it in memory), so no host downloads the URL again and every host replays
  exactly the same prompts.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import msgspec

from autotune.schemas import subjects as subj
from autotune.shared.dataset import MAX_BYTES, DatasetError, Prompts, read_prompts
from autotune.shared.log import get_logger

log = get_logger("dataset")

TRIES = 3
TIMEOUT_S = 300.0


@dataclass
class Fetched:
    data: bytes
    name: str  # the file name (for its extension)
    sha256: str  # of the bytes as fetched
    cached: bool = False


def cache_path(cache_dir: str | os.PathLike[str], url: str) -> Path:
    key = hashlib.sha256(url.encode()).hexdigest()
    return Path(cache_dir) / key / (_name_of(url) or "dataset")


def _name_of(url: str) -> str:
    path = urlsplit(url).path if urlsplit(url).scheme else url
    return unquote(path.rstrip("/").rsplit("/", 1)[-1])


def _local_path(url: str) -> Path | None:
    parts = urlsplit(url)
    if parts.scheme.lower() == "file":
        return Path(unquote(parts.path))
    if not parts.scheme or len(parts.scheme) == 1:
        return Path(url).expanduser()
    return None


async def fetch(url: str, cache_dir: str | os.PathLike[str], *, tries: int = TRIES, timeout_s: float = TIMEOUT_S) -> Fetched:
    """The dataset's bytes. Raises DatasetError saying what went wrong (the caller names the URL)."""
    local = _local_path(url)
    if local is not None:
        try:
            size = local.stat().st_size
            if size > MAX_BYTES:
                raise DatasetError(f"{local} is larger than {MAX_BYTES >> 20} MiB")
            data = await asyncio.to_thread(local.read_bytes)
        except FileNotFoundError:
            raise DatasetError(f"no such file on the scheduler's machine ({local.resolve()})") from None
        except IsADirectoryError:
            raise DatasetError(f"{local} is a directory, not a file") from None
        except PermissionError:
            raise DatasetError(f"the scheduler may not read {local}") from None
        return Fetched(data, local.name, hashlib.sha256(data).hexdigest())
    path = cache_path(cache_dir, url)
    if path.is_file():
        data = await asyncio.to_thread(path.read_bytes)
        return Fetched(data, path.name, hashlib.sha256(data).hexdigest(), cached=True)
    data = await _download(url, tries=tries, timeout_s=timeout_s)
    await asyncio.to_thread(_store, path, data)
    return Fetched(data, path.name, hashlib.sha256(data).hexdigest())


def _store(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def _download(url: str, *, tries: int, timeout_s: float) -> bytes:
    import httpx

    last = ""
    for attempt in range(1, tries + 1):
        try:
            # trust_env: HTTP_PROXY / HTTPS_PROXY / NO_PROXY from the environment, as the earlier tool did
            async with (
                httpx.AsyncClient(timeout=timeout_s, follow_redirects=True, trust_env=True) as client,
                client.stream("GET", url) as r,
            ):
                if r.status_code >= 400:
                    msg = f"the server answered HTTP {r.status_code} {r.reason_phrase}"
                    if r.status_code < 500 and r.status_code not in (408, 429):
                        raise DatasetError(msg)  # asking again will not help
                    last = msg
                else:
                    chunks, size = [], 0
                    async for chunk in r.aiter_bytes():
                        size += len(chunk)
                        if size > MAX_BYTES:
                            raise DatasetError(f"the download is larger than {MAX_BYTES >> 20} MiB")
                        chunks.append(chunk)
                    return b"".join(chunks)
        except httpx.TimeoutException:
            last = f"no answer within {timeout_s:.0f} s"
        except httpx.HTTPError as e:
            last = f"{type(e).__name__}: {e}"
        log.warning("dataset download failed", url=url, attempt=attempt, error=last)
        if attempt < tries:
            await asyncio.sleep(min(2.0 * attempt, 10.0))
    raise DatasetError(f"the download failed {tries} times; last: {last}")


async def prepare(url: str, cache_dir: str | os.PathLike[str], *, deduplicate: bool, **kw) -> tuple[Fetched, Prompts]:
    fetched = await fetch(url, cache_dir, **kw)
    prompts = await asyncio.to_thread(read_prompts, fetched.data, fetched.name, deduplicate=deduplicate)
    return fetched, prompts


# --- the object store ------------------------------------------------------------------------------

_encode = msgspec.json.encode
_decode_list = msgspec.json.Decoder(list[str]).decode


def prompts_blob(prompts: list[str]) -> tuple[str, bytes]:
    """(object name, bytes): the prompt list as JSON, named by its sha256 (equal lists, one object)."""
    blob = _encode(prompts)
    return hashlib.sha256(blob).hexdigest(), blob


async def put_prompts(js, prompts: list[str]) -> tuple[str, int]:
    """Store the prompt list unless an object of that name (the same content) is there. (name, bytes)."""
    from nats.js.errors import NotFoundError

    name, blob = prompts_blob(prompts)
    obs = await js.object_store(subj.DATASETS_BUCKET)
    try:
        info = await obs.get_info(name)
        if not info.deleted:
            return name, len(blob)
    except NotFoundError:
        pass
    await obs.put(name, blob)
    return name, len(blob)


_loaded: dict[str, list[str]] = {}  # object name -> prompts (a runner keeps the few it used)


async def get_prompts(js, name: str) -> list[str]:
    """The prompt list stored under `name`; checked against its name (its sha256). Raises DatasetError."""
    if name in _loaded:
        return _loaded[name]
    from nats.js.errors import NotFoundError

    try:
        obs = await js.object_store(subj.DATASETS_BUCKET)
        res = await obs.get(name)
    except NotFoundError:
        raise DatasetError(f"the prompts {name[:12]}… are not in the {subj.DATASETS_BUCKET} bucket") from None
    data = res.data or b""
    if hashlib.sha256(data).hexdigest() != name:
        raise DatasetError(f"the prompts {name[:12]}… in {subj.DATASETS_BUCKET} do not match their sha256")
    prompts = _decode_list(data)
    if len(_loaded) >= 8:
        _loaded.pop(next(iter(_loaded)))
    _loaded[name] = prompts
    return prompts
