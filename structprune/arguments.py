"""Command-line argument types and help formatting shared by every `structprune` sub-command (cli.py and the
commands defined beside their jobs, such as `structprune sweep`): one error wording for bad values.

>>> number(int, "an integer >= 2", lambda v: v >= 2)("3"), batch_shape("1x3x8x8")
(3, (1, 3, 8, 8))
"""
from __future__ import annotations

import argparse
import json
from typing import Callable


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (not for flags or unset options) and keeps the epilog's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or isinstance(default, bool) or default in ([], {}, ()):
            return action.help
        return super()._get_help_string(action)


def number(cast: type, wanted: str, accept: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse type: `cast(text)` if `accept` holds for it, else the error "'TEXT' is not WANTED"."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"'{text}' is not {wanted}")
        return value

    return parse


def json_object(text: str) -> dict:
    """An argparse type: a JSON object (keyword arguments of an architecture)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object like {"num_classes": 10}')
    return value


def batch_shape(text: str) -> tuple[int, ...]:
    """An argparse type: an input shape with the batch first, "1,3,32,32" or "1x3x32x32"."""
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a shape with the batch first and positive sizes, "
                                         "e.g. 1,3,32,32")
    return shape
