"""Round 4's survivors of the analysis layer and its commands, answered as classes (TESTING.md,
"Mutation testing"): each test pins a whole surface, so that other mutants of the same code die
too, not only the one that was read.

* every error message the analysis functions and result loaders raise on bad input, whole
  (``tests/golden/messages_round4.json``; regenerate with ``ATTNVIZ_UPDATE_GOLDEN=1`` after
  reviewing the diff);
* every ``effects()`` table, against a hand computation of the effect its docstring defines
  (Python's ``statistics`` and ``itertools``, not the library), with NaNs, one image, an empty
  measure and unequal counts;
* every analysis function's defaults as they reach the runner (observed by a call, so that a
  changed default dies in mutmut's tree too, where signatures cannot be read), every analysis
  class's ``params()`` with non-default values, scale patching's result labels;
* the runner's progress bar and the time accounting of a resumed run;
* which image and views the sweep demo's Fig. 3 shows, and the ablation demo in-process.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import json
import math
import statistics
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from golden_testing import UPDATE, assert_matches_golden
from PIL import Image
from torch import nn

from attnviz.analysis.ablation import AblationResult, ReferenceResult
from attnviz.analysis.attribution import AttentionVsAttributionResult, GradCamComparisonResult
from attnviz.analysis.excitation import ExcitationProfileResult, SiteExcitation
from attnviz.analysis.query_independence import QueryIndependenceResult
from attnviz.analysis.rollout import RolloutResult
from attnviz.analysis.runner import Analysis, RunInfo, read_checkpoint, run
from attnviz.data import ShapesDataset
from attnviz.data.shapes import ShapeScenes
from attnviz.errors import OutputError
from attnviz.models import load_model
from attnviz.results import Result

runner_module = importlib.import_module("attnviz.analysis.runner")
GOLDEN = Path(__file__).parent / "golden" / "messages_round4.json"
ANALYSIS_MODULES = ("ablation", "attribution", "excitation", "query_independence", "query_maps",
                    "replicates", "rollout", "scale_patching", "scale_sweep")  # fmt: skip


def _module(name: str):
    """``attnviz.analysis.<name>`` (the package's functions shadow some module names)."""
    return importlib.import_module(f"attnviz.analysis.{name}")


@functools.cache
def _model(name: str) -> nn.Module:
    return load_model(name)[0]


# ============================================================================ a tiny runner setup
class _Probe(Analysis):
    """Keeps each image's model output by position: the smallest analysis the runner runs."""

    name = "probe"

    def sites(self, model):
        return []

    def step(self, state, batch, cache, output):
        for j, r in enumerate(batch.records):
            state.put("out", r.index, output[j].detach().numpy())

    def finalise(self, state, run_info: RunInfo):
        positions, values = state.stacked("out")
        result = _ProbeResult(positions.tolist(), values)
        result.meta = {}
        return result


class _ProbeResult(Result):
    kind = "probe"

    def __init__(self, positions, values):
        self.positions, self.values = positions, values


class _Means(nn.Module):
    """Per-channel means of the input; ``stop_at``: raise KeyboardInterrupt at that call."""

    def __init__(self, stop_at: int | None = None):
        super().__init__()
        self.calls, self.stop_at = 0, stop_at
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return x.mean(dim=(2, 3)) + self.w


PREPROCESS = {"input_size": (3, 12, 20), "crop_pct": 1.0, "interpolation": "bilinear"}


def _images(n: int = 7) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (14, 22, 3), dtype=np.uint8)) for _ in range(n)]


def _probe(images=None, model=None, **kw):
    kw.setdefault("progress", False)
    return run(_Probe(), model or _Means(), _images() if images is None else images,
               preprocess=PREPROCESS, **kw)  # fmt: skip


# ============================================================================ 1. messages
def _save_rollout(folder: Path) -> Path:
    return _rollout_result().save(folder)


def _edit_manifest(folder: Path, **changes) -> Path:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            manifest.pop(k, None)
        else:
            manifest[k] = v
    path.write_text(json.dumps(manifest))
    return folder


def _replicates_folder(tmp: Path, **changes) -> Path:
    from attnviz.analysis.replicates import ReplicatesResult

    folder = ReplicatesResult(_rollout_result()).save(tmp / "replicates")
    return _edit_manifest(folder, **changes)


def _sweep_result():
    return _effect_sweep()[0]


def _stopped_run(tmp: Path) -> None:
    """A run interrupted in its second batch: its checkpoint (2 of 7 images) stays in ``tmp``."""
    from attnviz.errors import Interrupted

    with pytest.raises(Interrupted):
        _probe(model=_Means(stop_at=2), batch_size=2, checkpoint=tmp, checkpoint_every=1)


def _checkpoint_mismatch(tmp: Path) -> None:
    _stopped_run(tmp)
    _probe(_images(6), batch_size=2, checkpoint=tmp, resume=True)


def _checkpoint_params_changed(tmp: Path) -> None:
    _stopped_run(tmp)

    class Other(_Probe):
        def params(self):
            return {"k": 2}

    run(Other(), _Means(), _images(), preprocess=PREPROCESS, progress=False, batch_size=2,
        checkpoint=tmp, resume=True)  # fmt: skip


def _checkpoint_unfinished(tmp: Path) -> None:
    _stopped_run(tmp)
    _probe(batch_size=2, checkpoint=tmp)


def _checkpoint_unreadable(tmp: Path) -> None:
    from attnviz.analysis.runner import _checkpoint_file

    path = _checkpoint_file(tmp, "probe")
    path.write_bytes(b"not a checkpoint")
    _probe(checkpoint=tmp, resume=True)


def _every_image_skipped(tmp: Path) -> None:
    for i in range(2):
        (tmp / f"bad{i}.png").write_bytes(b"")
    _probe([tmp / "bad0.png", tmp / "bad1.png"])


def _unknown_analysis(tmp: Path) -> None:
    """The message lists the known kinds: those of the package (test modules add their own)."""
    import ast

    from attnviz.analysis.replicates import ReplicatesResult
    from attnviz.results import ResultFormatError

    try:
        ReplicatesResult.load(_replicates_folder(tmp, analysis="nope"))
    except ResultFormatError as exc:
        head, _, known = str(exc).partition("; known: ")
        ours = {c.kind for c in _result_classes()}
        kinds = [k for k in ast.literal_eval(known) if k in ours]
        raise ResultFormatError(f"{head}; known: {kinds}") from None


def _no_effects(tmp: Path) -> None:
    ReferenceResult({}, {}, np.zeros(0, np.int64), 0).effects()


def _plain_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())


def _linear_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 2))


def _scenes(n: int = 2, **kw) -> ShapeScenes:
    return ShapeScenes(n, **kw)


