"""What the command lines share: argparse with one-line errors and typed flag values.

Only command-line modules (``train``, ``evaluate``, ``predict``, ``convert``, ``export``,
``serve``, ``data.check``) import this; the library never does.
"""

from __future__ import annotations

import argparse
import ast
import sys
from typing import Any


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ...``, exit status 2) instead of usage dumps."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def typed_value(text: str, default: Any) -> Any:
    """A KEY=VALUE option's text as the type of the option's default: ``int`` (``8``),
    ``float`` (``0.5``, ``8``), ``bool`` (``true``/``false``, ``yes``/``no``, ``1``/``0``),
    ``str`` (as written), a tuple of such (``48,64`` or ``(48, 64)``, as many as the
    default holds); with a default of None, a Python literal or else the text. Raises
    ``ValueError`` saying what was expected."""
    text = text.strip()
    if default is None:  # no type to go by: a Python literal, else the text
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    if isinstance(default, bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError("expected true or false")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected an integer") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number") from None
    if isinstance(default, (tuple, list)):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, (tuple, list)):
            items = [str(v) for v in parsed]
        else:
            items = [v for v in text.strip("()[] ").split(",")]
        if len(items) != len(default):
            raise ValueError(f"expected {len(default)} values, e.g. "
                             f"{','.join(str(v) for v in default)}")
        values = []
        for item, kind in zip(items, default):
            try:
                values.append(typed_value(item, kind))
            except ValueError as e:
                raise ValueError(f"{e} in each place, e.g. "
                                 f"{','.join(str(v) for v in default)}") from None
        return tuple(values)
    return text
