"""Config dataclasses from TOML, command-line text or Python values, coerced from their annotations.

:func:`coerce` brings one value to the type a field declares (``int``, ``float``, ``bool``, ``str``,
``tuple[int, ...]``, fixed tuples, ``X | None``, nested config dataclasses); :func:`build` makes a config
dataclass from a mapping of its fields. Errors are one :class:`~volseg.errors.OptionError` line naming
the option as the caller labels it (``--patch-size``, ``augment p_noise``). Nothing here knows the
fields of a particular config: a new field is coerced from its annotation.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, TypeVar, Union

from volseg.errors import OptionError, VolsegError, renamed

__all__ = ["build", "coerce", "field_types"]

T = TypeVar("T")


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of the dataclass ``cls``'s fields (class variables left out)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def coerce(
    value: object, annotation: object, label: str, *, member: Callable[[str], str] | None = None
) -> Any:
    """``value`` (from TOML, the command line or Python) as the type ``annotation`` declares.

    ``bool`` takes only booleans, ``int`` integers (or integral floats and text), ``float`` numbers
    (or text), ``str`` text or numbers, ``tuple[int, ...]`` a list, a comma-separated text or one
    value, fixed tuples lists of that length, ``X | None`` also ``None``, and a config dataclass what
    :func:`build` takes. Anything else raises :class:`~volseg.errors.OptionError` naming ``label``.
    """
    optional, kind = _unwrap_optional(annotation)
    if value is None:
        if optional:
            return None
        raise OptionError(f"{label}: a value is required")
    try:
        if dataclasses.is_dataclass(kind) and isinstance(kind, type):
            return build(kind, value, label, member=member)
        return _convert(value, kind)
    except OptionError:
        raise
    except (TypeError, ValueError, OverflowError):
        raise OptionError(f"{label} {value!r}: expected {_describe(kind)}") from None


def _unwrap_optional(annotation: object) -> tuple[bool, object]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = typing.get_args(annotation)
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise NotImplementedError(f"coerce: no coercion to {annotation!r}")
        return len(rest) < len(args), rest[0]
    return False, annotation


def _convert(value: object, kind: object) -> object:
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if kind is int:
        return _as_int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError
        return float(value)
    if kind is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float, os.PathLike)):
            raise TypeError
        return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:  # "0,255", [0, 255] or 0
            items = value.split(",") if isinstance(value, str) else value
            items = items if isinstance(items, (list, tuple)) else [items]
            return tuple(_convert(v, args[0]) for v in items if str(v).strip())
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise TypeError
        return tuple(_convert(v, a) for v, a in zip(value, args, strict=True))
    raise NotImplementedError(f"coerce: no coercion to {kind!r}")


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError
        return int(value)
    return int(str(value).strip())


def _describe(kind: object) -> str:
    words = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
    if kind in words:
        return words[kind]  # type: ignore[index]
    args = typing.get_args(kind)
    if len(args) == 2 and args[1] is Ellipsis:
        return "comma-separated integers" if args[0] is int else "a list"
    return f"a list of {len(args)} numbers" if all(a is float for a in args) else f"a list of {len(args)}"


def build(cls: type[T], value: object, label: str, *, member: Callable[[str], str] | None = None) -> T:
    """An instance of the config dataclass ``cls`` from an instance or a mapping of its fields.

    Each field is coerced from its annotation (errors name it ``member(name)``, by default ``label
    name``); unknown keys are refused. A class with a ``preset`` classmethod (such as
    :class:`~volseg.core.augment.AugmentConfig`) also takes a preset name, and a mapping's ``preset``
    key names the base that its other keys change.
    """
    if isinstance(value, cls):
        return value
    preset: Callable[[str], T] | None = getattr(cls, "preset", None)
    if isinstance(value, str) and preset is not None:
        try:
            return preset(value)
        except VolsegError as exc:  # the config key's label, not the core argument's name
            raise renamed(exc, label) from None
    if not isinstance(value, Mapping):
        what = "a preset name or a table" if preset is not None else "a table"
        raise OptionError(f"{label} {value!r}: expected {what} of {cls.__name__} fields")
    name_of = member or (lambda name: f"{label} {name}")
    table = {str(k).replace("-", "_"): v for k, v in value.items()}
    base = None
    if preset is not None and "preset" in table:
        base = preset(coerce(table.pop("preset"), str, f"{label} preset"))
    hints = field_types(cls)
    unknown = sorted(set(table) - set(hints))
    if unknown:
        raise OptionError(f"{label}: unknown key {unknown[0]!r}; known keys are {', '.join(sorted(hints))}")
    values = {name: coerce(v, hints[name], name_of(name)) for name, v in table.items()}
    return dataclasses.replace(base, **values) if base is not None else cls(**values)
