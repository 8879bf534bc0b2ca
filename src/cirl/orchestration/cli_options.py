"""A stage's command-line options derived from its config dataclass: one option per field (type,
default, help from the class docstring), resolved over ``--params`` and the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Arg:
    """An input or output of a command (a path, a name): not a parameter of the stage."""

    flags: tuple[str, ...]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    """Shorthand for :class:`Arg`."""
    return Arg(flags, options)


@dataclass(frozen=True)
class Command:
    """A subcommand: its stage config group (options derived from it), inputs, handler."""

    name: str
    help: str
    description: str
    handler: Callable[[argparse.Namespace, Any], int]
    group: str | None = None
    args: tuple[Arg, ...] = ()
    quiet: bool = True
    extra_groups: tuple[str, ...] = ()
    locks_out: bool = True
    """One writer per ``--out`` (off where writers share it by design: sweep workers)."""


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, indent=2, default=str))


def _bool_or_word(words: list[str]) -> Callable[[str], Any]:
    """An argparse type: ``true``/``false`` as booleans, or one of ``words``."""

    def convert(text: str) -> Any:
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        if lowered in words:
            return lowered
        raise argparse.ArgumentTypeError(
            f"invalid choice {text!r} (choose from true, false, {', '.join(words)})"
        )

    return convert


def _option_type(tp: Any) -> tuple[Any, dict[str, Any]]:
    """argparse keyword arguments for a config field annotation (None = a plain string)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _option_type(inner[0])
        if bool in inner:  # true/false or a word (``channels_last: auto``)
            words = [
                str(v) for a in inner if typing.get_origin(a) is typing.Literal for v in a.__args__
            ]
            return _bool_or_word(words), {
                "nargs": "?",
                "const": True,
                "metavar": "{" + ",".join(["true", "false", *words]) + "}",
            }
        return str, {}
    if origin is typing.Literal:
        values = [str(a) for a in args]
        return str, {"choices": values, "metavar": "{" + ",".join(values) + "}"}
    if tp is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if tp in (int, float):
        return tp, {}
    if origin is tuple:
        n = "..." if len(args) == 2 and args[1] is Ellipsis else len(args)
        return str, {"metavar": "A,B" if n == 2 else "A,B,C" if n == 3 else "LIST"}
    return str, {}


def config_options(parser: argparse.ArgumentParser, cls: type) -> list[str]:
    """Add one ``--option`` per field of the config dataclass ``cls``; returns the field names.

    The help line comes from the class docstring's ``Attributes:`` section and ends with the
    default. Options default to ``None`` (not given): only given options override ``--params``.
    """
    from cirl.config import field_help

    helps = field_help(cls)
    hints = typing.get_type_hints(cls)
    names = []
    group = parser.add_argument_group(
        "parameters", "(from the stage config; --params FILE sets defaults, flags override it)"
    )
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind, extra = _option_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, tuple):
            default = ",".join(str(v) for v in default)
        text = helps.get(f.name, "").replace("%", "%%")
        options: dict[str, Any] = {"default": None, "help": f"{text} (default {default})"}
        if kind is not None:
            options["type"] = kind
        options.update(extra)
        if extra.get("choices") and kind is str and hints[f.name] is not str:
            literal_args = typing.get_args(hints[f.name])
            if literal_args and not isinstance(literal_args[0], str):
                # Literal of numbers: parse as the literal's type
                options["type"] = type(literal_args[0])
                options["choices"] = list(literal_args)
                options.pop("metavar")
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **options)
        names.append(f.name)
    return names


def resolved_config(args: argparse.Namespace, group: str) -> Any:
    """The stage config: dataclass defaults < ``--params`` group < given options."""
    from cirl import config

    cls = config.stage_config(group)
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
    return config.resolve(cls, group, args.params, overrides)
