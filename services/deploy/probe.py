"""Preflight facts about a machine, gathered in one SSH round trip, and what they mean.

`PROBE` is a fixed POSIX sh script (nothing of the operator's input is in it; the prefix override
travels as a positional argument). It prints `key=value` lines; `parse` turns them into `Facts`,
and `problems` says, in one list, everything that stops a deploy and what to do about it.
"""

from __future__ import annotations

import json
import re

import msgspec

PROBE = r"""
p="$1"; home="${HOME:-}"
uid=$(id -u); echo "uid=$uid"; echo "user=$(id -un)"; echo "home=$home"
echo "arch=$(uname -m)"; echo "kernel=$(uname -sr)"
echo "pid1=$(cat /proc/1/comm 2>/dev/null)"
command -v systemctl >/dev/null 2>&1 && echo "systemctl=yes"
if [ "$uid" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then echo "sudo=yes"; fi
if [ -z "$p" ]; then if [ "$uid" = 0 ]; then p=/opt/autotune; else p="$home/.local/share/autotune-node"; fi; fi
echo "prefix=$p"
for py in python3.13 python3.12 python3.11 python3; do
  path=$(command -v "$py" 2>/dev/null) || continue
  v=$("$path" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null) || { echo "python_broken=$path"; continue; }
  venv=no; "$path" -c 'import venv, ensurepip' >/dev/null 2>&1 && venv=yes
  echo "python=$path $v $venv"
done
libc=$(getconf GNU_LIBC_VERSION 2>/dev/null) && echo "libc=$libc"
ldd --version 2>&1 | head -n1 | grep -qi musl && echo "libc=musl"
if command -v nvidia-smi >/dev/null 2>&1; then
  echo "nvidia_smi=$(command -v nvidia-smi)"
  nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv,noheader,nounits 2>/dev/null | sed 's/^/gpu=/'
fi
for lib in /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1 /usr/lib/aarch64-linux-gnu/libnvidia-ml.so.1 /usr/lib64/libnvidia-ml.so.1 /usr/lib/libnvidia-ml.so.1; do
  [ -e "$lib" ] && { echo "nvml=$lib"; break; }
done
d="$p"; while [ ! -d "$d" ] && [ "$d" != / ]; do d=$(dirname "$d"); done
echo "disk_path=$d"; echo "disk_free_kb=$(df -Pk "$d" 2>/dev/null | awk 'NR==2 {print $4}')"
[ -f "$p/.autotune-node" ] && echo "installed=yes"
[ -f "$p/state.json" ] && echo "state=$(tr -d '\n' < "$p/state.json")"
[ -L "$p/current" ] && echo "current=$(readlink "$p/current")"
[ -d "$p/releases" ] && for r in "$p"/releases/*/release.json; do [ -f "$r" ] && echo "release=$(basename "$(dirname "$r")")"; done
if [ -f "$p/run/node.pid" ]; then pid=$(cat "$p/run/node.pid"); [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q 'autotune.cli node' && echo "daemon_pid=$pid"; fi
if [ "$uid" = 0 ]; then u=/etc/systemd/system/autotune-node.service; else u="$home/.config/systemd/user/autotune-node.service"; fi
[ -f "$u" ] && echo "unit=$u"
if command -v loginctl >/dev/null 2>&1 && [ "$uid" != 0 ]; then echo "linger=$(loginctl show-user "$(id -un)" -p Linger --value 2>/dev/null)"; fi
echo "probe=done"
"""

# The marker environment and wheel facts of the chosen interpreter (stdlib only: nothing is installed yet).
PY_ENV = r"""
import json, os, platform, sys
impl = sys.implementation.name
v = sys.version_info
print(json.dumps({
    "implementation_name": impl,
    "implementation_version": "%d.%d.%d" % sys.implementation.version[:3],
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_python_implementation": platform.python_implementation(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "python_version": "%d.%d" % v[:2],
    "sys_platform": sys.platform,
    "libc": "-".join(platform.libc_ver()),
}))
"""

MIN_PYTHON = (3, 11)


