"""Every name in ``attnviz.__all__`` resolves (lazy re-exports included)."""

import attnviz


def test_all_public_names_resolve():
    for name in attnviz.__all__:
        assert getattr(attnviz, name) is not None, name
    assert callable(attnviz.scale_sweep) and callable(attnviz.load_model)
    assert attnviz.plot.plot_stage_bars is not None
    assert "scale_sweep" in dir(attnviz)


def test_lazy_names_are_listed_in_all():
    assert set(attnviz._LAZY) <= set(attnviz.__all__)


def test_plot_all_lists_every_figure_function_it_exports():
    import attnviz.plot as plot

    exported = {
        n
        for n, v in vars(plot).items()
        if callable(v) and getattr(v, "__module__", "").startswith("attnviz.plot.")
    }
    assert set(plot.__all__) == exported and len(plot.__all__) == len(set(plot.__all__))
    assert {"plot_stage_bars", "overlay", "statistics_table_html"} <= set(plot.__all__)
