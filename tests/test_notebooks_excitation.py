"""The excitation and CBAM-vs-Grad-CAM notebooks run top to bottom, draw their figures, and
print the numbers an independent computation gives (same bundled models and data; gates and
Grad-CAM from plain hooks and autograd, statistics with NumPy, no attnviz analysis code)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from test_notebook_outputs import assert_outputs_current

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _run(name: str) -> nbformat.NotebookNode:
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        book, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    return book


def _images(book: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )


def _errors(book: nbformat.NotebookNode) -> list[str]:
    return [
        out.get("ename", "")
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]


@pytest.mark.slow
def test_se_excitation_notebook():
    book = _run("se_excitation.ipynb")
    assert not _errors(book)
    assert_outputs_current(NOTEBOOKS / "se_excitation.ipynb", book)  # committed = current
    assert _images(book) == 3  # Fig. 6, Fig. 7, specificity vs depth
    text = "".join(out.get("text", "") for cell in book.cells for out in cell.get("outputs", []))
    assert "50 images;" in text and "squeeze_specificity" in text and "null_p95" in text
    # the printed table (rounded to 3 decimals) against the hand computation
    header = next(line for line in text.splitlines() if "squeeze_specificity" in line).split()
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == len(header) + 1 and parts[1].startswith("SE_"):
            rows[parts[1]] = dict(zip(header[1:], map(float, parts[2:])))
    hand = _hand_excitation(list(rows))
    assert list(rows) == list(hand) and len(rows) >= 4
    for alias, values in hand.items():
        for key in ("specificity", "squeeze_specificity", "gate_gain", "null_mean", "null_p95"):
            assert rows[alias][key] == pytest.approx(values[key], abs=6e-4), (alias, key)
        assert rows[alias]["p_value"] == pytest.approx(values["p_value"], abs=6e-4), alias


def _specificity(v: np.ndarray, labels: np.ndarray, classes: list[int]) -> float:
    """mean_c std_k(mean of class k, channel c) / mean_c std(channel c), ddof 0, by loops
    over channels and classes."""
    n, c = v.shape
    spread, total = 0.0, 0.0
    for ch in range(c):
        means = [float(np.mean([v[i, ch] for i in range(n) if labels[i] == k])) for k in classes]
        spread += float(np.std(means))
        total += float(np.std(v[:, ch]))
    return spread / total


def _keep(store: dict, alias: str, squeeze: bool, module, inputs, output) -> None:
    """Forward hook: the gate output (B, C), or with ``squeeze`` the GAP of the input."""
    t = inputs[0].detach().double().mean((2, 3)) if squeeze else output.detach().double()
    store[alias] = t.flatten(1).numpy()


def _hand_excitation(aliases: list[str], permutations: int = 300) -> dict[str, dict]:
    """The notebook's run (bundled se_tiny, ShapesDataset(5, size=64, seed=30000)) by hand:
    gates and gate inputs from forward hooks on each ``SE_<X+1>_<Y+1>`` = ``layerX.Y.attn``,
    the squeeze GAP(x) of the input, the null from ``numpy.random.default_rng(0)`` permutations
    of the labels (draw r relabels image i with labels[perm_r[i]])."""
    import torch

    from attnviz.data import ShapesDataset
    from attnviz.models import load_model

    model, config = load_model("se_tiny")
    model.eval()
    data = ShapesDataset(5, size=64, seed=30_000)
    mean, std = np.asarray(config.mean, np.float32), np.asarray(config.std, np.float32)
    xs, labels = [], []
    for i in range(len(data)):
        img, label = data[i]
        xs.append(((np.asarray(img, np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))
        labels.append(label)
    x = torch.from_numpy(np.stack(xs))
    labels = np.asarray(labels)
    gates, squeezes, hooks = {}, {}, []
    for alias in aliases:
        stage, block = (int(t) for t in alias.split("_")[1:])
        se = model.get_submodule(f"layer{stage - 1}.{block - 1}.attn")
        hooks.append(se.gate.register_forward_hook(partial(_keep, gates, alias, False)))
        hooks.append(se.register_forward_hook(partial(_keep, squeezes, alias, True)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    classes = sorted(set(labels.tolist()))
    out = {}
    for alias in aliases:
        spec = _specificity(gates[alias], labels, classes)
        squeeze = _specificity(squeezes[alias], labels, classes)
        rng = np.random.default_rng(0)
        null = []
        for _ in range(permutations):
            shuffled = labels[rng.permutation(len(labels))]
            null.append(_specificity_fast(gates[alias], shuffled, classes))
        null = np.asarray(null)
        out[alias] = {
            "specificity": spec,
            "squeeze_specificity": squeeze,
            "gate_gain": spec - squeeze,
            "null_mean": float(null.mean()),
            "null_p95": float(np.percentile(null, 95)),
            "p_value": (1 + int((null >= spec - 1e-12).sum())) / (1 + permutations),
        }
    return out


def _specificity_fast(v: np.ndarray, labels: np.ndarray, classes: list[int]) -> float:
    """The same as :func:`_specificity` with NumPy reductions per class (for the 300 draws)."""
    means = np.stack([v[labels == k].mean(axis=0) for k in classes])
    return float(means.std(axis=0).mean() / v.std(axis=0).mean())


@pytest.mark.slow
def test_cbam_vs_gradcam_notebook():
    book = _run("cbam_vs_gradcam.ipynb")
    assert not _errors(book)
    assert_outputs_current(NOTEBOOKS / "cbam_vs_gradcam.ipynb", book)  # committed = current
    assert _images(book) == 4  # Grad-CAM across models, CBAM overlays, agreement bars, GC
    text = "".join(out.get("text", "") for cell in book.cells for out in cell.get("outputs", []))
    assert "10 images, " in text and "models, Grad-CAM for the label class" in text
    assert "compared at the coarser grid of the two" in text
    assert "Grad-CAM layer: layer4 | target: label" in text
    assert "10 images, Grad-CAM at layer4 for the label class; top-20% IoU" in text  # summary()
    # the printed P(label) table and paired differences against softmax by hand
    probs = _hand_probabilities()
    labels = np.arange(10)
    best = np.argmax(np.stack([p for p, _ in probs.values()], 1), axis=1)
    for m, (name, (p, pred)) in enumerate(probs.items()):
        row = next(line for line in text.splitlines() if line.strip().startswith(f"{name} layer4"))
        values = [float(v) for v in row.split()[3:8]]  # then the margin's mean and median
        want = [p.mean(), p.std(), np.median(p), (pred == labels).mean(), (best == m).mean()]
        np.testing.assert_allclose(values, want, atol=6e-4, err_msg=name)
    base = probs["plain_tiny"][0]
    for name in ("se_tiny", "cbam_tiny"):
        row = next(x for x in text.splitlines()
                   if x.split()[:3] == ["probability", name, "plain_tiny"])  # fmt: skip
        assert float(row.split()[4]) == pytest.approx((probs[name][0] - base).mean(), abs=6e-5)


def _hand_probabilities() -> dict:
    """Per bundled model: (softmax probability of the label class, argmax) on the notebook's
    10 images (ShapesDataset(1, size=64, seed=30000), label = class index), normalised with
    NumPy."""
    import torch

    from attnviz.data import ShapesDataset
    from attnviz.models import load_model

    data = ShapesDataset(1, size=64, seed=30_000)
    out = {}
    for name in ("plain_tiny", "se_tiny", "cbam_tiny"):
        model, cfg = load_model(name)
        mean, std = np.asarray(cfg.mean, np.float32), np.asarray(cfg.std, np.float32)
        x = np.stack([(np.asarray(data[i][0], np.float32) / 255 - mean) / std for i in range(10)])
        with torch.no_grad():
            logits = model.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).double()
        prob = torch.softmax(logits, 1).numpy()
        assert [data[i][1] for i in range(10)] == list(range(10))
        out[name] = (prob[np.arange(10), np.arange(10)], prob.argmax(1))
    return out
