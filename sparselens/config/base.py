"""What every config section shares: the error type, `replace` with validated names, and JSON round trips."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and a valid choice."""


def field_names(cls: type) -> list[str]:
    """The fields of a config dataclass, in declaration order."""
    return [f.name for f in dataclasses.fields(cls)]


def _jsonable_to_field(value: Any) -> Any:
    """JSON lists back to the tuples the frozen dataclasses hold (dicts stay dicts)."""
    if isinstance(value, list):
        return tuple(_jsonable_to_field(v) for v in value)
    return value


def replace_checked(section: T, where: str, changes: dict[str, Any]) -> T:
    """A copy of config `section` with `changes` applied; unknown names are a ConfigError listing the valid ones.

    `where` names the section in messages ("capture", "train"); JSON lists become tuples; the dataclass's own
    checks (`__post_init__`) validate the values.
    """
    valid = field_names(type(section))
    unknown = sorted(set(changes) - set(valid))
    if unknown:
        raise ConfigError(f"{where} has no setting {', '.join(map(repr, unknown))}; valid settings: {', '.join(valid)}")
    converted = {k: _jsonable_to_field(v) if k != "mix" else dict(v) for k, v in changes.items()}
    try:
        return dataclasses.replace(section, **converted)
    except TypeError as err:  # a value of the wrong type that __post_init__ could not compare
        raise ConfigError(f"{where}: {err}") from None


def section_from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Rebuild a config section from its `dataclasses.asdict` form (as stored in a manifest)."""
    return replace_checked(cls(), where, data)
