"""Plant a named bug in a scratch copy of the tree and run the tests that should catch it.

    .venv/bin/python tools/plant_bug.py --list            # the planted bugs and their tests
    .venv/bin/python tools/plant_bug.py hw-tv-crop lock-no-finally
    .venv/bin/python tools/plant_bug.py --all             # every bug, one copy each
    .venv/bin/python tools/plant_bug.py --mutant <name> [<name> ...] --tests tests/test_x.py::test_y

Each bug is one exact text replacement in one file of ``attnviz/`` (it must match exactly
once, else the entry is stale and reported as ERROR). The working tree is never changed: the
package, the tests, the tools, notebooks, docs, benchmarks, the top-level texts and the pytest
configuration are copied to a temporary folder, the bug is
applied there, and ``python -m pytest -q -x -p no:randomly <tests>`` runs in that copy (the
copy's ``attnviz`` is imported first; ``ATTNVIZ_ASSETS`` points at a copy of this tree's
assets, so a bug that writes bundled models cannot change the real ones). A bug
is RED when the tests fail (caught), GREEN when they pass (survived). Exit status 0 when
every bug asked for is RED. Used for the bug classes of issue 26 (TESTING.md). ``--mutant``
plants a mutant of ``mutants/`` (``make mutation-sample``) the same way, from ``mutmut show``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HW, IO = "tests/test_bug_classes_hw.py", "tests/test_bug_classes_io.py"
MANIFEST = "tests/test_capture_manifest.py::test_capture_matches_its_reviewed_manifest"
RESULTS = "tests/test_result_manifest.py::test_result_matches_its_reviewed_manifest"


@dataclass(frozen=True)
class Bug:
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


BUGS: dict[str, Bug] = {
    # (a) height / width order
    "hw-tv-crop": Bug(
        "attnviz/data/preprocess.py",
        "T.CenterCrop((h, w)),",
        "T.CenterCrop((w, h)),",
        (f"{HW}::test_torchvision_style_recipe_on_a_non_square_input",),
        "torchvision-style recipe crops (W, H)",
    ),
    "hw-input-size": Bug(
        "attnviz/data/preprocess.py",
        "return int(size[-2]), int(size[-1])",
        "return int(size[-1]), int(size[-2])",
        (f"{HW}::test_zoom_view_and_scale_views_on_a_non_square_input",),
        "EvalTransform.input_size returns (W, H)",
    ),
    "hw-zoom-upsampling": Bug(
        "attnviz/data/views.py",
        "up = max(w / (bw / s), h / (bh / s))",
        "up = max(w / (bh / s), h / (bw / s))",
        (f"{HW}::test_zoom_views_from_the_original_on_a_non_square_input",),
        "zoom upsampling divides the width by the box height",
    ),
    "hw-gradcam-grid": Bug(
        "attnviz/analysis/attribution.py",
        "cam_grid = (int(cam.shape[-2]), int(cam.shape[-1]))",
        "cam_grid = (int(cam.shape[-1]), int(cam.shape[-2]))",
        (f"{HW}::test_attention_vs_gradcam_grids_and_figure_on_a_non_square_input",),
        "Grad-CAM grid read as (W, H) where attention meets Grad-CAM",
    ),
    "hw-figure-overlay": Bug(
        "attnviz/plot/_style.py",
        "up = upsample(np.asarray(heatmap, dtype=np.float64), img.shape[:2])",
        "up = upsample(np.asarray(heatmap, dtype=np.float64), img.shape[1::-1])",
        (f"{HW}::test_overlays_upsample_to_the_images_height_and_width",),
        "figure overlays upsample the map to (W, H)",
    ),
    "hw-html-overlay": Bug(
        "attnviz/plot/overlay.py",
        "h = upsample(heatmap, img.shape[:2])",
        "h = upsample(heatmap, img.shape[1::-1])",
        (f"{HW}::test_overlays_upsample_to_the_images_height_and_width",),
        "viewer / widget overlay upsamples the map to (W, H)",
    ),
    "hw-swin-windows": Bug(
        "attnviz/capture/adapters/timm_swin.py",
        "n_wx = -(-w // ww)",
        "n_wx = -(-h // wh)",
        (f"{HW}::test_swin_window_key_grid_on_a_non_square_map_and_window",),
        "Swin windows per row counted from the height",
    ),
    "hw-nl-grid": Bug(
        "attnviz/capture/adapters/attnviz_blocks.py",
        "h, w = inputs[0].shape[-2:]",
        "w, h = inputs[0].shape[-2:]",
        (f"{HW}::test_non_local_query_and_key_grids_on_a_non_square_map",),
        "Non-local block's query / key grids as (W, H)",
    ),
    # (b) records labelled by position instead of index
    "rec-attribution-row": Bug(
        "attnviz/analysis/attribution.py",
        'state.put("ytp", r.index,',
        'state.put("ytp", j,',
        (f"{IO}::test_attention_vs_gradcam_records_follow_their_image_in_a_shuffled_subset",),
        "attribution keeps label / prediction by position in the batch",
    ),
    "rec-shard-position": Bug(
        "attnviz/data/sources.py",
        "return i, x, label, None, image if self.keep_images else None",
        "return k, x, label, None, image if self.keep_images else None",
        (f"{IO}::test_records_of_a_split_over_2_ranks_follow_their_item",),
        "records indexed by position in the shard's list, not the source",
    ),
    "rec-dataloader-order": Bug(
        "attnviz/data/sources.py",
        "_split_item(dataset[order[i]])",
        "_split_item(dataset[i])",
        (f"{IO}::test_records_of_a_shuffled_dataloader_follow_the_samplers_order",),
        "DataLoader items read in dataset order under ids in the sampler's order",
    ),
    "rec-batch-label": Bug(
        "attnviz/data/sources.py",
        "records.append(Record(i, source.ids[i], label))",
        "records.append(Record(i, source.ids[i], source.load(len(records))[1]))",
        (f"{IO}::test_records_of_a_shuffled_subset_follow_their_item",),
        "label of the item at the record's position in the batch",
    ),
    # (c) escaping
    "esc-summary": Bug(
        "attnviz/report.py",
        '+ html.escape(summary.read_text(encoding="utf-8"))',
        '+ summary.read_text(encoding="utf-8")',
        (f"{IO}::test_report_escapes_every_text_it_shows",),
        "report inlines summary.txt unescaped",
    ),
    "esc-viewer-caption": Bug(
        "attnviz/viewer.py",
        "caption=html.escape(self.caption()),",
        "caption=self.caption(),",
        (f"{IO}::test_query_viewer_escapes_its_title_and_caption",),
        "query viewer caption unescaped",
    ),
    "esc-figcaption": Bug(
        "attnviz/report.py",
        "<figcaption>{html.escape(svg.stem)}",
        "<figcaption>{svg.stem}",
        (f"{IO}::test_report_escapes_every_text_it_shows",),
        "figure name unescaped in its caption",
    ),
    "esc-table-cell": Bug(
        "attnviz/report.py",
        "<td>{html.escape(fmt(v))}</td>",
        "<td>{fmt(v)}</td>",
        (f"{IO}::test_every_summary_table_escapes_its_cells_and_headers",),
        "summary table cells unescaped",
    ),
    # (d) the output folder's lock
    "lock-no-finally": Bug(
        "attnviz/commands/_common.py",
        "    with OutputFolder(Path(out), image_dirs, analysis) as folder:\n        yield folder",
        "    folder = OutputFolder(Path(out), image_dirs, analysis).__enter__()\n"
        "    yield folder\n    folder.__exit__(None, None, None)",
        (
            f"{IO}::test_output_folder_releases_its_lock_on_every_exit",
            f"{IO}::test_a_failing_command_releases_its_lock",
        ),
        "output_folder releases the lock only when the body returns",
    ),
    "lock-success-only": Bug(
        "attnviz/commands/_common.py",
        "        if self._lock is not None:\n",
        "        if self._lock is not None and exc[0] is None:\n",
        (f"{IO}::test_a_failing_command_releases_its_lock",),
        "OutputFolder.__exit__ unlocks only without an exception",
    ),
    # (e) diverging colour norms
    "norm-one-sign": Bug(
        "attnviz/plot/_style.py",
        "finite = np.abs(arr[np.isfinite(arr)])",
        "finite = arr[np.isfinite(arr)]",
        (f"{HW}::test_diverging_norm_covers_both_signs",),
        "diverging norm limit from the largest value, not magnitude",
    ),
    "norm-sweep-clipped": Bug(
        "attnviz/plot/sweep.py",
        "    norm = diverging_norm(values)\n",
        "    norm = diverging_norm(np.clip(values, 0, None))\n",
        (f"{HW}::test_d_heatmap_norm_covers_both_signs",),
        "D heatmap norm from the positive values only",
    ),
    "norm-ablation-clipped": Bug(
        "attnviz/plot/ablation.py",
        "norm, cmap = diverging_norm(values), DIVERGING",
        "norm, cmap = diverging_norm(np.clip(values, 0, None)), DIVERGING",
        (f"{HW}::test_ablation_heatmap_norm_covers_both_signs",),
        "ablation heatmap norm from the positive values only",
    ),
    # (f) adapters: meta keys, grid fallbacks, terms a default initialisation hides
    "adapter-halo-meta-key": Bug(
        "attnviz/capture/adapters/timm_halo.py",
        '"window": (m.win_size, m.win_size),',
        '"windows": (m.win_size, m.win_size),',
        (MANIFEST,),
        "HaloAttn meta key renamed",
    ),
    "adapter-bat-meta-key": Bug(
        "attnviz/capture/adapters/timm_bat.py",
        '"grid": (int(h), int(w))}',
        '"grid_size": (int(h), int(w))}',
        (MANIFEST,),
        "BatNonLocalAttn meta key renamed",
    ),
    "adapter-maxxvit-meta-key": Bug(
        "attnviz/capture/adapters/timm_maxxvit.py",
        '"shift": (0, 0),\n        "key_index": key_index,\n        "path": "fused" if FUSED',
        '"shift": (0, 0),\n        "keys": key_index,\n        "path": "fused" if FUSED',
        (MANIFEST,),
        "MaxxViT (timm) meta key renamed",
    ),
    "adapter-cait-fallback": Bug(
        "attnviz/capture/adapters/timm_cait.py",
        "if side * side == n_tokens else",
        "if side * side != n_tokens else",
        (MANIFEST,),
        "CaiT's square-grid fallback outside a model takes the wrong branch",
    ),
    "adapter-coat-keyword-size": Bug(
        "attnviz/capture/adapters/timm_coat.py",
        'else site_context(module).get("grid", (1, n - 1))',
        "else (1, n - 1)",
        (MANIFEST,),
        "CoaT's parallel blocks (size by keyword) lose the stage grid",
    ),
    "adapter-pvt-reduced-hw": Bug(
        "attnviz/capture/adapters/timm_vit.py",
        "(w + 2 * pw - kw) // sw + 1)",
        "(h + 2 * pw - kw) // sw + 1)",
        (MANIFEST,),
        "PVT-v2 reduced key grid takes its width from H",
    ),
    "adapter-tv-vit-bias": Bug(
        "attnviz/capture/adapters/torchvision_vit.py",
        "b_q, b_k = (None, None) if bias is None else (bias[:e], bias[e : 2 * e])",
        "b_q, b_k = None, None",
        (MANIFEST,),
        "torchvision ViT read ignores the q/k in_proj_bias (zero at initialisation)",
    ),
    # (g) keys and messages of results that no analysis test reads
    "keys-run-meta": Bug(
        "attnviz/analysis/runner.py",
        '"n_skipped": len(self.skipped),',
        '"skipped_n": len(self.skipped),',
        (RESULTS,),
        "the run record's n_skipped key renamed",
    ),
    "keys-scenes-params": Bug(
        "attnviz/data/shapes.py",
        '"scales": list(self.scales),',
        '"SCALES": list(self.scales),',
        (RESULTS,),
        "ShapeScenes.params key renamed",
    ),
    "msg-excitation-null": Bug(
        "attnviz/analysis/excitation.py",
        'f"null: {self.permutations} label permutations (seed {self.seed})"',
        'f"null: {self.permutations} label shuffles (seed {self.seed})"',
        (RESULTS,),
        "the excitation summary's null line reworded",
    ),
}


def _copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    # everything a test reads besides the assets (notebooks, docs, the top-level texts): a
    # test that cannot find its file would fail whatever the bug, a false RED
    for name in ("attnviz", "tests", "tools", "notebooks", "docs", "benchmarks"):
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for path in ROOT.glob("*"):
        if path.is_file() and (path.suffix in (".md", ".toml", ".cfg") or path.name == "Makefile"):
            shutil.copy2(path, dest / path.name)


def bug_of_mutant(name: str, tests: tuple[str, ...]) -> Bug:
    """mutmut's mutant ``name`` (its one-hunk ``mutmut show`` diff) as a bug caught by ``tests``."""
    mutmut = Path(sys.executable).with_name("mutmut")
    shown = subprocess.run(
        [str(mutmut), "show", name], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    file = next(line[4:].strip() for line in shown if line.startswith("--- "))
    start = next(i for i, line in enumerate(shown) if line.startswith("@@"))
    body = shown[start + 1 :]
    if any(line.startswith("@@") for line in body):
        raise SystemExit(f"{name}: the diff has more than one hunk; plant it by hand")
    text = (ROOT / file).read_text(encoding="utf-8")
    changed = [i for i, line in enumerate(body) if line.startswith(("+", "-"))]
    # mutmut shows a method one level less indented than it is in its class, but keeps the
    # lines of a multi-line string at their own indentation: drop context lines from the ends
    # until the hunk, shifted, occurs exactly once
    for lo in range(changed[0] + 1):
        for hi in range(len(body), changed[-1], -1):
            old = [line[1:] for line in body[lo:hi] if not line.startswith("+")]
            new = [line[1:] for line in body[lo:hi] if not line.startswith("-")]
            for indent in ("", "    ", "        "):
                shifted = [
                    "\n".join(indent + ln if ln else ln for ln in lines) for lines in (old, new)
                ]
                if text.count(shifted[0]) == 1:
                    return Bug(file, shifted[0], shifted[1], tests, f"mutmut mutant {name}")
    raise SystemExit(f"{name}: the diff's text does not occur exactly once in {file}")


def plant(name: str, verbose: bool = False, bug: Bug | None = None) -> str:
    """Apply bug ``name`` in a scratch copy, run its tests there: "RED", "GREEN" or "ERROR"."""
    bug = bug or BUGS[name]
    with tempfile.TemporaryDirectory(prefix=f"plant-{name}-") as tmp:
        copy = Path(tmp)
        _copy_tree(copy)
        target = copy / bug.file
        text = target.read_text(encoding="utf-8")
        if text.count(bug.old) != 1:
            print(
                f"{name}: ERROR: the text to replace occurs {text.count(bug.old)} times in "
                f"{bug.file} (stale entry)"
            )
            return "ERROR"
        target.write_text(text.replace(bug.old, bug.new), encoding="utf-8")
        shutil.copytree(ROOT / "assets", copy / "assets")  # a planted bug may write there
        env = dict(os.environ, ATTNVIZ_ASSETS=str(copy / "assets"), MPLBACKEND="Agg")
        env["PYTHONPATH"] = str(copy)
        check = subprocess.run(
            [sys.executable, "-c", "import attnviz; print(attnviz.__file__)"],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
        )
        if not check.stdout.strip().startswith(str(copy)):
            print(f"{name}: ERROR: the copy's attnviz is not the one imported ({check.stdout})")
            return "ERROR"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            *bug.tests,
        ]
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True)
        last = (proc.stdout.strip().splitlines() or [""])[-1]
        # a test that errors (fixture, import) has not caught the bug: only failures are RED
        verdict = {0: "GREEN", 1: "RED"}.get(proc.returncode, "ERROR")
        if " error" in last:
            verdict = "ERROR"
        print(f"{name}: {verdict} ({bug.what}): {last}")
        if verbose or verdict == "ERROR":
            print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n")
        return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bugs", nargs="*", help="names of bugs to plant (see --list)")
    parser.add_argument("--all", action="store_true", help="plant every bug, one at a time")
    parser.add_argument("--list", action="store_true", help="list the bugs and their tests")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's output")
    parser.add_argument(
        "--mutant", action="extend", nargs="+", default=[], help="mutmut mutant names (mutants/)"
    )
    parser.add_argument("--tests", nargs="+", default=[], help="the tests for --mutant")
    args = parser.parse_args(argv)
    if args.mutant:
        if not args.tests:
            parser.error("--mutant needs --tests")
        if args.bugs:
            parser.error(f"--mutant takes mutant names only; planted bug names too: {args.bugs}")
        tests = tuple(args.tests)
        verdicts = [plant(m, args.verbose, bug_of_mutant(m, tests)) for m in args.mutant]
        return 0 if all(v == "RED" for v in verdicts) else 1
    if args.list:
        for name, bug in BUGS.items():
            print(f"{name}: {bug.what} [{bug.file}] -> {' '.join(bug.tests)}")
        return 0
    names = list(BUGS) if args.all else args.bugs
    unknown = [n for n in names if n not in BUGS]
    if unknown or not names:
        parser.error(f"unknown bug names {unknown}" if unknown else "name bugs or use --all")
    verdicts = [plant(n, args.verbose) for n in names]
    return 0 if all(v == "RED" for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
