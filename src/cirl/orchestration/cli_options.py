"""A stage's command-line options derived from its config dataclass: one option per field (type,
default, help from the class docstring), resolved over ``--params`` and the defaults; and how
the help pages show them (grouped, plain text, the defaults that apply).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
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


@dataclass(frozen=True)
class Section:
    """A titled group of a config's options on the help page. ``expert``: rarely changed, one
    line each (the default) in ``--help``, described in full by ``--help-all``."""

    title: str
    fields: tuple[str, ...] | str
    """The fields, in order (a string: their names separated by spaces)."""
    expert: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.fields, str):
            object.__setattr__(self, "fields", tuple(self.fields.split()))


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, indent=2, default=str))


# ---- help text: the docstring's help lines as plain text ------------------------------------

_ROLE = re.compile(r":(?:py:)?[a-z]+:`([^`]+)`")
# a pointer to the code after a colon ("... timed here: :mod:`cirl.method.arithmetic`"): left out
_CODE_POINTER = re.compile(r":\s+:(?:py:)?(?:func|mod|class|meth|attr|data|obj):`[^`]+`")
_LITERAL = re.compile(r"``(.+?)``")
_EMPHASIS = re.compile(r"(?:(?<=[\s(])|^)\*{1,2}(\w(?:[^*\n]*?\w)?)\*{1,2}(?=[\s.,;:)]|$)")
# sentences about the option's past, not what it does ("Before 0.4 ...", "... used to be ...")
_HISTORY = re.compile(
    r"(?-i:^Before\b)|\bbefore (?:the|this|that|it|they) (?:option |key |parameter )?existed\b"
    r"|\b(?:it|this|they|which|that|we) used to\b|\bsince (?:version|release|v?\d)"
    r"|\bformerly\b|\bno longer\b|\bpreviously\b|\buntil (?:version|release)\b",
    re.IGNORECASE,
)
_ABBREVIATION = re.compile(r"(?:\be\.g|\bi\.e|\bEq|\bFig|\bSec|\bcf|\bvs|\betc)$")


def _role_text(match: re.Match) -> str:
    target = match.group(1)
    titled = re.match(r"(.+?)\s*<[^>]+>$", target)
    if titled:
        return titled.group(1)
    if target.startswith("~"):
        return target[1:].rsplit(".", 1)[-1]
    return target


def plain_text(text: str) -> str:
    """``text`` without reStructuredText markup: ````x```` and roles (``:func:`a.b```) as their
    plain text (``~a.b`` as ``b``), ``*emphasis*`` without its stars."""
    text = _CODE_POINTER.sub("", text)
    text = _ROLE.sub(_role_text, text)
    text = _LITERAL.sub(r"\1", text)
    return _EMPHASIS.sub(r"\1", text)


def sentences(text: str) -> list[str]:
    """``text`` cut into sentences (not inside parentheses, not after ``e.g.`` or ``Eq.``)."""
    out: list[str] = []
    depth = start = 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        elif (
            ch == "."
            and depth == 0
            and re.match(r" +[A-Z`:]", text[i + 1 :])
            and not _ABBREVIATION.search(text[start:i])
        ):
            out.append(text[start : i + 1].strip())
            start = i + 1
    if text[start:].strip():
        out.append(text[start:].strip())
    return out


def option_help(text: str) -> tuple[str, str]:
    """The short and the full help of a docstring help line, as plain text: the first sentence,
    and every sentence that says what the option does (notes on its history left out)."""
    kept = [s for s in sentences(text) if not _HISTORY.search(plain_text(s))]
    kept = [plain_text(s) for s in kept]
    return (kept[0] if kept else ""), " ".join(kept)


def show_value(value: Any) -> str:
    """A default as the help shows it: booleans on/off, lists with commas, empty as none."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return ",".join(show_value(v) for v in value) or "none"
    if value is None or value == "":
        return "none"
    return str(value)


# ---- help pages -------------------------------------------------------------------------------


