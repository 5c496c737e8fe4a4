"""The ablation section of ``attnviz report`` (issue 22): one row per (site group, policy), one
column per measure, "mean [95% CI]" from the result's table, a star where Holm p < 0.05, every
cell escaped."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from test_plot_ablation import SE_GROUPS, SE_POLICIES, FakeAblation, fake_result

from attnviz.report import ablation_table_html, summary_table_html


def _cells(html: str) -> list[list[str]]:
    body = html.split("<tbody>")[1]
    return [re.findall(r"<td>(.*?)</td>", row) for row in body.split("</tr>") if "<td>" in row]


def test_ablation_table_rows_are_the_frame():
    r = fake_result(SE_POLICIES, SE_GROUPS)
    html = summary_table_html(r)
    head = re.findall(r"<th>(.*?)</th>", html)
    assert head == [
        "group",
        "policy",
        "images",
        "accuracy",
        "p_true",
        "logit_true",
        "kl",
        "agreement",
    ]
    rows = _cells(html)
    assert len(rows) == len(SE_GROUPS) * len(SE_POLICIES)
    frame = r.frame.set_index(["group", "policy", "measure"])
    for row in rows:
        group, policy, images = row[:3]
        assert int(images) == 40
        for measure, cell in zip(head[3:], row[3:]):
            want = frame.loc[(group, policy, measure)]
            m = re.fullmatch(r"([+-]?\d\.\d{3}) \[([+-]?\d\.\d{3}), ([+-]?\d\.\d{3})\](\*?)", cell)
            assert m, cell
            mean, lo, hi = (float(v) for v in m.groups()[:3])
            assert mean == pytest.approx(want["mean"], abs=5e-4)
            assert lo == pytest.approx(want["ci_low"], abs=5e-4)
            assert hi == pytest.approx(want["ci_high"], abs=5e-4)
            assert (m.group(4) == "*") == (want["p_holm"] < 0.05)
            assert cell.startswith("+") == (measure not in ("kl", "agreement") and mean > 0)
    assert "Holm-adjusted" in html and "bootstrap 95% CI" in html


def test_ablation_table_escapes_and_leaves_missing_cells_empty():
    frame = pd.DataFrame(
        [
            dict(
                group="<script>x</script>",
                scope="site",
                policy="a&b",
                measure="kl",
                n=3,
                mean=-1e-9,
                se=0.0,
                ci_low=-1e-9,
                ci_high=0.5,
                p=1.0,
                p_holm=1.0,
            ),
            dict(
                group="g2",
                scope="site",
                policy="a&b",
                measure="agreement",
                n=3,
                mean=1.0,
                se=0.0,
                ci_low=1.0,
                ci_high=1.0,
                p=1.0,
                p_holm=1.0,
            ),
        ]
    )
    html = ablation_table_html(FakeAblation(frame, {"model": "m"}))
    assert "<script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "a&amp;b" in html and "-0.000" not in html
    rows = _cells(html)
    assert rows[0][3:] == ["0.000 [0.000, 0.500]", ""]  # kl, agreement: unsigned
    assert rows[1][3:] == ["", "1.000 [1.000, 1.000]"]


def test_report_page_has_the_ablation_section(tmp_path):
    from test_plot_ablation import hand_ablation

    from attnviz.report import load_result, write_report

    result, changes = hand_ablation()
    folder = tmp_path / "ablation"
    result.save(folder / "result")
    (folder / "summary.txt").write_text(result.summary() + "\n")
    assert type(load_result(folder / "result")).__name__ == "AblationResult"
    page = write_report([tmp_path], tmp_path / "report.html").read_text()
    assert page.count('<section class="analysis"') == 1
    assert "ablation: ablation (se_tiny)" in page
    want = changes["SE_2_2|mean|logit_true"].mean()
    row = re.search(r"<tr><td>SE_2_2</td><td>mean</td><td>6</td>(.*?)</tr>", page).group(1)
    cells = re.findall(r"<td>(.*?)</td>", row)
    assert float(cells[1].split()[0]) == pytest.approx(want, abs=5e-4)  # logit_true column


@pytest.mark.slow
def test_demo_part_writes_the_ablation_and_its_report_section(tmp_path, capsys):
    """``attnviz demo --only ablation``: se_tiny on 10 generated images; the stage-5 ``remove``
    change of P(true class) equals a forward with the SE gates set to 1 by plain hooks."""
    import numpy as np
    import torch
    from PIL import Image

    from attnviz.analysis.ablation import AblationResult
    from attnviz.cli import main
    from attnviz.data import ShapesDataset
    from attnviz.models import load_model

    root = tmp_path / "demo"
    assert main(["demo", "--out", str(root), "--only", "ablation"]) == 0
    out = capsys.readouterr().out
    assert "Ablation on se_tiny: 10 images" in out
    result = AblationResult.load(root / "ablation" / "result")
    page = (root / "report.html").read_text(encoding="utf-8")
    assert page.count('<section class="analysis"') == 1 and "<td>stage:5</td>" in page
    assert page.count("<svg") == len(list((root / "ablation" / "figures").glob("*.svg"))) >= 1
    # by hand: the 10 PNGs, normalised with NumPy, gates of layer4 (stage 5) forced to 1
    model, config = load_model("se_tiny")
    model.eval()
    paths = sorted((root / "data").rglob("*.png"))
    assert len(paths) == 10
    mean, std = np.asarray(config.mean, np.float32), np.asarray(config.std, np.float32)
    x = np.stack(
        [(np.asarray(Image.open(p).convert("RGB"), np.float32) / 255 - mean) / std for p in paths]
    )
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    classes = ShapesDataset(1, size=64).classes  # the model's class order
    labels = torch.tensor([classes.index(p.parent.name) for p in paths])
    rows = torch.arange(10)
    with torch.no_grad():
        p0 = model(x).softmax(-1)[rows, labels]
        hooks = [
            model.get_submodule(f"layer4.{b}.attn.gate").register_forward_hook(
                lambda m, i, o: torch.ones_like(o)
            )
            for b in (0, 1)
        ]
        try:
            p1 = model(x).softmax(-1)[rows, labels]
        finally:
            for h in hooks:
                h.remove()
    frame = result.to_frame()
    got = frame[
        (frame.group == "stage:5") & (frame.policy == "remove") & (frame.measure == "p_true")
    ]["mean"].item()
    assert got == pytest.approx((p1 - p0).double().mean().item(), abs=1e-5)
