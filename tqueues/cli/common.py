"""What every tqueues command line shares: docopt parsing, option checks, clean failures."""

from __future__ import annotations

import gc
import logging
import math
import sys
from typing import Any, Callable, NoReturn, Sequence

from docopt import DocoptExit, docopt

from .. import __version__
from ..errors import TQueuesError

LOGLEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class UsageError(TQueuesError):
    """Invalid command line."""


def fail(prog: str, message: str, code: int = 2) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def parse(doc: str, argv: Sequence[str] | None, prog: str) -> dict[str, Any]:
    try:
        return docopt(doc, argv=list(sys.argv[1:] if argv is None else argv), version=f"{prog} {__version__}")
    except DocoptExit as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        hint = f" ({detail})" if detail and not detail.lower().startswith("usage") else ""
        fail(prog, f"invalid arguments{hint}; see {prog} --help")


def number(args: dict[str, Any], name: str, *, minimum: float = 0.0, integer: bool = False) -> Any:
    raw = args.get(name)
    if raw is None:
        return None
    try:
        value: float = int(raw) if integer else float(raw)
    except ValueError:
        raise UsageError(f"{name} must be {'an integer' if integer else 'a number'}, not {raw!r}") from None
    if not math.isfinite(value) or value < minimum:
        raise UsageError(f"{name} must be at least {minimum:g}")
    return value


def loglevel(args: dict[str, Any]) -> int:
    level = (args.get("--loglevel") or "INFO").upper()
    if level not in LOGLEVELS:
        raise UsageError(f"--loglevel must be one of {', '.join(LOGLEVELS)}")
    return getattr(logging, level)


def quiet_gc() -> None:
    """For a long-running process, once started: the objects made so far (modules, the app)
    are never collected again, and the youngest generation is collected every 20,000 new
    containers rather than 700. A dispatcher makes and drops thousands of job documents a
    second; each full collection would otherwise walk every object of the process."""
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(20_000, second, third)


def setup_logging(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run(prog: str, main: Callable[[], int | None]) -> int:
    """Run ``main``; a tqueues error, a bad option or a closed pipe becomes one line on stderr."""
    try:
        return main() or 0
    except TQueuesError as exc:
        fail(prog, exc.message, 1 if not isinstance(exc, UsageError) else 2)
    except OSError as exc:
        fail(prog, f"{exc.strerror or exc}", 1)
    except KeyboardInterrupt:
        return 130