class HelpFormatter(argparse.HelpFormatter):
    """Usage as the required arguments and ``[options]``; the options, grouped, below it."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:  # fmt: skip
        super().__init__(prog, indent_increment, max_help_position, width)

    def _format_usage(self, usage, actions, groups, prefix):
        if usage is not None:
            return super()._format_usage(usage, actions, groups, prefix)
        optionals = [a for a in actions if a.option_strings and a.help is not argparse.SUPPRESS]
        required = [a for a in optionals if a.required]
        positionals = [a for a in actions if not a.option_strings]
        parts = [self._prog]
        if required:
            parts.append(self._format_actions_usage(required, []))
        if len(optionals) > len(required):
            parts.append("[options]")
        if positionals:
            parts.append(self._format_actions_usage(positionals, []))
        prefix = "usage: " if prefix is None else prefix
        text = textwrap.fill(
            " ".join(parts),
            width=max(self._width, 40),
            initial_indent=prefix,
            subsequent_indent=" " * (len(prefix) + len(self._prog) + 1),
            break_long_words=False,
            break_on_hyphens=False,
        )
        return text + "\n\n"

    def _format_action(self, action: argparse.Action) -> str:
        # an option too long for the help column whose help still fits on its line: one line
        header = self._format_action_invocation(action)
        help_position = min(self._action_max_length + 2, self._max_help_position)
        if (
            action.help
            and action.help is not argparse.SUPPRESS
            and not isinstance(action, argparse._SubParsersAction)
            and len(header) > help_position - self._current_indent - 2
        ):
            text = self._whitespace_matcher.sub(" ", self._expand_help(action)).strip()
            line = " " * self._current_indent + header + "  " + text
            if len(line) <= self._width:
                return line + "\n"
        return super()._format_action(action)

    def _split_lines(self, text: str, width: int) -> list[str]:
        # a short "(default: ...)" kept on one line
        text = self._whitespace_matcher.sub(" ", text).strip()
        glued = re.sub(
            r"\(default: [^()]*\)",
            lambda m: (
                m.group(0).replace(" ", "\0") if len(m.group(0)) <= width // 2 + 8 else m.group(0)
            ),
            text,
        )
        return [line.replace("\0", " ") for line in textwrap.wrap(glued, width)]


@dataclass(frozen=True)
class _OptionDoc:
    """What the help of a config-derived option is made of, when the help is shown."""

    group: str
    name: str
    short: str
    full: str
    default: Any
    expert: bool


class Parser(argparse.ArgumentParser):
    """An argument parser that remembers the arguments it parses, so that its help can show the
    defaults of the ``--params`` file given with ``--help`` (whatever else is missing)."""

    def parse_known_args(self, args=None, namespace=None):
        self.cirl_argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)


class HelpAction(argparse.Action):
    """``-h``/``--help`` (``full=False``) and ``--help-all``: print the help and exit."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None,
                 full: bool = False) -> None:  # fmt: skip
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)
        self.full = full

    def __call__(self, parser, namespace, values, option_string=None):
        prepare_help(parser, full=self.full)
        parser.print_help()
        parser.exit()


def inputs_first(parser: argparse.ArgumentParser) -> None:
    """List the group "inputs and outputs" first on the parser's help page."""
    for group in parser._action_groups:
        if group.title == "inputs and outputs":
            parser._action_groups.remove(group)
            parser._action_groups.insert(0, group)
            return


def add_help(parser: argparse.ArgumentParser, full: bool = False) -> None:
    """Add ``-h, --help`` (and with ``full``, ``--help-all``) to a parser made without them."""
    parser.add_argument("-h", "--help", action=HelpAction, help="show this help and exit")
    if full:
        parser.add_argument(
            "--help-all",
            action=HelpAction,
            full=True,
            help="show this help with every option described in full",
        )


def _given_params(argv: Sequence[str]) -> str | None:
    """The ``--params`` among ``argv``, read before (and whatever) the parser would refuse."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    pre.add_argument("--params")
    try:
        known, _ = pre.parse_known_args(list(argv))
    except argparse.ArgumentError:
        return None
    return known.params


def _params_values(params: str, groups: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per group, the keys the params file sets, with their values checked by the dataclass."""
    from cirl import config

    values: dict[str, dict[str, Any]] = {}
    for group in groups:
        keys = config.load_group(params, group)
        cfg = config.resolve(config.stage_config(group), group, params)
        values[group] = {key: getattr(cfg, key) for key in keys}
    return values


def _cwd_params_has(groups: Sequence[str]) -> bool:
    path = Path("params.yaml")
    if not path.is_file():
        return False
    import yaml

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(doc, dict) and any(doc.get(group) for group in groups)


