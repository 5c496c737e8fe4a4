"""A default is stated once: an analysis's class, its function and the command that calls it
agree on every parameter they share (mutation testing found changed defaults surviving, e.g.
``ExcitationProfile(channels=51)``, because each test passes its own value).

And a rule that holds by construction: every ``torch.load`` in the package and its tools reads
with ``weights_only=True`` (a pickle from a user's folder never runs code).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import attnviz.analysis
from attnviz.analysis.runner import Analysis
from attnviz.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
#: mutmut's copy of the tree, whose functions are trampolines to their mutants: a rule read from
#: signatures and source cannot see a mutant there (TESTING.md, "Mutation testing").
IN_MUTMUT_TREE = pytest.mark.skipif(ROOT.name == "mutants", reason="read from source, not run")

#: Function defaults that the function resolves itself before building the analysis.
RESOLVED_LATER = (None, "auto")
#: (command option, why the command states its own default).
COMMAND_OWN = {
    "batch_size": "each command sizes its batches for its own memory use (stated in --help)",
}


def _analysis_functions():
    """(module name, public function, the Analysis classes it builds)."""
    for info in pkgutil.iter_modules(attnviz.analysis.__path__):
        mod = importlib.import_module(f"attnviz.analysis.{info.name}")
        classes = {
            n: c
            for n, c in vars(mod).items()
            if inspect.isclass(c) and issubclass(c, Analysis) and c.__module__ == mod.__name__
        }
        for name, fn in vars(mod).items():
            if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != mod.__name__:
                continue
            built = [c for n, c in classes.items() if re.search(rf"\b{n}\(", inspect.getsource(fn))]
            yield mod.__name__, fn, built


def _given(p: inspect.Parameter) -> bool:
    return p.default is not inspect.Parameter.empty


@IN_MUTMUT_TREE
def test_an_analysis_function_has_its_classs_defaults():
    checked = 0
    for _, fn, built in _analysis_functions():
        fs = inspect.signature(fn).parameters
        for cls in built:
            cs = inspect.signature(cls.__init__).parameters
            for k in fs.keys() & cs.keys():
                if not (_given(fs[k]) and _given(cs[k])) or fs[k].default in RESOLVED_LATER:
                    continue
                assert fs[k].default == cs[k].default, (fn.__name__, cls.__name__, k)
                checked += 1
    assert checked >= 20, checked  # the functions of every analysis were found


@IN_MUTMUT_TREE
def test_a_command_has_its_analysiss_defaults():
    functions = {fn.__name__: fn for _, fn, _ in _analysis_functions()}
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    checked = set()
    for command, parser in sub.choices.items():
        path = ROOT / "attnviz" / "commands" / f"{command.replace('-', '_')}.py"
        if not path.exists():
            continue
        source = path.read_text()
        options = {
            a.dest: a.default
            for a in parser._actions
            if a.default not in (None, argparse.SUPPRESS) and a.dest not in COMMAND_OWN
        }
        for name, fn in functions.items():
            if not re.search(rf"\b{name}\(", source):
                continue
            params = inspect.signature(fn).parameters
            for k in options.keys() & params.keys():
                if params[k].default in (inspect.Parameter.empty, *RESOLVED_LATER):
                    continue
                want = params[k].default
                got = options[k]
                if k == "scopes" and want == ():  # () means every scope
                    want = ("site", "stage", "all")
                got = tuple(got) if isinstance(got, list) else got
                assert got == want, (command, name, k, got, want)
                checked.add((command, k))
    # excitation's channels/permutations/seed, queries' n_queries, rollout's residual, ...
    assert {("excitation", "channels"), ("rollout", "residual"), ("ablate", "bank")} <= checked


def _torch_loads(node: ast.AST):
    """The ``torch.load(...)`` calls under ``node``, skipping the mutants' copies of functions
    in mutmut's tree (``x_f__mutmut_3``; mutmut runs this suite on a file holding them all)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef) and re.search(r"__mutmut_\d+$", child.name):
            continue
        if (
            isinstance(child, ast.Call)
            and isinstance(child.func, ast.Attribute)
            and child.func.attr == "load"
            and isinstance(child.func.value, ast.Name)
            and child.func.value.id == "torch"
        ):
            yield child
        yield from _torch_loads(child)


def test_every_torch_load_refuses_code():
    calls = 0
    for folder in ("attnviz", "tools", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for call in _torch_loads(ast.parse(path.read_text(), str(path))):
                kw = {k.arg: k.value for k in call.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value
                where = f"{path.relative_to(ROOT)}:{call.lineno}"
                assert ok, f"{where}: torch.load without weights_only=True"
                calls += 1
    assert calls >= 3, calls
