"""`python -m autotune.cli ...`: how the supervisor and the tests start commands and services."""

import sys

from autotune.cli import main

sys.exit(main())
