"""Stand-in of modules/errors.py: report() prints, as the real one does to stderr."""
from __future__ import annotations

import sys
import traceback


def report(message: str, *, exc_info: bool = False) -> None:
    print(message, file=sys.stderr)
    if exc_info:
        traceback.print_exc()
