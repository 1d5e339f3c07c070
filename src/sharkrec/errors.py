"""Errors that sharkrec raises for bad user input.

Every error a user can cause is a :class:`SharkrecError`. Its message is one line that names the
problem and the fix; the command-line tool prints it without a traceback and exits non-zero.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

E = TypeVar("E", bound=enum.Enum)


class SharkrecError(ValueError):
    """A problem with the user's input, data, model or artifact, stated with its fix."""


class DataError(SharkrecError):
    """Input data is missing, empty, malformed or does not match the schema."""


class SchemaError(SharkrecError):
    """A schema names an unknown field, kind or column, or is inconsistent."""


class ConfigError(SharkrecError):
    """A configuration value is outside its valid range."""


class CheckpointError(SharkrecError):
    """A checkpoint or artifact is missing, corrupted, truncated or of an unknown version."""


def parse_choice(kind: type[E], value: Any, what: str) -> E:
    """``kind(value)``, or a :class:`ConfigError` naming ``what``, the bad value and the valid choices."""
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(str(member.value) for member in kind)
        raise ConfigError(f"unknown {what} {value!r}; use one of {choices}") from None
