"""Run the ``mathdistill`` console script in-process, as a user would (one helper for every CLI test)."""

from __future__ import annotations

import sys
from typing import Any, Iterable

from mathdistill import cli


def run_cli(args: Iterable[Any]) -> int:
    """``mathdistill ARGS`` through :func:`mathdistill.cli.main` (a UserError is one line on stderr and exit code
    2); the exit code, 0 on success. ``sys.argv`` is put back afterwards."""
    old = sys.argv
    sys.argv = ["mathdistill", *map(str, args)]
    try:
        try:
            cli.main()
        except SystemExit as e:
            return e.code or 0
        return 0
    finally:
        sys.argv = old
