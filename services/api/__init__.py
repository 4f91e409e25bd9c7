"""The HTTP API (Litestar): app.py wires one controller per resource (tasks.py, experiments.py,
hosts.py, system.py); reads.py and stream.py are the read side the command line shares; models.py
holds the HTTP schemas; export.py renders configurations as command lines and manifests."""
