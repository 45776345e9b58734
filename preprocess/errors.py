"""The project's base error: expected failures a user can act on (bad input, damaged data).

Libraries raise it (or a subclass, also from ``pipeline``); only CLI layers turn it into one
``error: …`` line and an exit code.
"""
from __future__ import annotations


class AvfusionError(Exception):
    """An expected failure; ``str(e)`` is the one line to show the user."""
