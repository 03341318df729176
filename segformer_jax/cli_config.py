"""``--config FILE.py[:ARG] --config.key=value`` for the command lines, big_vision style.

A config file defines ``get_config(arg=None) -> ml_collections.ConfigDict``. Overrides are
typed by the value they replace, and a key that does not exist is an error that lists the
valid keys (a typo must never silently train the wrong thing).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import pathlib
import sys
import types
from collections.abc import Callable
from typing import Any

import ml_collections


def run_python_file(file: pathlib.Path, module_name: str) -> types.ModuleType:
    """Executes a config or sweep file as a module; ValueError (naming the file) if it is
    missing or raises while loading."""
    if not file.is_file():
        raise ValueError(f"no such file {str(file)!r}")
    module_spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - a config file can raise anything
        raise ValueError(f"{file}: failed to load ({type(e).__name__}: {e})") from None
    return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Runs ``get_config(arg)`` of ``FILE.py[:ARG]``."""
    path, _, arg = spec.partition(":")
    file = pathlib.Path(path)
    try:
        module = run_python_file(file, f"_config_{file.stem}")
    except ValueError as e:
        raise ValueError(f"--config: {e}") from None
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config {path}: defines no get_config(arg) function")
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--config {spec}: get_config({arg!r}) failed: {e}") from None
    return config


def _keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out += _keys(value, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out


def _parse_value(text: str, old: Any, key: str) -> Any:
    if isinstance(old, str) or old is None:
        return text
    if isinstance(old, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"--config.{key}={text}: expected true or false")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"--config.{key}={text}: not a {type(old).__name__}") from None
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, (tuple, list)) and isinstance(value, (tuple, list)):
        return tuple(value)
    if isinstance(old, (dict, ml_collections.ConfigDict)) and isinstance(value, dict):
        return value
    if not isinstance(value, type(old)):
        raise ValueError(f"--config.{key}={text}: expected a {type(old).__name__} like {old!r}")
    return value


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    *parents, leaf = key.split(".")
    node = config
    for i, name in enumerate(parents):
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            raise ValueError(f"--config.{key}: unknown key; valid keys: {', '.join(_keys(config))}")
        node = node[name]
    if leaf not in node:
        raise ValueError(f"--config.{key}: unknown key; valid keys: {', '.join(_keys(config))}")
    node[leaf] = _parse_value(text, node[leaf], key)


def parse_args(argv: list[str], prog: str,
               add_flags: Callable[[argparse.ArgumentParser], None] | None = None
               ) -> tuple[ml_collections.ConfigDict, argparse.Namespace]:
    """``--config`` (+ overrides), ``--workdir`` and the flags ``add_flags`` adds; errors exit
    with one line (status 2)."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--config", required=True, help="FILE.py[:ARG] defining get_config(arg)")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics and logs go here")
    if add_flags is not None:
        add_flags(parser)
    args, rest = parser.parse_known_args(argv)
    try:
        config = load_config(args.config)
        for item in rest:
            if not item.startswith("--config.") or "=" not in item:
                raise ValueError(f"unrecognised argument {item!r} (overrides look like --config.key=value)")
            key, _, value = item[len("--config."):].partition("=")
            apply_override(config, key, value)
    except ValueError as e:
        parser.error(str(e))
    return config, args


if __name__ == "__main__":  # pragma: no cover - prints a config, for debugging
    print(parse_args(sys.argv[1:], "cli_config")[0])
