"""Sphinx directives of attnviz's site.

``attnviz-cli``: the help text of ``attnviz`` and of every subcommand, from the parsers of
``attnviz.cli.build_parser()`` (what ``attnviz CMD --help`` prints), one section each.

``attnviz-api``: the API reference of every name ``attnviz`` exports.

The list is ``attnviz.__all__`` itself (eager names and PEP 562 lazy re-exports alike), so a
new export appears on the page without editing it; each name is documented by autodoc from
its own docstring (``autoclass`` for classes, ``autofunction`` for functions, ``autodata``
otherwise), under the module that defines it.
"""

from __future__ import annotations

import argparse
import inspect
import os

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


def api_entries() -> list[tuple[str, str, str]]:
    """(directive, module, qualified name) of every public export, in ``__all__`` order,
    ``__version__`` left out (it is data, shown in the page title)."""
    import attnviz

    out = []
    for name in attnviz.__all__:
        if name == "__version__":
            continue
        obj = getattr(attnviz, name)
        if inspect.isclass(obj):
            kind = "autoclass"
        elif callable(obj):
            kind = "autofunction"
        else:
            kind = "autodata"
        out.append((kind, obj.__module__, obj.__qualname__))
    return out


class ApiDirective(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        lines = []
        for kind, module, qualname in api_entries():
            lines.append(f".. {kind}:: {module}.{qualname}")
            if kind == "autoclass":
                lines.append("   :members:")
            lines.append("")
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(StringList(lines, source="attnviz.__all__"), 0, container)
        return container.children


def cli_help() -> list[tuple[str, str]]:
    """(command, help text) of ``attnviz`` and each subcommand, in the parser's order, at a
    fixed width of 100 columns (argparse reads ``COLUMNS``)."""
    from attnviz.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = build_parser()
        out = [("attnviz", parser.format_help())]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                out += [(f"attnviz {n}", p.format_help()) for n, p in action.choices.items()]
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return out


class CliDirective(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        sections = []
        for command, text in cli_help():
            section = nodes.section(ids=[nodes.make_id(command)], names=[command])
            section += nodes.title(text=command)
            section += nodes.literal_block(text, text, language="text")
            self.state.document.note_implicit_target(section)
            sections.append(section)
        return sections


def setup(app):
    app.add_directive("attnviz-api", ApiDirective)
    app.add_directive("attnviz-cli", CliDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
