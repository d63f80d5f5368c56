"""An optional settings file: the defaults of the command line's flags, kept in TOML.

``edgespec --settings FILE <command> ...`` (or ``EDGESPEC_SETTINGS=FILE``) reads FILE before
the command's flags. Keys at the top of the file apply to every command that has that flag; a
table named after a command (``[camera]``, ``[verifier]``) applies to that command only and
wins over the top level. Keys are the flags' names with ``_`` for ``-``::

    broker = "mqtts://broker.example:8883"

    [camera]
    device_id = "cam-yard"
    tokens = 48

    [verifier]
    max_batch = 16

Precedence, highest first: a flag on the command line, an environment variable (EDGESPEC_BROKER,
EDGESPEC_PREFIX, EDGESPEC_THREADS, EDGESPEC_TIMEOUT), the settings file, the built-in default.
A key that no flag of the command takes, or a table that names no command, is an error.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path
from typing import Any

ENV_VAR = "EDGESPEC_SETTINGS"
# Settings an environment variable also sets: the variable wins over the file.
ENV_OF = {"broker": "EDGESPEC_BROKER", "prefix": "EDGESPEC_PREFIX", "threads": "EDGESPEC_THREADS",
          "timeout": "EDGESPEC_TIMEOUT"}


class SettingsFileError(ValueError):
    """A settings file that cannot be read, or that names a setting no flag takes."""


def settings_path(argv: list[str]) -> tuple[str | None, list[str]]:
    """The settings file named before the command (``--settings FILE`` or ``--settings=FILE``),
    else by EDGESPEC_SETTINGS, and the command line without that option."""
    path = None
    kept: list[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # options before the command
        word = argv[i]
        if word == "--settings":
            if i + 1 >= len(argv):
                raise SettingsFileError("--settings needs a file")
            path = argv[i + 1]
            i += 1
        elif word.startswith("--settings="):
            path = word.split("=", 1)[1]
        else:
            kept.append(word)
        i += 1
    return path or os.environ.get(ENV_VAR) or None, kept + argv[i:]


def load(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise SettingsFileError(f"settings file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsFileError(f"settings file {path}: not TOML ({exc})") from None


def apply(parser: argparse.ArgumentParser, command: str | None, doc: dict[str, Any], source: str) -> None:
    """Make the file's values the defaults of ``command``'s flags (flags given still win)."""
    commands = _subcommands(parser)
    for name, value in doc.items():
        if isinstance(value, dict) and name not in commands:
            raise SettingsFileError(f"settings file {source}: [{name}] names no edgespec command")
    if command not in commands:
        return
    sub = commands[command]
    dests = {action.dest for action in sub._actions if action.dest != "help"}
    values = {k: v for k, v in doc.items() if not isinstance(v, dict) and k in dests}
    section = doc.get(command, {})
    for key in section:
        if key not in dests:
            raise SettingsFileError(f"settings file {source}: [{command}] {key}: `edgespec {command}` "
                                    f"has no such setting")
    values.update(section)
    sub.set_defaults(**{k: v for k, v in values.items() if not os.environ.get(ENV_OF.get(k, ""), "")})


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
