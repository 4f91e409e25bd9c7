"""autotune: tune LLM inference engines by experiment, coordinated through one NATS JetStream event log."""

__version__ = "0.1.0"
