"""MkDocs hook: the reference pages, generated from the code at every build so they cannot drift
from it: every config field with its type, default and comment, every command with its options."""

from __future__ import annotations

import dataclasses
import typing

from mkdocs.structure.files import File


def on_files(files, config):
    for path, text in (("reference/config.md", config_reference()), ("reference/cli.md", cli_reference())):
        files.append(File.generated(config, path, content=text))
    return files


def config_reference() -> str:
    from gptjax.config import TrainConfig

    lines = ["# Configuration", "",
             "Every field of a training config (`gptjax train CONFIG section.field=value ...`), with its "
             "type, default and the comment beside it in `gptjax/config.py`.", ""]
    _section(TrainConfig, "", lines)
    return "\n".join(lines) + "\n"


def _section(cls, prefix: str, lines: list[str]) -> None:
    import draccus.wrappers.docstring as docstrings

    hints = typing.get_type_hints(cls)
    nested = []
    lines += [f"## `{prefix.rstrip('.') or 'top level'}`", "", "| field | type | default | meaning |",
              "|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            nested.append((kind, f"{prefix}{field.name}."))
            continue
        doc = docstrings.get_attribute_docstring(cls, field.name)
        meaning = " ".join(x for x in (doc.comment_above, doc.comment_inline, doc.docstring_below) if x)
        default = field.default if field.default is not dataclasses.MISSING else (
            "(computed)" if field.default_factory is dataclasses.MISSING else field.default_factory())
        lines.append(f"| `{prefix}{field.name}` | `{_type(kind)}` | `{default!r}` | {_cell(meaning)} |")
    lines.append("")
    for kind, sub in nested:
        _section(kind, sub, lines)


def _type(kind) -> str:
    return str(kind).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def cli_reference() -> str:
    import argparse

    from gptjax import cli

    lines = ["# Command line", "", "Every `gptjax` command and its options, as `gptjax COMMAND --help` prints them.",
             ""]

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if name:
            lines.extend([f"## `{name}`", "", "```text", parser.format_help().rstrip(), "```", ""])
        for action in subs:
            for command, sub in action.choices.items():
                walk(sub, f"{name} {command}".strip())

    walk(cli.build_parser(), "")
    return "\n".join(lines) + "\n"
