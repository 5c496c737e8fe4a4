"""Tests for survivors of the fifteenth held-out round of the sampled mutation run (analysis;
TESTING.md, "Whole package by sampling"): an effect table's own p values kept, the sweep
table's zoom-minus-control only on control rows, and the site-kind words of ``pick_site``'s
refusal."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_mutants_round14 import _sweep_of_a_folder

import attnviz


def test_effect_tests_keep_a_tables_own_p_and_fill_the_rest_from_z():
    from attnviz.analysis.replicates import effect_tests

    effects = pd.DataFrame(
        {"effect": [0.3, 0.2, 1.0], "se": [0.1, 0.1, 0.5], "p": [0.5, np.nan, 0.004]}
    )
    got = effect_tests(effects)
    assert got["p"][0] == 0.5 and got["p"][2] == 0.004  # e.g. permutation p values
    assert got["p"][1] == pytest.approx(math.erfc(2.0 / math.sqrt(2.0)))  # z = 2, normal
    plain = effect_tests(effects.drop(columns="p"))
    assert plain["p"][0] == pytest.approx(math.erfc(3.0 / math.sqrt(2.0)))


def test_the_sweep_table_has_zoom_minus_control_on_control_rows_only(tmp_path):
    result = _sweep_of_a_folder(tmp_path)
    frame = result.to_frame("D")
    zoom = frame[(frame.condition == "zoom") & (frame["class"] == "all")]
    control = frame[(frame.condition != "zoom") & (frame["class"] == "all")]
    assert len(zoom) and len(control)
    assert zoom["zoom_minus_control"].isna().all()
    assert control["zoom_minus_control"].notna().all()


def test_pick_site_names_the_kinds_it_looked_for():
    from attnviz.analysis.query_maps import pick_site
    from attnviz.errors import NoAttentionSitesError

    model, _ = attnviz.load_model("se_tiny")
    with pytest.raises(NoAttentionSitesError, match=r"has no per-query \(Non-local\) or GC site"):
        pick_site(model, None)
