"""Bug classes of issue 26 outside the numbers: records that follow their image, escaping,
and the output folder's lock.

(b) Every per-image record carries the index, id, label and values of ITS image, whatever the
order: a shuffled ``Subset``, a shuffled ``DataLoader``, a skipped item in the middle, a
``limit``, a folder, a run interrupted and resumed, and a 2-rank split done in-process. The
reference is the dataset item itself (its label, and its content through the model).

(c) Every string that reaches HTML (the report's title, folder names, model name, site
aliases, summary text, figure names, the cells and headers of every summary table, and the
query viewer's title and caption) is fed hostile markup and must come out escaped.

(d) The output folder's lock (``OUT/.attnviz.lock``) is held while a command runs and released
on every exit: a normal return, an exception, ``KeyboardInterrupt`` and ``SystemExit``, both
around ``output_folder`` and through the CLI.
"""

from __future__ import annotations

import contextlib
import fcntl
import html
import os
import re
import types

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Subset

from attnviz.analysis import runner
from attnviz.analysis.runner import Analysis, run
from attnviz.data.preprocess import preprocess_for


# ============================================================ (b) records follow their image
class Probe(Analysis):
    """Keeps, per image, what the runner says about it: index, id, label and the model output."""

    name = "probe"

    def sites(self, model):
        return []

    def step(self, state, batch, cache, output):
        for j, r in enumerate(batch.records):
            state.put("id", r.index, np.asarray(r.id))
            state.put("label", r.index, -1 if r.label is None else r.label)
            state.put("out", r.index, output[j].detach().numpy())

    def finalise(self, state, run_info):
        idx, ids = state.stacked("id")
        return types.SimpleNamespace(
            index=idx.tolist(),
            ids=[str(i) for i in ids],
            labels=state.stacked("label")[1].tolist(),
            out=state.stacked("out")[1],
            meta={},
        )


class Means(nn.Module):
    """Per-channel means of the input: the output identifies the image that went in."""

    def __init__(self, on_call=None):
        super().__init__()
        self.calls, self.on_call = 0, on_call
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        self.calls += 1
        if self.on_call is not None:
            self.on_call(self.calls)
        return x.mean(dim=(2, 3)) + self.w


N_ITEMS = 13


