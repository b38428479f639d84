"""Jobs of a module that takes IMPORT_SECONDS to import (``--import support.slow_import_jobs``).

A plain function runs in a child process, which unpickles it, and so imports this module
again, before calling it: the first job of a new child starts IMPORT_SECONDS after the worker
handed it over.
"""

from __future__ import annotations

import os
import time

IMPORT_SECONDS = 1.5

time.sleep(IMPORT_SECONDS)


def whose_pid(value: int) -> list[int]:
    return [value, os.getpid()]
