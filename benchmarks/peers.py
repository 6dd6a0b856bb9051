"""The peers a benchmark compares against, checked before any work starts.

They are the ``bench`` extra, not part of the default install (``make bench`` adds them), so a
missing one is said plainly instead of surfacing as an ImportError halfway through a run.
"""

from __future__ import annotations

import importlib.util
import sys


def require_peers(benchmark: str, *modules: str) -> None:
    """Exit with one line naming the missing modules and the install command."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"benchmarks/{benchmark} compares against {', '.join(missing)} (not installed): "
                 "run `make bench`, or `pip install -e '.[bench]'`")
