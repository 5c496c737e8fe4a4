"""One self-contained HTML report from the result folders the CLI commands wrote.

:func:`write_report` finds every analysis folder under the given paths (a folder holding
``result/manifest.json``) and writes one ``report.html``: per analysis its summary table (an
HTML table, see :func:`summary_table_html`), its summary text, its figures as inline SVG (the
``figures/*.svg`` the command wrote, listed in ``figures/.attnviz-figures.json``) and, where the
folder holds per-query maps (``viewer/``, written by ``attnviz queries``), the
:class:`~attnviz.viewer.QueryViewer`. Everything is inline: no request leaves the page.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .results import atomic_write_text, read_manifest

__all__ = ["find_analyses", "load_result", "summary_table_html", "write_report"]

REPORT_FILE = "report.html"
VIEWER_DIR = "viewer"


def _result_classes() -> dict[str, Any]:
    from .analysis.ablation import AblationResult
    from .analysis.attribution import AttentionVsAttributionResult, GradCamComparisonResult
    from .analysis.excitation import ExcitationProfileResult
    from .analysis.query_independence import QueryIndependenceResult
    from .analysis.query_maps import QueryMapsResult
    from .analysis.rollout import RolloutResult
    from .analysis.scale_sweep import ScaleSweepResult

    classes = (
        AblationResult,
        AttentionVsAttributionResult,
        GradCamComparisonResult,
        ExcitationProfileResult,
        QueryIndependenceResult,
        QueryMapsResult,
        RolloutResult,
        ScaleSweepResult,
    )
    return {c.kind: c for c in classes}


def load_result(directory: str | os.PathLike) -> Any:
    """The result saved in ``directory``, of whatever kind its manifest names."""
    kind = read_manifest(directory).get("kind")
    classes = _result_classes()
    if kind not in classes:
        raise ValueError(f"{directory}: unknown result kind {kind!r}")
    return classes[kind].load(directory)


def find_analyses(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Analysis folders (holding ``result/manifest.json``) at or below ``paths``, in order."""
    found: list[Path] = []
    for root in paths:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"no such folder: {root}")
        for manifest in sorted(root.rglob("result/manifest.json")):
            folder = manifest.parent.parent
            if folder not in found and _within(manifest, root):
                found.append(folder)
    return found


def _within(path: Path, root: Path) -> bool:
    """``path`` (symlinks followed) is a file or folder inside ``root``: the report reads
    nothing outside the folders it was given."""
    try:
        real, top = path.resolve(strict=True), root.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return real == top or top in real.parents


def _frame_html(frame: pd.DataFrame, digits: int = 3) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            text = f"{v:.{digits}f}"
            return text.lstrip("-") if float(text) == 0 else text
        return str(v)

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = [
        "<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    ]
    return (
        f'<table class="attnviz-table"><thead><tr>{head}</tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table>"
    )


def summary_table_html(result: Any) -> str:
    """The analysis's summary table as HTML: the sweep's D per site and scale, the excitation's
    specificity per site, GCNet Table 1, the agreement with Grad-CAM per site, the target
    probability per model ("" for other results)."""
    kind = getattr(result, "kind", "")
    if kind == "scale_sweep":
        return _frame_html(result.d_table().reset_index())
    if kind == "excitation_profile":
        cols = ["site", "kind", "channels", "mean_excitation", "specificity"]
        cols += ["squeeze_specificity", "null_p95", "p_value"]
        table = result.specificity()
        return _frame_html(table[[c for c in cols if c in table.columns]])
    if kind == "query_independence":
        from .plot.queries import statistics_table_html

        return statistics_table_html(result)
    if kind == "attention_vs_attribution":
        return _frame_html(result.site_summary())
    if kind == "ablation":
        return ablation_table_html(result)
    if kind == "gradcam_comparison":
        p = result.probability
        return _frame_html(
            pd.DataFrame(
                {
                    "model": list(result.models),
                    "images": [p.shape[0]] * len(result.models),
                    "mean P(target)": p.mean(axis=0),
                    "std": p.std(axis=0),
                }
            )
        )
    return ""


def ablation_table_html(result: Any) -> str:
    """An ablation's table, one row per (site group, policy), one column per measure:
    "mean [95% CI]" of the paired change (a star: Holm-adjusted p < 0.05), every cell escaped.
    """
    from .plot._style import no_minus_zero
    from .plot.ablation import DIFFERENCES

    frame = result.to_frame()
    measures = list(dict.fromkeys(frame["measure"]))
    rows = []
    for (group, policy), block in frame.groupby(["group", "policy"], sort=False):
        row = {"group": str(group), "policy": str(policy), "images": int(block["n"].max())}
        for measure in measures:
            hit = block[block["measure"] == measure]
            if hit.empty:
                row[measure] = ""
                continue
            r = hit.iloc[0]
            fmt = "+.3f" if measure in DIFFERENCES else ".3f"  # kl, agreement: not changes
            lo, mean, hi = (no_minus_zero(float(r[c]), fmt) for c in ("ci_low", "mean", "ci_high"))
            row[measure] = f"{mean} [{lo}, {hi}]" + ("*" if float(r["p_holm"]) < 0.05 else "")
        rows.append(row)
    table = _frame_html(pd.DataFrame(rows, columns=["group", "policy", "images", *measures]))
    note = (
        "<p>mean change intervened &minus; original over paired images (kl: mean "
        "KL(original || intervened); agreement: share of unchanged top-1), bootstrap 95% CI in "
        "brackets; *: Holm-adjusted sign-flip p &lt; 0.05.</p>"
    )
    return note + table


def inline_svg(text: str, prefix: str) -> str:
    """An SVG file's text for inlining: sanitised (no script, event handler, external
    reference or foreign object; :func:`attnviz.sanitise.sanitise_svg`), every id (and its
    references) prefixed so that several figures share one page without clashes."""
    from .sanitise import sanitise_svg

    return sanitise_svg(text, prefix)


def _figures(folder: Path, root: Path) -> list[Path]:
    """The SVG figures of an analysis folder: those its figure list names (plain ``.svg``
    names), else every ``figures/*.svg``; each a file inside ``root`` (symlinks followed)."""
    directory = folder / "figures"
    listing = directory / ".attnviz-figures.json"
    names: list[Any] = []
    if listing.is_file() and _within(listing, root):
        try:
            listed = json.loads(listing.read_text(encoding="utf-8"))
            names = listed if isinstance(listed, list) else []
        except (OSError, ValueError):
            names = []
    names = [n for n in names if _plain_svg_name(n)]
    paths = [directory / n for n in names] if names else sorted(directory.glob("*.svg"))
    return [p for p in paths if p.is_file() and _within(p, root)]


def _plain_svg_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and name.endswith(".svg")
        and name == Path(name).name
        and "/" not in name
        and "\\" not in name
    )


