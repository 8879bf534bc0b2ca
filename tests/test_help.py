"""Contract tier: what a person sees in ``cirl ... --help``: every command's page grouped under
distinct titles, in plain text, with the defaults that apply (``--params``), and short."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cirl import config
from cirl.orchestration import cli_pipeline
from cirl.orchestration.cli import build_parser, main
from cirl.orchestration.cli_options import option_help, plain_text
from cirl.orchestration.cli_stages import COMMANDS, MAKE_RUN_COMMANDS, SECTIONS

REPO = Path(__file__).resolve().parents[1]
MARKUP = ("``", ":func:", ":class:", ":mod:", ":data:", ":meth:", ":attr:", "(default )")
HINT = "defaults below are the built-in ones; make run uses params.yaml"


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator:
    """Every parser of the command, with the words that reach it (the top level: ())."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, (*path, name))


PAGES = [path for path, _ in _walk(build_parser())]


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0, argv
    return capsys.readouterr().out


@pytest.fixture
def in_repo(monkeypatch):
    """The working directory of `make run` (./params.yaml there), 80 columns."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("COLUMNS", "80")


def _titles(text: str) -> list[str]:
    return [line[:-1] for line in text.splitlines() if re.match(r"^\S.*:$", line)]


def test_the_walk_finds_the_nested_commands():
    assert {("train",), ("sweep",), ("audit",), ("pipeline", "run"), ("pipeline", "show")} <= set(
        PAGES
    )
    assert {(c.name,) for c in COMMANDS} <= set(PAGES)


@pytest.mark.parametrize("path", PAGES, ids=lambda p: " ".join(p) or "cirl")
def test_every_help_page_is_grouped_and_plain(path, capsys, in_repo):
    pages = [_help(capsys, [*path, "--help"])]
    parser = dict(_walk(build_parser()))[path]
    if any("--help-all" in a.option_strings for a in parser._actions):
        pages.append(_help(capsys, [*path, "--help-all"]))
    for text in pages:
        assert text.startswith("usage: cirl"), text[:80]
        for mark in MARKUP:
            assert mark not in text, (path, mark)
        assert "(default: )" not in text and "(default None)" not in text, path
        assert "before the option existed" not in text, path
        titles = _titles(text)
        assert len(titles) == len(set(titles)), (path, titles)
        assert "parameters" not in titles, path  # a meaningful title, not the generic one
        # every option is documented on the page (and the parser still accepts it)
        for action in parser._actions:
            if action.option_strings and action.help is not argparse.SUPPRESS:
                assert action.option_strings[-1] in text, (path, action.option_strings)
    # argparse's own groups: distinct titles too (empty ones are not shown)
    shown = [g.title for g in parser._action_groups if g._group_actions]
    assert len(shown) == len(set(shown)), (path, shown)


def test_sections_name_real_fields_once():
    for group, sections in SECTIONS.items():
        fields = list(config.stage_config(group).__dataclass_fields__)
        named = [name for section in sections for name in section.fields]
        assert len(named) == len(set(named)) and set(named) <= set(fields), group


def test_config_options_say_what_they_do(capsys, in_repo):
    """Each config-derived option has help text in --help-all, and in --help unless it is in
    an expert group; its default is shown, booleans as on/off."""
    for command in (c for c in COMMANDS if c.group):
        full = _help(capsys, [command.name, "--help-all"])
        for name in (command.group, *command.extra_groups):
            for field in config.stage_config(name).__dataclass_fields__:
                flag = "--" + field.replace("_", "-")
                entry = re.search(
                    rf"^  {re.escape(flag)}\b.*?(?=^  -|^\S|\Z)", full, re.M | re.S
                ).group(0)
                text = re.sub(r"\(default: [^)]*\)", "", entry.split(None, 1)[1])
                assert re.search(r"[a-z]{3}", text), (command.name, field, entry)
                assert "(default: " in entry, (command.name, field)
                assert "(default: True)" not in entry and "(default: False)" not in entry


def test_params_file_defaults_are_shown_with_their_source(capsys, in_repo):
    train = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    for argv in (
        ["train", "--params", "params.yaml", "--help"],  # --data and --out missing: still help
        ["train", "--help", "--params", "params.yaml"],
    ):
        text = " ".join(_help(capsys, argv).split())
        assert f"(default: {train['lr_schedule']}, from params.yaml)" in text
        assert f"(default: {float(train['pos_weight'])}, from params.yaml)" in text
        assert f"(default: {train['precision']}, from params.yaml)" in text
        # a key params.yaml does not set: the built-in default, without a source
        assert "val_every" not in train
        assert re.search(r"--val-every N .*?\(default: 1\)", text)
        # the tracking group of the same file
        assert "(default: on, from params.yaml)" in text
        assert HINT not in text


def test_without_params_the_help_says_where_make_run_gets_its_values(capsys, in_repo):
    text = " ".join(_help(capsys, ["train", "--help"]).split())
    assert text.count(HINT) == 1
    assert "(default: constant)" in text and "from params.yaml" not in text


def test_no_hint_where_there_is_no_params_yaml(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = " ".join(_help(capsys, ["train", "--help"]).split())
    assert HINT not in text and "--params FILE sets defaults" in text


def test_a_missing_params_file_is_named_in_the_help(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = " ".join(_help(capsys, ["train", "--params", "nope.yaml", "--help"]).split())
    assert "nope.yaml not found" in text and "(default: constant)" in text


def test_train_help_is_short(capsys, in_repo):
    assert len(_help(capsys, ["train", "--help"]).splitlines()) < 120
    assert len(_help(capsys, ["--help"]).splitlines()) < 50


def test_make_run_commands_are_the_makefile_s():
    """The commands the hint says `make run` sets from params.yaml: the Makefile's `run`
    recipe's commands given --params, the pipeline's stages for `cirl pipeline run`."""
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^run:.*?\n((?:\t.*\n|.*\\\n)+)", makefile, re.M).group(1)
    called = set()
    for line in re.sub(r"\\\n", " ", recipe).splitlines():
        words = line.split()
        if len(words) > 1 and words[0].endswith("/cirl") and "--params" in words:
            called.add(words[1])
    assert "pipeline" in called
    stages = {c.name for c in COMMANDS if c.group in config.PIPELINE_GROUPS}
    assert (called - {"pipeline"}) | stages == MAKE_RUN_COMMANDS


def test_pipeline_show_and_run_default_to_where_make_run_writes():
    runs = re.search(r"^RUNS \?= (\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
    pages = dict(_walk(build_parser()))
    defaults = {
        verb: next(a.default for a in pages[("pipeline", verb)]._actions if a.dest == "out")
        for verb in ("run", "show")
    }
    assert (
        defaults
        == {"run": runs, "show": runs}
        == dict.fromkeys(defaults, cli_pipeline.DEFAULT_RUN_DIR)
    )


def test_plain_text_and_history_notes():
    assert (
        plain_text("``unet`` or :func:`cirl.a.b` or :class:`~cirl.a.C`") == "unet or cirl.a.b or C"
    )
    assert plain_text("*not* OUT/images/*.jpg, a * b") == "not OUT/images/*.jpg, a * b"
    assert plain_text("timed here: :mod:`cirl.method.arithmetic`; then") == "timed here; then"
    short, full = option_help(
        "``fp32``, ``bf16`` or ``auto`` (Eq. 7, e.g. here). Recorded with the run. ``fp32`` is "
        "the default so that runs recorded before the option existed retrain as they ran. "
        "Before 0.4 it was ``bf16``."
    )
    assert short == "fp32, bf16 or auto (Eq. 7, e.g. here)."
    assert full == short + " Recorded with the run."
    assert option_help("side of the example input used to capture the graph.")[0].endswith(
        "used to capture the graph."
    )
