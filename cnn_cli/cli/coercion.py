"""Option values that need no validation library: command-line text taken as Typer would take it.

Typer (0.2x) turns every parameter's text into its value through a Pydantic
``TypeAdapter``, built when the command parses its arguments. Importing
Pydantic and building adapters for ``cnn apply``'s twenty options took
0.15-0.17 s of a 1 s run. The values our commands take are plain: text,
paths, whole numbers, enum members. ``QuickValue`` gives the value Typer
would for those at once; anything else (a number out of range, a choice
not listed, a path that fails a check, a type it does not know) goes to
Typer's own coercion, which says what is wrong in its usual words. The
tests compare both ways on every parameter of every command.

Typer versions without this coercion step (``_runtime_param``) are left alone.
"""

from __future__ import annotations

import os
import re
from enum import Enum
from pathlib import Path
from typing import get_args, get_origin

#: A sentinel: the value is not one ``QuickValue`` takes; Typer's coercion decides.
UNDECIDED = object()

_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def quick(value, annotation, info):
    """The value Typer gives ``value`` (text from the command line, or a default) for a
    parameter of type ``annotation`` with Typer's ``info`` (a ParameterInfo), or UNDECIDED."""
    if info.parser is not None:
        return UNDECIDED
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        if not isinstance(value, (list, tuple)):
            return UNDECIDED
        items = [quick(v, item, info) for v in value]
        return UNDECIDED if any(v is UNDECIDED for v in items) else items
    if annotation is str:
        return value if type(value) is str else UNDECIDED
    if annotation is bool:
        return value if type(value) is bool else UNDECIDED
    if annotation in (int, float):
        return _number(value, annotation, info)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return _choice(value, annotation, info)
    if annotation is Path and info.path_type is None:
        return _path(value, info)
    return UNDECIDED


def _number(value, kind, info):
    if info.clamp:
        return UNDECIDED
    if type(value) is str:
        if not (_INTEGER if kind is int else _DECIMAL).fullmatch(value):
            return UNDECIDED
        value = kind(value)
    elif type(value) is not kind:
        return UNDECIDED
    if (info.min is not None and value < info.min) or (info.max is not None and value > info.max):
        return UNDECIDED  # Typer says which bound
    return value


def _choice(value, enum, info):
    if isinstance(value, enum):
        return value
    if type(value) is not str:
        return UNDECIDED
    fold = (lambda s: s) if info.case_sensitive else str.casefold
    # Typer takes the first member that matches (its value as text, case folded unless case-sensitive).
    return next((m for m in enum if fold(str(m.value)) == fold(value)), UNDECIDED)


def _path(value, info):
    if info.exists or info.resolve_path or info.writable or not (info.file_okay and info.dir_okay):
        return UNDECIDED
    if isinstance(value, Path):
        path = value
    elif type(value) is str and value and "\0" not in value:
        path = Path(value)
    else:
        return UNDECIDED
    if info.allow_dash and str(value) == "-":
        return UNDECIDED
    if info.readable and os.path.exists(path) and not os.access(path, os.R_OK):
        return UNDECIDED  # Typer refuses it, in its words
    return path


class QuickValue:
    """A parameter's coercion (Typer's ``RuntimeParam`` contract): ``quick`` first, Typer's own otherwise."""

    def __init__(self, descriptor):
        self.descriptor, self.full = descriptor, None

    def coerce(self, value, param, ctx):
        if value is None:  # as Typer does: an unset option
            return () if param.multiple or param.nargs == -1 else None
        if not (ctx is not None and ctx.token_normalize_func is not None):
            result = quick(value, self.descriptor.annotation, self.descriptor.parameter_info)
            if result is not UNDECIDED:
                return result
        if self.full is None:
            from typer._coercion import build_runtime_param

            self.full = build_runtime_param(self.descriptor)
        return self.full.coerce(value, param=param, ctx=ctx)


def install(command, ctx):
    """Give each parameter of the click ``command`` (its help option too) a ``QuickValue``,
    where Typer coerces through Pydantic; returns the command. ``ctx`` is the context the
    command is parsed in, or its parent's (the help option's names are the same)."""
    for param in command.get_params(ctx):
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is not None and getattr(param, "_runtime_param", UNDECIDED) is None \
                and getattr(descriptor, "file_annotation", None) is None:
            param._runtime_param = QuickValue(descriptor)
    return command
