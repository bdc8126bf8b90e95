"""Config fields that carry their own help: one place for a flag's text, read by the CLI and the docs, and one check
of the fixed-choice (`Literal`) fields for callers of the Python API."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from .errors import UserError


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
           flag: bool = True) -> Any:
    """A dataclass field whose help text is the CLI flag's help (`flag=False`: API only, never a flag)."""
    if not help:
        raise ValueError("every option needs its help text")
    metadata = {"help": help, "flag": flag}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def help_of(field: dataclasses.Field) -> str:
    """The help text of a config field (empty when it was declared without option())."""
    return field.metadata.get("help", "")


def choices_of(annotation: Any) -> tuple | None:
    """The allowed values of a `Literal[...]` (or `Literal[...] | None`) annotation, else None."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Literal:
            return typing.get_args(arg)
    return None


def check_choices(config: Any) -> None:
    """Refuse a config whose fixed-choice field holds a value outside its Literal, naming the field and the choices."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        allowed = choices_of(hints[f.name])
        value = getattr(config, f.name)
        if allowed is not None and value is not None and value not in allowed:
            raise UserError(f"unknown {f.name.replace('_', ' ')} {value!r}: choose one of "
                            f"{', '.join(map(str, allowed))} (--{f.name.replace('_', '-')})")


def scalar_type(annotation: Any) -> tuple[Any, bool]:
    """The scalar type behind an annotation such as `int | None`, `list[str] | None` or `Literal[...]`, and whether it
    is a list."""
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    inner = [a for a in typing.get_args(annotation) if a is not type(None)][0] if union else annotation
    if typing.get_origin(inner) is list:
        return typing.get_args(inner)[0], True
    if typing.get_origin(inner) is typing.Literal:
        return type(typing.get_args(inner)[0]), False
    return inner, False


def check_types(config_cls: type, values: dict[str, Any]) -> None:
    """Refuse option values of the wrong type (a string where a number goes), naming the option."""
    hints = typing.get_type_hints(config_cls)
    for key, value in values.items():
        if value is None:
            continue
        scalar, is_list = scalar_type(hints[key])
        items = value if is_list and isinstance(value, list) else [value]
        if is_list and not isinstance(value, list):
            raise UserError(f"option {key} takes a list, got {value!r}")
        for item in items:
            ok = isinstance(item, scalar) and not (scalar is not bool and isinstance(item, bool))
            if scalar is float and isinstance(item, int) and not isinstance(item, bool):
                ok = True
            if not ok:
                raise UserError(f"option {key} takes {scalar.__name__} values, got {item!r}")
