"""String choices as str Enums, for typed configs that Hydra checks while it composes.

A library class names its options once, as a ``Literal`` type or a registry's keys (e.g.
``FOPLoss``'s ``EntropyReductionName``, ``networks.ACTIVATIONS``); a config field of the Enum
:func:`choices_enum` builds from them accepts exactly those strings, so a new option is added in
one place.
"""

from __future__ import annotations

from enum import Enum
import sys
from typing import Any, get_args

__all__ = ["choices_enum"]


def _names(choices: Any) -> tuple[str, ...]:
    """The strings of a ``Literal`` type, or the keys of a registry (any iterable of str)."""
    values = get_args(choices) or tuple(choices)
    if not values or not all(isinstance(value, str) for value in values):
        raise TypeError(f"choices must be a Literal of strings or an iterable of str, got {choices!r}")
    return tuple(values)


def choices_enum(name: str, choices: Any, doc: str = "") -> type[Enum]:
    """A ``str`` Enum whose members are ``choices`` (a ``Literal`` of strings or an iterable of
    str), each equal to its own name.

    Examples:
        >>> from typing import Literal
        >>> Reduction = choices_enum("Reduction", Literal["sum", "mean"])
        >>> [m.value for m in Reduction], Reduction("mean") == "mean"
        (['sum', 'mean'], True)
    """
    enum = Enum(name, {value: value for value in _names(choices)}, type=str, module=_caller_module())
    enum.__doc__ = doc or f"The choices {list(_names(choices))}."
    return enum


def _caller_module() -> str | None:
    """The module that calls :func:`choices_enum` (so that the Enum pickles from it)."""
    frame = sys._getframe(2)
    return frame.f_globals.get("__name__")