class Items(torch.utils.data.Dataset):
    """(image, label) items with an image of its own each and label 100 + index; item 5 cannot
    be read (skipped by the runner, so positions after it are not batch positions)."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.images = [
            Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8))
            for _ in range(N_ITEMS)
        ]

    def __len__(self):
        return N_ITEMS

    def __getitem__(self, i):
        if i == 5:
            raise OSError("unreadable item")
        return self.images[i], 100 + i


PREPROCESS = {"input_size": (3, 16, 24), "crop_pct": 1.0, "interpolation": "bilinear"}


def _expected(items: Items, j: int) -> tuple[int, np.ndarray]:
    """Label and model output of item ``j`` of the base dataset, computed here."""
    image, label = items.images[j], 100 + j
    return label, preprocess_for(PREPROCESS)(image).mean(dim=(1, 2)).numpy()


def _check(result, base_index, items) -> None:
    """Each record's id names position k; its label and output are those of base item
    ``base_index(k)``."""
    assert result.index, "no records"
    for k, ident, label, out in zip(result.index, result.ids, result.labels, result.out):
        assert ident == f"#{k}"
        want_label, want_out = _expected(items, base_index(k))
        assert label == want_label, (k, ident)
        np.testing.assert_allclose(out, want_out, rtol=1e-6)


def _probe(images, **kw):
    kw.setdefault("batch_size", 3)
    return run(Probe(), Means(), images, preprocess=PREPROCESS, progress=False, **kw)


def test_records_of_a_shuffled_subset_follow_their_item():
    items = Items()
    perm = np.random.default_rng(1).permutation(N_ITEMS).tolist()
    result = _probe(Subset(items, perm))
    assert sorted(result.index) == [k for k in range(N_ITEMS) if perm[k] != 5]
    _check(result, lambda k: perm[k], items)


def test_records_of_a_subset_with_a_limit_and_given_labels():
    items = Items()
    perm = [12, 3, 5, 0, 9, 7, 1, 11]
    labels = [7 * k + 1 for k in range(len(perm))]  # given labels follow positions
    result = _probe(Subset(items, perm), limit=6, labels=labels, batch_size=4)
    assert result.index == [0, 1, 3, 4, 5]  # position 2 (item 5) skipped, 6 and 7 past limit
    assert result.labels == [labels[k] for k in result.index]
    for k, out in zip(result.index, result.out):
        np.testing.assert_allclose(out, _expected(items, perm[k])[1], rtol=1e-6)


def test_records_of_a_shuffled_dataloader_follow_the_samplers_order():
    items = Items()
    loader = DataLoader(items, shuffle=True, generator=torch.Generator().manual_seed(2))
    result = run(Probe(), Means(), loader, preprocess=PREPROCESS, progress=False, batch_size=4)
    order = [int(i[1:]) for i in result.ids]  # ids name the base items: "#<index>"
    assert sorted(order + [5]) == list(range(N_ITEMS)) and order != sorted(order)
    for j, label, out in zip(order, result.labels, result.out):
        want_label, want_out = _expected(items, j)
        assert label == want_label
        np.testing.assert_allclose(out, want_out, rtol=1e-6)


def test_records_of_an_image_folder_follow_their_file(shapes_folder):
    from attnviz.data.images import list_images

    paths, labels, classes = list_images(shapes_folder)
    result = run(
        Probe(),
        Means(),
        shapes_folder,
        preprocess=PREPROCESS,
        progress=False,
        batch_size=3,
        limit=11,
    )
    assert result.index == list(range(11))
    for k, ident, label, out in zip(result.index, result.ids, result.labels, result.out):
        path = shapes_folder / ident
        assert path == paths[k] and classes[label] == path.parent.name
        with Image.open(path) as img:
            want = preprocess_for(PREPROCESS)(img.convert("RGB")).mean(dim=(1, 2))
        np.testing.assert_allclose(out, want.numpy(), rtol=1e-6)


class _Stop(Exception):
    pass


def test_records_of_a_split_over_2_ranks_follow_their_item(monkeypatch):
    """Rank r takes positions r, r + 2, ...; the merged records are those of one process."""
    items = Items()
    perm = np.random.default_rng(3).permutation(N_ITEMS).tolist()
    data = Subset(items, perm)
    single = _probe(data)
    parts: dict[int, object] = {}

    def rank_1_gather(obj):
        parts[1] = obj
        raise _Stop

    monkeypatch.setattr(runner, "world_size", lambda: 2)
    monkeypatch.setattr(runner, "is_distributed", lambda: True)
    monkeypatch.setattr(runner, "rank", lambda: 1)
    monkeypatch.setattr(runner, "all_gather_objects", rank_1_gather)
    with pytest.raises(_Stop):
        _probe(data, batch_size=2)
    shard_1 = sorted(int(i) for i in parts[1][0]["rowidx::id"])
    assert shard_1 == [k for k in range(1, N_ITEMS, 2) if perm[k] != 5]
    monkeypatch.setattr(runner, "rank", lambda: 0)
    monkeypatch.setattr(runner, "all_gather_objects", lambda obj: [obj, parts[1]])
    merged = _probe(data, batch_size=2)
    _check(merged, lambda k: perm[k], items)
    assert merged.index == single.index and merged.labels == single.labels
    assert merged.meta["run"]["world_size"] == 2 and single.meta["run"]["world_size"] == 1
    np.testing.assert_array_equal(merged.out, single.out)


def test_records_of_an_interrupted_and_resumed_run_follow_their_item(tmp_path):
    items = Items()
    perm = np.random.default_rng(4).permutation(N_ITEMS).tolist()
    data = Subset(items, perm)

    def interrupt(calls):
        if calls == 3:
            raise KeyboardInterrupt

    from attnviz.errors import Interrupted

    with pytest.raises(Interrupted):
        run(
            Probe(),
            Means(interrupt),
            data,
            preprocess=PREPROCESS,
            progress=False,
            batch_size=3,
            checkpoint=tmp_path,
            checkpoint_every=1,
        )
    resumed = run(
        Probe(),
        Means(),
        data,
        preprocess=PREPROCESS,
        progress=False,
        batch_size=3,
        checkpoint=tmp_path,
        checkpoint_every=1,
        resume=True,
    )
    assert resumed.index == [k for k in range(N_ITEMS) if perm[k] != 5]
    _check(resumed, lambda k: perm[k], items)


def test_attention_vs_gradcam_records_follow_their_image_in_a_shuffled_subset():
    """A real analysis: ids, labels, predictions and the kept maps of each image."""
    from captum.attr import LayerAttribution, LayerGradCam

    from attnviz import load_model
    from attnviz.analysis.attribution import attention_vs_attribution
    from attnviz.data import ShapesDataset

    model, cfg = load_model("cbam_tiny")
    model.eval()
    shapes = ShapesDataset(1, size=64, seed=6)
    perm = [7, 2, 9, 0, 4, 5]
    result = attention_vs_attribution(
        model, Subset(shapes, perm), preprocess=cfg, batch_size=4, keep_maps=6, progress=False
    )
    t = preprocess_for(cfg)
    x = torch.stack([t(shapes[j][0]) for j in perm])
    labels = [shapes[j][1] for j in perm]
    assert result.ids == [f"#{k}" for k in range(len(perm))]
    assert result.labels.tolist() == labels and len(set(labels)) == len(labels)
    with torch.no_grad():
        assert result.predictions.tolist() == model(x).argmax(1).tolist()
    layer = dict(model.named_modules())[result.layer]
    cam = LayerGradCam(model, layer).attribute(
        x, target=torch.tensor(labels), relu_attributions=True
    )
    up = LayerAttribution.interpolate(cam, (64, 64), "bilinear")[:, 0].detach().numpy()
    np.testing.assert_allclose(result.gradcam, up, rtol=1e-4, atol=1e-6)


# ============================================================ (c) escaping
def markers(tag: str, slash: bool = True) -> list[str]:
    """Hostile strings for one field (file names cannot hold a slash)."""
    out = [f"\"><img src=x onerror=alert('{tag}')>", f"&amp;{tag}"]
    if slash:
        out.insert(0, f"<script>alert('{tag}')</script>")
    return out


def assert_escaped(page: str, hostile: list[str]) -> None:
    for h in hostile:
        assert h not in page, f"raw {h!r} in the page"
        assert html.escape(h) in page, f"{h!r} does not reach the page escaped"


def assert_no_markup_from_input(page: str, n_scripts: int) -> None:
    assert "<img" not in page
    assert len(re.findall(r"<script", page)) == n_scripts  # the page's own only


SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="2"/></svg>'


@pytest.fixture(scope="module")
def hostile_maps():
    """Query maps of one image (nl_tiny) with a hostile model name and site alias."""
    from attnviz.models import load_model
    from attnviz.viewer import viewer_maps

    model, cfg = load_model("nl_tiny")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), np.uint8))
    maps = viewer_maps(model, img, preprocess=cfg, max_cells=12)
    maps.meta["model"] = " ".join(markers("model"))
    maps.site["alias"] = " ".join(markers("alias"))
    return maps


def test_report_escapes_every_text_it_shows(tmp_path, hostile_maps):
    from attnviz.report import build_report

    root = tmp_path / "received"
    folder_tags = markers("folder", slash=False)
    for name in folder_tags:  # analysis folders named with markup: heading and contents list
        folder = root / name
        hostile_maps.save(folder / "result")
        hostile_maps.save(folder / "viewer")
        (folder / "summary.txt").write_text("\n".join(markers("summary")) + "\n")
        figures = folder / "figures"
        figures.mkdir()
        for fig_name in markers("figure", slash=False):
            (figures / f"{fig_name}.svg").write_text(SVG)
        for fig_name in markers("broken", slash=False):  # left out, named in a note
            (figures / f"{fig_name}.svg").write_text("<svg><unclosed></svg>")
    title = " ".join(markers("title"))
    page = build_report([root], title=title)
    assert_escaped(page, markers("title"))
    assert_escaped(page, folder_tags)
    assert_escaped(page, markers("model"))  # section heading and viewer caption
    assert_escaped(page, markers("alias"))  # viewer caption
    assert_escaped(page, markers("summary"))
    assert_escaped(page, markers("figure", slash=False))
    assert_escaped(page, markers("broken", slash=False))
    assert page.count("left out") == len(folder_tags) * len(markers("broken", slash=False))
    assert_no_markup_from_input(page, n_scripts=2 * len(folder_tags))  # data + code per viewer


def test_query_viewer_escapes_its_title_and_caption(tmp_path, hostile_maps):
    from attnviz.viewer import QueryViewer

    viewer = QueryViewer(hostile_maps, title=" ".join(markers("vtitle")))
    for text in (
        viewer.to_html(),
        viewer._repr_html_(),
        viewer.save(tmp_path / "v.html").read_text(),
    ):
        assert_escaped(text, markers("vtitle") + markers("model") + markers("alias"))
        assert_no_markup_from_input(text, n_scripts=2)
    other = QueryViewer(hostile_maps, model=" ".join(markers("given")))
    assert_escaped(other.to_html(), markers("given") + markers("alias"))


def _fake(kind: str, **methods):
    obj = types.SimpleNamespace(kind=kind, **{k: v for k, v in methods.items() if not callable(v)})
    for name, fn in methods.items():
        if callable(fn):
            setattr(obj, name, fn)
    return obj


def _summary_fakes():
    """A result of each kind with a summary table, every string cell and header hostile."""
    site, other = " ".join(markers("site")), " ".join(markers("site2"))
    sweep = pd.DataFrame(
        {" ".join(markers("scale")): [0.1, -0.2]}, index=pd.Index([site, other], name="site")
    )
    excitation = pd.DataFrame(
        {
            "site": [site],
            "kind": [" ".join(markers("kind"))],
            "channels": [8],
            "mean_excitation": [0.5],
            "specificity": [0.1],
        }
    )
    attribution = pd.DataFrame({"site": [site, other], "spearman_mean": [0.2, 0.1]})
    ablation = pd.DataFrame(
        [
            dict(
                group=site,
                policy=" ".join(markers("policy")),
                n=10,
                measure=m,
                mean=0.1,
                ci_low=0.0,
                ci_high=0.2,
                p_holm=0.5,
            )
            for m in ("p_true", " ".join(markers("measure")))
        ]
    )
    qi = pd.DataFrame(
        {
            "model": [" ".join(markers("qimodel"))],
            "site": [site],
            "kind": ["nl"],
            "instantiation": [" ".join(markers("inst"))],
            "n_images": [3],
        }
    )
    return {
        "scale_sweep": (_fake("scale_sweep", d_table=lambda: sweep), ["site", "site2", "scale"]),
        "excitation_profile": (
            _fake("excitation_profile", specificity=lambda: excitation),
            ["site", "kind"],
        ),
        "attention_vs_attribution": (
            _fake("attention_vs_attribution", site_summary=lambda: attribution),
            ["site", "site2"],
        ),
        "ablation": (_fake("ablation", to_frame=lambda: ablation), ["site", "policy", "measure"]),
        "gradcam_comparison": (
            _fake(
                "gradcam_comparison",
                models=[" ".join(markers("cnn")), "b"],
                probability=np.array([[0.2, 0.4], [0.6, 0.8]]),
            ),
            ["cnn"],
        ),
        "query_independence": (
            _fake("query_independence", to_frame=lambda: qi),
            ["qimodel", "site", "inst"],
        ),
    }


@pytest.mark.parametrize("kind", list(_summary_fakes()))
def test_every_summary_table_escapes_its_cells_and_headers(kind):
    from attnviz.report import summary_table_html

    result, tags = _summary_fakes()[kind]
    table = summary_table_html(result)
    assert table.startswith(("<table", "<p>"))
    for tag in tags:
        assert_escaped(table, markers(tag))
    assert_no_markup_from_input(table, n_scripts=0)


# ============================================================ (d) the output folder's lock
def lock_is_free(out) -> bool:
    """True when a new open file description can take the lock of ``out`` right now."""
    fd = os.open(out / ".attnviz.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


EXITS = {
    "return": None,
    "exception": RuntimeError("failed inside the command"),
    "keyboard_interrupt": KeyboardInterrupt(),
    "system_exit": SystemExit(2),
}


@pytest.mark.parametrize("how", EXITS)
def test_output_folder_releases_its_lock_on_every_exit(tmp_path, how):
    from attnviz.commands._common import output_folder

    out = tmp_path / "out"
    error = EXITS[how]
    with contextlib.suppress(type(error)) if error is not None else contextlib.nullcontext():
        with output_folder(out) as folder:
            assert folder.path == out and not lock_is_free(out)  # held inside
            if error is not None:
                raise error
    assert lock_is_free(out)
    with output_folder(out):  # and the next command gets in
        assert not lock_is_free(out)
    assert lock_is_free(out)


CLI_EXITS = {
    "exception": (RuntimeError("boom"), 1),
    "keyboard_interrupt": (KeyboardInterrupt(), 130),
}


@pytest.mark.parametrize("how", CLI_EXITS)
@pytest.mark.parametrize("where", ["analysis", "figures"])
def test_a_failing_command_releases_its_lock(tmp_path, monkeypatch, cli, shapes_folder, how, where):
    import attnviz.analysis.excitation as excitation
    import attnviz.commands.excitation as command

    error, code = CLI_EXITS[how]
    out = tmp_path / "out"
    held = []

    def fail(*args, **kwargs):
        held.append(not lock_is_free(out))
        raise error

    if where == "analysis":
        monkeypatch.setattr(excitation, "excitation_profile", fail)
    else:
        monkeypatch.setattr(command, "excitation_figures", fail)
    res = cli(
        "excitation",
        "--model",
        "se_tiny",
        "--images",
        shapes_folder,
        "--out",
        out,
        "--limit",
        "2",
        "--permutations",
        "10",
        "--no-progress",
    )
    assert res.code == code, res.err
    assert held == [True]  # the failure happened while the command held the lock
    assert lock_is_free(out)


def test_a_finished_command_releases_its_lock(tmp_path, monkeypatch, cli, shapes_folder):
    import attnviz.commands.excitation as command

    monkeypatch.setattr(command, "excitation_figures", lambda *a, **k: {})  # keep it quick
    out = tmp_path / "out"
    res = cli(
        "excitation",
        "--model",
        "se_tiny",
        "--images",
        shapes_folder,
        "--out",
        out,
        "--limit",
        "2",
        "--permutations",
        "10",
        "--no-progress",
    )
    assert res.code == 0, res.err
    assert (out / "result" / "manifest.json").is_file() and lock_is_free(out)


def test_a_resumed_run_keeps_the_items_skipped_before_the_interruption(tmp_path):
    """Item 5 is skipped in the second batch, the run stops in the third: the resumed result
    still reports it (the checkpoint carries the skipped list, not only the position)."""
    from attnviz.errors import Interrupted

    def interrupt(calls):
        if calls == 3:
            raise KeyboardInterrupt

    options = dict(preprocess=PREPROCESS, progress=False, batch_size=3, checkpoint=tmp_path)
    with pytest.raises(Interrupted):
        run(Probe(), Means(interrupt), Items(), checkpoint_every=1, **options)
    resumed = run(Probe(), Means(), Items(), checkpoint_every=1, resume=True, **options)
    assert resumed.index == [k for k in range(N_ITEMS) if k != 5]
    assert resumed.meta["run"]["n_skipped"] == 1
    assert resumed.meta["run"]["n_images"] == N_ITEMS - 1