def _messages() -> dict[str, Any]:
    """name -> a call that raises on bad input (gets a fresh temporary folder)."""
    ab = _module("ablation")
    at = _module("attribution")
    ex = _module("excitation")
    lo = _module("localisation")
    qi = _module("query_independence")
    qm = _module("query_maps")
    rp = _module("replicates")
    ro = _module("rollout")
    sp = _module("scale_patching")
    ss = _module("scale_sweep")
    st = _module("stats")
    from attnviz.analysis._sites import TokenLayout, choose_sites

    img = [Image.new("RGB", (20, 12))]
    se, cbam, nl, sk = "se_tiny", "cbam_tiny", "nl_tiny", "sk_tiny"
    t = torch.zeros
    return {
        # -- site choice (every analysis) ------------------------------------------------------
        "sites: none of the kind": lambda p: ex.excitation_profile(_plain_model(), img),
        "sites: empty selection": lambda p: choose_sites(_model(se), ["se"], [], what="SE site"),
        "sites: unknown": lambda p: ex.excitation_profile(_model(se), img, sites=["SE_9_9"]),
        "token layout: wrong rows": lambda p: TokenLayout.of(
            t(1, 2, 7, 7), {"query_grid": (2, 4), "prefix_tokens": 1}
        ),
        # -- runner --------------------------------------------------------------------------
        "runner: batch_size 0": lambda p: _probe(batch_size=0),
        "runner: limit 0": lambda p: _probe(limit=0),
        "runner: checkpoint_every True": lambda p: _probe(checkpoint_every=True),
        "runner: workers -1": lambda p: _probe(workers=-1),
        "runner: prepared inputs refused": lambda p: ss.scale_sweep(_model(sk), t(2, 3, 64, 64)),
        "runner: tensor item of two images": lambda p: _probe(t(2, 1, 3, 8, 8)),
        "runner: prepare a batch of two": lambda p: _Probe().prepare(t(2, 3, 4, 4), None),
        "runner: every image skipped": _every_image_skipped,
        "runner: checkpoint unreadable": _checkpoint_unreadable,
        "runner: checkpoint of an unfinished run": _checkpoint_unfinished,
        "runner: resume with fewer images": _checkpoint_mismatch,
        "runner: resume with other params": _checkpoint_params_changed,
        # -- results and loaders -------------------------------------------------------------
        "result: no effect table": _no_effects,
        "load: no manifest": lambda p: RolloutResult.load(p),
        "load: another kind": lambda p: ExcitationProfileResult.load(_save_rollout(p / "r")),
        "load: no kind": lambda p: RolloutResult.load(
            _edit_manifest(_save_rollout(p / "r"), kind=None)
        ),  # fmt: skip
        "load: newer format": lambda p: RolloutResult.load(
            _edit_manifest(_save_rollout(p / "r"), format_version=99)
        ),
        "load: unreadable manifest": lambda p: (
            _save_rollout(p / "r"),
            (p / "r" / "manifest.json").write_text("{"),
            RolloutResult.load(p / "r"),
        ),
        "load: arrays missing": lambda p: (
            _save_rollout(p / "r"),
            (p / "r" / "attention_rollout.npz").unlink(),
            RolloutResult.load(p / "r"),
        ),
        "replicates: no kind": lambda p: rp.ReplicatesResult.load(_replicates_folder(p, kind=None)),
        "replicates: another kind": lambda p: rp.ReplicatesResult.load(_save_rollout(p / "r")),
        "replicates: newer format": lambda p: rp.ReplicatesResult.load(
            _replicates_folder(p, format_version=2)
        ),
        "replicates: unknown analysis": _unknown_analysis,
        "replicates: restore": lambda p: rp.ReplicatesResult._restore({}, {}),
        "replicates: analysis not callable": lambda p: rp.run_replicates(3, None, img),
        # -- attribution ---------------------------------------------------------------------
        "attribution: layer not in model": lambda p: at.attention_vs_attribution(
            _model(cbam), img, layer=nn.Conv2d(3, 3, 1)
        ),
        "attribution: layer name unknown": lambda p: at.attention_vs_attribution(
            _model(cbam), img, layer="layer9"
        ),
        "attribution: no conv layer": lambda p: at.default_gradcam_layer(_linear_model()),
        "attribution: compare_at": lambda p: at.AttentionVsAttribution(compare_at="grid"),
        "attribution: target": lambda p: at.AttentionVsAttribution(target="best"),
        "attribution: top_k 0": lambda p: at.AttentionVsAttribution(top_k=0.0),
        "attribution: spearman sizes": lambda p: at.spearman_rank_correlation(t(4), t(5)),
        "attribution: iou shapes": lambda p: at.top_k_iou(np.zeros((2, 3)), np.zeros((3, 2))),
        "attribution: pooled not 2-D": lambda p: at.pooled_agreement(t(2, 3, 4), t(4, 4)),
        "attribution: site unknown": lambda p: _attribution_result().site_index("SE_1"),
        "gradcam: no model": lambda p: at.GradCamComparison({}),
        "gradcam: masks not callable": lambda p: at.GradCamComparison({"a": _model(se)}, masks=3),
        "gradcam: target": lambda p: at.GradCamComparison({"a": _model(se)}, target="best"),
        "gradcam: masks word": lambda p: at.gradcam_comparison([_model(se)], img, masks="all"),
        "gradcam: not a module": lambda p: at.gradcam_comparison({"a": 3}, img),
        "gradcam: unknown measure": lambda p: _gradcam_result().measure("iou"),
        "gradcam: measure not kept": lambda p: _gradcam_result().measure("gradcam_share"),
        "gradcam: unknown model": lambda p: _gradcam_result().model_index("vit"),
        # -- excitation ----------------------------------------------------------------------
        "excitation: channels 0": lambda p: ex.excitation_profile(_model(se), img, channels=0),
        "excitation: channels True": lambda p: ex.ExcitationProfile(channels=True),
        "excitation: permutations -1": lambda p: ex.ExcitationProfile(permutations=-1),
        "excitation: evenly spaced 0": lambda p: ex.evenly_spaced_channels(8, 0),
        "excitation: unknown class name": lambda p: ex._resolve_classes(
            ["ring", "blob"], [0], ["disc", "ring"]
        ),  # fmt: skip
        "excitation: site unknown": lambda p: _excitation_result().site("SE_9"),
        "excitation: class name unknown": lambda p: _excitation_result().class_index("blob"),
        "excitation: class label unknown": lambda p: _excitation_result().class_index(7),
        # -- queries -------------------------------------------------------------------------
        "queries: unknown metric": lambda p: qi.QueryIndependence(metrics=["cos"]),
        "queries: n_queries 0": lambda p: qi.QueryIndependence(n_queries=0),
        "queries: n_queries 17": lambda p: qi.query_independence(_model(nl), img, n_queries=17),
        "queries: jsd_pairs 1": lambda p: qi.QueryIndependence(jsd_pairs=1),
        "queries: map site unknown": lambda p: qi.query_independence(
            _model(nl), img, map_images=1, map_site="NL_9"
        ),
        "queries: rows vs input": lambda p: qi.nonlocal_statistics(t(2, 3, 4), t(2, 3, 4), t(5, 5)),
        "queries: not residual": lambda p: qi.nonlocal_statistics(
            t(2, 3, 4), t(1, 3, 4), t(12, 12)
        ),  # fmt: skip
        "queries: statistics metric": lambda p: qi.nonlocal_statistics(
            t(2, 3, 4), t(2, 3, 4), t(12, 12), ["jsd"]
        ),
        "query maps: query space": lambda p: qm.QueryMaps([(1, 2)], query_space="grid"),
        "query maps: not a pair": lambda p: qm.QueryMaps([(1, 2, 3)]),
        "query maps: cell not whole": lambda p: qm.QueryMaps([(1.5, 2)], query_space="cell"),
        "query maps: no query": lambda p: qm.query_maps(_model(nl), img[0], queries=[]),
        "query maps: pixel outside": lambda p: qm.pixel_to_cell((12.0, 3.0), (3, 5), (12, 20)),
        "query maps: heatmap not 2-D": lambda p: qm.upsample(np.zeros((2, 3, 4)), (4, 4)),
        "query maps: image array": lambda p: qm._as_pil(np.zeros((4, 5, 2))),
        "query maps: image tensor": lambda p: qm.prepare_image(t(2, 3, 4, 5)),
        "query maps: key grid of 15": lambda p: qm._square(15),
        # -- rollout -------------------------------------------------------------------------
        "rollout: residual": lambda p: ro.rollout(_model(nl), img, residual=1.5),
        "rollout: map_images": lambda p: ro.Rollout(map_images=-1),
        "rollout: no layer": lambda p: ro.rollout_matrix([]),
        "rollout: matrix residual": lambda p: ro.rollout_matrix([t(1, 3, 3)], residual=-0.1),
        "rollout: not square": lambda p: ro.rollout_matrix([t(1, 3, 4)]),
        "rollout: token out of range": lambda p: _rollout_result().token_index(2),
        "rollout: token unknown": lambda p: _rollout_result().token_index("register"),
        "rollout: no token site": lambda p: ro.rollout(_model(nl), img),
        # -- sweep and scale patching --------------------------------------------------------
        "sweep: no scale": lambda p: ss.ScaleSweep(scales=()),
        "sweep: scale below 1": lambda p: ss.scale_sweep(_model(sk), img, scales=(0.5, 1.0)),
        "sweep: content without scenes": lambda p: ss.ScaleSweep(content=("copies",)),
        "sweep: unknown content": lambda p: ss.ScaleSweep(native=True, content=("blur",)),
        "sweep: content scale": lambda p: ss.ScaleSweep(
            native=True, content=("copies",), content_scale=3.0
        ),  # fmt: skip
        "sweep: box": lambda p: ss.scale_sweep(_model(sk), img, boxes={0: (5, 5, 2, 9)}),
        "sweep: scales of the scenes": lambda p: ss.scale_sweep(
            _model(sk), _scenes(), scales=(1.0, 3.0)
        ),  # fmt: skip
        "sweep: unknown table": lambda p: _sweep_result().to_frame("classes"),
        "sweep: no view": lambda p: _sweep_result().view_index(1.5, "resolution_control"),
        "sweep: unknown site": lambda p: _sweep_result().site("SK_9_9"),
        "sweep: scale not swept": lambda p: _sweep_result().scale_index(3.0),
        "sweep: class ci without per-image": lambda p: _sweep_without_images().class_delta_ci(),
        "sweep: image table without per-image": lambda p: _sweep_without_images().to_frame(
            "images"
        ),
        "scale patching: scales": lambda p: sp.scale_patching(_model(sk), _scenes()),
        "ablation: reference needed": lambda p: ab.Ablation(
            ab.ablation_groups(_model(se), None, scopes=("all",)), ["mean"]
        ),
        "ablation: no group": lambda p: ab.ablation(_model(se), img, scopes=["site"], sites=[]),
        "ablation: bank of one": lambda p: ReferenceResult({}, {}, [3], 1).partners([0]),
        # -- statistics and localisation -----------------------------------------------------
        "stats: not 2-D": lambda p: st.mean_pairwise_cosine(t(3)),
        "stats: no vector": lambda p: st.avg_cosine_distance(t(0, 3)),
        "stats: jsd rows": lambda p: st.avg_jsd(torch.ones(2, 3)),
        "stats: sampled jsd rows": lambda p: st.sampled_jsd(torch.ones(2, 3)),
        "stats: sampled jsd pairs": lambda p: st.sampled_jsd(torch.full((2, 2), 0.5), pairs=1),
        "stats: attention rows": lambda p: st.attention_statistics(t(0, 3)),
        "stats: top_k": lambda p: st.top_k_cells(10, 1.5),
        "stats: no cell": lambda p: st.top_k_cells(0, 0.2),
        "stats: null sizes": lambda p: st.permutation_null(np.dot, np.zeros(3), np.zeros(4)),
        "stats: null draws": lambda p: st.permutation_null(
            np.dot, np.zeros(9), np.zeros(9), draws=0
        ),  # fmt: skip
        "stats: alternative": lambda p: st.permutation_p(0.1, np.ones(3), "less"),
        "stats: bootstrap level": lambda p: st.bootstrap_ci(3, np.mean, level=1.0),
        "localisation: share grid": lambda p: lo.mask_share(np.zeros((2, 3, 4)), np.zeros((4, 3))),
        "localisation: pointing grid": lambda p: lo.pointing_hit(np.zeros((3, 4)), np.zeros(5)),
    }