def _section(folder: Path, base: Path, number: int, root: Path | None = None) -> str:
    """One analysis's part of the page; ``root``: the folder given (nothing outside it is
    read)."""
    from .plot._style import model_name
    from .sanitise import UnsafeSvgError

    root = base if root is None else root

    result = load_result(folder / "result")
    name = folder.relative_to(base).as_posix() if folder != base else folder.name
    model = model_name(result)
    parts = [
        f'<section class="analysis" id="a{number}">',
        f"<h2>{html.escape(name)}: {html.escape(result.kind.replace('_', ' '))} "
        f"({html.escape(model)})</h2>",
    ]
    table = summary_table_html(result)
    if table:
        parts.append(f"<h3>Summary table</h3>{table}")
    summary = folder / "summary.txt"
    if summary.is_file() and _within(summary, root):
        parts.append(
            "<details><summary>Summary text</summary><pre>"
            + html.escape(summary.read_text(encoding="utf-8"))
            + "</pre></details>"
        )
    viewer = folder / VIEWER_DIR
    if (viewer / "manifest.json").is_file() and _within(viewer, root):
        from .viewer import QueryViewer

        maps = load_result(viewer)
        parts.append("<h3>Query viewer</h3>" + QueryViewer(maps, model=model).to_html())
    for k, svg in enumerate(_figures(folder, root)):
        try:
            body = inline_svg(svg.read_text(encoding="utf-8"), f"a{number}f{k}")
        except (OSError, UnicodeDecodeError, UnsafeSvgError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            parts.append(
                f"<p>figure {html.escape(svg.stem)} left out: {html.escape(reason or '')}</p>"
            )
            continue
        parts.append(
            f'<figure class="attnviz-figure">{body}'
            f"<figcaption>{html.escape(svg.stem)}</figcaption></figure>"
        )
    parts.append("</section>")
    return "\n".join(parts)


_STYLE = """
body{font:14px/1.4 sans-serif;margin:24px;max-width:1200px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-top:1px solid #ccc;padding-top:12px}
table.attnviz-table{border-collapse:collapse;margin:8px 0;font-size:13px}
table.attnviz-table th,table.attnviz-table td{border:1px solid #ccc;padding:3px 8px;
text-align:right}table.attnviz-table th{background:#f3f3f3}
figure.attnviz-figure{margin:16px 0}figure.attnviz-figure svg{max-width:100%;height:auto}
figcaption{font-size:12px;color:#555}pre{font-size:12px;overflow-x:auto}
"""


def build_report(paths: Sequence[str | os.PathLike], title: str = "attnviz report") -> str:
    """The report page (see the module docstring) as a string."""
    folders = find_analyses(paths)
    if not folders:
        raise FileNotFoundError(
            f"no analysis results under {', '.join(str(p) for p in paths)} (looked for "
            "result/manifest.json)"
        )
    bases = [Path(p) for p in paths]
    sections, toc = [], []
    for i, folder in enumerate(folders):
        # the path it was found under (find_analyses walks each path: the folder lies below)
        base = next(b for b in bases if b == folder or b in folder.parents)
        sections.append(_section(folder, base, i))
        label = folder.relative_to(base).as_posix() if folder != base else folder.name
        toc.append(f'<li><a href="#a{i}">{html.escape(label)}</a></li>')
    body = f"<h1>{html.escape(title)}</h1><ul>{''.join(toc)}</ul>" + "\n".join(sections) + "\n"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{content_policy(body)}">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        + body
        + "</body></html>\n"
    )


_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def content_policy(body: str) -> str:
    """The page's Content-Security-Policy: nothing from the network, images only as data
    URLs, and no script but the page's own inline scripts (the query viewers, each allowed
    by its sha256). Every other string in ``body`` is escaped or sanitised, so each
    ``<script>`` in it is one of those."""
    import base64
    import hashlib

    hashes = sorted(
        {
            "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
            for s in _SCRIPT.findall(body)
        }
    )
    scripts = " ".join(hashes) if hashes else "'none'"
    return (
        f"default-src 'none'; script-src {scripts}; style-src 'unsafe-inline'; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )


def write_report(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    title: str = "attnviz report",
) -> Path:
    """Write :func:`build_report` to ``out`` (default ``<first path>/report.html``)."""
    target = Path(out) if out is not None else Path(paths[0]) / REPORT_FILE
    text = build_report(paths, title)
    return atomic_write_text(target, text)
