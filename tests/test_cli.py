"""Contract tier: the command line's help, options and error handling."""

import argparse
import json
import subprocess
import sys

import pytest

from cirl.orchestration.cli import build_parser, main
from conftest import write_pair

SUBCOMMANDS = [
    "audit",
    "evaluate",
    "export",
    "pipeline",
    "predict",
    "prepare",
    "promote",
    "register",
    "select",
    "sweep",
    "synth",
    "train",
]


def _commands(parser, path=()):
    """Every subcommand, nested ones (``pipeline run``) included, walked from the parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name)
                yield from _commands(child, (*path, name))


def test_every_subcommand_has_help(capsys):
    commands = list(_commands(build_parser()))
    assert ("pipeline", "show") in commands and len(commands) > len(SUBCOMMANDS)
    for words in commands:
        with pytest.raises(SystemExit) as exc:
            main([*words, "--help"])
        assert exc.value.code == 0
        assert "usage: cirl " + " ".join(words) in capsys.readouterr().out


def test_all_subcommands_are_known():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(SUBCOMMANDS)


def test_prepare_via_cli_prints_counts(tmp_path, capsys):
    for i in range(4):
        write_pair(tmp_path / "raw", f"p{i}", 100, 80, i)
    code = main(
        [
            "prepare",
            "--source",
            str(tmp_path / "raw"),
            "--format",
            "folder",
            "--out",
            str(tmp_path / "out"),
            "--tile",
            "64",
            "-q",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tiles"] == {"train": 8, "val": 4, "test": 4}


def test_errors_are_one_line_messages_with_status_2(tmp_path, capsys):
    code = main(
        [
            "prepare",
            "--source",
            str(tmp_path / "none"),
            "--format",
            "folder",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: source folder") and "Traceback" not in err
    params = tmp_path / "p.yaml"
    params.write_text("prepare:\n  tile_size: 5\n")
    code = main(
        [
            "prepare",
            "--source",
            str(tmp_path),
            "--format",
            "folder",
            "--out",
            str(tmp_path / "o"),
            "--params",
            str(params),
        ]
    )
    assert code == 2
    assert "unknown key(s) 'tile_size'" in capsys.readouterr().err


def test_unknown_format_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "--source", ".", "--format", "coco", "--out", "x"])
    assert exc.value.code == 2
    assert "invalid choice: 'coco'" in capsys.readouterr().err


def test_console_script_module_entry():
    proc = subprocess.run(
        [sys.executable, "-m", "cirl", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.startswith("cirl ")