def _message_of(call, tmp: Path) -> str:
    try:
        call(tmp)
    except Exception as exc:  # the message is what is pinned
        text = str(exc.args[0]) if exc.args else ""
        return f"{type(exc).__name__}: {text}".replace(str(tmp), "<tmp>")
    return "no exception"


CASES = list(_messages())  # the golden keeps exactly these cases


def test_every_error_message_of_the_analysis_layer_is_pinned_whole(tmp_path, golden_updates):
    """Each bad input raises its exception type with the whole reviewed message."""
    cases = _messages()
    got = {}
    for i, (name, call) in enumerate(cases.items()):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got[name] = _message_of(call, folder)
    if UPDATE:
        golden_updates.update(got)
        return
    assert_matches_golden(GOLDEN, got, "messages")
    assert not [k for k, v in got.items() if v == "no exception"]


def test_replicates_load_reads_every_member_back(tmp_path):
    """The loader the messages above refuse, on a good folder: each member from its own
    subfolder (``trained/``, ``seed1/``, ``untrained_0/``), the joined table unchanged."""
    from attnviz.analysis.replicates import ReplicatesResult

    base = _rollout_result()
    seed = _rollout_result(base.maps[::-1].copy(), base.prefix_mass * 0.5)
    untrained = _rollout_result(np.full_like(base.maps, 0.1), np.full_like(base.prefix_mass, 0.4))
    rep = ReplicatesResult(base, seeds={"seed1": seed}, baselines={"untrained:0": untrained},
                           meta={"model": "vit"})  # fmt: skip
    rep.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir() if p.is_dir()} == {"trained", "seed1", "untrained_0"}
    back = ReplicatesResult.load(tmp_path)
    assert (list(back.seeds), list(back.baselines), back.meta) == (["seed1"], ["untrained:0"],
                                                                   {"model": "vit"})  # fmt: skip
    for label, member in back.members().items():
        np.testing.assert_array_equal(member.maps, rep.members()[label].maps, err_msg=label)
    pd.testing.assert_frame_equal(back.to_frame(), rep.to_frame())


# ============================================================================ 2. effects()
NAN = math.nan


def _mean_se(values) -> tuple[float, float, int]:
    """Mean over the finite values and its standard error stdev (n - 1) / sqrt(n)."""
    v = [float(x) for x in np.asarray(values, dtype=float).ravel() if math.isfinite(x)]
    n = len(v)
    mean = statistics.fmean(v) if n else NAN
    return mean, statistics.stdev(v) / math.sqrt(n) if n > 1 else NAN, n


def _flip_p(d) -> float:
    """Exact two-sided sign-flip p of sum(d) over all 2^n flips (stats.sign_flip_p, n <= 12)."""
    d = [float(x) for x in d]
    observed = abs(sum(d))
    if observed == 0:
        return 1.0
    flips = list(itertools.product((1.0, -1.0), repeat=len(d)))
    hits = sum(
        abs(sum(s * x for s, x in zip(signs, d))) >= observed * (1 - 1e-12) for signs in flips
    )
    return hits / len(flips)


def _sign_test_p(d) -> float:
    higher, lower = sum(x > 0 for x in d), sum(x < 0 for x in d)
    n, k = higher + lower, min(higher, lower)
    return 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, j) for j in range(k + 1)) / 2**n)


def _iou_chance(top_k: float, cells: int) -> float:
    """E[X / (2n - X)], X ~ Hypergeometric(cells, n, n), n = max(1, ceil(top_k cells))."""
    n = max(1, math.ceil(top_k * cells - 1e-9))
    return sum(math.comb(n, x) * math.comb(cells - n, n - x) / math.comb(cells, n) * x / (2 * n - x)
               for x in range(1, n + 1))  # fmt: skip


def _gradcam_result(
    models=("plain", "se", "cbam"), n: int = 5, **arrays
) -> GradCamComparisonResult:
    m = len(models)
    z = np.zeros(n, np.int64)
    return GradCamComparisonResult(
        models=list(models), layers=["layer4"] * m, gradcam_grids=[[2, 3]] * m,
        ids=[f"#{i}" for i in range(n)], labels=z, targets=z, target_source="label",
        predictions=np.zeros((n, m), np.int64),
        probability=arrays.pop("probability", np.full((n, m), 0.5)),
        gradcam=np.zeros((0, m, 2, 3)), images=np.zeros((0, 2, 3, 3), np.uint8), **arrays,
    )  # fmt: skip


def _effect_gradcam():
    p = np.array([[0.9, 0.8, 0.7], [0.6, NAN, 0.9], [0.3, 0.5, 0.2], [0.8, 0.85, NAN],
                  [0.5, 0.4, 0.65]])  # fmt: skip
    margin = np.array([[2.0, 1.0, 3.0], [1.5, 2.5, 0.5], [-1.0, 0.0, 1.0], [0.5, 0.7, 0.2],
                       [3.0, 1.0, 2.0]])  # fmt: skip
    pointing = np.array(
        [[1.0, NAN, NAN], [0.0, NAN, NAN], [1.0, 1.0, NAN], [NAN, 0.0, NAN], [1.0, NAN, NAN]]
    )  # fmt: skip  (2 images, then none, for a model)
    result = _gradcam_result(probability=p, margin=margin, gradcam_pointing=pointing,
                             gradcam_share=np.zeros((0, 3)))  # fmt: skip
    rows = []
    for measure, values in (("probability", p), ("margin", margin), ("gradcam_pointing", pointing)):
        for m, name in enumerate(result.models):
            rows.append((name, measure, *_mean_se(values[:, m])))
            if m:  # the paired difference to the first model, on images where both are known
                both = np.isfinite(values[:, m]) & np.isfinite(values[:, 0])
                rows.append((name, f"{measure}_difference",
                             *_mean_se(values[both, m] - values[both, 0])))  # fmt: skip
    return result, pd.DataFrame(rows, columns=["model", "measure", "effect", "se", "n"])


