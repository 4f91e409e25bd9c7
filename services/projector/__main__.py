"""`python -m autotune.projector [run|rebuild|snapshot|checksum] ...` (default: run)."""

import sys

from autotune.projector.cli import projector_main

sys.exit(projector_main(sys.argv[1:] or ["run"]))
