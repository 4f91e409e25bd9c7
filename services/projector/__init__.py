"""The projector: the NATS streams materialized into DuckDB exactly once, and read-only SQL on it.

Public entry points: `service.run(settings, stop=..., db_path=..., burst=...)`,
`rebuild.rebuild(settings, db_path)`, `cli.projector_main(argv)`; the client is `autotune.shared.query`.
"""