def _effect_gradcam_one():
    """One model, one image: no difference rows, no standard error; absent measures skipped."""
    result = _gradcam_result(models=("se",), n=1, probability=np.array([[0.4]]))
    return result, pd.DataFrame([("se", "probability", 0.4, NAN, 1)],
                                columns=["model", "measure", "effect", "se", "n"])  # fmt: skip


def _rollout_result(maps=None, prefix=None, tokens=("class", "patch mean")) -> RolloutResult:
    if maps is None:
        maps = np.array(
            [
                [[[0.1, 0.0, 0.2], [0.05, 0.05, 0.1]], [[0.3, 0.1, 0.0], [0.0, 0.0, 0.2]]],
                [[[0.2, 0.2, 0.2], [0.1, 0.1, 0.1]], [[0.05, 0.05, 0.4], [0.1, 0.1, 0.1]]],
                [[[0.0, 0.0, 0.6], [0.0, 0.0, 0.0]], [[0.2, 0.1, 0.1], [0.1, 0.1, 0.2]]],
            ]
        )  # fmt: skip  (3 images, 2 tokens, a 2x3 patch grid)
        prefix = np.array([[0.5, 0.4], [0.1, 0.2], [NAN, 0.2]])
    return RolloutResult(model="vit", sites=[{"alias": "TOK_1"}], tokens=list(tokens),
                         maps=maps, prefix_mass=prefix, query_grid=[2, 3])  # fmt: skip


def _effect_rollout(result=None):
    result = result or _rollout_result()
    rows = []
    cells = result.maps.shape[2] * result.maps.shape[3]
    for t, token in enumerate(result.tokens):
        entropy, share = [], []
        for i in range(result.maps.shape[0]):  # the patch map renormalised to a distribution
            p = [v / result.maps[i, t].sum() for v in result.maps[i, t].ravel()]
            entropy.append(-sum(v * math.log(v) for v in p if v > 0) / math.log(cells))
            share.append(max(p))
        for metric, values in (("prefix_mass", result.prefix_mass[:, t]),
                               ("entropy_norm", entropy), ("max_share", share)):  # fmt: skip
            rows.append((token, metric, *_mean_se(values)))
    return result, pd.DataFrame(rows, columns=["site", "metric", "effect", "se", "n"])


def _effect_rollout_one():
    """One image (no standard error), whose prefix mass is unknown (no value at all)."""
    maps = np.array([[[[0.2, 0.3], [0.1, 0.0], [0.1, 0.1]]]])  # 1 image, 1 token, 3x2 grid
    return _effect_rollout(_rollout_result(maps, np.array([[NAN]]), tokens=("class",)))


def _effect_empty():
    """Nothing to report: an empty table that still has its key and value columns."""
    gradcam = _gradcam_result(n=0, probability=np.zeros((0, 3)))
    rollout = _rollout_result(np.zeros((2, 0, 2, 3)), np.zeros((2, 0)), tokens=())
    return [(gradcam, ["model", "measure", "effect", "se", "n"]),
            (rollout, ["site", "metric", "effect", "se", "n"])]  # fmt: skip


def _attribution_result(meta=None, **kw) -> AttentionVsAttributionResult:
    rho = kw.pop("spearman", np.array([[0.2, NAN], [0.4, NAN], [0.6, NAN], [NAN, NAN]]))
    iou = kw.pop("iou", np.array([[0.5, 0.1], [0.3, 0.2], [NAN, 0.6], [0.4, NAN]]))
    sites = kw.pop("sites", [
        {"alias": "CBAM_S_5_2", "name": "a", "kind": "cbam_spatial", "compare_grid": [3, 5]},
        {"alias": "GC_5_2", "name": "b", "kind": "gc"},
    ])  # fmt: skip
    n = rho.shape[0]
    z = np.zeros(n, np.int64)
    return AttentionVsAttributionResult(
        sites=sites, layer="layer4", top_k=0.2, ids=[f"#{i}" for i in range(n)], labels=z,
        predictions=z, targets=z, target_source="label", spearman=rho, iou=iou,
        gradcam=np.zeros((0, 1, 1)), attention=np.zeros((len(sites), 0, 1, 1)),
        images=np.zeros((0, 1, 1, 3), np.uint8), meta={"gradcam_grid": [2, 2]} if meta is None
        else meta,
    )  # fmt: skip


def _effect_attribution():
    """Chance at each site's compare grid (3x5 = 15 cells), else Grad-CAM's (2x2)."""
    result = _attribution_result()
    rows = []
    for j, (alias, cells) in enumerate((("CBAM_S_5_2", 15), ("GC_5_2", 4))):
        rows.append((alias, "spearman", *_mean_se(result.spearman[:, j])))
        mean, se, n = _mean_se(result.iou[:, j])
        rows.append((alias, "iou_above_chance", mean - _iou_chance(0.2, cells), se, n))
    return result, pd.DataFrame(rows, columns=["site", "metric", "effect", "se", "n"])


def _effect_attribution_no_grid():
    """No grid known at all: one cell, whose top-1 regions always meet (chance 1)."""
    site = [{"alias": "CBAM_S_2_1", "name": "a", "kind": "cbam_spatial"}]
    result = _attribution_result(meta={}, sites=site, spearman=np.array([[0.5]]),
                                 iou=np.array([[1.0]]))  # fmt: skip
    return result, pd.DataFrame([("CBAM_S_2_1", "spearman", 0.5, NAN, 1),
                                 ("CBAM_S_2_1", "iou_above_chance", 0.0, NAN, 1)],
                                columns=["site", "metric", "effect", "se", "n"])  # fmt: skip


def _site_excitation(alias: str, **kw) -> SiteExcitation:
    return SiteExcitation(alias=alias, name=f"{alias}.m", kind="se", stage=2, block=1,
                          class_std=np.zeros((3, 4)), mean=np.zeros(4), channels=np.arange(4),
                          **kw)  # fmt: skip


def _excitation_result() -> ExcitationProfileResult:
    a = _site_excitation(
        "SE_2_1",
        class_mean=np.array([[0.1, 0.5, 0.3, 0.9], [0.4, 0.2, 0.3, 0.5], [NAN] * 4]),
        std=np.array([0.2, 0.3, 0.1, 0.4]),
        squeeze_class_mean=np.array([[1.0, 2.0, 0.5, 0.0], [1.5, 1.0, 0.7, 0.2], [NAN] * 4]),
        squeeze_std=np.array([1.0, 0.5, 0.5, 2.0]),
        null=np.array([0.05, 0.6, NAN, 0.2, 0.9]),
        squeeze_null=np.array([0.01, 0.02, 0.5, 0.03]),
        gain_ci=np.array([-0.1, 0.3, 0.07]),
    )
    b = _site_excitation(  # no squeeze input recorded, no permutation null
        "SE_3_1",
        class_mean=np.array([[0.2, 0.2, 0.6, 0.1], [0.3, 0.1, 0.2, 0.2], [0.9, 0.5, 0.1, 0.3]]),
        std=np.array([0.1, 0.2, 0.3, 0.2]),
    )
    return ExcitationProfileResult(sites=[a, b], classes=[0, 3, 5],
                                   class_names=["disc", "ring", "star"], counts=np.array([5, 6, 0]),
                                   n_images=11, label_source="given")  # fmt: skip


def _effect_excitation():
    """Specificity = mean_c std_k(m_kc) / mean_c sigma_c over the classes with images; p the
    permutation p (1 + #{null >= observed}) / (1 + R) over the finite null."""
    result = _excitation_result()

    def spec(class_mean, std):
        rows = [r for r in class_mean.tolist() if not any(math.isnan(v) for v in r)]
        spread = statistics.fmean(statistics.pstdev(col) for col in zip(*rows))
        return spread / statistics.fmean(std.tolist())

    def perm_p(observed, null):
        null = [v for v in null.tolist() if math.isfinite(v)]
        if not null or not math.isfinite(observed):
            return NAN
        return (1 + sum(v >= observed for v in null)) / (1 + len(null))

    rows = []
    for s in result.sites:
        gate = spec(s.class_mean, s.std)
        squeeze = spec(s.squeeze_class_mean, s.squeeze_std) if s.squeeze_std.size else NAN
        rows += [(s.alias, "specificity", gate, NAN, 11, perm_p(gate, s.null)),
                 (s.alias, "squeeze_specificity", squeeze, NAN, 11,
                  perm_p(squeeze, s.squeeze_null)),
                 (s.alias, "gate_gain", gate - squeeze, s.gain_ci[2], 11, NAN)]  # fmt: skip
    return result, pd.DataFrame(rows, columns=["site", "measure", "effect", "se", "n", "p"])


