"""`python scripts/loadtest.py ...`: the load tester, run from a checkout.

A thin wrapper of `wsgate loadtest`: same flags, same output, same exit codes. The load
generator is the package `wsgate.loadgen` (so it ships in the wheel); its load model, the
coordinated-omission rules and the checks are documented there (`python -m pydoc
wsgate.loadgen`). Kept because the bench (`scripts/bench.py`) and the docs call it by this
path. The API is `await wsgate.loadgen.runner.run(LoadConfig(...)) -> Result`.
"""

from __future__ import annotations

import sys

from wsgate.loadgen.command import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
