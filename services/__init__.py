"""autotune: tune LLM inference engines by experiment, coordinated through one NATS JetStream event log."""

__version__ = "0.1.0"

from autotune.shared import compat as _compat  # noqa: E402  # Python 3.11: a wait_for that never swallows a cancellation

_compat.install()
