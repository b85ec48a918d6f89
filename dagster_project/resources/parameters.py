"""Overrides of a parameter dataclass's defaults, checked against its fields (``DifferenceParams``).

The defaults are written once, in the dataclass; configuration (``ASTRO_DIFFERENCE_PARAMS``, the
pipeline resource's ``difference``) holds only what differs from them, by field name. A name that
is not a field, or a value of the wrong kind, is a ValueError naming it.
"""

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["apply_overrides", "config_overrides"]

_NUMBER = (int, float)
T = TypeVar("T")


def _options(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _describe(hint: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", type(None): "null"}
    return " or ".join(names.get(option) or (f"a list of {len(typing.get_args(option))} numbers"
                                             if typing.get_origin(option) is tuple else str(option))
                       for option in _options(hint))


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's type (an int for a float field is a float; a list for a tuple, a tuple)."""
    for option in _options(hint):
        if option is type(None) and value is None:
            return None
        if isinstance(value, bool):
            if option is bool:
                return value
            continue
        if option is float and isinstance(value, _NUMBER):
            return float(value)
        if option is int and isinstance(value, int):
            return value
        if typing.get_origin(option) is tuple and isinstance(value, (list, tuple)):
            kinds = typing.get_args(option)
            if len(value) == len(kinds) and all(isinstance(v, _NUMBER) and not isinstance(v, bool) for v in value):
                return tuple(kind(v) for kind, v in zip(kinds, value, strict=True))
    raise ValueError(f"{name} must be {_describe(hint)}, not {value!r}")


def _checked(cls: type, overrides: Mapping[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        verb = "is not a field" if len(unknown) == 1 else "are not fields"
        raise ValueError(f"{', '.join(map(repr, unknown))} {verb} of {cls.__name__}; its fields: {', '.join(fields)}")
    return {name: _coerce(name, value, hints[name]) for name, value in overrides.items()}


def apply_overrides(cls: type[T], overrides: Mapping[str, Any]) -> T:
    """``cls`` with its defaults, but for ``overrides`` (checked)."""
    return cls(**_checked(cls, overrides))


def config_overrides(cls: type, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` checked, as Dagster's config can hold them: JSON values, and no nulls (a null is
    dropped where it is the field's default; Dagster's config maps cannot carry one)."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    held = {}
    for name, value in _checked(cls, overrides).items():
        if value is None:
            if defaults[name] is not None:
                raise ValueError(f"{name} cannot be null here (its default is {defaults[name]!r})")
            continue
        held[name] = list(value) if isinstance(value, tuple) else value
    return held