MEASURES = ("accuracy", "p_true", "logit_true", "kl", "agreement")
PATCHES = ("patch:1.0x>2.0x", "patch:other>2.0x", "patch:2.0x>1.0x", "patch:other>1.0x")


def _changes(groups, policies, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for g in groups:
        for p in policies:
            for m in MEASURES:
                if m == "accuracy":
                    v = rng.choice([-1.0, 0.0, 0.0, 1.0], n)
                elif m == "agreement":
                    v = rng.choice([0.0, 1.0, 1.0], n)
                elif m == "kl":
                    v = rng.uniform(0, 0.5, n)
                else:
                    v = rng.normal(-0.05, 0.1, n).round(3)
                out[f"{g}|{p}|{m}"] = v
    return out


def _ablation_effects(result: AblationResult, contrasts=()):
    rows = []
    for key, v in result.changes.items():
        group, policy, measure = key.split("|")
        if measure == "accuracy" and v.size == 0:
            continue  # no labels: no accuracy change
        mean, se, n = _mean_se(v)
        p = _flip_p(v) if measure in ("accuracy", "p_true", "logit_true") else NAN
        if measure == "agreement":  # the share of images whose top-1 changed
            rows.append((group, policy, "top1_changed", 1 - mean, se, n, p))
        else:
            rows.append((group, policy, measure, mean, se, n, p))
    for group, a, b in contrasts:  # wrong scale - wrong scene, dP(target), exact sign test
        d = result.changes[f"{group}|{a}|p_true"] - result.changes[f"{group}|{b}|p_true"]
        rows.append((group, f"{a} - {b}", "p_true", *_mean_se(d)[:2], d.size, _sign_test_p(d)))
    return pd.DataFrame(rows, columns=["group", "policy", "measure", "effect", "se", "n", "p"])


def _effect_ablation():
    changes = _changes(["SE_2_1", "stage:2"], ["remove", "mean"], 5, seed=1)
    changes["stage:2|mean|accuracy"] = np.zeros(0)  # a run without labels
    changes["SE_2_1|mean|p_true"] = np.array([0.1, -0.1, 0.2, -0.2, 0.0])  # sum 0: p = 1
    result = AblationResult(changes, {"SE_2_1": "site", "stage:2": "stage"},
                            {"SE_2_1": ["SE_2_1"], "stage:2": ["SE_2_1"]},
                            {"p_true": np.ones(5)}, n_images=5)  # fmt: skip
    return result, _ablation_effects(result)


def _effect_scale_patching():
    changes = _changes(["SK_2_1", "all"], PATCHES, 6, seed=2)
    result = AblationResult(changes, {"SK_2_1": "site", "all": "all"},
                            {"SK_2_1": ["SK_2_1"], "all": ["SK_2_1", "SK_3_1"]},
                            {"p_true": np.ones(6)}, n_images=6,
                            meta={"analysis": "scale_patching"})  # fmt: skip
    pairs = [(g, a, b) for g in ("SK_2_1", "all") for a, b in (PATCHES[:2], PATCHES[2:])]
    return result, _ablation_effects(result, pairs)


def _query_result() -> QueryIndependenceResult:
    cos = np.array([[0.1, 0.3, NAN], [NAN, 0.2, NAN], [0.2, 0.4, 0.5], [0.6, 0.1, NAN]])
    jsd = np.array([[0.01, 0.5, NAN], [0.02, 0.4, NAN], [0.04, 0.5, 0.3], [NAN, 0.45, NAN]])
    pair_se = np.array([[0.001, 0.0, 0.0], [0.002, 0.0, 0.0], [0.002, 0.0, 0.01], [0.5, 0, 0]])
    sites = [{"alias": "NL_1", "name": "a", "kind": "nonlocal"},
             {"alias": "MHA_2", "name": "b", "kind": "token", "head": 0},
             {"alias": "MHA_2", "name": "b", "kind": "token", "head": "mean"}]  # fmt: skip
    return QueryIndependenceResult("m", sites, ["cos_att", "jsd_att"],
                                   {"cos_att": cos, "jsd_att": jsd}, jsd_se=pair_se)  # fmt: skip


def _effect_queries():
    """jsd_att's s.e.: the image s.e. and the pair-sampling s.e. of the mean in quadrature."""
    result = _query_result()
    rows = []
    for s, label in enumerate(("NL_1", "MHA_2/h0", "MHA_2/mean")):
        rows.append((label, "cos_att", *_mean_se(result.values["cos_att"][:, s])))
        col = result.values["jsd_att"][:, s]
        mean, se, n = _mean_se(col)
        if n > 1:
            pair = result.jsd_se[np.isfinite(col), s]
            se = math.sqrt(se**2 + sum(v * v for v in pair) / n**2)
        rows.append((label, "jsd_att", mean, se, n))
    return result, pd.DataFrame(rows, columns=["site", "metric", "effect", "se", "n"])


@functools.cache
def _effect_sweep():
    """A real sweep of 4 scenes with a content control: dD = D(view) - D(1.0x) per image."""
    from attnviz.analysis.scale_sweep import scale_sweep

    scenes = ShapeScenes(5, scales=(1.0, 1.5, 2.0), controls=("copies",), seed=20_001)
    model, config = load_model("sk_tiny")
    result = scale_sweep(model, scenes, per_image=True, preprocess=config, progress=False,
                         sites=["SK_3_1", "SK_5_2"])  # fmt: skip
    rows = []
    for v, (cond, scale) in enumerate(zip(result.view_conditions, result.view_scales)):
        if (cond, scale) == ("zoom", 1.0):
            continue
        for alias in ("SK_3_1", "SK_5_2"):
            d = result.image_view_d[alias][:, v] - result.image_view_d[alias][:, 0]
            rows.append((alias, cond, scale, *_mean_se(d)))
    return result, pd.DataFrame(rows, columns=["site", "condition", "scale", "effect", "se", "n"])


def _sweep_without_images():
    import dataclasses

    return dataclasses.replace(_effect_sweep()[0], image_d=None, image_labels=None)


def _effect_sweep_counts():
    """A view that counted no image has no effect; without counts every view has all images."""
    import dataclasses

    result, want = _effect_sweep()
    counts = np.array([5, 5, 5, 0])  # views: zoom 1.0 / 1.5 / 2.0, copies at 2.0
    none = dataclasses.replace(result, view_count=counts)
    assert list(zip(result.view_conditions, result.view_scales))[3] == ("copies", 2.0)
    keep = want[want["condition"] != "copies"].reset_index(drop=True)
    fallback = dataclasses.replace(result, view_count=np.zeros(0, np.int64), n_images=9)
    return [(none, keep), (fallback, want.assign(n=9))]


EFFECTS = {
    "gradcam_comparison": _effect_gradcam,
    "gradcam_comparison one model one image": _effect_gradcam_one,
    "attention_rollout": _effect_rollout,
    "attention_rollout one image": _effect_rollout_one,
    "attention_vs_attribution": _effect_attribution,
    "attention_vs_attribution no grid": _effect_attribution_no_grid,
    "excitation_profile": _effect_excitation,
    "ablation": _effect_ablation,
    "ablation scale patching": _effect_scale_patching,
    "query_independence": _effect_queries,
    "scale_sweep": _effect_sweep,
}


@pytest.mark.parametrize("case", EFFECTS)
def test_effects_equal_a_hand_computation(case):
    """The whole table, row order included; no warning (a statistic of fewer than two values
    is NaN by the guard, not by numpy's "degrees of freedom <= 0")."""
    result, want = EFFECTS[case]()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = result.effects()
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False,
                                  rtol=1e-9, atol=1e-12)  # fmt: skip


def test_an_empty_effect_table_keeps_its_columns():
    for result, columns in _effect_empty():
        got = result.effects()
        assert list(got.columns) == columns and got.empty


