"""The command line's help is a reviewed text, and the defaults it states are the real ones.

The docs site's command reference (docs/cli.md) is generated from these parsers, so a changed
help string, metavar, choice or subcommand description is a change users see. The golden file
``tests/golden/cli_help.txt`` holds every parser's help and, after them, a table of every action
of every parser (the ``attnviz`` command and its subcommands, and the module command lines
``python -m attnviz.models.train`` / ``.seeds``): option strings, dest, default, type, choices,
nargs, required, metavar, const and action kind. So the class "a default, type or choice of
some option changed" (a dropped ``--batch-size`` default, ``int`` for ``float``, a choice
renamed) fails here, whether or not the help text states the default. After a deliberate
change, review the diff and regenerate it:

    ATTNVIZ_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_cli_help.py
"""

import argparse
import contextlib
import io
import os
import re
from pathlib import Path

import pytest

from attnviz.cli import build_parser
from attnviz.models import seeds, train

MODULE_MAINS = (train.main, seeds.main)
MODULE_PARSERS = (train.build_parser, seeds.build_parser)

GOLDEN = Path(__file__).parent / "golden" / "cli_help.txt"
# "(default 32)", "(default 1.0 1.5 2.0)", "(20000)", "(default 0: in the main process)"
STATED = re.compile(r"\((?:default )?(-?\d[\d.e]*(?: -?\d[\d.e]*)*)(?:[,;:][^()]*)?\)\s*$")


def _parsers(parser: argparse.ArgumentParser):
    """Every parser under ``parser``, depth first, in the order the commands are declared."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _parsers(sub)


def _help_text(monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps at the terminal width
    parser = build_parser()
    parts = []
    for p in _parsers(parser):
        parts.append(f"==== {p.prog}\n{p.format_help()}")
    # the one-line help of each subcommand, as `attnviz --help` lists them
    for p in _parsers(parser):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    parts.append(f"==== {p.prog} {choice.dest}: {choice.help}\n")
    # the modules with their own command line (python -m attnviz.models.train / .seeds)
    for main in MODULE_MAINS:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            main(["--help"])
        parts.append(f"==== {main.__module__}\n{out.getvalue()}")
    # every action of every parser: the defaults, types and choices, stated in the help or not
    for p in (*_parsers(parser), *(build() for build in MODULE_PARSERS)):
        parts.append(f"==== actions of {p.prog}\n{_action_table(p)}")
    return "".join(parts)


def _shown(value) -> str:
    """``repr`` of a parser attribute, with this checkout's path (a default under the
    repository, such as the training's ``--out``) written as ``<repo>``."""
    if callable(value):
        return getattr(value, "__qualname__", repr(value))
    if isinstance(value, dict):  # a subparsers action's choices: the command names
        value = list(value)
    return repr(value).replace(str(train.repo_root()), "<repo>")


def _action_table(parser: argparse.ArgumentParser) -> str:
    """One line per action: how it parses and what it gives when the option is absent."""
    lines = []
    for a in parser._actions:
        fields = {
            "action": type(a).__name__,
            "dest": a.dest,
            "default": a.default,
            "type": a.type,
            "choices": a.choices,
            "nargs": a.nargs,
            "required": a.required,
            "metavar": a.metavar,
            "const": a.const,
        }
        name = "/".join(a.option_strings) or a.dest
        lines.append(f"  {name}: " + "; ".join(f"{k}={_shown(v)}" for k, v in fields.items()))
    return "\n".join(lines) + "\n"


def test_every_parser_help_is_the_reviewed_text(monkeypatch):
    text = _help_text(monkeypatch)
    if os.environ.get("ATTNVIZ_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    golden = GOLDEN.read_text(encoding="utf-8")
    if text != golden:
        import difflib

        diff = "".join(
            list(difflib.unified_diff(golden.splitlines(True), text.splitlines(True), n=1))[:40]
        )
        pytest.fail(f"the CLI help changed (review, then regenerate: see the docstring):\n{diff}")


def test_every_subcommand_has_a_one_line_help_and_a_description():
    parser = build_parser()
    for p in _parsers(parser):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help and "\n" not in choice.help, (p.prog, choice.dest)
                    sub = action.choices[choice.dest]
                    leaf = not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                    assert sub.description or not leaf, sub.prog


def _stated_defaults():
    for p in _parsers(build_parser()):
        for action in p._actions:
            m = STATED.search(action.help or "")
            if m and action.default not in (None, argparse.SUPPRESS):
                yield p.prog, action, m.group(1)


def test_the_defaults_the_help_states_are_the_parsers_defaults():
    checked = 0
    for prog, action, stated in _stated_defaults():
        default = action.default
        values = default if isinstance(default, (list, tuple)) else [default]
        assert [float(v) for v in stated.split()] == [float(v) for v in values], (
            f"{prog} {action.option_strings}: help says {stated}, default is {default!r}"
        )
        checked += 1
    # batch sizes, workers, checkpoint intervals, seeds, scales, image sizes (36 on 5 Dec 2026)
    assert checked >= 30


def test_the_stated_default_pattern_reads_what_the_help_says():
    assert STATED.search("rows (default 32)").group(1) == "32"
    assert STATED.search("x (default 0: in the main process)").group(1) == "0"
    assert STATED.search("x (default 1.0 1.5 2.0)").group(1) == "1.0 1.5 2.0"
    assert STATED.search("seed (20000)").group(1) == "20000"
    assert STATED.search("x (default: the model's own)") is None
    assert STATED.search("x (default 0.2) more") is None


def test_every_default_is_one_of_its_choices():
    checked = 0
    for p in _parsers(build_parser()):
        for action in p._actions:
            if action.choices and action.default not in (None, argparse.SUPPRESS):
                if isinstance(action, argparse._SubParsersAction):
                    continue
                values = action.default if isinstance(action.default, list) else [action.default]
                assert set(values) <= set(action.choices), (p.prog, action.option_strings)
                checked += 1
    assert checked >= 3  # --target, --policy, --scopes at least
