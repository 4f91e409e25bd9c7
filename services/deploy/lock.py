"""The dependencies a host installs, pinned from uv.lock for that host's Python and platform.

`pins` walks the lock's graph from the `autotune` package (runtime dependencies only, no dev
group), evaluating each edge's marker in the host's marker environment (gathered on the host by
probe.PY_ENV), so the host gets exactly the versions the controller was tested with.
`requirements` writes them as a pip requirements file with every hash the lock knows for that
version (pip runs with --require-hashes). `wheel_tags` and `best_wheel` pick, for --offline, the one
wheel of each pin that installs on the host (its interpreter, glibc and architecture).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable

import msgspec
from packaging.markers import Marker
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename


class LockError(ValueError):
    pass


class Artifact(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    sha256: str
    size: int = 0

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


class Pin(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: str
    wheels: tuple[Artifact, ...] = ()
    sdist: Artifact | None = None


def _artifact(entry: dict) -> Artifact:
    algo, _, digest = str(entry.get("hash", "")).partition(":")
    if algo != "sha256" or not digest:
        raise LockError(f"uv.lock: {entry.get('url')} has no sha256 hash")
    return Artifact(url=entry["url"], sha256=digest, size=int(entry.get("size") or 0))


def _applies(marker: str | None, env: dict[str, str], extra: str = "") -> bool:
    if not marker:
        return True
    return Marker(marker).evaluate({**env, "extra": extra})


def pins(lock_text: str, env: dict[str, str], root: str = "autotune") -> list[Pin]:
    """Every package `root` needs at run time in `env` (a PEP 508 marker environment), pinned."""
    lock = tomllib.loads(lock_text)
    by_name: dict[str, list[dict]] = {}
    for p in lock.get("package", []):
        by_name.setdefault(canonicalize_name(p["name"]), []).append(p)

    def package(name: str, version: str | None) -> dict:
        options = by_name.get(canonicalize_name(name), [])
        if version is not None:
            options = [p for p in options if p.get("version") == version]
        elif len(options) > 1:  # a forked resolution: the one whose markers hold here
            options = [p for p in options if any(_applies(m, env) for m in p.get("resolution-markers", []))] or options
        if not options:
            raise LockError(f"uv.lock has no package `{name}`{f' {version}' if version else ''}; run `uv lock`")
        return options[0]

    start = package(root, None)
    seen: dict[tuple[str, str], dict] = {}
    walked: set[tuple[str, str, tuple[str, ...]]] = set()
    todo: list[tuple[dict, tuple[str, ...]]] = [(start, ())]
    while todo:
        pkg, extras = todo.pop()
        edges = list(pkg.get("dependencies", []))
        for extra in extras:
            edges += pkg.get("optional-dependencies", {}).get(extra, [])
        for dep in edges:
            if not _applies(dep.get("marker"), env):
                continue
            child = package(dep["name"], dep.get("version"))
            key = (canonicalize_name(child["name"]), child["version"])
            wanted = tuple(sorted(dep.get("extra", ())))
            seen[key] = child
            if (*key, wanted) not in walked:
                walked.add((*key, wanted))
                todo.append((child, wanted))
    out = []
    for (_, version), p in sorted(seen.items()):
        if "registry" not in p.get("source", {}):
            raise LockError(f"uv.lock: `{p['name']}` does not come from a package index ({p.get('source')}); deploy installs only pinned index packages")
        out.append(
            Pin(
                name=p["name"], version=version, wheels=tuple(_artifact(w) for w in p.get("wheels", [])),
                sdist=_artifact(p["sdist"]) if p.get("sdist") else None,
            )
        )
    return out


def requirements(pins_: Iterable[Pin]) -> str:
    """A requirements file pip installs with --require-hashes: every artifact hash of each pinned version."""
    lines = []
    for p in pins_:
        hashes = sorted({a.sha256 for a in (*p.wheels, *((p.sdist,) if p.sdist else ()))})
        lines.append(f"{p.name}=={p.version}" + "".join(f" \\\n    --hash=sha256:{h}" for h in hashes))
    return "\n".join(lines) + "\n"


def wheel_tags(python: tuple[int, int], arch: str, glibc: tuple[int, int]) -> list[Tag]:
    """The wheel tags a CPython `python` on Linux `arch` with `glibc` installs, most specific first."""
    platforms = [f"manylinux_{glibc[0]}_{minor}_{arch}" for minor in range(glibc[1], 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    for minor, name in legacy.items():
        if glibc >= (2, minor):
            platforms.insert(platforms.index(f"manylinux_2_{minor}_{arch}") + 1, f"{name}_{arch}")
    platforms.append(f"linux_{arch}")
    abi = f"cp{python[0]}{python[1]}"
    return [*cpython_tags(python, [abi], platforms), *compatible_tags(python, abi, platforms)]


def best_wheel(pin: Pin, tags: list[Tag]) -> Artifact | None:
    """The wheel of `pin` with the most specific tag the host installs, or None."""
    rank = {t: i for i, t in enumerate(tags)}
    best: tuple[int, Artifact] | None = None
    for w in pin.wheels:
        try:
            _, _, _, wtags = parse_wheel_filename(w.filename)
        except ValueError:
            continue
        score = min((rank[t] for t in wtags if t in rank), default=None)
        if score is not None and (best is None or score < best[0]):
            best = (score, w)
    return best[1] if best else None
