"""The ``cirl`` command: one subcommand per stage, each a thin adapter over ``<stage>.run``.

A stage's parameters are declared once, as the fields of its frozen config dataclass (type,
default, and the help line in the class docstring's ``Attributes:``); the subcommand's options
are derived from those fields, so a new parameter is one line in one place. Options given on
the command line override the stage's group in ``--params`` (a ``params.yaml``), which
overrides the dataclass defaults. Only a command's inputs and outputs (folders, files) are
declared here.

Modules: :mod:`~cirl.orchestration.cli_options` (options from config dataclasses),
:mod:`~cirl.orchestration.cli_stages` (the stage commands), :mod:`~cirl.orchestration.cli_pipeline`
(``cirl pipeline``); this one builds the parser and runs a command.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence

from cirl import __version__
from cirl.errors import CirlError
from cirl.orchestration.cli_options import (
    Command,
    HelpFormatter,
    Parser,
    add_help,
    config_options,
    inputs_first,
    resolved_config,
)
from cirl.orchestration.cli_pipeline import _add_extra_commands
from cirl.orchestration.cli_stages import COMMANDS, MAKE_RUN_COMMANDS, SECTIONS


def _dispatch(command: Command) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        cfg = resolved_config(args, command.group) if command.group else None
        return command.handler(args, cfg)

    return handler


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cirl`` command (all subcommands).

    Each help page lists the command's inputs and outputs, then its parameters in titled groups
    (:data:`~cirl.orchestration.cli_stages.SECTIONS`) with the defaults that apply: those of a
    ``--params`` file given with ``--help`` (marked as such), else the built-in ones.
    """
    parser = Parser(
        prog="cirl",
        description="Crack segmentation with CIRL (CVPR 2024): data, training, evaluation, export.",
        epilog="cirl COMMAND --help lists a command's options; with --params FILE, the "
        "defaults it takes from FILE.",
        formatter_class=HelpFormatter,
        add_help=False,
    )
    parser._positionals.title = "commands"
    add_help(parser)
    parser.add_argument("--version", action="version", version=f"cirl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            formatter_class=HelpFormatter,
            add_help=False,
        )
        add_help(p, full=command.group is not None)
        inputs = p.add_argument_group("inputs and outputs")
        for a in command.args:
            options = dict(a.options)
            flags_only = options.get("action") in ("store_true", "store_false")
            text = options.get("help")
            if text and options.get("default") is not None and "(default" not in text:
                options["help"] = f"{text} (default: {options['default']})"
            (p if flags_only else inputs).add_argument(*a.flags, **options)
        if command.quiet:
            p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        if command.group:
            p.add_argument(
                "--params",
                metavar="FILE",
                help="defaults from this params.yaml (flags override them)",
            )
            for group in (command.group, *command.extra_groups):
                config_options(p, _config_class(group), group, SECTIONS.get(group, ()))
            p.cirl_make_run = command.name in MAKE_RUN_COMMANDS
        inputs_first(p)  # then the general options, then the parameters
        p.set_defaults(handler=_dispatch(command), reads_out=not command.locks_out)
    _add_extra_commands(sub)
    return parser


def _config_class(group: str) -> type:
    from cirl import config

    return config.stage_config(group)


def _output_lock(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """One writer per ``--out``: the command's output folder or file is locked while it runs
    (not for commands that only read it, such as ``pipeline show``, or share it, ``sweep``)."""
    out = getattr(args, "out", None)
    if not out or getattr(args, "reads_out", False) or str(out).startswith("s3://"):
        return contextlib.nullcontext()
    from cirl.staging import output_lock

    return output_lock(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cirl`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        with _output_lock(args):
            return args.handler(args)
    except CirlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the operating system's refusal on a path: no traceback either
        from cirl.errors import describe_os_error

        print(f"error: {describe_os_error(exc, getattr(args, 'out', None))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; outputs of this run were not moved into place", file=sys.stderr)
        return 130


# what this module held before it was split, for callers that import it from here
from cirl.orchestration.cli_options import Arg, arg  # noqa: E402, F401
