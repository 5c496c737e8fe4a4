"""Mutation score of the whole package from a seeded random sample of its mutants, per area.

mutmut generates every mutant of the package (``pyproject.toml`` ``[tool.mutmut]``); running all
of them (about 50,000) takes days on 2 cores. Random mutant sampling estimates the score of the
whole population (Zhang et al., ICSE 2010, "Is operator-based mutant selection superior to random
mutant selection?"): each area's mutants are shuffled with a fixed seed and the first ``K`` are
run by mutmut. Any ``K`` gives a uniform random sample, so a larger ``K`` extends a smaller one.

The score of an area is killed / (checked - equivalent), with a Wilson 95 % interval;
``tools/mutation_equivalent.txt`` lists the sampled mutants read and judged equivalent, each with
its reason. Timeouts and crashes count as killed, "no tests" and "suspicious" as not killed.

    python tools/mutation_sample.py generate                 # mutants/ (mutmut's generation)
    python tools/mutation_sample.py names --per-area 40      # the sample, one name per line
    python tools/mutation_sample.py run --per-area 40        # run the unchecked ones (mutmut)
    python tools/mutation_sample.py run --per-area 40 --rerun survived
    python tools/mutation_sample.py report --per-area 40     # markdown table and survivors
    python tools/mutation_sample.py report --per-area 60 --skip 40   # mutants 41-60 only
    python tools/mutation_sample.py run --per-area 80 --skip 60      # run mutants 61-80 only
    python tools/mutation_sample.py run --names tools/mutation_round5.txt    # a fixed list
    python tools/mutation_sample.py report --names tools/mutation_round5.txt

``make mutation-sample`` installs mutmut and runs ``run`` then ``report``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
EQUIVALENT = ROOT / "tools" / "mutation_equivalent.txt"

#: Areas of the package, first match wins; every source file must fall in one.
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("capture adapters", ("attnviz/capture/adapters/*",)),
    ("capture", ("attnviz/capture/*",)),
    (
        "runner and results",
        (
            "attnviz/analysis/runner.py",
            "attnviz/analysis/_sites.py",
            "attnviz/results.py",
            "attnviz/distributed.py",
            "attnviz/errors.py",
        ),
    ),
    ("analysis", ("attnviz/analysis/*",)),
    ("data", ("attnviz/data/*",)),
    ("plot", ("attnviz/plot/*",)),
    (
        "report and viewer",
        ("attnviz/report.py", "attnviz/viewer.py", "attnviz/sanitise.py", "attnviz/widgets.py"),
    ),
    (
        "commands",
        (
            "attnviz/commands/*",
            "attnviz/cli.py",
            "attnviz/__init__.py",
            "attnviz/__main__.py",
            "attnviz/_version.py",
        ),
    ),
    ("models", ("attnviz/models/*",)),
    ("blocks", ("attnviz/blocks/*",)),
)

KILLED = {1, 3, 36, 37, -24, 24, 152, 255, -11, -9}
NOT_CHECKED = {None, 2, 34}


def area_of(path: str) -> str:
    """The area a source path (``attnviz/...py``) belongs to."""
    for area, patterns in AREAS:
        if any(fnmatch.fnmatch(path, p) for p in patterns):
            return area
    raise SystemExit(f"mutation_sample: {path} is in no area of AREAS; add it")


# mutmut 3.8.1 (pinned by the Makefile) generates mutants only inside `mutmut run`, which needs
# the names first: these are the generation steps of its `_run`, in a child process because
# they change sys.path.
_GENERATE = """
from pathlib import Path
from mutmut.__main__ import create_mutants
from mutmut.mutation.trampoline import set_mutant_under_test
from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir, setup_source_paths
set_mutant_under_test("mutant_generation")
Path("mutants").mkdir(exist_ok=True)
copy_src_dir()
copy_also_copy_files()
setup_source_paths()
create_mutants({jobs})
"""


def generate(jobs: int) -> None:
    """Write every mutant of the package to ``mutants/`` (files already mutated are kept)."""
    code = subprocess.call([sys.executable, "-c", _GENERATE.format(jobs=jobs)], cwd=ROOT)
    if code:
        raise SystemExit(f"mutation_sample: mutant generation failed (exit {code})")


def verdicts() -> dict[str, dict[str, int | None]]:
    """Per area, every mutant's last mutmut exit code (None: not run)."""
    if not MUTANTS.is_dir():
        raise SystemExit("mutation_sample: no mutants/ folder; run `make mutation-sample` first")
    out: dict[str, dict[str, int | None]] = {area: {} for area, _ in AREAS}
    for meta in sorted(MUTANTS.joinpath("attnviz").rglob("*.py.meta")):
        source = meta.relative_to(MUTANTS).as_posix()[: -len(".meta")]
        codes = json.loads(meta.read_text("utf-8"))["exit_code_by_key"]
        out[area_of(source)].update(codes)
    return out


def sample(
    codes: dict[str, dict[str, int | None]], per_area: int, seed: int
) -> dict[str, list[str]]:
    """The first ``per_area`` names of each area's seeded shuffle."""
    drawn = {}
    for area, names in codes.items():
        order = sorted(names)
        random.Random(f"{seed}:{area}").shuffle(order)
        drawn[area] = order[:per_area]
    return drawn