def test_sweep_effects_skip_empty_views_and_fall_back_to_all_images():
    for result, want in _effect_sweep_counts():
        pd.testing.assert_frame_equal(result.effects().reset_index(drop=True), want,
                                      check_dtype=False, rtol=1e-9, atol=1e-12)  # fmt: skip


def _result_classes() -> set[type]:
    for name in ANALYSIS_MODULES:
        importlib.import_module(f"attnviz.analysis.{name}")
    out, stack = set(), [Result]
    while stack:
        for c in stack.pop().__subclasses__():
            if c.__module__.startswith("attnviz."):
                out.add(c)
            stack.append(c)
    return out


def test_every_result_with_effects_is_checked_by_hand():
    """Subclass discovery: a new effects() joins EFFECTS; the others say they have none."""
    own = {c.kind for c in _result_classes() if "effects" in vars(c)}
    assert own == {case.split(" ")[0] for case in EFFECTS}
    for cls in _result_classes() - {c for c in _result_classes() if "effects" in vars(c)}:
        with pytest.raises(NotImplementedError, match=rf"^{cls.__name__} has no effect table$"):
            Result.effects(object.__new__(cls))


# ============================================================================ 3. defaults, params
class _Stop(Exception):
    """Raised by the recording runner once the analysis is built."""


def _record_runs(monkeypatch) -> list[tuple[str, dict, dict, Any]]:
    """Replace ``run`` in every analysis module by a recorder: (class, params(), options,
    images) of each analysis that reaches the runner; the reference pass gets a stand-in."""
    calls: list = []

    def fake(analysis, model, images, **options):
        if type(analysis).__name__ in ("AttentionVsAttribution", "GradCamComparison"):
            analysis.sites(model)  # their params name the Grad-CAM layers it resolves
        calls.append((type(analysis).__name__, analysis.params(), options, images))
        if type(analysis).__name__ == "ReferenceAttention":
            return ReferenceResult({}, {}, np.zeros(0, np.int64), 7)
        raise _Stop

    for name in ANALYSIS_MODULES:
        monkeypatch.setattr(importlib.import_module(f"attnviz.analysis.{name}"), "run", fake)
    return calls


def _tiny_groups(prefix: str, module: str) -> list:
    """ablation_groups' documented default scopes on a tiny ResNet (2 blocks in stages 2-5):
    every site, every stage, all together."""
    names = {f"{prefix}_{s}_{b}": f"layer{s - 1}.{b - 1}.{module}" for s in range(2, 6)
             for b in (1, 2)}  # fmt: skip
    return (
        [[alias, "site", [name]] for alias, name in names.items()]
        + [[f"stage:{s}", "stage", [f"layer{s - 1}.0.{module}", f"layer{s - 1}.1.{module}"]]
           for s in range(2, 6)]
        + [["all", "all", list(names.values())]]
    )  # fmt: skip


def test_every_analysis_function_hands_its_documented_defaults_to_the_runner(monkeypatch):
    """Called with only what it requires, each analysis function builds its analysis with the
    defaults its docstring states (observed by a call: a default changed in the signature
    dies here, also in mutmut's tree, where tests/test_defaults_agree.py cannot read it)."""
    ab = _module("ablation")
    at = _module("attribution")
    ex = _module("excitation")
    qi = _module("query_independence")
    qm = _module("query_maps")
    ro = _module("rollout")
    sp = _module("scale_patching")
    ss = _module("scale_sweep")

    calls = _record_runs(monkeypatch)
    img = [Image.new("RGB", (56, 40))]
    se, cbam, sk, nl = (_model(n) for n in ("se_tiny", "cbam_tiny", "sk_tiny", "nl_tiny"))
    shapes = ShapesDataset(1, size=64, seed=5)
    se_names = [f"layer{s}.{b}.attn" for s in range(1, 5) for b in (0, 1)]
    se_groups = _tiny_groups("SE", "attn")
    policies = [[g[0], p] for g in se_groups for p in ("remove", "mean", "shuffle")]
    want = {
        "reference_attention": (lambda: ab.reference_attention(se, img, []),
                                [("ReferenceAttention", {"sites": [], "bank": 16}, {})]),
        "ablation": (lambda: ab.ablation(se, img), [
            ("ReferenceAttention", {"sites": se_names, "bank": 16}, {"progress": False}),
            ("Ablation", {"groups": se_groups, "policies": policies, "reference_images": 7}, {}),
        ]),
        "attention_vs_attribution": (lambda: at.attention_vs_attribution(cbam, img), [
            ("AttentionVsAttribution", {"target": None, "layer": "layer4", "top_k": 0.2,
                                        "interpolate_mode": "bilinear", "keep_maps": 16,
                                        "compare_at": "coarser"}, {}),
        ]),
        "gradcam_comparison": (lambda: at.gradcam_comparison({"a": se, "b": cbam}, shapes), [
            ("GradCamComparison", {"models": ["a", "b"], "layers": ["layer4", "layer4"],
                                   "target": None, "keep_maps": 8, "interpolate_mode": "bilinear",
                                   "masks": True}, {"preprocess": "model a"}),
        ]),
        "gradcam_comparison without masks": (lambda: at.gradcam_comparison([se], img), [
            ("GradCamComparison", {"models": ["TinyResNet"], "layers": ["layer4"], "target": None,
                                   "keep_maps": 8, "interpolate_mode": "bilinear",
                                   "masks": False}, {"preprocess": "model TinyResNet"}),
        ]),
        "excitation_profile": (lambda: ex.excitation_profile(se, img), [
            ("ExcitationProfile", {"classes": None, "channels": 50, "permutations": 300,
                                   "seed": 0}, {}),
        ]),
        "query_independence": (lambda: qi.query_independence(nl, img), [
            ("QueryIndependence", {"metrics": ["cos_input", "cos_output", "cos_att", "jsd_att"],
                                   "include_diagonal": True, "n_queries": 4, "map_images": 0,
                                   "exact": False, "exact_rows": 256, "jsd_pairs": 2048,
                                   "seed": 0, "jsd_se": 5e-4}, {}),
        ]),
        "query_maps": (lambda: qm.query_maps(nl, img[0], queries=[(1, 2)]), [
            ("QueryMaps", {"queries": [(1, 2)], "query_space": "pixel"},
             {"preprocess": None, "batch_size": 1, "progress": False, "strict": True}),
        ]),
        "rollout": (lambda: ro.rollout(nl, img), [
            ("Rollout", {"residual": 0.5, "map_images": 3}, {}),
        ]),
        "scale_sweep": (lambda: ss.scale_sweep(sk, img), [
            ("ScaleSweep", {"scales": [1.0, 1.5, 2.0], "per_image": False, "controls": True,
                            "native": False}, {}),
        ]),
    }  # fmt: skip
    for case, (call, expected) in want.items():
        calls.clear()
        with contextlib.suppress(_Stop):  # raised once the analysis reaches the runner
            call()
        named = {id(se): "model a", id(cbam): "model b"}
        got = [(c, p, {k: named.get(id(v), f"model {type(v).__name__}")
                       if isinstance(v, nn.Module) else v for k, v in o.items()})
               for c, p, o, _ in calls]  # fmt: skip
        if case == "gradcam_comparison without masks":
            got[0][2]["preprocess"] = "model TinyResNet" if calls[0][2]["preprocess"] is se else "?"
        assert got == expected, case
    # scale patching: 200 scenes at (1.0, 2.0), seed 20000 (the sweep's), every branch site
    calls.clear()
    with pytest.raises(_Stop):
        sp.scale_patching(sk)
    ((cls, params, options, scenes),) = calls
    assert (cls, options, params["groups"]) == ("ScalePatching", {}, _tiny_groups("SK", "conv1"))
    assert isinstance(scenes, ShapeScenes) and len(scenes) == 200
    assert params["scenes"] == ShapeScenes(200, scales=(1.0, 2.0), seed=20_000).params()


def _analysis_classes() -> set[type]:
    out = set()
    for name in ANALYSIS_MODULES:
        mod = importlib.import_module(f"attnviz.analysis.{name}")
        out |= {c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, Analysis)
                and c is not Analysis and c.__module__ == mod.__name__}  # fmt: skip
    return out


