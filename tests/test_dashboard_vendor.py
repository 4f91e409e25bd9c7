"""The dashboard's vendored JavaScript and CSS are exactly the pinned files: each named in the
manifest with its version, license and sha256, each with its license file beside it, and the pages
load those very files."""

from __future__ import annotations

import copy

from autotune.dashboard import vendor
from autotune.dashboard.common import TEMPLATES


def test_vendored_files_match_the_manifest():
    assert vendor.check() == []


def test_every_package_is_pinned_with_license_and_integrity():
    for pkg in vendor.load()["packages"]:
        assert pkg["name"] and pkg["version"] and pkg["license"], pkg
        assert pkg["tarball"] == f"https://registry.npmjs.org/{pkg['name']}/-/{pkg['name'].split('/')[-1]}-{pkg['version']}.tgz"
        assert pkg["integrity"].startswith("sha512-")
        assert any(f["to"].endswith("/LICENSE") for f in pkg["files"])
        assert all(len(f["sha256"]) == 64 and f["to"].startswith(f"{pkg['name']}-{pkg['version']}/") for f in pkg["files"])


def test_a_changed_byte_is_caught():
    manifest = copy.deepcopy(vendor.load())
    manifest["packages"][0]["files"][0]["sha256"] = "0" * 64
    problems = vendor.check(manifest)
    assert len(problems) == 1 and "the manifest pins 000" in problems[0]


def test_the_pages_load_the_pinned_files():
    base = (TEMPLATES / "base.html").read_text()
    scripts = [f["to"] for pkg in vendor.load()["packages"] for f in pkg["files"] if f["to"].endswith((".js", ".css"))]
    for path in scripts:
        assert f"/static/vendor/{path}" in base, path
