"""The release a host gets: a wheel of the autotune that runs this command, its id, and its pinned
dependencies (uv.lock) — plus, for --offline, the wheels themselves, fetched once into a cache on
the controller and checked against the lock's hashes.

A release id is `<version>-<12 hex digits>`: the digest of the wheel's RECORD (the hash of every
file in it), so the same sources give the same id whenever they are built, and a changed build of
the same version gets a new one.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import msgspec

import autotune
from autotune.deploy import lock
from autotune.shared.log import get_logger

log = get_logger("deploy")


class ReleaseError(RuntimeError):
    pass


class Release(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    version: str
    wheel: str  # path on the controller
    lock_text: str  # uv.lock the dependencies are pinned from

    @property
    def wheel_name(self) -> str:
        return Path(self.wheel).name


def source_root() -> Path:
    """The checkout this autotune runs from (pyproject.toml and uv.lock beside the packages)."""
    root = Path(autotune.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file() or not (root / "uv.lock").is_file():
        raise ReleaseError(
            f"autotune runs from {root}, which is not a source checkout with pyproject.toml and uv.lock; "
            "run deploy from a checkout (`uv run autotune deploy ...`), or pass --wheel FILE --lock uv.lock"
        )
    return root


def wheel_identity(path: Path) -> tuple[str, str]:
    """(version, release id) of an autotune wheel."""
    try:
        with zipfile.ZipFile(path) as z:
            records = [n for n in z.namelist() if n.endswith(".dist-info/RECORD")]
            metas = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
            if not records or not metas:
                raise ReleaseError(f"{path} is not a wheel (no dist-info RECORD/METADATA)")
            meta = z.read(metas[0]).decode()
            record = z.read(records[0])
    except (OSError, zipfile.BadZipFile) as e:
        raise ReleaseError(f"cannot read the wheel {path}: {e}") from None
    fields = dict(line.split(": ", 1) for line in meta.splitlines() if ": " in line)
    if fields.get("Name", "").lower() != "autotune":
        raise ReleaseError(f"{path} is a wheel of `{fields.get('Name')}`, not autotune")
    version = fields.get("Version", "")
    return version, f"{version}-{hashlib.sha256(record).hexdigest()[:12]}"


def build(out_dir: Path, *, wheel: str | None = None, lock_file: str | None = None) -> Release:
    """A wheel of the running autotune (built with `uv build`), or the given one, with its lock file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if wheel:
        path = Path(wheel)
        lock_path = Path(lock_file) if lock_file else source_root() / "uv.lock"
    else:
        root = source_root()
        lock_path = Path(lock_file) if lock_file else root / "uv.lock"
        uv = shutil.which("uv")
        if uv is None:
            raise ReleaseError("building a wheel of this autotune needs `uv` on the controller (pip install uv), or pass --wheel FILE")
        lock_dir = cache_dir().parent
        lock_dir.mkdir(parents=True, exist_ok=True)
        # setuptools builds in the checkout (build/, *.egg-info): two deploys at once take turns
        with open(lock_dir / "build.lock", "a") as held, tempfile.TemporaryDirectory(prefix="autotune-build-") as tmp:
            fcntl.flock(held, fcntl.LOCK_EX)
            r = subprocess.run([uv, "build", "--wheel", "--out-dir", tmp, str(root)], capture_output=True, text=True, timeout=600)
            built = sorted(Path(tmp).glob("autotune-*.whl"))
            if r.returncode != 0 or not built:
                raise ReleaseError(f"`uv build --wheel {root}` failed:\n{(r.stderr or r.stdout)[-2000:]}")
            path = out_dir / built[0].name
            shutil.copyfile(built[0], path)
    if not path.is_file():
        raise ReleaseError(f"--wheel {path}: no such file")
    try:
        lock_text = lock_path.read_text()
    except OSError as e:
        raise ReleaseError(f"cannot read the lock file {lock_path}: {e}") from None
    version, rid = wheel_identity(path)
    return Release(id=rid, version=version, wheel=str(path), lock_text=lock_text)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "autotune" / "wheels"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


async def fetch_wheels(artifacts: list[lock.Artifact], *, into: Path | None = None, parallel: int = 6) -> list[Path]:
    """The wheels, from the cache or downloaded from the lock's URLs, each checked against its sha256."""
    import httpx

    into = into or cache_dir()
    into.mkdir(parents=True, exist_ok=True)
    sem = asyncio.Semaphore(parallel)

    async def one(client: httpx.AsyncClient, a: lock.Artifact) -> Path:
        path = into / a.filename
        if path.is_file() and await asyncio.to_thread(_sha256, path) == a.sha256:
            return path
        async with sem:
            tmp = path.with_suffix(f".part{os.getpid()}")
            h = hashlib.sha256()
            try:
                async with client.stream("GET", a.url) as r:
                    r.raise_for_status()
                    with tmp.open("wb") as f:
                        async for chunk in r.aiter_bytes(1 << 16):
                            h.update(chunk)
                            f.write(chunk)
            except httpx.HTTPError as e:
                tmp.unlink(missing_ok=True)
                raise ReleaseError(f"cannot download {a.url} for --offline: {e}") from None
            if h.hexdigest() != a.sha256:
                tmp.unlink(missing_ok=True)
                raise ReleaseError(f"{a.filename}: sha256 {h.hexdigest()} is not the lock's {a.sha256}; refusing it")
            os.replace(tmp, path)
            return path

    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=15.0), follow_redirects=True) as client:
        return list(await asyncio.gather(*(one(client, a) for a in artifacts)))
