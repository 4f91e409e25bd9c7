"""`python3 -m autotune.simulator {sglang,vllm} ENGINE-ARGS...` (or `python3 -m simulator ...` from a copy)."""

import sys

from .main import main

sys.exit(main())