def _params_cases() -> list[tuple[str, Any, dict]]:
    """(class name, a built analysis with every argument away from its default, params())."""
    ab = _module("ablation")
    at = _module("attribution")
    ex = _module("excitation")
    qi = _module("query_independence")
    qm = _module("query_maps")
    ro = _module("rollout")
    sp = _module("scale_patching")
    ss = _module("scale_sweep")
    from attnviz.analysis.attribution import _Models
    from attnviz.capture import find_sites

    se, cbam, sk = _model("se_tiny"), _model("cbam_tiny"), _model("sk_tiny")
    sites = [s for s in find_sites(se) if s.alias in ("SE_3_1", "SE_5_2")]
    groups = ab.ablation_groups(se, ["SE_3_1", "SE_5_2"], scopes=("site", "all"))
    sk_groups = ab.ablation_groups(sk, ["SK_4_2", "SK_5_1"], scopes=("stage",))
    scenes = ShapeScenes(3, scales=(1.0, 2.0), seed=7)
    avsa = at.AttentionVsAttribution(
        target=[1, 2],
        layer="layer3",
        sites="all",
        top_k=0.3,
        interpolate_mode="nearest",
        keep_maps=2,
        compare_at="input",
    )
    avsa.sites(cbam)
    label = at.AttentionVsAttribution(target=4, layer=cbam.layer2)
    label.sites(cbam)
    gc = at.GradCamComparison(
        {"x": se, "y": cbam},
        target="prediction",
        layer={"x": "layer3", "y": "layer2"},
        keep_maps=3,
        interpolate_mode="bicubic",
        masks=lambda i: np.ones((4, 4)),
    )
    gc_before = {
        "models": ["x", "y"],
        "layers": None,
        "target": "prediction",
        "keep_maps": 3,
        "interpolate_mode": "bicubic",
        "masks": True,
    }
    gc_params = [gc.params()]
    gc.sites(_Models({"x": se, "y": cbam}))  # as gradcam_comparison hands them over
    return [
        ("ReferenceAttention", ab.ReferenceAttention(sites, bank=5),
         {"sites": ["layer2.0.attn", "layer4.1.attn"], "bank": 5}),
        ("Ablation", ab.Ablation(groups, ["remove", "constant:1"],
                                 reference=ReferenceResult({}, {}, [0, 1], 4)),
         {"groups": [["SE_3_1", "site", ["layer2.0.attn"]], ["SE_5_2", "site", ["layer4.1.attn"]],
                     ["all", "all", ["layer2.0.attn", "layer4.1.attn"]]],
          "policies": [["SE_3_1", "remove"], ["SE_3_1", "constant:1"], ["SE_5_2", "remove"],
                       ["SE_5_2", "constant:1"], ["all", "remove"], ["all", "constant:1"]],
          "reference_images": 4}),
        ("AttentionVsAttribution", avsa,
         {"target": "given", "layer": "layer3", "top_k": 0.3, "interpolate_mode": "nearest",
          "keep_maps": 2, "compare_at": "input"}),
        ("AttentionVsAttribution", label,
         {"target": 4, "layer": "layer2", "top_k": 0.2, "interpolate_mode": "bilinear",
          "keep_maps": 16, "compare_at": "coarser"}),
        ("GradCamComparison", gc_params[0], gc_before),
        ("GradCamComparison", gc, {**gc_before, "layers": ["layer3", "layer2"]}),
        ("ExcitationProfile", ex.ExcitationProfile("all", [3, "ring"], 7, 11, 5),
         {"classes": ["3", "ring"], "channels": 7, "permutations": 11, "seed": 5}),
        ("QueryIndependence", qi.QueryIndependence(
            None, ["cos_att"], False, 9, 2, "NL_3_2", "m", exact=True, exact_rows=17,
            jsd_pairs=33, seed=4, jsd_se=0.01),
         {"metrics": ["cos_att"], "include_diagonal": False, "n_queries": 9, "map_images": 2,
          "exact": True, "exact_rows": 17, "jsd_pairs": 33, "seed": 4, "jsd_se": 0.01}),
        ("QueryMaps", qm.QueryMaps([(1, 2), (3.5, 4)], "NL_3_2"),
         {"queries": [(1, 2), (3.5, 4)], "query_space": "pixel"}),
        ("QueryMaps", qm.QueryMaps(lambda grid: [(0, 0)], query_space="cell"),
         {"queries": "callable", "query_space": "cell"}),
        ("Rollout", ro.Rollout(None, 0.25, 1, "v"), {"residual": 0.25, "map_images": 1}),
        ("ScalePatching", sp.ScalePatching(scenes, sk_groups),
         {"scenes": ShapeScenes(3, scales=(1.0, 2.0), seed=7).params(),
          "groups": [["stage:4", "stage", ["layer3.1.conv1"]],
                     ["stage:5", "stage", ["layer4.0.conv1"]]]}),
        ("ScaleSweep", ss.ScaleSweep((2.5, 1.0), per_image=True, controls=False,
                                     boxes={0: (1, 2, 3, 4), "x": (0, 0, 5, 5)}),
         {"scales": [2.5, 1.0], "per_image": True, "controls": False, "native": False,
          "boxes": 2}),
        ("ScaleSweep", ss.ScaleSweep((1.5, 2.0)),  # controls need a 1.0x view
         {"scales": [1.5, 2.0], "per_image": False, "controls": False, "native": False}),
        ("ScaleSweep", ss.ScaleSweep((1.0, 2.0), native=True, content=("copies",),
                                     content_scale=1.0),
         {"scales": [1.0, 2.0], "per_image": False, "controls": False, "native": True,
          "content": ["copies"]}),
    ]  # fmt: skip


def test_every_analysis_class_states_every_parameter_it_was_given():
    cases = _params_cases()
    assert {name for name, _, _ in cases} == {c.__name__ for c in _analysis_classes()}
    for name, analysis, want in cases:
        got = analysis if isinstance(analysis, dict) else analysis.params()
        assert got == want, name
        json.dumps(got)  # the fingerprint and the manifest are JSON


def test_scale_patching_keeps_the_unpatched_outputs_at_both_scales():
    """finalise's labels: result.original holds P(target) and correctness of the unpatched
    forward at 2.0x (``p_true``) and at 1.0x (``p_true@1.0x``), here from a plain forward."""
    from attnviz.analysis.scale_patching import scale_patching

    model, config = load_model("sk_tiny")
    scenes = ShapeScenes(3, scales=(1.0, 2.0), seed=20_002)
    result = scale_patching(model, scenes, sites=["SK_3_1"], scopes=("site",), preprocess=config,
                            progress=False, batch_size=2)  # fmt: skip
    mean, std = torch.tensor(config.mean)[:, None, None], torch.tensor(config.std)[:, None, None]
    want: dict[str, list] = {"p_true": [], "accuracy": [], "p_true@1.0x": [], "accuracy@1.0x": []}
    with torch.no_grad():
        for k in range(3):
            label = scenes[k][1]
            for view, suffix in zip(scenes.views(k), ("@1.0x", "")):
                x = torch.from_numpy(np.asarray(view, np.float32) / 255).permute(2, 0, 1)
                logits = model(((x - mean) / std)[None])[0]
                want[f"p_true{suffix}"].append(float(logits.softmax(0)[label]))
                want[f"accuracy{suffix}"].append(float(logits.argmax() == label))
    assert sorted(result.original) == sorted(want)
    for key, values in want.items():
        np.testing.assert_allclose(result.original[key], values, atol=1e-5, err_msg=key)
    assert sorted(result.changes) == sorted(f"SK_3_1|{p}|{m}" for p in PATCHES for m in MEASURES)
    assert all(v.shape == (3,) for v in result.changes.values())
    assert result.meta["analysis"] == "scale_patching" and result.meta["policies"] == list(PATCHES)
    assert result.meta["scenes"] == scenes.params()


# ============================================================================ 4. the runner
class _Clock:
    """A stopped clock: every run takes 0 s, so the recorded seconds are the earlier ones."""

    @staticmethod
    def perf_counter() -> float:
        return 100.0


class _Bar:
    made: list[_Bar] = []

    def __init__(self, **kwargs):
        self.kwargs, self.updates, self.closed = kwargs, [], False
        _Bar.made.append(self)

    def update(self, n):
        self.updates.append(n)

    def close(self):
        self.closed = True


@pytest.fixture()
def bars(monkeypatch):
    import tqdm.auto

    _Bar.made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    monkeypatch.setattr(runner_module, "time", _Clock)
    return _Bar.made


