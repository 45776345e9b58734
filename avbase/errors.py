"""The project's base error and how every command line reports failures.

Libraries raise :class:`AvfusionError` (or a subclass, also from ``pipeline``); only CLI layers turn
it into one ``error: …`` line and an exit code, through :func:`run_cli`.

Exit codes of every command: 0 success; 2 unusable input or data (the ``error:`` line names the
file or key and what was expected); 70 an internal error (a bug: one line naming the exception;
``AVFUSION_DEBUG=1`` or ``avfusion --debug`` shows the traceback); 130 interrupted; 143 training
stopped by SIGTERM / SIGINT after saving a checkpoint (run the same command to resume). Commands may
add their own (``shards build``: 1 nothing usable, 3 some inputs failed with ``--strict``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from avbase.urls import redact, redact_log_records

EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_PREEMPTED = 143  # 128 + SIGTERM: stopped by a signal after saving a checkpoint; rerun resumes


class AvfusionError(Exception):
    """An expected failure; ``str(e)`` is the one line to show the user."""


class Preempted(AvfusionError):
    """Training stopped on SIGTERM / SIGINT after a complete checkpoint (exit 143)."""


# Failures that are the input's fault and whose message says what was expected: ours, bad
# values (config, checkpoint and preset checks raise ValueError subclasses), files and sockets,
# and a non-finite loss (the message names the step and the batch keys).
EXPECTED = (AvfusionError, ValueError, OSError, FloatingPointError)


def debug_enabled() -> bool:
    return os.environ.get("AVFUSION_DEBUG", "").lower() in ("1", "true", "yes")


def error_line(e: BaseException) -> str:
    """The one line shown for ``e``: its message's first line, URL credentials masked (long library
    messages, such as a state-dict mismatch listing hundreds of keys, are cut at 400 characters)."""
    text = redact(str(e).strip().splitlines()[0]) if str(e).strip() else type(e).__name__
    text = text if len(text) <= 400 else text[:397] + "..."
    if isinstance(e, EXPECTED):
        return text if text.startswith("error: ") else f"error: {text}"
    return (
        f"error: internal error ({type(e).__name__}: {text}); "
        "rerun with AVFUSION_DEBUG=1 for the traceback"
    )


def run_cli(
    func: Callable[..., int | None],
    *args,
    quiet: bool | Callable[[BaseException], bool] = False,
) -> int:
    """``func(*args)`` as a command: its exit code, or one ``error:`` line on stderr and 2 / 70.

    ``quiet`` (or ``quiet(e)``) suppresses the line for expected errors (the other ranks of a
    distributed job, where rank 0 already printed the same line). Tracebacks only with
    ``AVFUSION_DEBUG=1``. Every log line of the command has its URL credentials masked.
    """
    redact_log_records()
    try:
        return int(func(*args) or 0)
    except Preempted as e:
        if not (quiet(e) if callable(quiet) else quiet):
            print(f"avfusion: {e}", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("avfusion: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if debug_enabled():
            raise
        expected = isinstance(e, EXPECTED)
        if not (expected and (quiet(e) if callable(quiet) else quiet)):
            print(error_line(e), file=sys.stderr, flush=True)
        return EXIT_USAGE if expected else EXIT_INTERNAL


def check_ranges(*checks: tuple[str, object, bool, str]) -> None:
    """``AvfusionError`` for the first ``(flag, value, ok, expected)`` that is not ok, stating
    the range: ``--workers: expected an integer >= 1, got 0``."""
    for flag, value, ok, expected in checks:
        if not ok:
            raise AvfusionError(f"{flag}: expected {expected}, got {value}")
