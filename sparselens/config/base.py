"""What every config section shares: the error type, `replace` with validated names and types, JSON round trips."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and a valid choice."""


def field_names(cls: type) -> list[str]:
    """The fields of a config dataclass, in declaration order."""
    return [f.name for f in dataclasses.fields(cls)]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fail(where: str, name: str, value: Any, hint: Any) -> ConfigError:
    shown = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
    return ConfigError(f"{where}.{name}={value!r} must be of type {shown}")


def _convert(value: Any, hint: Any, where: str, name: str) -> Any:
    """`value` (as given in Python, JSON or on a command line) as the type `hint` of a config field.

    JSON lists become tuples, ints are accepted for floats; anything else of the wrong type is a ConfigError.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, where, name)
            except ConfigError:
                continue
        raise _fail(where, name, value, hint)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _fail(where, name, value, hint)
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise _fail(where, name, value, hint)
        return tuple(_convert(v, h, where, name) for v, h in zip(value, items, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(where, name, value, hint)
        return {_convert(k, args[0], where, name): _convert(v, args[1], where, name) for k, v in value.items()}
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and (type(value) is not hint):
        raise _fail(where, name, value, hint)
    return value


def replace_checked(section: T, where: str, changes: dict[str, Any]) -> T:
    """A copy of config `section` with `changes` applied; unknown names or wrong types are a ConfigError.

    `where` names the section in messages ("capture", "train"); values are converted to the field's type (JSON
    lists become tuples) and the dataclass's own checks (`__post_init__`) validate them.
    """
    valid = field_names(type(section))
    unknown = sorted(set(changes) - set(valid))
    if unknown:
        raise ConfigError(f"{where} has no setting {', '.join(map(repr, unknown))}; valid settings: {', '.join(valid)}")
    hints = _hints(type(section))
    converted = {k: _convert(v, hints[k], where, k) for k, v in changes.items()}
    try:
        return dataclasses.replace(section, **converted)
    except TypeError as err:  # a value __post_init__ could not compare
        raise ConfigError(f"{where}: {err}") from None


def section_from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Rebuild a config section from its `dataclasses.asdict` form (as stored in a manifest)."""
    return replace_checked(cls(), where, data)
