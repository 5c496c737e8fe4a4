"""The notebooks are committed with the outputs of the current code: each notebook test
executes its notebook and calls :func:`assert_outputs_current`, which compares the committed
outputs with the fresh ones cell by cell (same output kinds, same text, same numbers up to
one unit of their last printed digit, the same number of figures). Run times, temporary
paths, object addresses and widget ids are masked, as they differ between any two runs.
This file also checks the comparison itself, and that the notebooks use only the public API
(never ``attnviz.commands``, the CLI's internals, nor a private module)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

# what differs between two runs of the same code on the same data
VOLATILE = [
    # where the checkout is (first: it may itself be under /tmp): the shipped weights' path
    (re.compile(r"/(?:[^\s'\"/]+/)+(?=assets/)"), "<checkout>/"),
    (re.compile(r"(/tmp|/var/folders)/[^\s'\"]+"), "<tmp>"),
    (re.compile(r"\b0x[0-9a-f]{6,}\b"), "<address>"),
    (re.compile(r"\b[\d.]+ ?s\b(?= ?[(,;)\]]|$| wall| CPU)", re.M), "<seconds>"),
    (re.compile(r"[\d.]+ images/s"), "<rate>"),
    (re.compile(r"in [\d.]+ s"), "in <seconds>"),
    (re.compile(r"'model_id': '[0-9a-f]+'|\"model_id\": \"[0-9a-f]+\""), "<model_id>"),
]
# a number, not the digits of a name such as SK_3_1 or layer2
NUMBER = re.compile(r"(?<![\w.])[-+−]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _masked(text: str) -> str:
    for pattern, repl in VOLATILE:
        text = pattern.sub(repl, text)
    return text


def _cell_outputs(cell) -> list[tuple[str, str, int]]:
    """(output kind, text shown, number of images) of each output of a code cell; streams
    merged per name as a notebook shows them."""
    out: list[tuple[str, str, int]] = []
    for o in cell.get("outputs", []):
        kind = o.get("output_type")
        if kind == "stream":
            key = f"stream:{o.get('name')}"
            if out and out[-1][0] == key:
                out[-1] = (key, out[-1][1] + o.get("text", ""), 0)
            else:
                out.append((key, o.get("text", ""), 0))
            continue
        data = o.get("data", {})
        images = sum(k.startswith("image/") for k in data)
        if "application/vnd.jupyter.widget-view+json" in data:
            text = "<widget>"
        else:
            text = data.get("text/plain", "") if kind != "error" else o.get("ename", "")
        out.append((kind, text, images))
    return out


def _numbers_close(a: str, b: str) -> bool:
    """Two printed numbers agree up to one unit of the last digit either prints; integers
    (counts) exactly."""

    def parse(s: str) -> tuple[float, float]:
        s = s.replace("−", "-")
        mantissa = re.split(r"[eE]", s)[0]
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        if "." not in mantissa and not re.search(r"[eE]", s):
            return float(s), 0.0
        exp = int(re.split(r"[eE]", s)[1]) if re.search(r"[eE]", s) else 0
        return float(s), 10.0 ** (exp - decimals)

    (x, ux), (y, uy) = parse(a), parse(b)
    return abs(x - y) <= max(ux, uy) * 1.01 + 1e-12


def text_differences(committed: str, fresh: str) -> list[str]:
    """Where two printed texts differ beyond the last printed digit of their numbers (the
    volatile parts masked): an empty list when they agree."""
    a, b = _masked(committed), _masked(fresh)
    words_a, words_b = NUMBER.split(a), NUMBER.split(b)
    nums_a, nums_b = NUMBER.findall(a), NUMBER.findall(b)
    if [" ".join(w.split()) for w in words_a] != [" ".join(w.split()) for w in words_b]:
        lines_a, lines_b = a.splitlines(), b.splitlines()
        diff = [f"- {x}\n+ {y}" for x, y in zip(lines_a, lines_b) if x != y]
        return diff[:3] or [f"{len(lines_a)} lines against {len(lines_b)}"]
    return [f"{x} != {y}" for x, y in zip(nums_a, nums_b) if not _numbers_close(x, y)]


def output_differences(committed_book, fresh_book) -> list[str]:
    """Every difference between the outputs of two runs of one notebook."""
    problems = []
    code_a = [c for c in committed_book.cells if c.cell_type == "code"]
    code_b = [c for c in fresh_book.cells if c.cell_type == "code"]
    if [c.source for c in code_a] != [c.source for c in code_b]:
        return ["the code cells differ"]
    for i, (ca, cb) in enumerate(zip(code_a, code_b)):
        oa, ob = _cell_outputs(ca), _cell_outputs(cb)
        if [(k, n) for k, _, n in oa] != [(k, n) for k, _, n in ob]:
            problems.append(f"code cell {i}: outputs {[(k, n) for k, _, n in oa]} committed, "
                            f"{[(k, n) for k, _, n in ob]} now")  # fmt: skip
            continue
        for (_, ta, _), (_, tb, _) in zip(oa, ob):
            problems += [f"code cell {i}: {d}" for d in text_differences(ta, tb)]
    return problems


def assert_outputs_current(path: Path, fresh_book) -> None:
    """The notebook at ``path`` is committed with the outputs ``fresh_book`` (the same
    notebook, just executed) has. Re-run it and commit it when this fails."""
    committed = nbformat.read(path, as_version=4)
    problems = output_differences(committed, fresh_book)
    assert not problems, (
        f"{path.name}: committed outputs differ from a fresh run (re-execute and commit it):\n"
        + "\n".join(problems[:10])
    )


# ---------------------------------------------------------------- the comparison itself
def _book(text: str, images: int = 1):
    book = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(result)")
    data = {"text/plain": "<Figure>", **({"image/png": "iVBOR"} if images else {})}
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text=text),
        nbformat.v4.new_output("display_data", data=data),
    ]
    book.cells = [cell]
    return book


def test_the_comparison_sees_a_changed_number_and_ignores_noise():
    text = "SK_3_1 D: +0.0871 -0.1430 in 4.2 s (24.4 images/s) saved to /tmp/abc/result\n"
    same = "SK_3_1 D: +0.0872 -0.1430 in 9.9 s (11.0 images/s) saved to /tmp/xyz/result\n"
    assert output_differences(_book(text), _book(same)) == []  # last digit, timing, path
    stale = "SK_3_1 D: +0.0891 -0.1430 in 4.2 s (24.4 images/s) saved to /tmp/abc/result\n"
    assert output_differences(_book(text), _book(stale)) == ["code cell 0: +0.0871 != +0.0891"]
    here = "weights: '/work/main/assets/models/sk_tiny.safetensors'"
    there = "weights: '/check/work/main/assets/models/sk_tiny.safetensors'"
    assert output_differences(_book(here), _book(there)) == []  # another checkout
    in_tmp = "weights: '/tmp/ci/work/main/assets/models/sk_tiny.safetensors'"
    assert output_differences(_book(here), _book(in_tmp)) == []  # a checkout under /tmp
    assert output_differences(_book(here), _book(here.replace("sk_tiny", "se_tiny")))
    worded = text.replace("SK_3_1", "SK_3_2")
    assert output_differences(_book(text), _book(worded))
    assert output_differences(_book(text), _book(text, images=0))  # a figure lost
    other_code = copy.deepcopy(_book(text))
    other_code.cells[0].source = "print(other)"
    assert output_differences(_book(text), other_code) == ["the code cells differ"]


def test_numbers_close_reads_the_printed_precision():
    assert _numbers_close("0.394", "0.395") and not _numbers_close("0.394", "0.396")
    assert _numbers_close("1.2e-05", "1.3e-05") and not _numbers_close("1.2e-05", "1.5e-05")
    assert _numbers_close("20", "20") and not _numbers_close("20", "21")
    assert _numbers_close("−0.5", "-0.5")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_uses_only_the_public_api(path):
    """Imports come from ``attnviz`` and its public subpackages only: no ``attnviz.commands``
    (the CLI's internals) and no private module (a name starting with ``_``)."""
    cells = json.loads(path.read_text())["cells"]
    source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    modules = re.findall(r"^\s*(?:from|import)\s+(attnviz[\w.]*)", source, re.M)
    assert modules, path.name
    for module in modules:
        parts = module.split(".")
        assert "commands" not in parts and not any(p.startswith("_") for p in parts), module


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_with_outputs(path):
    """Every code cell ran (an execution count), and the notebook shows at least one figure
    and no error."""
    book = nbformat.read(path, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), path.name
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), path.name
