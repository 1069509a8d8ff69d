"""``python -m benchmarks run [--quick] [--only NAME] [--peer NAME] [--out PATH]``."""

from __future__ import annotations

import sys

from benchmarks.runner import main

sys.exit(main())
