"""tools/mutation_sample.py: areas cover the package, the sample is seeded and nested, the score."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location(
        "mutation_sample", ROOT / "tools/mutation_sample.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_source_file_is_in_exactly_the_first_matching_area(tool):
    areas = {
        p.relative_to(ROOT).as_posix(): tool.area_of(p.relative_to(ROOT).as_posix())
        for p in (ROOT / "attnviz").rglob("*.py")
    }
    assert areas["attnviz/capture/adapters/timm_vit.py"] == "capture adapters"
    assert areas["attnviz/capture/core.py"] == "capture"
    assert areas["attnviz/analysis/runner.py"] == "runner and results"
    assert areas["attnviz/analysis/stats.py"] == "analysis"
    assert areas["attnviz/viewer.py"] == "report and viewer"
    assert areas["attnviz/cli.py"] == "commands"
    assert {a for a, _ in tool.AREAS} == set(areas.values())
    with pytest.raises(SystemExit, match="no area"):
        tool.area_of("attnviz/new_module.py")


def test_the_sample_is_seeded_and_a_larger_one_extends_a_smaller_one(tool):
    codes = {"a": {f"a.x_f__mutmut_{i}": None for i in range(50)}, "b": {"b.x_g__mutmut_1": 0}}
    small = tool.sample(codes, 5, seed=0)
    large = tool.sample(codes, 20, seed=0)
    assert small == tool.sample(dict(reversed(list(codes.items()))), 5, seed=0)
    assert large["a"][:5] == small["a"] and len(set(large["a"])) == 20
    assert large["b"] == ["b.x_g__mutmut_1"]
    assert tool.sample(codes, 5, seed=1)["a"] != small["a"]


def test_wilson_interval_against_its_formula(tool):
    lo, hi = tool.wilson(34, 40)
    p, n, z = 34 / 40, 40, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (lo, hi) == pytest.approx((centre - half, centre + half))
    assert lo < p < hi and tool.wilson(0, 10)[0] == pytest.approx(0, abs=1e-12)
    assert math.isnan(tool.wilson(0, 0)[0])


def test_report_counts_killed_equivalent_and_survivors_per_area(tool, tmp_path, monkeypatch):
    # two areas' files; verdicts: killed (1), timeout (36), survived (0), no tests (33), unrun
    meta = tmp_path / "mutants/attnviz/capture/core.py.meta"
    meta.parent.mkdir(parents=True)
    codes = {
        "c.x_f__mutmut_1": 1,
        "c.x_f__mutmut_2": 36,
        "c.x_f__mutmut_3": 0,
        "c.x_f__mutmut_4": 33,
        "c.x_f__mutmut_5": None,
    }
    meta.write_text(json.dumps({"exit_code_by_key": codes}))
    plot = tmp_path / "mutants/attnviz/plot/overlay.py.meta"
    plot.parent.mkdir(parents=True)
    plot.write_text(json.dumps({"exit_code_by_key": {"p.x_g__mutmut_1": 0}}))
    (tmp_path / "equivalent.txt").write_text("# comment\nc.x_f__mutmut_3 same result\n")
    monkeypatch.setattr(tool, "MUTANTS", tmp_path / "mutants")
    monkeypatch.setattr(tool, "EQUIVALENT", tmp_path / "equivalent.txt")
    assert tool.equivalent() == {"c.x_f__mutmut_3": "same result"}
    text = tool.report(per_area=10, seed=0)
    capture = next(r for r in text.splitlines() if r.startswith("| capture |"))
    # 5 mutants, 5 sampled, 4 checked, 2 killed, 1 equivalent, 1 not killed: 2 / 3
    assert capture.split(" | ")[1:8] == ["5", "5", "4", "2", "1", "1", "66.7 %"]
    assert "| plot | 1 | 1 | 1 | 0 | 0 | 1 | 0.0 % |" in text
    assert "`c.x_f__mutmut_4` (33)" in text and "`p.x_g__mutmut_1` (0)" in text
    assert "c.x_f__mutmut_3`" not in text
    # areas the sample does not draw from (no mutants here) have no row, not a row of NaNs
    assert "nan" not in text and "| blocks |" not in text and "| data |" not in text
    # the package estimate weights areas by their mutants: (2/3 * 5 + 0 * 1) / 6
    assert f"**{100 * (2 / 3 * 5) / 6:.1f} %**" in text