def test_progress_bar_counts_images_and_the_closing_line(bars, capsys):
    _probe(progress=True, batch_size=3)
    (bar,) = bars
    assert bar.kwargs == {"total": 7, "initial": 0, "unit": "img", "desc": "probe", "leave": False}
    assert bar.updates == [3, 3, 1] and bar.closed
    assert capsys.readouterr().err == "probe: 7 images (0 skipped) in 0.0 s (nan images/s)\n"
    _probe(progress=False)
    assert len(bars) == 1  # no bar without progress


def _interrupted_checkpoint(tmp: Path, *, seconds: float) -> Path:
    """Stop a run in its third batch (two batches checkpointed), then give the checkpoint
    ``seconds`` of earlier work. (Every runner writes the key; a checkpoint without it is
    refused: ``tests/test_mutants_round11.py``.)"""
    from attnviz.analysis.runner import _checkpoint_file, _save_checkpoint
    from attnviz.errors import Interrupted

    with pytest.raises(Interrupted):
        _probe(model=_Means(stop_at=3), batch_size=2, checkpoint=tmp, checkpoint_every=1)
    path = _checkpoint_file(tmp, "probe")
    meta, state = read_checkpoint(path)
    assert meta["position"] == 4
    meta["seconds"] = seconds
    _save_checkpoint(path, meta, state)
    return path


def test_a_resumed_run_counts_the_earlier_time_and_starts_its_bar_there(bars, tmp_path):
    path = _interrupted_checkpoint(tmp_path, seconds=2.5)
    bars.clear()
    result = _probe(progress=True, batch_size=2, checkpoint=tmp_path, resume=True)
    (bar,) = bars
    assert bar.kwargs == {"total": 7, "initial": 4, "unit": "img", "desc": "probe", "leave": False}
    assert bar.updates == [2, 1] and bar.closed
    assert result.meta["run"]["seconds"] == 2.5
    assert result.positions == list(range(7)) and not path.exists()
    np.testing.assert_array_equal(result.values, _probe().values)  # as an uninterrupted run


# ============================================================================ 5. the demo parts
def _recording(monkeypatch, module, name: str) -> list:
    """Wrap ``module.name`` so that each call's arguments and result are kept."""
    calls: list = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    monkeypatch.setattr(module, name, wrapper)
    return calls


@pytest.fixture()
def sweep_demo(monkeypatch):
    """The sweep demo with its two sweeps recorded and its figures replaced by a recorder."""
    ss = _module("scale_sweep")
    import attnviz.commands.sweep as command

    sweeps = _recording(monkeypatch, ss, "scale_sweep")
    figures: list = []
    monkeypatch.setattr(command, "sweep_figures",
                        lambda result, fig3=None: figures.append((result, fig3)) or {})  # fmt: skip
    return command.demo, sweeps, figures


def _same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_sweep_demo_fig3_shows_the_first_scene_with_its_own_views(sweep_demo, tmp_path):
    from attnviz.data.shapes import train_object_size_range

    demo, sweeps, figures = sweep_demo
    config = load_model("sk_tiny")[1]
    text = demo(tmp_path / "out", 3)
    scenes = ShapeScenes(3, object_range=train_object_size_range("sk_tiny"))  # the demo's scenes
    (main_args, main_kw, main), (one_args, one_kw, one) = sweeps
    assert len(main_args[1]) == 3 and main_kw == {
        "preprocess": config, "batch_size": 32, "progress": False,
        "exclude": [tmp_path / "out"]}  # fmt: skip
    item = one_args[1]
    assert (
        isinstance(item, ShapeScenes) and len(item) == 1 and _same_pixels(item[0][0], scenes[0][0])
    )
    assert one_kw == {"preprocess": config, "per_image": True, "controls": False, "progress": False}
    ((result, (fig_one, views)),) = figures
    assert result is main and fig_one is one and one.n_images == 1
    assert len(views) == 3 and all(_same_pixels(v, w) for v, w in zip(views, scenes.views(0)))
    assert text == (f"SKNet scale sweep on sk_tiny, 3 generated scenes rendered natively:\n"
                    f"{main.summary()}\nfigures: {tmp_path / 'out' / 'figures'}")  # fmt: skip
    assert main.meta["model"] == "sk_tiny" == one.meta["model"]
    assert (tmp_path / "out" / "summary.txt").read_text() == main.summary() + "\n"


def test_sweep_demo_on_a_folder_shows_the_first_image_and_its_zoom_views(sweep_demo, tmp_path):
    """Fig. 3 of a folder: the first image (sorted), at 1.0x its own eval view (a 64x64 image
    under sk_tiny's 64x64, crop 1.0 transform: itself) and at 2.0x its central 32x32 pixels
    resized to 64x64 with the model's bilinear filter."""
    demo, sweeps, figures = sweep_demo
    rng = np.random.default_rng(5)
    folder = tmp_path / "images"
    folder.mkdir()
    first = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    first.save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(folder / "b.png")
    with pytest.raises(OutputError, match="is inside the image folder"):
        demo(folder / "out", folder)
    text = demo(tmp_path / "out", folder)
    (_, _, main), (one_args, _, one) = sweeps
    assert one_args[1] == [folder / "a.png"] and one.n_images == 1 and main.n_images == 2
    ((_, (fig_one, views)),) = figures
    assert fig_one is one and [v.size for v in views] == [(64, 64)] * 3
    assert _same_pixels(views[0], first)
    zoom2 = np.asarray(first.resize((64, 64), Image.BILINEAR, box=(16, 16, 48, 48)), float)
    np.testing.assert_allclose(np.asarray(views[2], float), zoom2, atol=1)
    assert text.startswith(f"SKNet scale sweep on sk_tiny, the images in {folder}:\n")


def test_ablation_demo_in_process(tmp_path, monkeypatch):
    """The ablation demo part: se_tiny per stage and all sites, the default policies, on the
    images given (batch 50, at most 100), its result, summary and figures written."""
    ab = _module("ablation")
    import attnviz.commands.ablate as command

    calls = _recording(monkeypatch, ab, "ablation")
    figures: list = []
    monkeypatch.setattr(command, "ablation_figures", lambda r: figures.append(r) or {})
    images = tmp_path / "images"
    shapes = ShapesDataset(1, size=64, seed=30_000)
    for k in (0, 1, 4):  # three classes, one image each
        image, label = shapes[k]
        (images / shapes.classes[label]).mkdir(parents=True)
        image.save(images / shapes.classes[label] / f"{k}.png")
    with pytest.raises(OutputError, match="is inside the image folder"):
        command.demo(images / "out", images)  # its figures would be read as images next time
    text = command.demo(tmp_path / "out", images)
    ((args, kwargs, result),) = calls
    assert args[1] == images and kwargs == {
        "scopes": ("stage", "all"), "preprocess": load_model("se_tiny")[1], "batch_size": 50,
        "limit": 100, "progress": False}  # fmt: skip
    assert figures == [result] and result.n_images == 3 and result.meta["model"] == "se_tiny"
    assert set(result.scopes.values()) == {"stage", "all"}
    assert result.policies == ["remove", "mean", "shuffle"]
    assert text == f"{result.summary()}\nfigures: {tmp_path / 'out' / 'figures'}"
    saved = AblationResult.load(tmp_path / "out" / "result")
    assert saved.meta["model"] == "se_tiny" and saved.groups == result.groups
    assert (tmp_path / "out" / "summary.txt").read_text() == result.summary() + "\n"


# ============================================================================ 6. small helpers
def test_small_helpers_no_other_test_reaches():
    from attnviz.analysis.query_maps import _square
    from attnviz.cli import _warning_line
    from attnviz.distributed import all_reduce_sum_

    assert [_square(n) for n in (1, 16, 49)] == [(1, 1), (4, 4), (7, 7)]
    assert _warning_line(UserWarning("two\n  lines\tof text"), UserWarning, "x.py", 3) == (
        "attnviz: warning: two lines of text\n"
    )
    assert _warning_line("plain") == "attnviz: warning: plain\n"
    tensors = {"b": torch.arange(3.0), "a": torch.ones(2, 2)}
    assert all_reduce_sum_(tensors) is None  # one process: the sum over ranks is the tensor
    assert torch.equal(tensors["b"], torch.arange(3.0)) and torch.equal(
        tensors["a"], torch.ones(2, 2)
    )
    result = _excitation_result()
    assert result.site("SE_3_1") is result.sites[1] and result.site("SE_2_1.m") is result.sites[0]
