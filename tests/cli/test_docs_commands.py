"""Every ``cupre`` command the README and docs/ print parses: the subcommand exists and
every flag it names is one of that subcommand's options; ``--help`` reads as plain text."""

from __future__ import annotations

import re

import pytest

from cupre.cli import COMMANDS, build_parser
from tests.helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CODE = re.compile(r"```[a-z]*\n(.*?)```|`([^`\n]+)`", re.DOTALL)


def cupre_commands(text: str) -> list[str]:
    """Each ``cupre SUBCOMMAND ...`` in code spans and blocks (a line each in blocks)."""
    found = []
    for block, span in CODE.findall(text):
        for line in (block.splitlines() if block else [span]):
            line = line.split(" #")[0]  # a shell comment is prose
            for m in re.finditer(r"(?:^|[\s(=])cupre (\S.*)", line):
                found.append(m.group(1).strip())
    return found


def options_of(parser) -> dict[str, set[str]]:
    sub = next(a for a in parser._actions if a.dest == "command")
    return {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}


@pytest.fixture(scope="module")
def options():
    return options_of(build_parser())


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_documented_command_and_flag_exists(doc, options):
    commands = cupre_commands(doc.read_text())
    problems = []
    for command in commands:
        words = command.split()
        if words[0] in ("--version", "--help", "-h") or words[0].isupper():  # COMMAND: a placeholder
            continue
        if words[0] not in COMMANDS:
            problems.append(f"{command!r}: no subcommand {words[0]!r}")
            continue
        for word in words[1:]:
            flag = re.match(r"\[?(--[a-z0-9-]+)", word)
            if flag and flag.group(1) not in options[words[0]]:
                problems.append(f"{command!r}: cupre {words[0]} has no {flag.group(1)}")
    assert not problems, "\n".join(problems)


def test_the_readme_names_commands():
    assert len(cupre_commands((REPO / "README.md").read_text())) >= 5


def test_a_wrong_flag_in_a_doc_would_be_found(options):
    [command] = cupre_commands("run `cupre predict MODEL IMAGES --no-such-flag`")
    assert command.split()[0] == "predict" and "--no-such-flag" not in options["predict"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_is_plain_text(command, capsys):
    from cupre.cli import main

    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and ":mod:`" not in text and ":func:`" not in text and "**" not in text
