"""The dashboard's third-party JavaScript and CSS, vendored as files (no Node.js to install or run).

static/vendor/manifest.json pins each package: name, version, license, the npm tarball and its
integrity (sha512, as the registry publishes it), and every file taken from it with its sha256.

    uv run python -m autotune.dashboard.vendor            # fetch exactly those versions again, check every hash
    uv run python -m autotune.dashboard.vendor --check    # check the files here against the manifest (no network)
    uv run python -m autotune.dashboard.vendor --record   # after editing a version: take the registry's integrity, record new sha256s

`just vendor-ui` runs the first. A tarball whose integrity differs from the pinned one is refused.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

VENDOR = Path(__file__).parent / "static" / "vendor"
MANIFEST = VENDOR / "manifest.json"
REGISTRY = "https://registry.npmjs.org"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load() -> dict:
    return json.loads(MANIFEST.read_text())


def check(manifest: dict | None = None) -> list[str]:
    """What is wrong with the vendored files (missing, or not the pinned bytes); empty when all is well."""
    problems = []
    for pkg in (manifest or load())["packages"]:
        for f in pkg["files"]:
            path = VENDOR / f["to"]
            if not path.is_file():
                problems.append(f"{pkg['name']}@{pkg['version']}: {f['to']} is missing; run `just vendor-ui`")
            elif (got := sha256(path.read_bytes())) != f["sha256"]:
                problems.append(f"{pkg['name']}@{pkg['version']}: {f['to']} has sha256 {got}, the manifest pins {f['sha256']}")
        if not any(f["to"].endswith("LICENSE") for f in pkg["files"]):
            problems.append(f"{pkg['name']}@{pkg['version']}: no LICENSE file is vendored")
    return problems


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 (the registry's https URL)
        return r.read()


def fetch(*, record: bool = False) -> list[str]:
    """Download each pinned tarball, verify its integrity, write the listed files. With `record`,
    take the integrity from the registry and the files' sha256 from what was fetched."""
    manifest = load()
    written = []
    for pkg in manifest["packages"]:
        name, version = pkg["name"], pkg["version"]
        if record:
            meta = json.loads(_get(f"{REGISTRY}/{name}/{version}"))
            pkg["tarball"], pkg["integrity"], pkg["license"] = meta["dist"]["tarball"], meta["dist"]["integrity"], meta.get("license", pkg.get("license"))
        blob = _get(pkg["tarball"])
        algo, _, want = pkg["integrity"].partition("-")
        got = base64.b64encode(hashlib.new(algo, blob).digest()).decode()
        if got != want:
            raise SystemExit(f"{name}@{version}: the tarball's {algo} is {got}, the manifest pins {want}; refusing it")
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for f in pkg["files"]:
                member = tar.extractfile(f["from"])
                if member is None:
                    raise SystemExit(f"{name}@{version}: the tarball has no {f['from']}")
                data = member.read()
                if record:
                    f["sha256"] = sha256(data)
                elif sha256(data) != f["sha256"]:
                    raise SystemExit(f"{name}@{version}: {f['from']} has sha256 {sha256(data)}, the manifest pins {f['sha256']}")
                dest = VENDOR / f["to"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
                written.append(f["to"])
    if record:
        MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autotune.dashboard.vendor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only check the vendored files against the manifest")
    p.add_argument("--record", action="store_true", help="record the registry's integrity and the fetched files' sha256 in the manifest")
    a = p.parse_args(argv)
    if not a.check:
        for path in fetch(record=a.record):
            print(f"vendored {path}")
    problems = check()
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"{sum(len(pkg['files']) for pkg in load()['packages'])} vendored files match {MANIFEST.name}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