def listed(codes: dict[str, dict[str, int | None]], path: Path) -> dict[str, list[str]]:
    """The mutants named in ``path`` (one per line, ``#`` comments), by area, in file order.

    A held-out round fixed in advance: the seeded order of :func:`sample` changes when the
    package gains or loses mutants, so a list drawn before a change keeps later rounds apart
    from the mutants read earlier. Names that no longer exist are left out and reported."""
    area_of_name = {name: area for area, names in codes.items() for name in names}
    drawn: dict[str, list[str]] = {area: [] for area in codes}
    gone = []
    for line in path.read_text("utf-8").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            (drawn[area_of_name[name]] if name in area_of_name else gone).append(name)
    if gone:
        print(f"mutation_sample: {len(gone)} listed mutants no longer exist: {', '.join(gone)}")
    return drawn


def equivalent() -> dict[str, str]:
    """Mutants judged equivalent: ``name  reason`` lines of ``tools/mutation_equivalent.txt``."""
    if not EQUIVALENT.exists():
        return {}
    out = {}
    for line in EQUIVALENT.read_text("utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.partition(" ")
            out[name] = reason.strip()
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def report(per_area: int, seed: int, skip: int = 0, names_file: Path | None = None) -> str:
    """The score table of positions ``skip`` to ``per_area`` of each area's sample (a held-out
    part when the first ``skip`` were read and their survivors turned into tests), or of the
    mutants listed in the file ``names_file``."""
    codes = verdicts()
    drawn = (
        listed(codes, names_file)
        if names_file
        else {area: names[skip:] for area, names in sample(codes, per_area, seed).items()}
    )
    equal = equivalent()
    rows = [
        "| area | mutants | sampled | checked | killed | equivalent | not killed | score "
        "| 95 % CI |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    survivors = []
    estimate = weight = 0.0
    totals = [0, 0, 0, 0, 0]
    for area, _ in AREAS:
        names = drawn[area]
        checked = [n for n in names if codes[area][n] not in NOT_CHECKED]
        killed = [n for n in checked if codes[area][n] in KILLED]
        same = [n for n in checked if n not in killed and n in equal]
        left = [n for n in checked if n not in killed and n not in equal]
        survivors += [(area, n, codes[area][n]) for n in left]
        n = len(killed) + len(left)
        score = len(killed) / n if n else math.nan
        lo, hi = wilson(len(killed), n)
        if n:
            estimate += score * len(codes[area])
            weight += len(codes[area])
        for i, v in enumerate((len(codes[area]), len(names), len(checked), len(killed), len(same))):
            totals[i] += v
        if not names:  # an area this sample or list does not draw from
            continue
        rows.append(
            f"| {area} | {len(codes[area])} | {len(names)} | {len(checked)} | {len(killed)} | "
            f"{len(same)} | {len(left)} | {100 * score:.1f} % | {100 * lo:.0f}-{100 * hi:.0f} % |"
        )
    not_killed = totals[2] - totals[3] - totals[4]
    rows.append(
        f"| **package** (areas weighted by their mutants) | {totals[0]} | {totals[1]} "
        f"| {totals[2]} "
        f"| {totals[3]} | {totals[4]} | {not_killed} | "
        f"**{100 * estimate / weight if weight else math.nan:.1f} %** | |"
    )
    lines = [*rows, "", "Not killed (name, mutmut exit code):"]
    lines += [f"- {area}: `{name}` ({code})" for area, name, code in survivors] or ["- none"]
    return "\n".join(lines)


def run(
    per_area: int,
    seed: int,
    jobs: int,
    rerun: str | None,
    skip: int = 0,
    names_file: Path | None = None,
) -> int:
    """Run the sampled mutants without a verdict (positions ``skip`` to ``per_area``, or the
    mutants listed in the file ``names_file``)."""
    generate(jobs)
    codes = verdicts()
    drawn = listed(codes, names_file) if names_file else sample(codes, per_area, seed)
    todo = []
    for area, names in drawn.items():
        for name in names[0 if names_file else skip :]:
            code = codes[area][name]
            if code in NOT_CHECKED or (
                rerun == "survived" and code not in KILLED and name not in equivalent()
            ):
                todo.append(name)
    if not todo:
        print("mutation_sample: every sampled mutant has a verdict")
        return 0
    print(f"mutation_sample: running {len(todo)} mutants", flush=True)
    # a mutant may write bundled models (the seed bundler): give the run its own copy
    assets = MUTANTS / "assets"
    if not assets.exists():
        shutil.copytree(ROOT / "assets", assets)
    env = dict(os.environ, ATTNVIZ_ASSETS=str(assets))
    mutmut = Path(sys.executable).with_name("mutmut")
    cmd = ["nice", "-n", "10", str(mutmut), "run", "--max-children", str(jobs), *todo]
    return subprocess.call(cmd, cwd=ROOT, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("generate", "names", "run", "report"))
    parser.add_argument("--per-area", type=int, default=40, help="mutants drawn per area")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="mutmut --max-children")
    parser.add_argument("--rerun", choices=("survived",), help="run these verdicts again too")
    parser.add_argument(
        "--skip", type=int, default=0, help="run, report: leave out each area's first SKIP mutants"
    )
    parser.add_argument(
        "--names",
        type=Path,
        help="run, report: the mutants listed in this file instead of a seeded sample",
    )
    args = parser.parse_args(argv)
    if args.command == "generate":
        generate(args.jobs)
    elif args.command == "names":
        drawn = sample(verdicts(), args.per_area, args.seed)
        print("\n".join(n for names in drawn.values() for n in names))
    elif args.command == "run":
        return run(args.per_area, args.seed, args.jobs, args.rerun, args.skip, args.names)
    else:
        print(report(args.per_area, args.seed, args.skip, args.names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
