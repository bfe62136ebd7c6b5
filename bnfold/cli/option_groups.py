"""Option groups: typer options declared once, as the fields of a dataclass, shared by commands.

A command parameter annotated with an ``OptionGroup`` dataclass stands for all of that class's
fields: ``@option_groups`` puts the fields into the signature typer reads (each field's
``Annotated[..., typer.Option(...)]`` type and default), and, when the command runs, passes one
instance of the class built from their values. So ``def check(..., inputs: InputFlags)`` gets
``--shape``, ``--batch``, ... and one typed ``InputFlags`` object.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class OptionGroup:
    """Base class of option-group dataclasses (a marker)."""


def _is_group(annotation: object) -> bool:
    return (
        isinstance(annotation, type)
        and issubclass(annotation, OptionGroup)
        and dataclasses.is_dataclass(annotation)
    )


def option_groups(func: F) -> F:
    """Expand every ``OptionGroup`` parameter of ``func`` into its fields (see the module)."""
    hints = typing.get_type_hints(func, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, tuple[type, list[str]]] = {}
    seen: set[str] = set()
    for p in inspect.signature(func).parameters.values():
        annotation = hints.get(p.name, p.annotation)
        if not _is_group(annotation):
            params.append(p.replace(annotation=annotation, kind=inspect.Parameter.KEYWORD_ONLY))
            seen.add(p.name)
            continue
        field_hints = typing.get_type_hints(annotation, include_extras=True)
        names = []
        for f in dataclasses.fields(annotation):
            if f.name in seen:
                raise TypeError(f"{func.__name__}: option {f.name!r} declared twice")
            seen.add(f.name)
            names.append(f.name)
            params.append(
                inspect.Parameter(
                    f.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=f.default,
                    annotation=field_hints[f.name],
                )
            )
        groups[p.name] = (annotation, names)

    @functools.wraps(func)
    def command(**values: Any) -> Any:
        for name, (group, fields) in groups.items():
            values[name] = group(**{f: values.pop(f) for f in fields})
        return func(**values)

    del command.__wrapped__  # typer must read the expanded signature, not func's
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return typing.cast(F, command)