class Gpu(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    name: str
    memory_mib: float = 0.0
    uuid: str = ""


class Python(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    version: tuple[int, int, int]
    venv: bool  # `venv` and `ensurepip` import: it can make a virtualenv with pip


class Facts(msgspec.Struct, kw_only=True):
    uid: int = -1
    user: str = ""
    home: str = ""
    arch: str = ""
    kernel: str = ""
    pid1: str = ""
    systemctl: bool = False
    sudo: bool = False
    prefix: str = ""
    pythons: list[Python] = []
    broken_pythons: list[str] = []
    libc: str = ""  # "glibc 2.36" | "musl" | ""
    nvidia_smi: str = ""
    gpus: list[Gpu] = []
    nvml: str = ""
    disk_path: str = ""
    disk_free_kb: int = 0
    installed: bool = False  # the prefix holds an autotune node (its marker file)
    state: dict = {}  # <prefix>/state.json: host, current and previous release, how it runs
    current: str = ""  # where <prefix>/current points (releases/<id>)
    releases: list[str] = []  # complete releases (with release.json)
    daemon_pid: int | None = None
    unit: str = ""  # the systemd unit file, when there is one
    linger: str = ""
    complete: bool = False  # the probe ran to its end

    @property
    def root(self) -> bool:
        return self.uid == 0

    @property
    def systemd(self) -> bool:
        """systemd runs as PID 1 (so a unit keeps the node running and brings it back after a reboot)."""
        return self.pid1 == "systemd" and self.systemctl

    @property
    def python(self) -> Python | None:
        """The newest Python >= 3.11 that can make a virtualenv, else the newest >= 3.11."""
        ok = [p for p in self.pythons if p.version[:2] >= MIN_PYTHON]
        return next((p for p in ok if p.venv), ok[0] if ok else None)

    @property
    def glibc(self) -> tuple[int, int] | None:
        m = re.match(r"glibc (\d+)\.(\d+)", self.libc)
        return (int(m[1]), int(m[2])) if m else None

    @property
    def current_release(self) -> str:
        return self.current.rsplit("/", 1)[-1] if self.current else ""


def parse(out: str) -> Facts:
    f = Facts()
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        match key:
            case "uid":
                f.uid = int(value) if value.isdigit() else -1
            case "user" | "home" | "arch" | "kernel" | "pid1" | "prefix" | "nvidia_smi" | "nvml" | "disk_path" | "current" | "unit" | "linger":
                setattr(f, key, value)
            case "systemctl":
                f.systemctl = value == "yes"
            case "sudo":
                f.sudo = value == "yes"
            case "python":
                path, _, rest = value.partition(" ")
                ver, _, venv = rest.partition(" ")
                nums = [int(x) for x in ver.split(".") if x.isdigit()]
                if len(nums) == 3 and path not in {p.path for p in f.pythons}:
                    f.pythons = [*f.pythons, Python(path=path, version=(nums[0], nums[1], nums[2]), venv=venv == "yes")]
            case "python_broken":
                f.broken_pythons = [*f.broken_pythons, value]
            case "libc":
                f.libc = value if not f.libc or value == "musl" else f.libc
            case "gpu":
                cells = [c.strip() for c in value.split(",")]
                if len(cells) >= 2 and cells[0].isdigit():
                    mem = float(cells[2]) if len(cells) > 2 and re.fullmatch(r"[\d.]+", cells[2]) else 0.0
                    f.gpus = [*f.gpus, Gpu(index=int(cells[0]), name=cells[1], memory_mib=mem, uuid=cells[3] if len(cells) > 3 else "")]
            case "disk_free_kb":
                f.disk_free_kb = int(value) if value.isdigit() else 0
            case "installed":
                f.installed = value == "yes"
            case "state":
                try:
                    got = json.loads(value)
                    f.state = got if isinstance(got, dict) else {}
                except ValueError:
                    f.state = {}
            case "release":
                f.releases = [*f.releases, value]
            case "daemon_pid":
                f.daemon_pid = int(value) if value.isdigit() else None
            case "probe":
                f.complete = value == "done"
    f.pythons = sorted(f.pythons, key=lambda p: p.version, reverse=True)
    return f


SUPPORTED_ARCH = ("x86_64", "aarch64")


def problems(f: Facts, *, host: str, simulate: str | None, need_mb: int, offline: bool) -> list[str]:
    """Everything about this machine that stops the deploy, each with what to do. Empty: go ahead."""
    out: list[str] = []
    if not f.complete:
        return ["the preflight probe did not finish (is /bin/sh a POSIX shell?)"]
    if f.arch not in SUPPORTED_ARCH:
        out.append(f"architecture {f.arch or '?'} is not supported (the lock file has wheels for {' and '.join(SUPPORTED_ARCH)})")
    if f.python is None:
        found = ", ".join(f"{p.path} {'.'.join(map(str, p.version))}" for p in f.pythons) or "none"
        if f.broken_pythons:
            found += f"; {', '.join(f.broken_pythons)} do not run"
        out.append(
            f"no Python >= {'.'.join(map(str, MIN_PYTHON))} (found: {found}); install one, e.g. `apt-get install python3.11 python3.11-venv` "
            "(Debian 12, Ubuntu 23.04+), `dnf install python3.11` (RHEL 9), or `uv python install 3.12`, then deploy again"
        )
    elif not f.python.venv:
        v = ".".join(map(str, f.python.version[:2]))
        out.append(f"{f.python.path} cannot make a virtualenv (no `venv`/`ensurepip`); install it, e.g. `apt-get install python{v}-venv`")
    if offline and f.glibc is None:
        out.append(f"--offline picks manylinux wheels, which need glibc; this machine's C library is {f.libc or 'unknown'}")
    if simulate is None and not (f.nvidia_smi or f.nvml):
        out.append("no NVIDIA driver (neither nvidia-smi nor libnvidia-ml); install the driver, or pass --simulate 4xH100 for simulated GPUs")
    free_mb = f.disk_free_kb // 1024
    if free_mb < need_mb:
        out.append(f"only {free_mb} MB free in {f.disk_path or f.prefix}; this release needs about {need_mb} MB there (free some space or pass --prefix)")
    other = f.state.get("host")
    if other and other != host:
        out.append(f"this machine already runs autotune node `{other}` ({f.prefix}); deploy it as --host {other}, or `autotune undeploy {other}` first")
    elif f.prefix and not f.installed and f.releases:
        out.append(f"{f.prefix} holds releases but no autotune node marker; it was not made by autotune deploy: pass another --prefix")
    return out