def prepare_help(parser: argparse.ArgumentParser, full: bool = False) -> None:
    """Fill in the help of the config-derived options: the short or the full text, and the
    default that applies (the ``--params`` file's value, marked as such, else the built-in)."""
    from cirl.errors import CirlError

    docs = [(a, a.cirl_doc) for a in parser._actions if hasattr(a, "cirl_doc")]
    if not docs:
        return
    groups = list(dict.fromkeys(doc.group for _, doc in docs))
    params = _given_params(getattr(parser, "cirl_argv", None) or sys.argv[1:])
    values: dict[str, dict[str, Any]] = {}
    if params is not None:
        try:
            values = _params_values(params, groups)
            note = (
                f'defaults marked "from {params}" are its values for this command; '
                "flags override them"
                if any(values.values())
                else f"{params} sets none of these; the defaults below are the built-in ones"
            )
        except CirlError as exc:  # shown, not raised: this is the help
            note = (
                f"--params {params} not used here: {exc}; the defaults below are the built-in ones"
            )
    elif _cwd_params_has(groups):
        if getattr(parser, "cirl_make_run", False):
            note = (
                "defaults below are the built-in ones; make run uses params.yaml (pass "
                "--params params.yaml to see and use its values)"
            )
        else:
            note = (
                "defaults below are the built-in ones; ./params.yaml sets others (pass "
                "--params params.yaml to see and use its values)"
            )
    else:
        note = "--params FILE sets defaults (its group for this stage); flags override them"
    previous: tuple[Any, _OptionDoc] | None = None
    for action, doc in docs:
        text = doc.full if full else ("" if doc.expert else doc.short)
        if previous and (previous[1].group, previous[1].full) == (doc.group, doc.full) and text:
            text = f"as {previous[0].option_strings[0]}"  # the same help as the option above
        else:
            previous = (action, doc)
        if doc.name in values.get(doc.group, {}):
            default = f"(default: {show_value(values[doc.group][doc.name])}, from {params})"
        else:
            default = f"(default: {show_value(doc.default)})"
        action.help = (f"{text} {default}" if text else default).replace("%", "%%")
    for i, (group, section) in enumerate(getattr(parser, "cirl_sections", [])):
        group.description = note if i == 0 else None
        if section.expert:
            group.title = f"{section.title} (expert{'' if full else '; --help-all describes them'})"


# ---- options from a config dataclass ----------------------------------------------------------


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
        return str, {"metavar": "TEXT"}
    if origin is typing.Literal:
        values = [str(a) for a in args]
        return str, {"choices": values, "metavar": "{" + ",".join(values) + "}"}
    if tp is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if tp is int:
        return tp, {"metavar": "N"}
    if tp is float:
        return tp, {"metavar": "NUM"}
    if origin is tuple:
        n = "..." if len(args) == 2 and args[1] is Ellipsis else len(args)
        return str, {"metavar": "A,B" if n == 2 else "A,B,C" if n == 3 else "LIST"}
    return str, {"metavar": "TEXT"}


def config_options(
    parser: argparse.ArgumentParser,
    cls: type,
    group: str | None = None,
    sections: Sequence[Section] = (),
) -> list[str]:
    """Add one ``--option`` per field of the config dataclass ``cls``; returns the field names.

    The options are grouped by ``sections`` (the fields no section names last, under
    "other GROUP parameters"); each one's help comes from the class docstring's ``Attributes:``
    section, as plain text, and ends with the default that applies (filled in when the help is
    shown, see :func:`prepare_help`). Options default to ``None`` (not given): only given
    options override ``--params``.
    """
    from cirl.config import field_help

    group = group or cls.__name__
    helps = field_help(cls)
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    listed = {name for s in sections for name in s.fields}
    rest = tuple(f.name for f in fields if f.name not in listed)
    if rest:
        title = f"other {group} parameters" if sections else f"{group} parameters"
        sections = (*sections, Section(title, rest))
    by_name = {f.name: f for f in fields}
    names = []
    for section in sections:
        present = [by_name[n] for n in section.fields if n in by_name]
        if not present:
            continue
        arg_group = parser.add_argument_group(
            f"{section.title} (expert)" if section.expert else section.title
        )
        if not hasattr(parser, "cirl_sections"):
            parser.cirl_sections = []
        parser.cirl_sections.append((arg_group, section))
        for f in present:
            names.append(f.name)
            _add_field(arg_group, f, hints[f.name], helps.get(f.name, ""), group, section.expert)
    return names


def _add_field(arg_group: Any, f: dataclasses.Field, hint: Any, text: str, group: str,
               expert: bool) -> None:  # fmt: skip
    kind, extra = _option_type(hint)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    short, full = option_help(text)
    options: dict[str, Any] = {"default": None, "help": f"{short} (default: {show_value(default)})"}
    options["help"] = options["help"].replace("%", "%%")
    if kind is not None:
        options["type"] = kind
    options.update(extra)
    if extra.get("choices") and kind is str and hint is not str:
        literal_args = typing.get_args(hint)
        if literal_args and not isinstance(literal_args[0], str):
            # Literal of numbers: parse as the literal's type
            options["type"] = type(literal_args[0])
            options["choices"] = list(literal_args)
            options.pop("metavar")
    action = arg_group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **options)
    action.cirl_doc = _OptionDoc(group, f.name, short, full, default, expert)


def resolved_config(args: argparse.Namespace, group: str) -> Any:
    """The stage config: dataclass defaults < ``--params`` group < given options."""
    from cirl import config

    cls = config.stage_config(group)
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
    return config.resolve(cls, group, args.params, overrides)
