"""Helpers that keep UsageError messages on one line."""
from __future__ import annotations


def one_line(exc: BaseException, limit: int = 160) -> str:
    """`Type: first line of the message`, bounded, for embedding in a one-line error.

    >>> one_line(ValueError("bad\\nvery bad"))
    'ValueError: bad'
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
